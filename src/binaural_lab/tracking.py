"""MLflow tracking: one experiment per model family, one run per stage execution.

The store is a sqlite database with artifacts beside it, both under ``mlruns/`` of the project root
(absolute paths, so queued DVC experiments and parallel Optuna workers share it), unless
MLFLOW_TRACKING_URI is set. With a tracking server (``http://host:port``, started with
``--serve-artifacts``) the server chooses the experiments' artifact location, so every host uploads
its models, figures and WAVs through it; with any other store they go under the project's
``mlruns/artifacts``. Models are logged as state-dict artifacts plus their config, never through
``mlflow.pytorch.log_model`` (its torch.export default breaks on weight norm and samplers).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import mlflow

from binaural_lab.config import flatten
from binaural_lab.paths import hash_files, store_root

STORE_DIR = "mlruns"
EXPERIMENT_PREFIX = "binaural-lab"


def tracking_uri(root: Path | None = None) -> str:
    """MLFLOW_TRACKING_URI when set, else the project's sqlite store."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    store = (root or store_root()) / STORE_DIR
    store.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{store / 'mlflow.db'}"


def artifact_root(root: Path | None = None) -> Path:
    return (root or store_root()) / STORE_DIR / "artifacts"


def is_server(uri: str) -> bool:
    """Whether ``uri`` is a tracking server, which stores (or proxies) the artifacts itself."""
    return uri.split("://", 1)[0].lower() in ("http", "https")


def experiment_id(family: str) -> str:
    """Get or create the experiment ``binaural-lab/<family>``: its artifacts where a tracking server
    puts them (``mlflow-artifacts:/`` with ``--serve-artifacts``), else under mlruns/artifacts."""
    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    name = f"{EXPERIMENT_PREFIX}/{family}"
    exp = mlflow.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not is_server(uri):
        folder = artifact_root() / family
        folder.mkdir(parents=True, exist_ok=True)
        location = folder.as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        # created meanwhile by a worker of this or another host
        return mlflow.get_experiment_by_name(name).experiment_id


def _git(*args: str) -> str:
    try:
        out = subprocess.run(["git", *args], capture_output=True, text=True, timeout=10, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def run_tags(stage: str, data: list[Path] | None = None) -> dict[str, str]:
    """Tags that let a run be traced back: git commit, dirty tree, DVC stage and experiment, data."""
    tags = {
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "dvc_stage": os.environ.get("DVC_STAGE", stage),
        "dvc_exp_name": os.environ.get("DVC_EXP_NAME", ""),
    }
    if data:
        tags["dataset_fingerprint"] = hash_files(data)
    return tags


@contextlib.contextmanager
def stage_run(
    family: str,
    stage: str,
    params: Mapping[str, Any],
    data: list[Path] | None = None,
    nested: bool = False,
    run_name: str | None = None,
    parent_run_id: str | None = None,
) -> Iterator[mlflow.ActiveRun | None]:
    """Start a run for one stage execution, log its params (flattened) and tags, end it on exit.

    ``nested`` nests it under the active run; ``parent_run_id`` under that run, which stays as it is
    (not reopened, so a process killed inside cannot leave the parent RUNNING). Under torchrun only
    the job's rank 0 (RANK, the global rank, on whichever node) tracks: other ranks get ``None`` and
    every ``log_*`` is a no-op there.
    """
    if int(os.environ.get("RANK", "0")) != 0:
        yield None
        return
    exp = experiment_id(family)
    nest = nested or parent_run_id is not None
    with mlflow.start_run(
        experiment_id=exp, run_name=run_name or stage, nested=nest, parent_run_id=parent_run_id
    ) as run:
        mlflow.set_tags(run_tags(stage, data))
        log_params(params)
        yield run


def log_params(params: Mapping[str, Any]) -> None:
    flat = {k: json.dumps(v) if isinstance(v, list | tuple) else v for k, v in flatten(params).items()}
    if flat and mlflow.active_run() is not None:
        mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})


def log_metrics(metrics: Mapping[str, float], step: int | None = None, prefix: str = "") -> None:
    clean = {f"{prefix}{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    if clean and mlflow.active_run() is not None:
        mlflow.log_metrics(clean, step=step)


def log_model_state(state_dict: Mapping[str, Any], config: Mapping[str, Any], name: str = "model") -> None:
    """Log a model as ``<name>/state_dict.pt`` plus ``<name>/config.json`` artifacts."""
    import torch

    if mlflow.active_run() is None:
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(dict(state_dict), Path(tmp) / "state_dict.pt")
        (Path(tmp) / "config.json").write_text(json.dumps(config, indent=2, default=str))
        mlflow.log_artifacts(tmp, artifact_path=name)


def log_artifact(path: Path, artifact_path: str | None = None) -> None:
    if mlflow.active_run() is not None and Path(path).exists():
        mlflow.log_artifact(str(path), artifact_path=artifact_path)


ARTIFACT_FOLDERS = {".png": "figures", ".wav": "examples"}  # by suffix; anything else at the run's root


def log_outputs(out: Mapping[str, Any]) -> None:
    """Log what an evaluation returned: ``metrics`` as ``test_<key>``, ``files`` as artifacts."""
    log_metrics(out["metrics"], prefix="test_")
    for path in out["files"]:
        log_artifact(path, ARTIFACT_FOLDERS.get(path.suffix.lower()))
