"""Optuna studies over params declared in params.yaml.

A search space maps dotted keys of a params block (``train.lr``, ``loss.l_edge``) to ranges. Each
trial trains with the sampled values on the training split, reports a held-out validation metric
after every epoch (never the training loss) and may be pruned. One parent MLflow run per study
(created once, by whichever worker comes first), one nested run per trial.

Storage (``tune.storage`` or ``--storage``):

- a journal file (the default, ``tuning/optuna.journal``), shared by several processes on one host.
  Their set-up is serialised by an flock under tuning/, and each worker stops once the study holds
  the requested number of finished trials, so workers that start their last trials together may
  add one each beyond it;
- a PostgreSQL URL (``postgresql://user@host:5432/db``), shared by workers on any number of hosts: an
  :class:`optuna.storages.RDBStorage` with heartbeats (``tune.heartbeat_interval``). A trial whose
  worker died (no heartbeat for ``tune.grace_period`` seconds) is marked FAILED by the next live
  worker, its nested MLflow run too, and its parameters are retried as a new trial
  (:class:`optuna.storages.RetryHeartbeatStaleTrialCallback`, at most ``tune.max_retry`` times). The
  study's set-up, its parent run and the start of every trial are serialised across hosts by a
  PostgreSQL advisory lock on the study's name, and a worker starts a trial only while the finished
  plus running trials are fewer than the requested total: the study ends with exactly that many
  finished trials;
- a ``sqlite:///`` URL, on one host (the flock serialises it; sqlite is no place for many workers).
"""

from __future__ import annotations

import copy
import fcntl
import hashlib
import math
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import StringIO
from pathlib import Path
from typing import Any

import mlflow
import optuna
import yaml
from ruamel.yaml import YAML

from binaural_lab import tracking
from binaural_lab.config import ParamError, param
from binaural_lab.paths import resolve, store_root, write_text

PARENT_RUN_ATTR = "mlflow_parent_run_id"
RUN_ATTR = "mlflow_run_id"  # a trial's user attribute: its nested MLflow run (failed with a dead trial)
WORKER_ATTR = "worker"  # a trial's user attribute: host:pid of the worker that runs it
FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
RUNNING = (optuna.trial.TrialState.RUNNING,)


@dataclass
class SearchDim:
    """One searched value: a float or int range (optionally log-scaled) or a list of choices."""

    low: float | None = param(None)
    high: float | None = param(None)
    log: bool = param(False)
    type: str = param("float", choices=("float", "int", "categorical"))
    choices: list[Any] | None = param(None)

    def validate(self, where: str) -> None:
        if self.type == "categorical":
            if not self.choices:
                raise ParamError(f"{where}.choices: a categorical dimension needs a non-empty list")
            return
        if self.low is None or self.high is None:
            raise ParamError(f"{where}: a {self.type} dimension needs both low and high")
        if self.low >= self.high:
            raise ParamError(f"{where}: low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ParamError(f"{where}.low: a log-scaled range must be positive, got {self.low}")

    def extremes(self) -> list[Any]:
        """The values at the ends of the range (every choice of a categorical dimension)."""
        if self.type == "categorical":
            return list(self.choices)
        cast = int if self.type == "int" else float
        return [cast(self.low), cast(self.high)]

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(name, self.choices)
        if self.type == "int":
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, float(self.low), float(self.high), log=self.log)


@dataclass
class PrunerConfig:
    n_startup_trials: int = param(2, ge=0)
    n_warmup_steps: int = param(1, ge=0, doc="epochs reported before a trial may be pruned")


@dataclass
class TuneConfig:
    """The ``tune`` section of params.yaml."""

    storage: str = param("tuning/optuna.journal", doc="journal file (one host) or postgresql:// URL (several hosts)")
    n_trials: int = param(8, ge=1, doc="finished trials the study should hold, over all workers")
    timeout_s: float | None = param(None, gt=0)
    sampler: str = param("tpe", choices=("tpe", "random"))
    epochs: int | None = param(None, ge=1, doc="epochs per trial; None keeps the model's own")
    metric: dict[str, str] = param({}, doc="family -> validation metric to optimise (its direction follows)")
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    spaces: dict[str, dict[str, dict[str, SearchDim]]] = param(
        {}, doc="family -> model -> dotted key of its params block -> range"
    )
    heartbeat_interval: int | None = param(
        30, ge=1, doc="database storage: seconds between a running trial's heartbeats (null: none, no retries)"
    )
    grace_period: int | None = param(
        None, ge=1, doc="seconds without a heartbeat before a trial counts as dead (null: 2 x heartbeat_interval)"
    )
    max_retry: int | None = param(3, ge=0, doc="times a dead trial's parameters are retried (null: no limit)")

    def validate(self, where: str) -> None:
        if self.grace_period is not None and self.heartbeat_interval is None:
            raise ParamError(f"{where}.grace_period: a grace period needs heartbeats; set heartbeat_interval too")
        if self.grace_period is not None and self.grace_period <= self.heartbeat_interval:
            raise ParamError(
                f"{where}.grace_period: {self.grace_period} s must exceed heartbeat_interval "
                f"({self.heartbeat_interval} s), or live trials would be found dead between two heartbeats"
            )
        for family, models in self.spaces.items():
            for model, space in models.items():
                if not space:
                    raise ParamError(f"{where}.spaces.{family}.{model}: declare at least one dotted key and its range")


def set_dotted(block: Mapping[str, Any], values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A deep copy of ``block`` with ``values`` (dotted keys) written in; unknown paths are errors."""
    out = copy.deepcopy(dict(block))
    for key, value in values.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ParamError(f"{where}.{key}: {part!r} is not a section of the params block")
            node = node[part]
        node[parts[-1]] = value
    return out


# --- storage and the lock its workers share -------------------------------------------------------


def is_database(storage: str) -> bool:
    return "://" in storage


def _backend(url: str) -> str:
    return url.partition("://")[0].split("+")[0]


def database_url(url: str) -> str:
    """``url`` with the SQLAlchemy driver the project installs: a bare ``postgresql://`` (or
    ``postgres://``) becomes ``postgresql+psycopg2://``, since SQLAlchemy 2.1 maps the bare scheme to
    psycopg 3, which the ``postgres`` extra does not install."""
    scheme, sep, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        return f"postgresql+psycopg2{sep}{rest}"
    return url


def shown_url(url: str) -> str:
    """``url`` without its password, for messages."""
    import sqlalchemy

    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url.rpartition("@")[2]


def fail_trial_run(study_name: str, trial: optuna.trial.FrozenTrial) -> None:
    """End the nested MLflow run of a trial whose worker died as FAILED, tagged ``optuna_state=FAIL``."""
    run_id = trial.user_attrs.get(RUN_ATTR)
    if run_id is None:  # died before its run started
        return
    try:
        client = mlflow.MlflowClient(tracking.tracking_uri())
        client.set_tag(run_id, "optuna_state", "FAIL")
        client.set_terminated(run_id, status="FAILED")
    except mlflow.exceptions.MlflowException as exc:  # the trial's Optuna state is what counts
        print(
            f"study {study_name}: could not mark MLflow run {run_id} of dead trial {trial.number} FAILED: {exc}",
            file=sys.stderr,
        )


class RetryDeadTrial:
    """The storage's heartbeat-stale trial callback: fail the dead trial's MLflow run, then retry its
    parameters as a new WAITING trial (Optuna's RetryHeartbeatStaleTrialCallback)."""

    def __init__(self, max_retry: int | None):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            self.retry = optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=max_retry)

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        worker = trial.user_attrs.get(WORKER_ATTR, "unknown")
        print(
            f"study {study.study_name}: trial {trial.number} (worker {worker}) sent no heartbeat within the "
            "grace period: marked FAILED; its parameters run again unless tune.max_retry retries were spent",
            file=sys.stderr,
        )
        fail_trial_run(study.study_name, trial)
        self.retry(study, trial)


def storage_for(cfg: TuneConfig | str, root: Path | None = None) -> optuna.storages.BaseStorage:
    """The storage of ``cfg.storage``: an RDB storage with heartbeats (when ``cfg.heartbeat_interval``
    is set) for a database URL, else a journal file resolved from the project root."""
    if isinstance(cfg, str):
        cfg = TuneConfig(storage=cfg)
    if not is_database(cfg.storage):
        path = resolve(cfg.storage, root or store_root())
        path.parent.mkdir(parents=True, exist_ok=True)
        return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
    url = database_url(cfg.storage)
    heartbeat: dict[str, Any] = {}
    if cfg.heartbeat_interval is not None:
        heartbeat = {
            "heartbeat_interval": cfg.heartbeat_interval,
            "grace_period": cfg.grace_period,
            "heartbeat_stale_trial_callback": RetryDeadTrial(cfg.max_retry),
        }
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats are experimental
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True}, **heartbeat)
    except ImportError as exc:
        raise ParamError(
            f"tune.storage: {shown_url(url)} needs its database driver: install the postgres extra "
            f"(pip install -e '.[postgres]'; requirements.lock pins psycopg2-binary) ({exc})"
        ) from exc


@contextmanager
def _flock(path: Path) -> Iterator[Callable[[], None]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        held = [True]

        def release() -> None:
            if held[0]:
                held[0] = False
                fcntl.flock(fh, fcntl.LOCK_UN)

        try:
            yield release
        finally:
            release()


_LOCK_ENGINES: dict[str, Any] = {}


def advisory_key(name: str) -> int:
    """The signed 64-bit key of study ``name``'s advisory lock: the same on every host."""
    digest = hashlib.sha256(f"binaural-lab/optuna-study/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextmanager
def _advisory_lock(url: str, name: str) -> Iterator[Callable[[], None]]:
    """A PostgreSQL transaction-level advisory lock (``pg_advisory_xact_lock``), held on a connection
    of its own: released at commit, on any error (rollback), and by the server when the worker dies
    (its connection closes), so a dead worker never keeps it."""
    import sqlalchemy

    engine = _LOCK_ENGINES.get(url)
    if engine is None:
        engine = _LOCK_ENGINES[url] = sqlalchemy.create_engine(url, pool_pre_ping=True, pool_size=1)
    conn = engine.connect()
    trans = conn.begin()
    state = {"held": True}

    def release() -> None:
        if state["held"]:
            state["held"] = False
            trans.commit()
            conn.close()

    try:
        conn.execute(sqlalchemy.text("SELECT pg_advisory_xact_lock(:key)"), {"key": advisory_key(name)})
        yield release
    finally:
        if state["held"]:
            state["held"] = False
            trans.rollback()
            conn.close()


@contextmanager
def study_lock(storage: str, name: str) -> Iterator[Callable[[], None]]:
    """Serialise study ``name``'s set-up, parent run and trial starts between all its workers.

    Journal file and sqlite (one host): an flock under the project's tuning/. PostgreSQL (any number of
    hosts): an advisory lock in the study's database. Yields ``release()``, which may be called before
    the block ends (it is released on exit at the latest).
    """
    if not is_database(storage) or _backend(storage) == "sqlite":
        with _flock(store_root() / "tuning" / f".{name}.lock") as release:
            yield release
    elif _backend(storage) in ("postgresql", "postgres"):
        with _advisory_lock(database_url(storage), name) as release:
            yield release
    else:
        raise ParamError(
            f"tune.storage: {shown_url(storage)}: workers on several hosts coordinate through a PostgreSQL "
            "advisory lock, so a database storage must be a postgresql:// URL (or sqlite:/// on one host)"
        )


def open_study(name: str, cfg: TuneConfig, direction: str) -> optuna.Study:
    sampler = (
        # unseeded on purpose: workers sharing a study must not propose the same points
        optuna.samplers.TPESampler(n_startup_trials=max(2, cfg.pruner.n_startup_trials))
        if cfg.sampler == "tpe"
        else optuna.samplers.RandomSampler()
    )
    pruner = optuna.pruners.MedianPruner(
        n_startup_trials=cfg.pruner.n_startup_trials, n_warmup_steps=cfg.pruner.n_warmup_steps
    )
    with study_lock(cfg.storage, name):  # the first worker also creates a fresh database's tables
        return optuna.create_study(
            storage=storage_for(cfg),
            study_name=name,
            direction=direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )


def _parent_run(study: optuna.Study, storage: str, family: str, params: Mapping[str, Any]) -> str:
    """The study's parent MLflow run id, created by the first worker of any host, reused by every later one."""
    with study_lock(storage, study.study_name):
        run_id = study.user_attrs.get(PARENT_RUN_ATTR)  # read from the storage: other workers' writes show
        if run_id is None:
            with tracking.stage_run(family, f"study:{study.study_name}", params) as run:
                mlflow.set_tag("optuna_study", study.study_name)
                run_id = run.info.run_id
            study.set_user_attr(PARENT_RUN_ATTR, run_id)
    return run_id


def _tally(study: optuna.Study) -> tuple[int, list[int]]:
    """The finished trials' count and the running trials' numbers, from one read of the storage.

    One read, not one per state: a trial that finishes between two reads would be in neither, and
    a worker counting then would start a trial too many.
    """
    trials = study.get_trials(deepcopy=False)
    return sum(t.state in FINISHED for t in trials), sorted(t.number for t in trials if t.state in RUNNING)


# objective(values, report) -> final metric; report(epoch, metric) may raise optuna.TrialPruned
Objective = Callable[[dict[str, Any], Callable[[int, float, dict[str, float]], None]], float]


def run_study(
    name: str,
    family: str,
    space: Mapping[str, SearchDim],
    objective: Objective,
    cfg: TuneConfig,
    metric: str,
    direction: str,
    n_trials: int | None = None,
    prune_from: int = 0,
) -> optuna.Study:
    """Run (or resume) study ``name`` until it holds ``n_trials`` finished trials over all workers.

    A pruned trial is a normal outcome: its nested MLflow run ends FINISHED with the tag
    ``optuna_state=PRUNED``, and the parent run stays FINISHED. Only a trial that raised an error
    ends its run FAILED (and a dead worker's, once the heartbeat finds it). No trial is pruned before
    epoch ``prune_from`` (from 0), the epoch from which every searched loss term acts.
    """
    target = n_trials or cfg.n_trials
    study = open_study(name, cfg, direction)
    info = {"study": name, "metric": metric, "direction": direction, "n_trials": target}
    parent = _parent_run(study, cfg.storage, family, info)
    mlflow.set_tracking_uri(tracking.tracking_uri())
    worker = f"{socket.gethostname()}:{os.getpid()}"

    def trial_fn(trial: optuna.Trial) -> float:
        values = {key: dim.suggest(trial, key) for key, dim in space.items()}
        frozen = next(t for t in trial.study.get_trials(deepcopy=False, states=RUNNING) if t.number == trial.number)
        retry_of = frozen.system_attrs.get("failed_trial")  # set by RetryHeartbeatStaleTrialCallback
        pruned: optuna.TrialPruned | None = None
        run_name = f"{name}/trial-{trial.number}"
        # the parent run is named, not reopened: a worker killed in a trial cannot leave it RUNNING
        with tracking.stage_run(family, f"trial-{trial.number}", values, parent_run_id=parent, run_name=run_name):
            trial.set_user_attr(WORKER_ATTR, worker)
            if mlflow.active_run() is not None:
                trial.set_user_attr(RUN_ATTR, mlflow.active_run().info.run_id)
            tags = {"optuna_study": name, "optuna_trial": str(trial.number), "optuna_worker": worker}
            if retry_of is not None:
                tags["optuna_retry_of"] = str(retry_of)
            mlflow.set_tags(tags)

            def report(epoch: int, value: float, metrics: dict[str, float]) -> None:
                tracking.log_metrics(metrics, step=epoch + 1)
                if not math.isfinite(value):
                    raise optuna.TrialPruned(f"{metric} is {value} at epoch {epoch + 1}")
                trial.report(value, epoch)
                if epoch >= prune_from and trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {epoch + 1} with {metric}={value:.4g}")

            try:
                value = objective(values, report)
            except optuna.TrialPruned as exc:
                # leave the run through its normal exit, so that it is not marked FAILED
                mlflow.set_tag("optuna_state", "PRUNED")
                pruned = exc
            else:
                mlflow.set_tag("optuna_state", "COMPLETE")
                tracking.log_metrics({f"final_{metric}": value})
        if pruned is not None:
            raise pruned
        return value

    if is_database(cfg.storage) and cfg.heartbeat_interval is not None:  # RUNNING is kept true by heartbeats
        _optimize_exactly(study, trial_fn, target, cfg)
        return study
    done, _ = _tally(study)
    if done < target:
        study.optimize(
            trial_fn,
            n_trials=target - done,
            timeout=cfg.timeout_s,
            # FAILED trials are not counted: a retry of their parameters, or a new trial, replaces them
            callbacks=[optuna.study.MaxTrialsCallback(target, states=FINISHED)],
            catch=(),
        )
    return study


def _optimize_exactly(
    study: optuna.Study, trial_fn: Callable[[optuna.Trial], float], target: int, cfg: TuneConfig
) -> None:
    """Run trials until the study holds ``target`` finished ones, never more, with any number of workers.

    Under the study's lock a worker fails the stale trials (a dead worker's trial becomes FAILED and
    its parameters a WAITING retry), then counts: with ``finished + running < target`` it starts a
    trial (Optuna's ``ask`` takes a WAITING retry first) and releases the lock once that trial is
    RUNNING in the storage; otherwise the last trials run elsewhere and it polls until they end (or
    one of them is found dead and comes back as a retry). Heartbeats make RUNNING trustworthy: a
    trial whose worker died does not stay RUNNING past the grace period.
    """
    deadline = None if cfg.timeout_s is None else time.monotonic() + cfg.timeout_s
    poll = min(5.0, max(0.5, (cfg.heartbeat_interval or 1) / 2))
    waited_for: list[int] | None = None
    held: list[Callable[[], None]] = []  # the release() of the lock this worker holds

    def trial_started(trial: optuna.Trial) -> float:
        held.pop()()  # the trial is RUNNING in the storage: another worker may count it and claim the next
        return trial_fn(trial)

    while deadline is None or time.monotonic() < deadline:
        with study_lock(cfg.storage, study.study_name) as release:
            held[:] = [release]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(study)
            done, numbers = _tally(study)
            if done >= target:
                return
            if done + len(numbers) < target:
                study.optimize(trial_started, n_trials=1, catch=())
                waited_for = None
                continue
        if numbers != waited_for:
            print(
                f"study {study.study_name}: {done}/{target} finished; waiting for trial(s) {numbers} "
                "running on other workers",
                file=sys.stderr,
            )
            waited_for = numbers
        time.sleep(poll)


def export_best(study: optuna.Study, target: str, path: Path) -> dict[str, Any]:
    """Write the best trial's values to YAML: ``{study, target, metric value, params}``."""
    best = study.best_trial
    data = {
        "study": study.study_name,
        "target": target,
        "value": best.value,
        "trial": best.number,
        "params": dict(best.params),
    }
    write_text(path, yaml.safe_dump(data, sort_keys=False))
    return data


def apply_best(best_file: Path, params_file: Path) -> dict[str, Any]:
    """Write the exported best values into ``params_file`` under their target block, keeping comments."""
    if not best_file.is_file():
        raise FileNotFoundError(f"{best_file}: no exported best parameters; run `blab tune` first")
    best = yaml.safe_load(best_file.read_text())
    rt = YAML()
    rt.preserve_quotes = True
    doc = rt.load(params_file.read_text())
    node = doc
    for part in best["target"].split("."):
        if part not in node:
            raise ParamError(f"{params_file}: section {best['target']!r} not found")
        node = node[part]
    for key, value in best["params"].items():
        leaf = node
        parts = key.split(".")
        for part in parts[:-1]:
            leaf = leaf.setdefault(part, {})
        leaf[parts[-1]] = value
    buf = StringIO()
    rt.dump(doc, buf)
    write_text(params_file, buf.getvalue())
    return best
