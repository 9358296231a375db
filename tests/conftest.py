"""Shared fixtures: every test that tracks writes to a temporary MLflow sqlite store; tiny models run on one thread."""

import pytest


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch):
    """Point MLflow at a fresh sqlite store in tmp_path; returns its tracking URI."""
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("BLAB_ROOT", str(tmp_path))
    mlflow.set_tracking_uri(uri)
    yield uri
    while mlflow.active_run() is not None:
        mlflow.end_run()


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: one thread is fastest on a shared 2-core machine (``pytestmark`` of a module)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
