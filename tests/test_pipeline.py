"""End to end on a tiny params set: a real `dvc repro` in a temporary git repo, then the CLI on it.

The project is copied (dvc.yaml, stages/, src/, pipelines/) into a fresh git repository with DVC
initialised, the `tiny` pipeline is made active with `blab pipeline use`, and MLflow writes to the
project's own default store (mlruns/ under the temporary root).
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import optuna
import pandas as pd
import pytest
import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow

SPLITS = ("train", "val", "test")
CONVENTIONS = ("gao", "diffbinaural")
MODALITIES = [f"{image}-{depth}" for image in ("image", "no_image") for depth in ("depth", "no_depth")]
VOCODED = ("vocoder_truth", "diffbinaural_pretrained", "diffbinaural", "griffin_lim")  # test split only
BINAURAL_METHODS = ("mono", "mono2binaural", *(f"depth_infused-{m}" for m in MODALITIES), *VOCODED)
BINAURAL_STAGES = {
    "train_binaural@mono2binaural",
    "evaluate_binaural@mono2binaural",
    *(f"{verb}_depth_infused@{m}" for verb in ("train", "evaluate") for m in MODALITIES),
    *(f"evaluate_vocoded@{m}" for m in VOCODED),
    "baseline_binaural",
    "compare_binaural",
}
# after new stage-1 mels: the WAVs made from them change; those of the true mels are found unchanged and
# their evaluations are not rerun
AFTER_STAGE1 = {
    "vocode",
    "evaluate_vocoded@diffbinaural_pretrained",
    "evaluate_vocoded@diffbinaural",
    "compare_binaural",
    "listen_binaural",
}


def run(cmd: list[str], cwd: Path, check: bool = True, **kw) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BLAB_ROOT")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def init_project(root: Path) -> Path:
    """A copy of the project's code and DVC pipeline in ``root``, a fresh git + DVC repository, no params."""
    for item in ("dvc.yaml", "stages", "src", "pipelines", ".gitignore", ".dvcignore"):
        src = REPO / item
        if src.is_dir():
            shutil.copytree(src, root / item, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif src.exists():
            shutil.copy2(src, root / item)
    run(["git", "init", "-q"], root)
    run(["git", "config", "user.email", "test@example.com"], root)
    run(["git", "config", "user.name", "test"], root)
    run(["dvc", "init", "-q"], root)
    run(["dvc", "config", "core.analytics", "false"], root)
    return root


def tiny_project(root: Path) -> Path:
    """:func:`init_project` with the tiny pipeline as params.yaml, all of it committed."""
    init_project(root)
    run(["blab", "pipeline", "use", "tiny"], root)
    run(["git", "add", "-A"], root)
    run(["git", "commit", "-qm", "tiny project"], root)
    return root


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tiny_project(tmp_path_factory.mktemp("project"))
    run(["dvc", "repro"], root)
    return root


def commit(project: Path, message: str) -> None:
    """Commit the workspace (an earlier experiment's results too): an experiment starts from HEAD."""
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", message, "--allow-empty"], project)


def ran_stages(dvc_output: str) -> set[str]:
    return {line.split("'")[1] for line in dvc_output.splitlines() if line.startswith("Running stage")}


def split_ids(project: Path, split: str) -> list[str]:
    """The sample ids of a split of the binaural dataset, in the order of its feature shards."""
    index = project / "data/features/synthetic-binaural" / split / "index.parquet"
    return pd.read_parquet(index)["sample_id"].tolist()


def manifest(project: Path) -> pd.DataFrame:
    return pd.read_parquet(project / "data/prepared/synthetic-binaural/manifest.parquet").set_index("sample_id")


def binaural_runs(project: Path) -> pd.DataFrame:
    """Every run of the binaural experiment, newest first."""
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    return mlflow.search_runs(experiment_names=["binaural-lab/binaural"], order_by=["start_time DESC"])


def test_repro_writes_every_report_and_tracks_runs(project):
    compare = json.loads((project / "reports/depth/compare.json").read_text())
    assert {r["model"] for r in compare["rows"]} == {"mean", "unet", "base_residual", "binaural_attention"}
    metrics = json.loads((project / "reports/depth/unet/metrics.json").read_text())
    assert set(metrics) >= {"rmse", "abs_rel", "delta1", "delta2", "delta3", "log10", "mae", "convention"}
    assert metrics["depth_kind"] == "planar" and "planar depth" in metrics["convention"]
    assert (project / "reports/depth/unet/figures/examples.png").stat().st_size > 1000
    assert (project / "data/features/synthetic-binaural/train/mel.npy").is_file()
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["binaural-lab/depth"])
    assert {"train_depth@unet", "evaluate_depth@unet", "baseline_depth"} <= set(runs["tags.dvc_stage"])
    # every loss term's weight is logged per epoch; with the tiny 2-epoch run the smoothness term
    # of the adaptive curriculum (from half of the run) acts in the second epoch
    train = runs[runs["tags.dvc_stage"] == "train_depth@binaural_attention"].iloc[0]
    history = mlflow.MlflowClient().get_metric_history(train["run_id"], "loss_weight/l_smooth")
    assert [m.value for m in sorted(history, key=lambda m: m.step)] == [0.0, 0.1]
    shown = run(["dvc", "metrics", "show", "--json"], project).stdout
    assert "reports/depth/unet/metrics.json" in shown


def test_repro_writes_binaural_wavs_metrics_comparison_and_runs(project):
    compare = json.loads((project / "reports/binaural/compare.json").read_text())
    assert {(r["model"], r["convention"]) for r in compare["rows"]} == {
        (m, c) for m in BINAURAL_METHODS for c in CONVENTIONS
    }
    assert set(compare["conventions"]) == set(CONVENTIONS)
    headings = (project / "reports/binaural/compare.md").read_text().splitlines()
    assert "## gao" in headings and "## diffbinaural" in headings
    lengths = manifest(project)["num_samples"]
    test_ids = split_ids(project, "test")
    for method in BINAURAL_METHODS:
        splits = ("test",) if method in VOCODED else SPLITS
        assert sorted(p.name for p in (project / "outputs/binaural" / method).iterdir() if p.is_dir()) == sorted(splits)
        for split in splits:
            folder = project / "outputs/binaural" / method / split
            ids = split_ids(project, split)
            assert sorted(p.name for p in folder.iterdir()) == sorted(f"{i}.wav" for i in ids)
            for sample_id in ids:
                audio, sr = sf.read(folder / f"{sample_id}.wav", dtype="float32", always_2d=True)
                assert sr == 22050 and audio.shape == (lengths[sample_id], 2), f"{method}/{split}/{sample_id}"
                # the mono copy has the same signal in both ears; a learned method adds its L - R half to one
                # ear and takes it from the other
                same = np.array_equal(audio[:, 0], audio[:, 1])
                assert same == (method == "mono"), f"{method}/{split}/{sample_id}: left == right is {same}"
        for conv in CONVENTIONS:
            metrics = json.loads((project / f"reports/binaural/{method}/metrics_{conv}.json").read_text())
            assert metrics["model"] == method and metrics["split"] == "test" and metrics["convention"] == conv
            assert metrics["convention_description"] == compare["conventions"][conv]
            assert metrics["n_clips"] == len(test_ids) and math.isfinite(metrics["stft"])
    runs = binaural_runs(project)
    assert BINAURAL_STAGES <= set(runs["tags.dvc_stage"])
    assert set(runs[runs["tags.dvc_stage"].isin(BINAURAL_STAGES)]["status"]) == {"FINISHED"}
    client = mlflow.MlflowClient()
    evaluate = runs[runs["tags.dvc_stage"] == "evaluate_binaural@mono2binaural"].iloc[0]
    examples = [a.path for a in client.list_artifacts(evaluate["run_id"], "examples")]
    n_examples = yaml.safe_load((project / "params.yaml").read_text())["binauralize"]["example_wavs"]
    assert len(examples) == min(n_examples, len(test_ids)) and all(p.endswith(".wav") for p in examples)
    assert {Path(p).stem for p in examples} <= set(test_ids)
    figures = [a.path for a in client.list_artifacts(evaluate["run_id"], "figures")]
    assert "figures/examples.png" in figures and all(p.endswith(".png") for p in figures)
    gao = json.loads((project / "reports/binaural/mono2binaural/metrics_gao.json").read_text())
    assert evaluate["metrics.test_gao_stft"] == pytest.approx(gao["stft"], rel=1e-12)
    # the depth-infused network with an image draws its attention maps as well
    full = runs[runs["tags.dvc_stage"] == "evaluate_depth_infused@image-depth"].iloc[0]
    figures = [Path(a.path).name for a in client.list_artifacts(full["run_id"], "figures")]
    assert "examples.png" in figures and any(f.startswith("attention_") for f in figures)


def test_repro_generates_the_mels_of_every_split_and_scores_them(project):
    """The stage-1 contract with the vocoder: per split, shards of [n, 2, n_mels, T] in the features' log-mel
    units, rows mapped to sample ids in the features' order, frame counts equal to the ground truth's."""
    for split in SPLITS:
        truth = np.load(project / "data/features/synthetic-binaural" / split / "mel.npy")
        folder = project / "outputs/mels/synthetic-binaural" / split
        index = pd.read_parquet(folder / "index.parquet")
        assert index["sample_id"].tolist() == split_ids(project, split)
        assert (index["n_frames"] == truth.shape[-1]).all()
        shards = {k: np.load(folder / f"mel-{k:05d}.npy") for k in sorted(set(index["shard"]))}
        mels = np.stack([shards[k][r] for k, r in zip(index["shard"], index["row"], strict=True)])
        assert mels.shape == (len(truth), 2, truth.shape[2], truth.shape[3]) and np.isfinite(mels).all()
        assert mels.min() >= -12.0 - 1e-5 and mels.max() <= 2.5 + 1e-5  # the model's clamp, in log-mel units
        assert not (folder / "progress.json").exists()
    metrics = json.loads((project / "reports/diffusion/diffbinaural/metrics.json").read_text())
    test_ids = split_ids(project, "test")
    assert metrics["convention"] == "mel" and metrics["split"] == "test" and metrics["n_clips"] == len(test_ids)
    for method in ("generated", "mono"):
        assert math.isfinite(metrics[f"{method}_mel_rmse"]) and 0 <= metrics[f"{method}_sign_agreement"] <= 1
    assert metrics["mono_sign_agreement"] == 0  # equal ears have no level difference to agree with
    per_clip = pd.read_csv(project / "reports/diffusion/diffbinaural/per_clip.csv")
    assert per_clip["sample_id"].tolist() == test_ids
    assert metrics["generated_mel_rmse"] == pytest.approx(per_clip["generated_mel_rmse"].mean())
    assert (project / "reports/diffusion/diffbinaural/figures/examples.png").stat().st_size > 1000
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["binaural-lab/diffusion"])
    assert {"train_diffusion", "generate_mels", "evaluate_mels"} <= set(runs["tags.dvc_stage"])
    train = runs[runs["tags.dvc_stage"] == "train_diffusion"].iloc[0]
    assert math.isfinite(train["metrics.val_denoise_loss"]) and math.isfinite(train["metrics.val_mel_rmse"])
    figures = [a.path for a in mlflow.MlflowClient().list_artifacts(train["run_id"], "figures/training")]
    assert any(p.endswith("examples.png") for p in figures)


def test_a_sampling_param_reruns_generation_and_evaluation_not_training(project):
    commit(project, "before the guidance experiment")
    model = (project / "models/diffusion/diffbinaural/model.pt").read_bytes()
    before = np.load(project / "outputs/mels/synthetic-binaural/test/mel-00000.npy")
    out = run(["dvc", "exp", "run", "-S", "generate_mels.guidance_scale=2.0"], project).stdout
    # the vocoder's fine-tune learns from the generated mels: it reruns; neither training before it does
    assert ran_stages(out) == {"generate_mels", "evaluate_mels", "finetune_vocoder", *AFTER_STAGE1}
    assert (project / "models/diffusion/diffbinaural/model.pt").read_bytes() == model
    after = np.load(project / "outputs/mels/synthetic-binaural/test/mel-00000.npy")
    assert after.shape == before.shape and not np.array_equal(after, before)
    meta = json.loads((project / "outputs/mels/synthetic-binaural/test/meta.json").read_text())
    assert meta["sampling"]["guidance_scale"] == 2.0


def test_repro_trains_the_vocoder_and_vocodes_the_test_split(project):
    history = pd.read_csv(project / "reports/vocoder/bigvgan/history.csv")
    assert {"val_mel_l1", "train_d_loss", "train_g_loss", "train_mel"} <= set(history.columns)
    assert np.isfinite(history["val_mel_l1"]).all()
    tuned = pd.read_csv(project / "reports/vocoder/bigvgan_finetuned/history.csv")
    schedule = yaml.safe_load((project / "params.yaml").read_text())["vocoder_models"]["bigvgan_finetuned"]
    assert schedule["loss"]["feed_generated"] == [[0, 0.0], [1, 1.0]]
    assert tuned["train_feed_probability"].tolist() == [0.0, 1.0]  # logged per epoch
    assert np.isfinite(tuned["val_mel_l1_generated"]).all()
    for name in ("bigvgan", "bigvgan_finetuned"):
        assert (project / "models/vocoder" / name / "discriminator.pt").is_file()
    lengths = manifest(project)["num_samples"]
    for method in VOCODED:
        card = json.loads((project / "outputs/binaural" / method / "card.json").read_text())
        assert card["method"] == method and (card["n_parameters"] > 0) == (method != "griffin_lim")
        for sample_id in split_ids(project, "test"):
            audio, sr = sf.read(project / "outputs/binaural" / method / "test" / f"{sample_id}.wav", always_2d=True)
            assert sr == 22050 and audio.shape[1] == 2 and np.isfinite(audio).all()
            assert audio.shape[0] == lengths[sample_id] // 256 * 256  # whole mel frames
        assert (project / "reports/vocoder/vocode" / f"{method}_examples.png").stat().st_size > 1000
    page = (project / "reports/binaural/listen.html").read_text()
    assert all(f"{m}" in page for m in BINAURAL_METHODS)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["binaural-lab/vocoder"])
    stages = {"pretrain_vocoder", "finetune_vocoder", "vocode"}
    assert stages <= set(runs["tags.dvc_stage"]) and set(runs["status"]) == {"FINISHED"}
    tune = runs[runs["tags.dvc_stage"] == "finetune_vocoder"].iloc[0]
    feed = mlflow.MlflowClient().get_metric_history(tune["run_id"], "train_feed_probability")
    assert [m.value for m in sorted(feed, key=lambda m: m.step)] == [0.0, 1.0]


def test_a_schedule_change_reruns_the_fine_tune_vocode_and_evaluation_only(project):
    commit(project, "before the schedule experiment")
    pretrained = (project / "models/vocoder/bigvgan/model.pt").read_bytes()
    out = run(
        ["dvc", "exp", "run", "-S", "vocoder_models.bigvgan_finetuned.loss.feed_generated=[[0,0.5],[1,1.0]]"], project
    )
    assert ran_stages(out.stdout) == {"finetune_vocoder", *AFTER_STAGE1} - {"evaluate_vocoded@diffbinaural_pretrained"}
    assert (project / "models/vocoder/bigvgan/model.pt").read_bytes() == pretrained
    tuned = pd.read_csv(project / "reports/vocoder/bigvgan_finetuned/history.csv")
    assert tuned["train_feed_probability"].tolist() == [0.5, 1.0]


def test_tune_vocoder_studies_the_loss_lambdas(project):
    out = run(["blab", "tune", "vocoder", "bigvgan", "--n-trials", "2"], project).stdout
    assert "study vocoder-bigvgan: 2 trials" in out
    best = yaml.safe_load((project / "tuning/vocoder-bigvgan/best_params.yaml").read_text())
    assert set(best["params"]) == {"loss.lambda_mel", "loss.lambda_fm", "loss.silence_weight", "loss.silence_threshold"}
    assert math.isfinite(best["value"])


def test_tune_diffusion_studies_sampling_on_the_trained_model(project):
    out = run(["blab", "tune", "diffusion", "--n-trials", "2"], project).stdout
    assert "study diffusion-sampling: 2 trials" in out
    best = yaml.safe_load((project / "tuning/diffusion-sampling/best_params.yaml").read_text())
    assert best["target"] == "generate_mels" and set(best["params"]) == {"guidance_scale", "steps", "eta"}
    assert math.isfinite(best["value"])
    params = project / "params.yaml"
    original = params.read_text()
    try:
        run(["blab", "tune-apply", "diffusion", "sampling"], project)
        applied = yaml.safe_load(params.read_text())["generate_mels"]
        assert applied["steps"] == best["params"]["steps"]
    finally:
        params.write_text(original)  # the later tests expect the workspace reproduced
    out = run(["blab", "tune", "diffusion", "diffbinaural", "--n-trials", "1"], project).stdout
    assert "study diffusion-diffbinaural: 1 trials" in out


def test_second_repro_is_up_to_date_and_a_param_reruns_only_its_dependents(project):
    out = run(["dvc", "repro"], project).stdout
    assert "Running stage" not in out
    assert "up to date" in run(["dvc", "status"], project).stdout
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-qm", "reproduced"], project)
    out = run(["dvc", "exp", "run", "-S", "depth_models.unet.train.lr=0.002"], project).stdout
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"train_depth@unet", "evaluate_depth@unet", "compare_depth"}


def test_a_binaural_param_reruns_only_its_method_and_the_comparison(project):
    """One experiment per binaural block, each from a commit of the workspace (the depth experiment above
    left its results there): only that method's stages and the comparison run, with the new weight."""
    commit(project, "depth experiment")
    out = run(["dvc", "exp", "run", "-S", "binaural_models.mono2binaural.loss.l_2ch=0.1"], project).stdout
    rendered = {
        "train_binaural@mono2binaural",
        "evaluate_binaural@mono2binaural",
        "compare_binaural",
        "listen_binaural",
    }
    assert ran_stages(out) == rendered
    commit(project, "mono2binaural experiment")
    # one epoch as well: the same stages rerun, in half the time
    out = run(
        [
            "dvc",
            "exp",
            "run",
            "-S",
            "binaural_models.depth_infused.loss.l_2ch=0.1",
            "-S",
            "binaural_models.depth_infused.train.epochs=1",
        ],
        project,
    ).stdout
    depth_infused = {f"{verb}_depth_infused@{m}" for verb in ("train", "evaluate") for m in MODALITIES}
    assert ran_stages(out) == depth_infused | {"compare_binaural", "listen_binaural"}
    assert "up to date" in run(["dvc", "status"], project).stdout
    # the new weight reached every retrained network's loss (logged per epoch)
    runs = binaural_runs(project)
    client = mlflow.MlflowClient()
    for stage, epochs in [
        ("train_binaural@mono2binaural", 2),
        *((f"train_depth_infused@{m}", 1) for m in MODALITIES),
    ]:
        newest = runs[runs["tags.dvc_stage"] == stage].iloc[0]
        assert newest["tags.dvc_exp_name"] and newest["params.loss.l_2ch"] == "0.1"
        weights = [m.value for m in client.get_metric_history(newest["run_id"], "loss_weight/l_2ch")]
        assert weights == [pytest.approx(0.1)] * epochs, stage
    compare = json.loads((project / "reports/binaural/compare.json").read_text())
    assert {(r["model"], r["convention"]) for r in compare["rows"]} == {
        (m, c) for m in BINAURAL_METHODS for c in CONVENTIONS
    }


def test_bad_param_fails_clearly_and_keeps_outputs(project):
    params = project / "params.yaml"
    original = params.read_text()
    before = (project / "reports/depth/unet/metrics.json").read_text()
    try:
        data = yaml.safe_load(original)
        data["depth_models"]["unet"]["train"]["epochs"] = "three"
        params.write_text(yaml.safe_dump(data))
        proc = run(["dvc", "repro", "train_depth@unet"], project, check=False)
        assert proc.returncode != 0
        assert "depth_models.unet.train.epochs: expected an integer, got str 'three'" in proc.stdout + proc.stderr
    finally:
        params.write_text(original)
    assert (project / "reports/depth/unet/metrics.json").read_text() == before


def test_tune_resumes_exports_and_applies(project):
    out = run(["blab", "tune", "depth", "unet", "--n-trials", "2"], project).stdout
    assert "study depth-unet: 2 trials" in out
    out = run(["blab", "tune", "depth", "unet", "--n-trials", "3"], project).stdout  # resumes the same study
    assert "study depth-unet: 3 trials" in out
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(project / "tuning" / "optuna.journal"))
    )
    study = optuna.load_study(study_name="depth-unet", storage=storage)
    assert len(study.trials) == 3
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(experiment_names=["binaural-lab/depth"], filter_string="tags.optuna_study = 'depth-unet'")
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and len(children) == 3
    assert set(children["tags.mlflow.parentRunId"]) == set(parents["run_id"])
    best = yaml.safe_load((project / "tuning/depth-unet/best_params.yaml").read_text())
    run(["blab", "tune-apply", "depth", "unet"], project)
    applied = yaml.safe_load((project / "params.yaml").read_text())["depth_models"]["unet"]
    assert applied["train"]["lr"] == pytest.approx(best["params"]["train.lr"])
    assert "#" in (project / "params.yaml").read_text()  # comments kept


def test_tune_binaural_runs_a_study_and_exports_its_best(project):
    out = run(["blab", "tune", "binaural", "mono2binaural", "--n-trials", "2"], project).stdout
    assert "study binaural-mono2binaural: 2 trials" in out
    best = yaml.safe_load((project / "tuning/binaural-mono2binaural/best_params.yaml").read_text())
    assert best["study"] == "binaural-mono2binaural" and best["target"] == "binaural_models.mono2binaural"
    assert set(best["params"]) == {"train.lr", "loss.l_diff", "loss.l_2ch"} and math.isfinite(best["value"])
    runs = binaural_runs(project)
    runs = runs[runs["tags.optuna_study"] == "binaural-mono2binaural"]
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert len(parents) == 1 and len(children) == 2


def test_two_workers_share_one_study_without_losing_or_duplicating_trials(project):
    cmd = ["blab", "tune", "depth", "base_residual", "--n-trials", "4"]
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "BLAB_ROOT")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    workers = [
        subprocess.Popen(cmd, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outs = [w.communicate(timeout=1200)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers), "\n".join(o[-3000:] for o in outs)
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(project / "tuning" / "optuna.journal"))
    )
    trials = optuna.load_study(study_name="depth-base_residual", storage=storage).trials
    finished = [t for t in trials if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]
    # every trial finished, numbers unique; at most one extra trial when both workers start the last one
    assert len(finished) == len(trials) and 4 <= len(trials) <= 5
    assert len({t.number for t in trials}) == len(trials)
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlruns' / 'mlflow.db'}")
    runs = mlflow.search_runs(
        experiment_names=["binaural-lab/depth"], filter_string="tags.optuna_study = 'depth-base_residual'"
    )
    children = runs[runs["tags.mlflow.parentRunId"].notna()]
    assert sorted(children["tags.optuna_trial"].astype(int)) == sorted(t.number for t in trials)
    parents = runs[runs["tags.mlflow.parentRunId"].isna()]
    assert len(parents) == 1 and parents["status"].iloc[0] == "FINISHED"
    assert set(children["status"]) == {"FINISHED"}  # pruned trials too: a pruned trial is no failure
    assert set(children["tags.optuna_state"]) <= {"COMPLETE", "PRUNED"}
    # every searched loss weight acted in at least half of each trial's epochs (read from MLflow)
    client = mlflow.MlflowClient()
    for run_id in children["run_id"]:
        for term in ("l_base", "l_sparse"):
            weights = [m.value for m in client.get_metric_history(run_id, f"loss_weight/{term}")]
            assert weights and sum(w > 0 for w in weights) >= len(weights) / 2


def test_evaluate_outside_predictions(project, tmp_path):
    import numpy as np

    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    gt_dir.mkdir()
    pred_dir.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        gt = rng.uniform(1, 5, (8, 8)).astype(np.float32)
        gt[0, 0] = 0
        np.save(gt_dir / f"{i}.npy", gt)
        np.save(pred_dir / f"{i}.npy", gt * 1.1)
    out = tmp_path / "m.json"
    run(
        [
            "blab",
            "evaluate",
            "depth",
            "--pred-dir",
            str(pred_dir),
            "--gt-dir",
            str(gt_dir),
            "--max-depth",
            "10",
            "--json",
            str(out),
        ],
        project,
    )
    metrics = json.loads(out.read_text())
    assert metrics["abs_rel"] == pytest.approx(0.1, abs=1e-5) and metrics["delta1"] == 1.0
    np.save(pred_dir / "1.npy", np.zeros((4, 4), np.float32))
    proc = run(
        ["blab", "evaluate", "depth", "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--max-depth", "10"],
        project,
        check=False,
    )
    assert proc.returncode == 2 and "1.npy: shape (4, 4) does not match" in proc.stderr
    bad = np.full((8, 8), np.nan, np.float32)
    np.save(pred_dir / "1.npy", bad)
    proc = run(
        ["blab", "evaluate", "depth", "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--max-depth", "10"],
        project,
        check=False,
    )
    assert proc.returncode == 2 and "NaN" in proc.stderr
    (pred_dir / "2.npy").unlink()
    proc = run(
        ["blab", "evaluate", "depth", "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir), "--max-depth", "10"],
        project,
        check=False,
    )
    assert proc.returncode == 2 and "prediction(s) missing" in proc.stderr and "2.npy" in proc.stderr


def test_evaluate_binaural_outside_scores_the_stage_wavs_as_the_stage_did(project, tmp_path):
    """`blab evaluate binaural` on a method's test WAVs and a copy of the dataset's ground truth gives the
    stage's own test metrics, in both conventions."""
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    gt_paths = manifest(project)["binaural_path"]
    for sample_id in split_ids(project, "test"):
        shutil.copy(project / "data/raw/synthetic-binaural" / gt_paths[sample_id], gt_dir / f"{sample_id}.wav")
    pred_dir = project / "outputs/binaural/mono2binaural/test"
    for conv in CONVENTIONS:
        out = tmp_path / f"{conv}.json"
        cmd = ["blab", "evaluate", "binaural", "--pred-dir", str(pred_dir), "--gt-dir", str(gt_dir)]
        run([*cmd, "--convention", conv, "--json", str(out)], project)
        scored = json.loads(out.read_text())
        stage = json.loads((project / f"reports/binaural/mono2binaural/metrics_{conv}.json").read_text())
        assert scored["convention"] == conv and scored["n"] == stage["n_clips"]
        assert scored["convention_description"] == stage["convention_description"]
        assert set(scored["mean"]) <= set(stage)
        for key, value in scored["mean"].items():
            assert abs(value - stage[key]) <= 1e-9, f"{conv} {key}: {value} != {stage[key]}"


def test_resume_survives_an_edit_outside_the_training_code_but_not_one_to_the_model(project):
    """The stage run from the project's own source: an edit to cli.py keeps the checkpoint resumable,
    an edit to the model's code starts over and moves the old last.pt aside."""
    env = {**os.environ, "PYTHONPATH": str(project / "src")}
    env.pop("MLFLOW_TRACKING_URI", None)
    ckpt = project / "models/depth/unet"
    cli, model_code = project / "src/binaural_lab/cli.py", project / "src/binaural_lab/models/depth_unet.py"
    originals = {p: p.read_text() for p in (cli, model_code)}
    train = [sys.executable, "stages/train.py", "depth", "unet"]
    # earlier tests changed params.yaml (an experiment, tune-apply): first a checkpoint of these params
    assert subprocess.run(train, cwd=project, env=env, capture_output=True, timeout=600).returncode == 0
    for stale in ckpt.glob("last.*.pt"):
        stale.unlink()
    try:
        cli.write_text(originals[cli] + "\n# an edit outside models/, losses/ and training/\n")
        out = subprocess.run(train, cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "nothing left to train" in out.stdout + out.stderr and "moved" not in out.stdout + out.stderr
        assert not list(ckpt.glob("last.*.pt"))
        model_code.write_text(originals[model_code] + "\n# an edit to the model's code\n")
        out = subprocess.run(train, cwd=project, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
        assert "moved it to" in out.stdout + out.stderr
        assert len(list(ckpt.glob("last.*.pt"))) == 1 and (ckpt / "last.pt").is_file()
    finally:
        for path, text in originals.items():
            path.write_text(text)
