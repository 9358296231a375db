"""Batvision V1 / V2 adapters on tiny fake trees in the shipped layouts (REFERENCE.md section 5)."""

import contextlib
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml

from binaural_lab.config import ParamError, load_yaml
from binaural_lab.data.batvision import BatvisionError, adapt_batvision
from binaural_lab.data.datasets import dataset
from binaural_lab.data.features import EchoFeatureConfig, compute_echo_features
from binaural_lab.data.manifest import SplitConfig, build_manifest
from binaural_lab.data.shards import open_split

SOURCE_SR = 44100
TARGET_SR = 48000  # not the source rate: every test goes through the resampler
LEAD = 15  # samples at 44.1 kHz by which the left ear leads (0.34 ms)
N_SOURCE = 8820  # 0.2 s recordings, longer than the 0.176 s cut at 30 m
SHAPE = (6, 8)
V1_COLUMNS = ["depth path", "audio path left", "audio path right", "camera path left"]
V2_COLUMNS = ["depth path", "depth file name", "audio path", "audio file name", "camera path", "camera file name"]
LOCATIONS = ("Salle_A", "couloir 2", "hall", "labo")


def echoes(seed: int) -> np.ndarray:
    """``[2, N_SOURCE]``: a noise burst reaching the left ear LEAD samples before the right."""
    burst = np.random.default_rng(seed).standard_normal(300) * np.hanning(300)
    out = np.zeros((2, N_SOURCE), np.float32)
    out[0, 1000:1300] = 0.5 * burst
    out[1, 1000 + LEAD : 1300 + LEAD] = 0.4 * burst
    return out


def depth_mm(max_depth_m: float, dtype: type) -> np.ndarray:
    """A millimetre depth map: 2 m everywhere but the INVALID[dtype] pixels of row 0 (0, too deep, and for
    V1's float maps also negative, NaN and +-inf)."""
    depth = np.full(SHAPE, 2000.0)
    bad = [0.0, (max_depth_m + 1) * 1000]
    if np.issubdtype(dtype, np.floating):
        bad += [-5.0, np.nan, np.inf, -np.inf]
    depth[0, : len(bad)] = bad
    return depth.astype(dtype)


INVALID = {np.float32: 6, np.uint16: 2}


def make_v1(root: Path, per_split: int = 2) -> Path:
    """root/BatvisionV1 with train/val/test.csv, float .npy depth in mm, one .npy per ear."""
    base = root / "BatvisionV1"
    for sub in ("depth", "audio", "camera"):
        (base / sub).mkdir(parents=True)
    for k, split in enumerate(("train", "val", "test")):
        rows = []
        for i in range(per_split):
            name = f"{split}_{i}"
            np.save(base / "depth" / f"{name}.npy", depth_mm(12.0, np.float32))
            left, right = echoes(10 * k + i)
            np.save(base / "audio" / f"{name}_left.npy", left)
            np.save(base / "audio" / f"{name}_right.npy", right)
            rows.append(
                [f"depth/{name}.npy", f"audio/{name}_left.npy", f"audio/{name}_right.npy", f"camera/{name}.jpg"]
            )
        pd.DataFrame(rows, columns=V1_COLUMNS).to_csv(base / f"{split}.csv", index=False)
    return base


def make_v2(root: Path, per_split: int = 1) -> Path:
    """root/BatvisionV2/<location>/{train,val,test}.csv, uint16 .npy depth in mm, stereo 32-bit WAVs."""
    base = root / "BatvisionV2"
    for k, location in enumerate(LOCATIONS):
        for sub in ("depth", "audio"):
            (base / location / sub).mkdir(parents=True)
        for split in ("train", "val", "test"):
            rows = []
            for i in range(per_split):
                name = f"{split}_{i}"
                np.save(base / location / "depth" / f"{name}.npy", depth_mm(30.0, np.uint16))
                sf.write(base / location / "audio" / f"{name}.wav", echoes(k).T, SOURCE_SR, subtype="PCM_32")
                rows.append(
                    [f"{location}/depth", f"{name}.npy", f"{location}/audio", f"{name}.wav", f"{location}/camera", "x"]
                )
            pd.DataFrame(rows, columns=V2_COLUMNS).to_csv(base / location / f"{split}.csv", index=False)
    return base


def lag(audio: np.ndarray) -> int:
    """Samples by which the right channel lags the left (positive: left earlier), by cross-correlation."""
    xcorr = np.correlate(audio[1], audio[0], mode="full")
    return int(np.argmax(xcorr)) - (audio.shape[1] - 1)


@pytest.mark.parametrize(("version", "max_depth"), [("v1", 12.0), ("v2", 30.0)])
def test_adapted_depth_audio_and_itd(tmp_path, version, max_depth):
    source = (make_v1 if version == "v1" else make_v2)(tmp_path / "src")
    out = tmp_path / "raw"
    table = adapt_batvision(source, out, version, max_depth, TARGET_SR, published_splits=version == "v1")
    assert table.equals(pd.read_parquet(out / "scenes.parquet"))
    assert len(table) == (6 if version == "v1" else 3 * len(LOCATIONS))
    n = int(2 * max_depth / 340 * TARGET_SR)
    for row in table.itertuples():
        depth = np.load(out / row.depth_path)
        assert depth.dtype == np.float32 and depth.shape == SHAPE
        assert np.isfinite(depth).all() and (depth >= 0).all()
        assert (depth[0] == 0).sum() == INVALID[np.float32 if version == "v1" else np.uint16]
        assert np.allclose(depth[1:], 2.0)
        info = sf.info(out / row.audio_path)
        assert (info.samplerate, info.channels, info.frames) == (TARGET_SR, 2, n)
        assert row.num_samples == n and row.sample_rate == TARGET_SR and row.depth_kind == "planar"
        audio, _ = sf.read(out / row.audio_path, dtype="float32", always_2d=True)
        measured = lag(audio.T)
        assert measured > 0
        assert abs(measured - LEAD * TARGET_SR / SOURCE_SR) <= 1
        assert np.abs(audio[:, 0]).max() > np.abs(audio[:, 1]).max()  # L stays L


def test_v1_keeps_published_splits_through_prepare_and_featurize(tmp_path):
    raw, prep, feats = tmp_path / "raw", tmp_path / "prep", tmp_path / "feats"
    adapt_batvision(make_v1(tmp_path / "src"), raw, "v1", 12.0, TARGET_SR)
    manifest = build_manifest(raw, prep, SplitConfig(), seed=0)
    assert (manifest["split"] == manifest["csv_split"]).all()
    assert manifest.groupby("split").size().to_dict() == {"test": 2, "train": 2, "val": 2}
    cfg = EchoFeatureConfig(input_size=16, sample_rate=TARGET_SR, max_depth_m=12.0, batch_size=4)
    counts = compute_echo_features(prep / "manifest.parquet", raw, feats, cfg, workers=1)
    assert counts == {"train": 2, "val": 2, "test": 2}
    test = open_split(feats / "test")
    assert test["spec"].shape == (2, 2, 16, 16) and np.isfinite(test["spec"]).all()
    assert test["depth"].shape == (2, 16, 16) and test["depth"].min() == 0 and test["depth"].max() == 2.0


def test_v2_locations_stay_disjoint_through_prepare_and_featurize(tmp_path):
    raw, prep, feats = tmp_path / "raw", tmp_path / "prep", tmp_path / "feats"
    table = adapt_batvision(make_v2(tmp_path / "src"), raw, "v2", 30.0, TARGET_SR, published_splits=False)
    assert "published_split" not in table.columns
    assert set(table["room_id"]) == set(table["location"]) == set(LOCATIONS)
    manifest = build_manifest(raw, prep, SplitConfig(), seed=0)
    locations = {s: set(manifest.loc[manifest["split"] == s, "location"]) for s in ("train", "val", "test")}
    assert all(locations.values())
    assert sum(len(v) for v in locations.values()) == len(LOCATIONS)  # no location in two splits
    cfg = EchoFeatureConfig(input_size=16, sample_rate=TARGET_SR, max_depth_m=30.0, batch_size=4)
    counts = compute_echo_features(prep / "manifest.parquet", raw, feats, cfg, workers=1)
    assert sum(counts.values()) == 3 * len(LOCATIONS)


def test_v2_published_splits_mix_locations(tmp_path):
    raw = tmp_path / "raw"
    adapt_batvision(make_v2(tmp_path / "src"), raw, "v2", 30.0, TARGET_SR)
    manifest = build_manifest(raw, tmp_path / "prep", SplitConfig(), seed=0)
    assert (manifest["split"] == manifest["csv_split"]).all()
    assert all(set(manifest.loc[manifest["split"] == s, "location"]) == set(LOCATIONS) for s in ("train", "test"))


def test_uncut_audio_keeps_the_whole_recording(tmp_path):
    table = adapt_batvision(make_v1(tmp_path / "src", 1), tmp_path / "raw", "v1", 12.0, SOURCE_SR, cut_audio=False)
    assert (table["num_samples"] == N_SOURCE).all()


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name != "src")


def test_missing_column_is_named_and_nothing_is_written(tmp_path):
    source = make_v1(tmp_path / "src")
    val = pd.read_csv(source / "val.csv").drop(columns="audio path right")
    val.to_csv(source / "val.csv", index=False)
    with pytest.raises(BatvisionError, match=r"val\.csv: column\(s\) \['audio path right'\] missing"):
        adapt_batvision(source, tmp_path / "raw", "v1", 12.0, TARGET_SR)
    assert leftovers(tmp_path) == []


def test_missing_file_is_named_and_nothing_is_written(tmp_path):
    source = make_v2(tmp_path / "src")
    (source / "hall" / "audio" / "test_0.wav").unlink()
    pattern = r"hall/test\.csv line 2: 'audio path' \+ 'audio file name': .*hall/audio/test_0\.wav not found"
    with pytest.raises(BatvisionError, match=pattern):
        adapt_batvision(source, tmp_path / "raw", "v2", 30.0, TARGET_SR)
    assert leftovers(tmp_path) == []


def test_bad_file_midway_leaves_the_previous_output(tmp_path):
    source = make_v1(tmp_path / "src")
    out = tmp_path / "raw"
    adapt_batvision(source, out, "v1", 12.0, TARGET_SR)
    before = (out / "scenes.parquet").read_bytes()
    (source / "depth" / "val_1.npy").write_bytes(b"not a numpy file")
    with pytest.raises(BatvisionError, match=r"val_1\.npy: not a readable \.npy"):
        adapt_batvision(source, out, "v1", 12.0, TARGET_SR)
    assert (out / "scenes.parquet").read_bytes() == before
    assert leftovers(tmp_path) == ["raw"]


def test_v2_location_without_its_csvs_is_named(tmp_path):
    source = make_v2(tmp_path / "src")
    (source / "labo" / "val.csv").unlink()
    with pytest.raises(BatvisionError, match=r"labo/val\.csv: CSV not found"):
        adapt_batvision(source, tmp_path / "raw", "v2", 30.0, TARGET_SR)


def test_output_inside_the_download_is_refused(tmp_path):
    source = make_v1(tmp_path / "batvision-v1")
    with pytest.raises(ValueError, match="overlap"):
        adapt_batvision(source, tmp_path / "batvision-v1", "v1", 12.0, TARGET_SR)
    assert (source / "train.csv").is_file()


def test_synthesize_stage_runs_the_adapter(tmp_path, monkeypatch):
    make_v1(tmp_path / "data" / "raw" / "batvision-v1", 1)
    echoes_slot = {"name": "bv1", "kind": "batvision-v1", "input": "data/raw/batvision-v1", "sample_rate": TARGET_SR}
    echoes_slot["max_depth_m"] = 12.0
    params = {"base": {"seed": 0}, "datasets": {"echoes": {**echoes_slot, "depth_kind": "planar"}}}
    params["download"] = {"batvision-v1": {"local_root": "data/raw/batvision-v1"}}  # already on disk: no fetch
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.setenv("BLAB_ROOT", str(tmp_path))
    path = Path(__file__).parents[1] / "stages" / "synthesize.py"
    spec = importlib.util.spec_from_file_location("synthesize_stage", path)
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    monkeypatch.setattr(stage.tracking, "stage_run", lambda *a, **k: contextlib.nullcontext())
    monkeypatch.setattr(stage.tracking, "log_metrics", lambda *a, **k: None)
    stage.main("echoes")
    table = pd.read_parquet(tmp_path / "data" / "raw" / "bv1" / "scenes.parquet")
    assert list(table["published_split"]) == ["test", "train", "val"]


@pytest.mark.parametrize(("name", "max_depth"), [("batvision-v1", 12.0), ("batvision-v2", 30.0)])
def test_pipelines_fill_the_echoes_slot(name, max_depth):
    params = load_yaml(Path(__file__).parents[1] / "pipelines" / f"{name}.yaml")
    data = dataset(params, "echoes")
    assert (data.kind, data.max_depth_m, data.depth_kind) == (name, max_depth, "planar")
    assert data.name != name  # data/raw/<name> is the download the adapter reads, not its output
    assert params["featurize_echoes"]["input_size"] == 256


def test_bad_dataset_params_are_named(tmp_path):
    echoes_slot = {"name": "bv", "kind": "batvision-v1", "input": "data/raw/batvision-v1", "max_depth_m": 12.0}
    echoes_slot["depth_kind"] = "planar"
    with pytest.raises(ParamError, match=r"datasets\.echoes\.input: kind 'batvision-v1' reads 'data/raw/batvision-v1'"):
        dataset({"datasets": {"echoes": {**echoes_slot, "input": "src/binaural_lab/data/simulate"}}}, "echoes")
    fairplay_slot = {"name": "fp", "kind": "fairplay", "input": "data/raw/fairplay"}
    with pytest.raises(ParamError, match=r"datasets\.echoes\.kind: 'fairplay' is a binaural dataset"):
        dataset({"datasets": {"echoes": {**fairplay_slot, "max_depth_m": 12.0, "depth_kind": "planar"}}}, "echoes")
    with pytest.raises(ParamError, match=r"datasets\.binaural\.split: pseudobinaural has splits 1 to 5, got 6"):
        dataset({"datasets": {"binaural": {**fairplay_slot, "split_set": "pseudobinaural", "split": 6}}}, "binaural")
    with pytest.raises(ParamError, match=r"datasets\.binaural\.kind: 'batvision-v1' is a depth dataset"):
        dataset({"datasets": {"binaural": echoes_slot}}, "binaural")
    with pytest.raises(ParamError, match=r"datasets\.echoes\.depth_kind: .*planar"):
        dataset({"datasets": {"echoes": {**echoes_slot, "depth_kind": "ray"}}}, "echoes")
    with pytest.raises(ParamError, match="V1 names no location"):
        adapt_batvision(tmp_path, tmp_path / "raw", "v1", 12.0, TARGET_SR, published_splits=False)
