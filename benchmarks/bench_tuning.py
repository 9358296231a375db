"""Trial throughput of an Optuna study shared by 1, 2 and 4 workers on PostgreSQL.

    python benchmarks/bench_tuning.py [--workers 1 2 4] [--trials 8] [--trial-seconds 2] [--epochs 4]
                                      [--work sleep cpu tiny] [--mlflow server|local]

It starts a throw-away PostgreSQL cluster and an ``mlflow server`` backed by it on 127.0.0.1 (the same
code as the tests: tests/servers.py), then, for every kind of work and worker count, runs a fresh study
of ``--trials`` trials through ``binaural_lab.tuning.run_study``, the code behind ``blab tune``, in that
many worker processes: RDB storage with heartbeats, the advisory lock, one parent and one nested MLflow
run per trial, a report per epoch. The trials are stand-ins whose cost is known:

- ``sleep``: each epoch sleeps ``trial_seconds / epochs``, so every second beyond that is the price of
  coordination (storage, lock, heartbeats, MLflow) and the ideal rate is ``60 * workers / trial_seconds``;
- ``cpu``: each epoch runs a fixed number of float32 matrix products on one thread, calibrated here to
  take ``trial_seconds / epochs`` on an idle core: workers beyond the free cores queue for them.

``tiny`` runs real trials instead: each worker is ``blab tune depth unet --n-trials <trials> --storage
<the study's database>`` in one tiny project (tests/test_pipeline.py's ``tiny_project`` after ``dvc repro
featurize@echoes``), so every trial trains and validates the tiny UNet for ``tune.epochs`` epochs. Its
work per trial is not fixed, so its rows have no ideal rate and no overhead.

Per row: wall time from launching the workers to the last exit (process start-up included), the span
from the first trial's start to the last trial's end (from the storage), trials per minute over that
span, the mean trial duration, its overhead over the work itself and the trials pruned. The load average is printed
with each row: on a shared machine numbers vary.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from servers import MlflowServer, PostgresCluster  # noqa: E402 - tests/servers.py: the tests' server set-up
from test_pipeline import BIN, run, tiny_project  # noqa: E402 - the tests' tiny project
from test_scale_out import worker_env  # noqa: E402 - the environment of the tests' `blab tune` workers

MATRIX = 192


def _products(n: int) -> None:
    import torch

    a = torch.rand(MATRIX, MATRIX)
    for _ in range(n):
        a = torch.mm(a, a)
        a = a / a.norm()


def calibrate(seconds: float) -> int:
    """Matrix products that take ``seconds`` on one thread here."""
    import torch

    torch.set_num_threads(1)
    n = 50
    while True:
        start = time.perf_counter()
        _products(n)
        took = time.perf_counter() - start
        if took > 0.2:
            return max(1, round(n * seconds / took))
        n *= 4


def worker(spec: dict) -> None:
    """One worker: run (or join) the study until it holds ``spec['trials']`` finished trials."""
    import torch

    from binaural_lab.config import parse
    from binaural_lab.tuning import SearchDim, TuneConfig, run_study

    torch.set_num_threads(1)
    cfg = parse(
        TuneConfig,
        {"storage": spec["url"], "n_trials": spec["trials"], "pruner": {"n_startup_trials": 10_000}},
        "tune",
    )
    space = {"x": parse(SearchDim, {"low": 0.0, "high": 1.0}, "space.x")}
    pause = spec["trial_seconds"] / spec["epochs"]

    def objective(values: dict, report) -> float:
        value = values["x"]
        for epoch in range(spec["epochs"]):
            if spec["work"] == "sleep":
                time.sleep(pause)
            else:
                _products(spec["products"])
            value = values["x"] / (epoch + 1)
            report(epoch, value, {"val_x": value})
        return value

    run_study(spec["study"], "bench", space, objective, cfg, "x", "minimize")


def tiny_features(root: Path) -> Path:
    """The tests' tiny project in ``root``, with the echo features its depth trials read."""
    root.mkdir()
    project = tiny_project(root)
    print(f"tiny project in {project}: dvc repro featurize@echoes ...", flush=True)
    run(["dvc", "repro", "featurize@echoes"], project)
    return project


def load_average() -> float:
    return os.getloadavg()[0]


def measure(cluster: PostgresCluster, spec: dict, n_workers: int, env: dict) -> dict:
    import optuna

    from binaural_lab.tuning import database_url

    url = cluster.create_database(f"bench_{spec['work']}_{n_workers}")
    spec = {**spec, "url": url}
    cwd = spec.get("project")
    if cwd:  # real trials: the CLI in the tiny project
        cmd = [str(BIN / "blab"), "tune", "depth", "unet", "--n-trials", str(spec["trials"]), "--storage", url]
    else:
        cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    start = time.perf_counter()
    procs = [
        subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(n_workers)
    ]
    outs = [p.communicate()[0] for p in procs]
    wall = time.perf_counter() - start
    failed = [out[-2000:] for p, out in zip(procs, outs, strict=True) if p.returncode != 0]
    if failed:
        raise RuntimeError("a worker failed:\n" + "\n----\n".join(failed))
    trials = optuna.load_study(study_name=spec["study"], storage=database_url(url)).trials
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    if len(finished) != spec["trials"] or len(trials) != spec["trials"]:
        raise RuntimeError(f"expected exactly {spec['trials']} finished trials, got {[t.state.name for t in trials]}")
    span = (max(t.datetime_complete for t in finished) - min(t.datetime_start for t in finished)).total_seconds()
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in finished]
    return {
        "wall": wall,
        "span": span,
        "per_min": 60 * len(finished) / span,
        "trial": statistics.mean(durations),
        "workers_used": len({t.user_attrs.get("worker") for t in finished}),
        "pruned": sum(t.state == optuna.trial.TrialState.PRUNED for t in finished),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--trials", type=int, default=8, help="trials per study")
    parser.add_argument("--trial-seconds", type=float, default=2.0, help="work per trial")
    parser.add_argument("--epochs", type=int, default=4, help="reports per trial")
    parser.add_argument("--work", nargs="+", choices=("sleep", "cpu", "tiny"), default=["sleep", "cpu"])
    parser.add_argument(
        "--mlflow", choices=("server", "local"), default="server", help="an mlflow server, or a sqlite store in tmp"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: run one worker with this JSON spec
    args = parser.parse_args()
    if args.worker:
        worker(json.loads(args.worker))
        return

    products = calibrate(args.trial_seconds / args.epochs) if "cpu" in args.work else 0
    print(f"{os.cpu_count()} CPUs; {args.trials} trials per study")
    if {"sleep", "cpu"} & set(args.work):
        print(f"stand-in trials of {args.trial_seconds:g} s with {args.epochs} reports")
    if products:
        print(f"cpu work: {products} products of {MATRIX} x {MATRIX} per epoch on one thread")
    with tempfile.TemporaryDirectory(prefix="blab-bench-tuning-") as tmp, PostgresCluster() as cluster:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
        env.update({"BLAB_ROOT": tmp, "OMP_NUM_THREADS": "1"})
        server = None
        if args.mlflow == "server":
            backend = cluster.create_database("mlflow", driver="psycopg2")
            server = MlflowServer(backend, Path(tmp) / "artifacts", Path(tmp) / "mlflow.log").start()
            env["MLFLOW_TRACKING_URI"] = server.url
        try:
            tracking = server.url if server else "a sqlite store in tmp"
            print(f"PostgreSQL {cluster.bin.parent.name} on port {cluster.port}; MLflow: {tracking}")
            head = (
                f"\n{'work':<6} {'workers':>7} {'used':>4} {'wall s':>7} {'span s':>7} {'trials/min':>10} "
                f"{'ideal/min':>9} {'trial s':>7} {'overhead s':>10} {'pruned':>6} {'load':>5}"
            )
            print(head)
            for work in args.work:
                spec = {
                    "study": f"bench-{work}",
                    "trials": args.trials,
                    "trial_seconds": args.trial_seconds,
                    "epochs": args.epochs,
                    "work": work,
                    "products": products,
                }
                work_env = env
                if work == "tiny":  # the project is the root; MLflow: the server, or the project's own store
                    spec.update(study="depth-unet", project=str(tiny_features(Path(tmp) / "tiny")))
                    work_env = worker_env(server.url if server else None)
                for n in args.workers:
                    res = measure(cluster, spec, n, work_env)
                    if work == "tiny":
                        ideal = overhead = "-"
                    else:
                        ideal = f"{60 * min(n, args.trials) / args.trial_seconds:.1f}"
                        overhead = f"{res['trial'] - args.trial_seconds:.2f}"
                    print(
                        f"{work:<6} {n:>7} {res['workers_used']:>4} {res['wall']:7.1f} {res['span']:7.1f} "
                        f"{res['per_min']:10.1f} {ideal:>9} {res['trial']:7.2f} {overhead:>10} {res['pruned']:>6} "
                        f"{load_average():5.2f}",
                        flush=True,
                    )
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
