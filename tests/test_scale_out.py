"""Scaling out, against real servers on 127.0.0.1 (tests/servers.py): Optuna workers of two "hosts"
sharing one study on PostgreSQL and logging to an ``mlflow server``, a worker killed in mid-trial,
a DVC remote round trip, and a two-node torchrun job that resumes after both nodes are killed.

A "host" is a working copy of its own, made with test_pipeline's init_project: the copies share
nothing on disk but the servers (and the data features, copied in as `dvc pull` would bring them).
"""

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import mlflow
import optuna
import pandas as pd
import pytest
import torch
import yaml
from servers import BIN, free_port, mlflow_server_fixture, postgres_fixture  # noqa: F401 - the fixtures
from test_pipeline import init_project, ran_stages, run, tiny_project

from binaural_lab import tracking
from binaural_lab.config import ParamError, parse
from binaural_lab.tuning import TuneConfig, database_url, study_lock

pytestmark = pytest.mark.slow

FEATURES = Path("data/features/synthetic-echoes")
UNET = Path("models/depth/unet")
STUDY = "depth-unet"


def worker_env(tracking_uri: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BLAB_ROOT")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    env["OMP_NUM_THREADS"] = "1"  # tiny models, two shared cores
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def set_params(root: Path, values: dict) -> None:
    """Write dotted ``values`` into the copy's params.yaml (a test copy: its comments may go)."""
    params = yaml.safe_load((root / "params.yaml").read_text())
    for key, value in values.items():
        node = params
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """The tiny project with the echo data and the unet trained by `dvc repro train_depth@unet`, committed."""
    root = tiny_project(tmp_path_factory.mktemp("base"))
    run(["dvc", "repro", "train_depth@unet"], root)
    return root


def host_copy(base: Path, root: Path, params: dict | None = None) -> Path:
    """Another host's working copy: its own init_project, the tiny params, the features of ``base``."""
    root.mkdir(parents=True)
    init_project(root)
    run(["blab", "pipeline", "use", "tiny"], root)
    shutil.copytree(base / FEATURES, root / FEATURES)
    if params:
        set_params(root, params)
    return root


def tuning_params(url: str, grace: int, epochs: int) -> dict:
    return {
        "tune.storage": url,
        "tune.sampler": "random",
        "tune.epochs": epochs,
        "tune.pruner.n_startup_trials": 1000,  # no pruning: every trial runs all its epochs
        "tune.heartbeat_interval": 1,
        "tune.grace_period": grace,
    }


def start_worker(root: Path, server: str, n_trials: int) -> subprocess.Popen:
    cmd = ["blab", "tune", "depth", "unet", "--n-trials", str(n_trials)]
    env = worker_env(server)
    return subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(workers: list[subprocess.Popen], timeout: float = 600) -> list[str]:
    outs = [w.communicate(timeout=timeout)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), "\n----\n".join(o[-3000:] for o in outs)
    return outs


def study_runs(server: str, since: float) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The parent run(s) and nested runs of the study run since ``since`` (the server is the session's:
    each test's study has the same name), read from the tracking server."""
    mlflow.set_tracking_uri(server)
    runs = mlflow.search_runs(
        experiment_names=["binaural-lab/depth"],
        filter_string=f"tags.optuna_study = '{STUDY}' and attributes.start_time >= {int(since * 1000)}",
    )
    return runs[runs["tags.mlflow.parentRunId"].isna()], runs[runs["tags.mlflow.parentRunId"].notna()]


def load_trials(url: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=STUDY, storage=database_url(url)).trials


def test_heartbeat_params_are_validated_and_a_database_without_a_cross_host_lock_is_refused():
    with pytest.raises(ParamError, match=r"tune.grace_period: 2 s must exceed heartbeat_interval \(5 s\)"):
        parse(TuneConfig, {"heartbeat_interval": 5, "grace_period": 2}, "tune")
    with pytest.raises(ParamError, match="tune.grace_period: a grace period needs heartbeats"):
        parse(TuneConfig, {"heartbeat_interval": None, "grace_period": 10}, "tune")
    with pytest.raises(ParamError, match="tune.heartbeat_interval: 0 is out of range, expected a value >= 1"):
        parse(TuneConfig, {"heartbeat_interval": 0}, "tune")
    with pytest.raises(ParamError, match="tune.max_retry: -1 is out of range"):
        parse(TuneConfig, {"max_retry": -1}, "tune")
    cfg = parse(TuneConfig, {}, "tune")
    assert (cfg.heartbeat_interval, cfg.grace_period, cfg.max_retry) == (30, None, 3)
    with pytest.raises(ParamError, match=r"tune.storage: mysql\+pymysql://u:\*\*\*@db/x: .* postgresql://") as err:
        with study_lock("mysql+pymysql://u:secret@db/x", "s"):
            pass
    assert "secret" not in str(err.value)
    # SQLAlchemy 2.1 maps a bare postgresql:// to psycopg 3; the postgres extra installs psycopg2
    assert database_url("postgresql://u@h:5432/db") == "postgresql+psycopg2://u@h:5432/db"
    assert database_url("postgresql+psycopg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_four_workers_on_two_hosts_share_one_study_on_postgres(base, tmp_path, postgres, mlflow_server):
    since = time.time()
    url = postgres.create_database("study_four")
    hosts = [host_copy(base, tmp_path / f"host{h}", tuning_params(url, grace=10, epochs=2)) for h in (0, 1)]
    n_trials = 6
    workers = [start_worker(host, mlflow_server.url, n_trials) for host in hosts for _ in range(2)]
    outs = finish(workers)

    trials = load_trials(url)
    states = [t.state for t in trials]
    # exactly the total asked for, however the four workers raced for the last trials
    assert len(trials) == n_trials and set(states) == {optuna.trial.TrialState.COMPLETE}, states
    assert len({t.number for t in trials}) == n_trials
    assert len({t.user_attrs["worker"] for t in trials}) >= 2  # shared, not run by one worker
    parents, children = study_runs(mlflow_server.url, since)
    assert len(parents) == 1 and parents["status"].iloc[0] == "FINISHED"
    assert sorted(children["tags.optuna_trial"].astype(int)) == sorted(t.number for t in trials)
    assert set(children["tags.mlflow.parentRunId"]) == set(parents["run_id"])
    assert set(children["status"]) == {"FINISHED"} and set(children["tags.optuna_state"]) == {"COMPLETE"}
    assert {t.user_attrs["mlflow_run_id"] for t in trials} == set(children["run_id"])
    # nothing went to a local store: every host logged to the server
    assert not any((host / "mlruns").exists() for host in hosts)
    assert all(f"study {STUDY}: {n_trials} trials" in out for out in outs)


def test_a_worker_killed_in_mid_trial_is_failed_by_the_heartbeat_and_its_trial_retried(
    base, tmp_path, postgres, mlflow_server
):
    since = time.time()
    url = postgres.create_database("study_kill")
    grace = 4
    hosts = [host_copy(base, tmp_path / f"host{h}", tuning_params(url, grace=grace, epochs=3)) for h in (0, 1)]
    n_trials = 4
    victim = start_worker(hosts[0], mlflow_server.url, n_trials)
    others = [start_worker(hosts[0], mlflow_server.url, n_trials), start_worker(hosts[1], mlflow_server.url, n_trials)]

    # kill the victim once its trial has reported an epoch (two more to go): in mid-trial
    storage = optuna.storages.RDBStorage(database_url(url))
    me = f"{socket.gethostname()}:{victim.pid}"
    deadline, killed = time.monotonic() + 300, None
    while killed is None and time.monotonic() < deadline and victim.poll() is None:
        try:
            study_id = storage.get_study_id_from_name(STUDY)
        except KeyError:
            study_id = None
        if study_id is not None:
            for t in storage.get_all_trials(study_id, states=(optuna.trial.TrialState.RUNNING,)):
                if t.user_attrs.get("worker") == me and t.intermediate_values:
                    victim.send_signal(signal.SIGKILL)
                    killed = t.number
                    break
        time.sleep(0.1)
    output = victim.communicate(timeout=60)[0]
    assert killed is not None and victim.returncode == -signal.SIGKILL, output[-3000:]
    outs = finish(others)

    trials = {t.number: t for t in load_trials(url)}
    dead = trials[killed]
    assert dead.state == optuna.trial.TrialState.FAIL  # failed by a live worker's heartbeat check
    finished = [t for t in trials.values() if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(finished) == n_trials and len(trials) == n_trials + 1  # the total is still exact
    (retry,) = [t for t in trials.values() if t.system_attrs.get("failed_trial") == killed]
    assert retry.state == optuna.trial.TrialState.COMPLETE and retry.params == dead.params
    assert retry.user_attrs["worker"] != me
    assert any("sent no heartbeat" in out for out in outs)

    parents, children = study_runs(mlflow_server.url, since)
    assert len(parents) == 1 and parents["status"].iloc[0] == "FINISHED"
    assert sorted(children["tags.optuna_trial"].astype(int)) == sorted(trials)  # one nested run per trial
    by_trial = children.set_index(children["tags.optuna_trial"].astype(int))
    assert by_trial.loc[killed, "status"] == "FAILED" and by_trial.loc[killed, "tags.optuna_state"] == "FAIL"
    assert by_trial.loc[retry.number, "tags.optuna_retry_of"] == str(killed)
    assert set(by_trial.drop(index=killed)["status"]) == {"FINISHED"}


def test_artifacts_go_through_the_tracking_server(mlflow_server, tmp_path, monkeypatch):
    """Models, figures and WAVs are uploaded to the server's artifact destination, and an experiment
    created meanwhile by another worker (RESOURCE_ALREADY_EXISTS) is simply used."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.url)
    monkeypatch.setenv("BLAB_ROOT", str(tmp_path))
    wav, png = tmp_path / "clip.wav", tmp_path / "examples.png"
    wav.write_bytes(b"RIFF....WAVE")
    png.write_bytes(b"\x89PNG....")
    with tracking.stage_run("artifacts", "evaluate_artifacts@x", {"a": 1}) as run:
        tracking.log_outputs({"metrics": {"stft": 0.5}, "files": [wav, png]})
        tracking.log_model_state({"w": torch.ones(2)}, {"name": "x"})
    exp = mlflow.get_experiment(run.info.experiment_id)
    assert exp.artifact_location.startswith("mlflow-artifacts:")  # the server's, not a local path
    stored = mlflow_server.artifacts / exp.experiment_id / run.info.run_id / "artifacts"
    files = {p.relative_to(stored).as_posix() for p in stored.rglob("*") if p.is_file()}
    assert files == {"examples/clip.wav", "figures/examples.png", "model/state_dict.pt", "model/config.json"}
    assert not (tmp_path / "mlruns").exists()

    # a worker that found no experiment, then lost the race to create it
    real, calls = mlflow.get_experiment_by_name, []

    def not_there_yet(name):
        calls.append(name)
        return None if len(calls) == 1 else real(name)

    monkeypatch.setattr(mlflow, "get_experiment_by_name", not_there_yet)
    assert tracking.experiment_id("artifacts") == exp.experiment_id and len(calls) == 2


def test_dvc_push_clone_pull_then_repro_reruns_nothing(base, tmp_path):
    remote = tmp_path / "remote"
    run(["dvc", "remote", "add", "-d", "store", str(remote)], base)
    run(["git", "add", "-A"], base)
    run(["git", "commit", "-qm", "trained unet, DVC remote"], base)
    assert "dvc.lock" in run(["git", "ls-files"], base).stdout
    run(["dvc", "push", "--with-deps", "train_depth@unet"], base)
    assert any(p.is_file() for p in remote.rglob("*"))

    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(base), str(clone)], tmp_path)
    assert not (clone / UNET).exists() and not (clone / FEATURES).exists()
    # the stages of train_depth@unet and their outputs (a bare `dvc pull` also wants the stages never run here)
    run(["dvc", "pull", "--with-deps", "train_depth@unet"], clone)
    # the persist: true output came back with its resumable checkpoint
    assert (clone / UNET / "model.pt").read_bytes() == (base / UNET / "model.pt").read_bytes()
    assert (clone / UNET / "last.pt").read_bytes() == (base / UNET / "last.pt").read_bytes()
    out = run(["dvc", "repro", "train_depth@unet"], clone).stdout
    assert ran_stages(out) == set(), out
    assert "up to date" in run(["dvc", "status", "train_depth@unet"], clone).stdout
    # forced, the stage keeps its persisted folder and resumes the pulled checkpoint: nothing to train
    out = run(["dvc", "repro", "-f", "-s", "train_depth@unet"], clone)
    assert "nothing left to train" in out.stdout + out.stderr
    pulled = torch.load(base / UNET / "model.pt", weights_only=True)["state_dict"]
    again = torch.load(clone / UNET / "model.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(pulled[k], again[k]) for k in pulled)


def torchrun_node(root: Path, port: int, job: str, server: str) -> subprocess.Popen:
    exe = shutil.which("torchrun", path=str(BIN)) or "torchrun"
    cmd = [exe, "--nnodes", "2", "--nproc-per-node", "1", "--node-rank", "0" if root.name == "node0" else "1"]
    cmd += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", job]
    cmd += ["stages/train.py", "depth", "unet"]
    return subprocess.Popen(
        cmd,
        cwd=root,
        env=worker_env(server),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, read from /proc (torchrun starts its workers in sessions of their own)."""
    found, todo = [], [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            try:
                children = [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
            found += children
            todo += children
    return found


def kill_node(proc: subprocess.Popen) -> None:
    """SIGKILL a torchrun agent and its workers: the whole node dies at once."""
    for pid in [proc.pid, *descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def two_nodes(nodes: list[Path], job: str, server: str) -> list[subprocess.Popen]:
    """One torchrun per node. c10d orders the nodes by (host, agent pid), not --node-rank: on one
    machine the agent started first is node 0, whose copy therefore holds the checkpoints."""
    port = free_port()
    first = torchrun_node(nodes[0], port, job, server)
    time.sleep(0.5)
    return [first, torchrun_node(nodes[1], port, job, server)]


def test_two_node_torchrun_trains_on_rank0_and_resumes_after_both_nodes_are_killed(base, tmp_path, mlflow_server):
    train = {"depth_models.unet.train.batch_size": 2, "depth_models.unet.train.checkpoint_every": 2}
    train["depth_models.unet.train.epochs"] = 6
    nodes = [host_copy(base, tmp_path / f"node{r}", train) for r in (0, 1)]

    reference = two_nodes(nodes, "reference", mlflow_server.url)
    outs = finish(reference)
    assert not (nodes[1] / UNET).exists() or not any((nodes[1] / UNET).iterdir()), outs[1][-3000:]
    expected = torch.load(nodes[0] / UNET / "model.pt", weights_only=True)
    steps = torch.load(nodes[0] / UNET / "last.pt", weights_only=True)["step"]
    assert expected["card"]["resumed_from_step"] == 0
    shutil.rmtree(nodes[0] / UNET)

    killed = two_nodes(nodes, "killed", mlflow_server.url)
    ckpt, state = nodes[0] / UNET / "last.pt", None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and all(p.poll() is None for p in killed):
        if ckpt.is_file():
            state = torch.load(ckpt, weights_only=True)
            if 0 < state["step"] < steps:
                break
        time.sleep(0.05)
    for p in killed:
        kill_node(p)
    outs = [p.communicate(timeout=60)[0] for p in killed]
    assert state is not None and 0 < state["step"] < steps, "\n----\n".join(o[-2000:] for o in outs)
    time.sleep(1)  # a worker that outlived its node would write on
    assert not (nodes[0] / UNET / "model.pt").exists(), f"killed at step {state['step']} of {steps}, yet finished"

    resumed = two_nodes(nodes, "resumed", mlflow_server.url)
    outs = finish(resumed)
    assert "resuming" in outs[0], outs[0][-3000:]
    got = torch.load(nodes[0] / UNET / "model.pt", weights_only=True)
    assert got["card"]["resumed_from_step"] >= state["step"] and torch.load(ckpt, weights_only=True)["step"] == steps
    assert got["state_dict"].keys() == expected["state_dict"].keys()
    assert all(torch.equal(got["state_dict"][k], expected["state_dict"][k]) for k in expected["state_dict"])
    assert got["history"] == expected["history"]  # every rank resumed the same state: bit-identical
    assert not (nodes[1] / UNET / "last.pt").exists()  # node 1 got the checkpoint from rank 0, not from disk

    # rank 0 alone logged: one run per launch, on the server, with the model and figures as artifacts
    mlflow.set_tracking_uri(mlflow_server.url)
    runs = mlflow.search_runs(
        experiment_names=["binaural-lab/depth"], filter_string="tags.dvc_stage = 'train_depth@unet'"
    )
    assert len(runs) == 3, runs[["status", "start_time"]]  # reference, killed (left RUNNING), resumed
    newest = runs.sort_values("start_time").iloc[-1]
    assert newest["status"] == "FINISHED"
    client = mlflow.MlflowClient(mlflow_server.url)
    assert {a.path for a in client.list_artifacts(newest["run_id"], "model")} >= {"model/state_dict.pt"}
    figures = [a.path for a in client.list_artifacts(newest["run_id"], "figures/training")]
    assert figures and all(p.endswith(".png") for p in figures)
    assert not any((node / "mlruns").exists() for node in nodes)
