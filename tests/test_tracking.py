"""MLflow tracking into a temporary sqlite store: params, metrics, tags, artifacts."""

import mlflow
import torch

from binaural_lab import tracking
from binaural_lab.paths import hash_files


def test_stage_run_logs_params_metrics_tags_and_model(mlflow_store, tmp_path, monkeypatch):
    data = tmp_path / "features"
    data.mkdir()
    (data / "meta.json").write_text("{}")
    monkeypatch.setenv("DVC_EXP_NAME", "exp-1")
    with tracking.stage_run(
        "depth", "train_depth@unet", {"train": {"lr": 0.01, "betas": [0.9, 0.99]}}, data=[data]
    ) as run:
        tracking.log_metrics({"val_rmse": 1.5}, step=1)
        tracking.log_metrics({"val_rmse": 1.2}, step=2)
        tracking.log_model_state({"w": torch.ones(2)}, {"name": "unet"})
    got = mlflow.get_run(run.info.run_id)
    assert got.data.params["train.lr"] == "0.01"
    assert got.data.params["train.betas"] == "[0.9, 0.99]"
    assert got.data.metrics["val_rmse"] == 1.2
    tags = got.data.tags
    assert tags["dvc_stage"] == "train_depth@unet" and tags["dvc_exp_name"] == "exp-1"
    assert len(tags["dataset_fingerprint"]) == 16 and tags["git_dirty"] in ("true", "false")
    exp = mlflow.get_experiment(got.info.experiment_id)
    assert exp.name == "binaural-lab/depth"
    names = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "model")}
    assert names == {"model/state_dict.pt", "model/config.json"}


def test_default_store_is_absolute_under_the_project_root(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("BLAB_ROOT", str(tmp_path))
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    assert tracking.artifact_root() == tmp_path / "mlruns" / "artifacts"


def test_fingerprint_changes_with_content(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"1")
    first = hash_files([f])
    f.write_bytes(b"2")
    assert hash_files([f]) != first


def test_queued_dvc_experiments_share_the_original_store(tmp_path, monkeypatch):
    """A queued or temporary `dvc exp run` works in a copy under .dvc/tmp/exps: it must not get its own store."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("BLAB_ROOT", raising=False)
    copy = tmp_path / "proj" / ".dvc" / "tmp" / "exps" / "tmpab12cd"
    copy.mkdir(parents=True)
    (copy / "params.yaml").write_text("base: {}\n")
    monkeypatch.chdir(copy)
    assert tracking.tracking_uri() == f"sqlite:///{tmp_path / 'proj' / 'mlruns' / 'mlflow.db'}"
