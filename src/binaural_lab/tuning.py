"""Optuna studies over params declared in params.yaml.

A search space maps dotted keys of a params block (``train.lr``, ``loss.l_edge``) to ranges. Each
trial trains with the sampled values on the training split, reports a held-out validation metric
after every epoch (never the training loss) and may be pruned. Storage defaults to a journal file
under tuning/ that several processes on one host share; any database URL (PostgreSQL across hosts)
is accepted. One parent MLflow run per study (resumed when the study is), one nested run per trial.
"""

from __future__ import annotations

import copy
import fcntl
import math
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

    storage: str = param("tuning/optuna.journal", doc="journal file (one host) or database URL")
    n_trials: int = param(8, ge=1, doc="finished trials the study should hold, over all workers")
    timeout_s: float | None = param(None, gt=0)
    sampler: str = param("tpe", choices=("tpe", "random"))
    epochs: int | None = param(None, ge=1, doc="epochs per trial; None keeps the model's own")
    metric: dict[str, str] = param({}, doc="family -> validation metric to optimise (its direction follows)")
    pruner: PrunerConfig = field(default_factory=PrunerConfig)
    spaces: dict[str, dict[str, dict[str, SearchDim]]] = param(
        {}, doc="family -> model -> dotted key of its params block -> range"
    )

    def validate(self, where: str) -> None:
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


def storage_for(url_or_path: str, root: Path | None = None) -> optuna.storages.BaseStorage | str:
    """A database URL as it is, or a journal file resolved from the project root."""
    if "://" in url_or_path:
        return url_or_path
    path = resolve(url_or_path, root or store_root())
    path.parent.mkdir(parents=True, exist_ok=True)
    backend = optuna.storages.journal.JournalFileBackend(str(path))
    return optuna.storages.JournalStorage(backend)


@contextmanager
def _host_lock(name: str) -> Iterator[None]:
    """Serialise study set-up between workers on this host (parent-run creation)."""
    lock_dir = store_root() / "tuning"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f".{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


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
    with _host_lock(name):
        return optuna.create_study(
            storage=storage_for(cfg.storage),
            study_name=name,
            direction=direction,
            sampler=sampler,
            pruner=pruner,
            load_if_exists=True,
        )


def _parent_run(study: optuna.Study, family: str, params: Mapping[str, Any]) -> str:
    """The study's parent MLflow run id, created by the first worker and reused by every later one."""
    with _host_lock(study.study_name):
        run_id = study.user_attrs.get(PARENT_RUN_ATTR)  # read from the storage: other workers' writes show
        if run_id is None:
            with tracking.stage_run(family, f"study:{study.study_name}", params) as run:
                mlflow.set_tag("optuna_study", study.study_name)
                run_id = run.info.run_id
            study.set_user_attr(PARENT_RUN_ATTR, run_id)
    return run_id


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
    ends its runs FAILED. No trial is pruned before epoch ``prune_from`` (from 0), the epoch from
    which every searched loss term acts.
    """
    target = n_trials or cfg.n_trials
    study = open_study(name, cfg, direction)
    parent = _parent_run(study, family, {"study": name, "metric": metric, "direction": direction, "n_trials": target})
    mlflow.set_tracking_uri(tracking.tracking_uri())

    def trial_fn(trial: optuna.Trial) -> float:
        values = {key: dim.suggest(trial, key) for key, dim in space.items()}
        pruned: optuna.TrialPruned | None = None
        with (
            mlflow.start_run(run_id=parent),
            tracking.stage_run(
                family, f"trial-{trial.number}", values, nested=True, run_name=f"{name}/trial-{trial.number}"
            ),
        ):
            mlflow.set_tags({"optuna_study": name, "optuna_trial": str(trial.number)})

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
                # leave both runs through their normal exit, so neither is marked FAILED
                mlflow.set_tag("optuna_state", "PRUNED")
                pruned = exc
            else:
                mlflow.set_tag("optuna_state", "COMPLETE")
                tracking.log_metrics({f"final_{metric}": value})
        if pruned is not None:
            raise pruned
        return value

    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    done = len(study.get_trials(deepcopy=False, states=finished))
    if done < target:
        study.optimize(
            trial_fn,
            n_trials=target - done,
            timeout=cfg.timeout_s,
            callbacks=[optuna.study.MaxTrialsCallback(target, states=finished)],
            catch=(),
        )
    return study


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
