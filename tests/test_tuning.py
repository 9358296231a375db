"""Optuna studies against a real journal storage and a real MLflow sqlite store.

The objectives here are stand-ins that report chosen values, so pruning and the direction can be
forced; the end-to-end studies of real models run in test_pipeline.py.
"""

import mlflow
import optuna
import pytest

from binaural_lab.config import ParamError, parse
from binaural_lab.depth import FAMILY, HIGHER_IS_BETTER, REGISTRY
from binaural_lab.family import check_searched_terms_active, direction
from binaural_lab.tuning import SearchDim, TuneConfig, run_study


def _config(tmp_path, **extra) -> TuneConfig:
    data = {
        "storage": str(tmp_path / "optuna.journal"),
        "sampler": "random",
        "pruner": {"n_startup_trials": 1, "n_warmup_steps": 0},
        **extra,
    }
    return parse(TuneConfig, data, "tune")


SPACE = {"train.lr": parse(SearchDim, {"low": 1e-4, "high": 1e-2, "log": True}, "space")}


def _runs(study_name: str):
    runs = mlflow.search_runs(
        experiment_names=["binaural-lab/depth"], filter_string=f"tags.optuna_study = '{study_name}'"
    )
    return runs[runs["tags.mlflow.parentRunId"].isna()], runs[runs["tags.mlflow.parentRunId"].notna()]


def test_a_pruned_last_trial_leaves_the_parent_run_finished(mlflow_store, tmp_path):
    values = iter([1.0, 1.0, 50.0])  # the third trial is far worse than the median: pruned at its first report

    def objective(params, report):
        value = next(values)
        for epoch in range(3):
            report(epoch, value, {"val_rmse": value})
        return value

    study = run_study(
        "depth-toy", "depth", SPACE, objective, _config(tmp_path), "rmse", "minimize", n_trials=3, prune_from=1
    )
    states = [t.state for t in study.trials]
    assert states[-1] == optuna.trial.TrialState.PRUNED and states.count(optuna.trial.TrialState.COMPLETE) == 2
    # not pruned at epoch 0 (before every searched term acts), pruned at the first epoch it may be
    assert sorted(study.trials[-1].intermediate_values) == [0, 1]
    parents, children = _runs("depth-toy")
    assert len(parents) == 1 and parents["status"].iloc[0] == "FINISHED"
    pruned = children[children["tags.optuna_trial"] == str(study.trials[-1].number)]
    assert pruned["tags.optuna_state"].iloc[0] == "PRUNED" and pruned["status"].iloc[0] == "FINISHED"
    assert set(children["status"]) == {"FINISHED"}


def test_a_failing_trial_still_fails_its_runs(mlflow_store, tmp_path):
    def objective(params, report):
        raise RuntimeError("diverged")

    with pytest.raises(RuntimeError, match="diverged"):
        run_study("depth-broken", "depth", SPACE, objective, _config(tmp_path), "rmse", "minimize", n_trials=1)
    _, children = _runs("depth-broken")
    assert list(children["status"]) == ["FAILED"]


def test_a_trial_that_ends_while_a_worker_counts_is_counted_once(mlflow_store, tmp_path, monkeypatch):
    """Another worker's trial ends right after this worker's first read of the study: that read saw
    it running, so the worker waits for it and starts nothing (a study of 2 ends with 2 trials)."""
    cfg = _config(tmp_path, storage=f"sqlite:///{tmp_path / 'optuna.db'}", heartbeat_interval=1)
    other = optuna.create_study(study_name="depth-race", storage=cfg.storage)  # the other worker's view
    other.tell(other.ask(), 1.0)
    theirs = other.ask()  # running on the other worker (no heartbeat yet: not stale)
    read = optuna.storages._CachedStorage.get_all_trials
    ended: list[bool] = []

    def read_then_end_theirs(self, *args, **kwargs):
        trials = read(self, *args, **kwargs)
        if not ended:
            ended.append(True)
            other.tell(theirs, 2.0)
        return trials

    monkeypatch.setattr(optuna.storages._CachedStorage, "get_all_trials", read_then_end_theirs)
    ran: list[dict] = []
    study = run_study(
        "depth-race", "depth", SPACE, lambda params, report: ran.append(params) or 0.5, cfg, "rmse", "minimize", 2
    )
    assert ended and not ran
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE] * 2


@pytest.mark.parametrize(("metric", "best"), [("delta1", 0.9), ("rmse", 0.2)])
def test_the_direction_follows_the_metric(mlflow_store, tmp_path, metric, best):
    values = iter([0.2, 0.9, 0.5])
    cfg = _config(tmp_path, pruner={"n_startup_trials": 10, "n_warmup_steps": 0})
    study = run_study(
        f"depth-{metric}",
        "depth",
        SPACE,
        lambda params, report: next(values),
        cfg,
        metric,
        direction(metric, HIGHER_IS_BETTER),
        n_trials=3,
    )
    assert study.best_value == best  # delta1 is better when higher, rmse when lower


def _space(**dims) -> dict:
    return {key: parse(SearchDim, dim, key) for key, dim in dims.items()}


def test_a_study_whose_searched_term_would_mostly_be_off_is_refused():
    block = {"loss": {"curriculum": "adaptive", "edge_from": 0.25, "smooth_from": 0.75}}
    space = _space(**{"loss.l_smooth": {"low": 0.01, "high": 1.0, "log": True}})
    context = FAMILY.loss_context({"datasets": {"echoes": {"name": "e", "max_depth_m": 10.0, "depth_kind": "planar"}}})
    # smoothness from 75 % of the run: off in 4 of 6 trial epochs
    with pytest.raises(ParamError, match=r"tune.spaces.depth.binaural_attention.loss.l_smooth: .* off in 4 of the 6"):
        check_searched_terms_active(REGISTRY, "binaural_attention", block, space, 6, context)
    block["loss"]["smooth_from"] = 0.5  # off in 3 of 6: half the trial, allowed; trials are pruned from epoch 3
    assert check_searched_terms_active(REGISTRY, "binaural_attention", block, space, 6, context) == 3
    # a searched value of 0 switches a term off whatever the curriculum
    zero = _space(**{"loss.l_edge": {"low": 0.0, "high": 1.0}})
    with pytest.raises(ParamError, match="l_edge=0.0"):
        check_searched_terms_active(REGISTRY, "binaural_attention", block, zero, 6, context)
    # keys that are not weights (a kernel size) are not checked
    kernel = _space(**{"loss.lowpass_kernel": {"type": "int", "low": 2, "high": 16}})
    assert check_searched_terms_active(REGISTRY, "base_residual", {"loss": {}}, kernel, 6, context) == 0
