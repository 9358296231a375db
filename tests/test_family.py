"""Shared family machinery: datasets as params, comparison tables, chunked scoring, model cards."""

import json

import numpy as np
import pytest
import torch

from binaural_lab.config import ParamError
from binaural_lab.data.datasets import dataset
from binaural_lab.depth import REGISTRY
from binaural_lab.family import ComparisonSpec, load_model_file, save_model, score_in_chunks, write_comparison
from binaural_lab.metrics.depth import DepthMetricAccumulator, depth_metrics


def test_a_dataset_slot_names_its_folders_and_checks_its_keys(tmp_path, monkeypatch):
    monkeypatch.setenv("BLAB_ROOT", str(tmp_path))
    params = {
        "datasets": {
            "echoes": {"name": "batvision-v2", "sample_rate": 44100, "max_depth_m": 30.0, "depth_kind": "planar"}
        }
    }
    data = dataset(params, "echoes")
    assert data.raw == tmp_path / "data/raw/batvision-v2"
    assert data.features == tmp_path / "data/features/batvision-v2"
    params["datasets"]["echoes"]["depth_kind"] = "radial"
    with pytest.raises(ParamError, match=r"datasets.echoes.depth_kind: 'radial' is not one of"):
        dataset(params, "echoes")
    del params["datasets"]["echoes"]["depth_kind"]
    with pytest.raises(ParamError, match=r"datasets.echoes.depth_kind: required for a depth dataset"):
        dataset(params, "echoes")
    with pytest.raises(ParamError, match=r"datasets.binaural.*missing"):
        dataset(params, "binaural")
    with pytest.raises(ParamError, match=r"datasets.binaural.name: '\.\./x' must be"):
        dataset({"datasets": {"binaural": {"name": "../x"}}}, "binaural")


def _metrics(tmp_path, model: str, rmse: float, delta1: float, convention: str = "c") -> None:
    (tmp_path / model).mkdir()
    data = {
        "model": model,
        "convention": convention,
        "rmse": rmse,
        "delta1": delta1,
        "n_parameters": 10,
        "train_seconds": 1.0,
    }
    (tmp_path / model / "metrics.json").write_text(json.dumps(data))


SPEC = ComparisonSpec(
    "t", metrics=("rmse", "delta1"), key="rmse", baseline="mean", higher_is_better=frozenset({"delta1"})
)


def test_comparison_puts_the_baseline_first_ranks_the_rest_and_states_the_change(tmp_path):
    _metrics(tmp_path, "b", 0.5, 0.7)
    _metrics(tmp_path, "mean", 2.0, 0.1)
    _metrics(tmp_path, "a", 1.5, 0.4)
    rows = write_comparison(tmp_path, SPEC)
    assert [r["model"] for r in rows] == ["mean", "b", "a"]
    assert [r["rmse_vs_mean_pct"] for r in rows] == [0.0, -75.0, -25.0]
    md = (tmp_path / "compare.md").read_text()
    assert "| b | 0.5000 | 0.7000 | -75.0 % |" in md and "Metric convention: c." in md
    ranked_by_delta = write_comparison(
        tmp_path, ComparisonSpec("t", ("rmse", "delta1"), "delta1", "mean", frozenset({"delta1"}))
    )
    assert [r["model"] for r in ranked_by_delta] == ["mean", "b", "a"]  # higher delta1 first


def test_comparison_refuses_metrics_of_different_conventions(tmp_path):
    _metrics(tmp_path, "mean", 2.0, 0.1, convention="planar")
    _metrics(tmp_path, "a", 1.5, 0.4, convention="ray")
    with pytest.raises(ValueError, match="different conventions"):
        write_comparison(tmp_path, SPEC)


def test_chunked_scoring_equals_scoring_at_once():
    rng = np.random.default_rng(0)
    gt = rng.uniform(0.5, 8, (37, 6, 6))
    gt[3, :2] = 0
    pred = gt * rng.uniform(0.8, 1.2, gt.shape)
    chunked = score_in_chunks(DepthMetricAccumulator(), gt, lambda rows: pred[rows], size=5)
    whole = depth_metrics(pred, gt)
    assert chunked == pytest.approx(whole)


def test_model_cards_round_trip_without_unpickling(tmp_path):
    model = REGISTRY.build_model("unet", {"ngf": 4}, input_size=16, max_depth=10.0)
    card = {"name": "unet", "params": {"model": {"ngf": 4}}, "stats": {"mean": np.float64(1.5).item()}}
    save_model(tmp_path / "model.pt", model, card, [{"epoch": 1, "val_rmse": 0.5}])
    blob = load_model_file(tmp_path / "model.pt")
    assert blob["card"] == card and blob["history"][0]["val_rmse"] == 0.5
    assert all(torch.equal(blob["state_dict"][k], v) for k, v in model.state_dict().items())
    with pytest.raises(FileNotFoundError, match="missing.pt: trained model not found"):
        load_model_file(tmp_path / "missing.pt")
