"""Feature shards from tiny real WAV / PNG / NPY files: round trip, errors, torch dataset."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
from PIL import Image
from torch.utils.data import DataLoader

from binaural_lab.audio import (
    AudioFileError,
    echo_spectrogram,
    mel_spectrogram,
    read_audio,
    resample,
    stft_features,
)
from binaural_lab.config import ParamError, parse
from binaural_lab.data.features import (
    BinauralFeatureConfig,
    EchoFeatureConfig,
    FeatureInputError,
    compute_binaural_features,
    compute_echo_features,
)
from binaural_lab.data.manifest import ManifestError
from binaural_lab.data.shards import ArraySpec, ShardDataset, ShardError, ShardReader, open_split, write_split

SPLIT_OF = ["train", "train", "val", "val", "test"]
COLOURS = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, 1.0, 0.0), (0.0, 1.0, 1.0)]


@pytest.fixture
def binaural(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Five scenes: stereo + mono WAV (22.05 kHz, lengths differ), a PNG frame, a depth map with a NaN."""
    raw = tmp_path / "raw"
    raw.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i, split in enumerate(SPLIT_OF):
        n = 6900 + 100 * i
        stereo = 0.2 * rng.standard_normal((n, 2))
        sf.write(raw / f"b{i}.wav", stereo, 22050, subtype="FLOAT")
        sf.write(raw / f"m{i}.wav", stereo.mean(1), 22050, subtype="FLOAT")
        plt.imsave(raw / f"f{i}.png", np.broadcast_to(np.array(COLOURS[i]), (12, 16, 3)).copy())
        depth = np.full((12, 16), 1.0 + i, dtype=np.float32)
        depth[0, 0] = np.nan
        np.save(raw / f"d{i}.npy", depth)
        rows.append(
            {
                "sample_id": f"s{i}",
                "split": split,
                "room_id": f"room{i}",
                "binaural_path": f"b{i}.wav",
                "mono_path": f"m{i}.wav",
                "frame_path": f"f{i}.png",
                "depth_path": f"d{i}.npy",
                "azimuth_deg": 10.0 * i,
                "elevation_deg": 0.0,
                "distance_m": 1.5,
                "pixel_x": i,
                "pixel_y": 2 * i,
            }
        )
    return raw, pd.DataFrame(rows)


@pytest.fixture
def echo(tmp_path: Path) -> tuple[Path, pd.DataFrame]:
    """Three echo recordings (44.1 kHz stereo) with depth maps holding too-deep and invalid pixels."""
    raw = tmp_path / "echo_raw"
    raw.mkdir()
    rng = np.random.default_rng(1)
    rows = []
    for i, split in enumerate(["train", "train", "test"]):
        sf.write(raw / f"a{i}.wav", 0.1 * rng.standard_normal((4410, 2)), 44100, subtype="FLOAT")
        depth = np.full((20, 20), 2.0, dtype=np.float32)
        depth[:, 10:] = 50.0
        depth[0, 0] = np.inf
        np.save(raw / f"d{i}.npy", depth)
        rows.append(
            {
                "sample_id": f"e{i}",
                "split": split,
                "room_id": "r0",
                "audio_path": f"a{i}.wav",
                "depth_path": f"d{i}.npy",
                "sample_rate": 44100,
            }
        )
    return raw, pd.DataFrame(rows)


CFG = BinauralFeatureConfig(frame_size=(8, 10), batch_size=2)


def test_binaural_shards_round_trip(binaural: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    raw, manifest = binaural
    out = tmp_path / "features"
    assert compute_binaural_features(manifest, raw, out, CFG) == {"train": 2, "val": 2, "test": 1}
    n = 6900 // 256 * 256
    reader = ShardReader(out / "val")
    arrays = reader.arrays()
    assert arrays["mel"].shape == (2, 3, 80, n // 256)
    n16 = resample(torch.zeros(n), 22050, 16000).shape[-1]
    assert arrays["stft"].shape == (2, 2, 2, 257, n16 // 160 + 1)
    assert arrays["frame"].shape == (2, 3, 8, 10) and arrays["frame"].dtype == np.uint8
    assert arrays["depth"].shape == (2, 8, 10) and arrays["depth"].dtype == np.float32
    assert reader.meta["config"]["clip_samples"] == n

    mono, _ = read_audio(raw / "m3.wav")
    stereo, _ = read_audio(raw / "b3.wav")
    clip = torch.from_numpy(np.concatenate((mono, stereo))[:, :n])
    np.testing.assert_allclose(arrays["mel"][1], mel_spectrogram(clip, CFG.mel).numpy(), atol=1e-5)
    diff = resample(clip[1] - clip[2], 22050, 16000)
    np.testing.assert_allclose(arrays["stft"][1, 1], stft_features(diff, 512, 160, 400).numpy(), atol=1e-5)
    np.testing.assert_array_equal(arrays["frame"][1, :, 4, 5], [255, 255, 0])
    assert arrays["depth"][1, 0, 0] == 0 and set(np.unique(arrays["depth"][1])) == {0.0, 4.0}

    index = reader.index()
    assert index["sample_id"].tolist() == ["s2", "s3"]
    assert list(index.columns) == [
        "sample_id", "room_id", "azimuth_deg", "elevation_deg", "distance_m", "pixel_x", "pixel_y"
    ]  # fmt: skip
    assert sorted(p.name for p in (out / "val").iterdir()) == [
        "depth.npy", "frame.npy", "index.parquet", "mel.npy", "meta.json", "positions.npy", "stft.npy"
    ]  # fmt: skip
    # a manifest without a `sources` column has no positions: every row absent
    assert arrays["positions"].shape == (2, 4, 3) and not arrays["positions"].any()


def test_source_positions_are_fractions_of_the_original_frame(
    binaural: tuple[Path, pd.DataFrame], tmp_path: Path
) -> None:
    raw, manifest = binaural
    width, height = Image.open(raw / manifest["frame_path"].iloc[0]).size
    sources = [{"pixel_x": width / 4, "pixel_y": height / 2}, {"pixel_x": width, "pixel_y": 0.0}]
    manifest = manifest.assign(sources=json.dumps(sources))
    compute_binaural_features(manifest, raw, tmp_path / "features", CFG)
    positions = ShardReader(tmp_path / "features" / "train").arrays()["positions"]
    np.testing.assert_allclose(positions[0], [[0.25, 0.5, 1], [1, 0, 1], [0, 0, 0], [0, 0, 0]], atol=1e-6)
    bad = manifest.assign(sources='[{"pixel_x": 3}]')  # no pixel_y
    with pytest.raises(FeatureInputError, match="sources"):
        compute_binaural_features(bad, raw, tmp_path / "bad", CFG)
    assert not (tmp_path / "bad").exists()


def test_binaural_shards_do_not_depend_on_workers(binaural: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    raw, manifest = binaural
    cfg = BinauralFeatureConfig(frame_size=(8, 10), batch_size=1, clip_seconds=0.2)
    compute_binaural_features(manifest, raw, tmp_path / "one", cfg, workers=0)
    compute_binaural_features(manifest, raw, tmp_path / "two", cfg, workers=2)
    for split in ("train", "val", "test"):
        one, two = open_split(tmp_path / "one" / split), open_split(tmp_path / "two" / split)
        assert one["mel"].shape[-1] == 0.2 * 22050 // 256
        for name in one:
            np.testing.assert_array_equal(one[name], two[name])


def test_echo_shards(echo: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    raw, manifest = echo
    cfg = EchoFeatureConfig(input_size=16, max_depth_m=5.0)
    assert compute_echo_features(manifest, raw, tmp_path / "echo", cfg) == {"train": 2, "test": 1}
    arrays = open_split(tmp_path / "echo" / "train")
    assert arrays["spec"].shape == (2, 2, 16, 16) and arrays["spec"].min() >= 0
    depth = arrays["depth"]
    assert depth.shape == (2, 16, 16)
    assert depth[0, 0, 0] == 0 and np.all(depth[:, :, 8:] == 0) and np.all(depth[:, 1:, :8] == 2.0)
    assert ShardReader(tmp_path / "echo" / "test").index()["sample_id"].tolist() == ["e2"]

    short = EchoFeatureConfig(input_size=16, audio_seconds=0.02)
    compute_echo_features(manifest, raw, tmp_path / "short", short)
    audio, _ = read_audio(raw / "a1.wav")
    expected = echo_spectrogram(torch.from_numpy(audio[:, :882]), size=16).numpy()
    np.testing.assert_allclose(open_split(tmp_path / "short" / "train")["spec"][1], expected, atol=1e-6)


def test_feature_configs_parse_from_params() -> None:
    cfg = parse(BinauralFeatureConfig, {"mel": {"fmax": None}, "frame_size": [64, 96]}, "features")
    assert cfg.mel.f_max == 11025 and cfg.frame_size == (64, 96)
    with pytest.raises(ParamError, match=r"features\.frame_size"):
        parse(BinauralFeatureConfig, {"frame_size": [64]}, "features")
    with pytest.raises(ParamError, match=r"features\.mel\.hop"):
        parse(BinauralFeatureConfig, {"mel": {"hop": 255}}, "features")
    with pytest.raises(ParamError, match=r"echo\.win"):
        parse(EchoFeatureConfig, {"win": 1024}, "echo")


def test_missing_file_fails_up_front(binaural: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    raw, manifest = binaural
    (raw / "f3.png").unlink()
    out = tmp_path / "features"
    with pytest.raises(ManifestError, match="f3.png"):
        compute_binaural_features(manifest, raw, out, CFG)
    assert not out.exists()


def test_corrupt_wav_fails_naming_it(binaural: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    raw, manifest = binaural
    (raw / "b4.wav").write_bytes(b"RIFF not really a wave file")
    out = tmp_path / "features"
    with pytest.raises(AudioFileError, match="b4.wav"):
        compute_binaural_features(manifest, raw, out, CFG)
    assert not out.exists()


def test_bad_echo_file_midway_leaves_no_output(echo: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    raw, manifest = echo
    sf.write(raw / "a2.wav", np.zeros((4410, 2)), 22050)
    out = tmp_path / "echo"
    with pytest.raises(AudioFileError, match=r"a2\.wav.*22050"):
        compute_echo_features(manifest, raw, out, EchoFeatureConfig(input_size=16))
    assert not out.exists() and list(tmp_path.glob(".echo*")) == []


def test_missing_column_names_column_and_manifest(binaural: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    raw, manifest = binaural
    path = tmp_path / "manifest.parquet"
    manifest.drop(columns="mono_path").to_parquet(path)
    out = tmp_path / "features"
    with pytest.raises(ManifestError, match=r"manifest\.parquet.*mono_path"):
        compute_binaural_features(path, raw, out, CFG)
    assert not out.exists()


def test_a_dataset_without_depth_or_geometry_gets_zero_depth_and_says_so(binaural, tmp_path) -> None:
    raw, manifest = binaural
    out = tmp_path / "features"
    compute_binaural_features(manifest.drop(columns=["depth_path", "azimuth_deg", "pixel_x"]), raw, out, CFG)
    reader = ShardReader(out / "train")
    assert reader.meta["config"]["has_depth"] is False
    assert not reader.arrays()["depth"].any()
    assert "azimuth_deg" not in pd.read_parquet(out / "train" / "index.parquet").columns
    with_depth = tmp_path / "with_depth"
    compute_binaural_features(manifest, raw, with_depth, CFG)
    assert ShardReader(with_depth / "train").meta["config"]["has_depth"] is True
    assert ShardReader(with_depth / "train").arrays()["depth"].any()


def test_reader_errors_name_the_dir_or_file(echo: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    raw, manifest = echo
    out = tmp_path / "echo"
    compute_echo_features(manifest, raw, out, EchoFeatureConfig(input_size=16))
    with pytest.raises(ShardError, match="val"):
        open_split(out / "val")
    meta_file = out / "train" / "meta.json"
    meta = json.loads(meta_file.read_text())
    meta["arrays"]["spec"]["shape"] = [3, 2, 16, 16]
    meta_file.write_text(json.dumps(meta))
    with pytest.raises(ShardError, match=r"spec\.npy"):
        open_split(out / "train")
    (out / "test" / "depth.npy").unlink()
    with pytest.raises(ShardError, match=r"depth\.npy"):
        open_split(out / "test")
    meta_file.unlink()
    with pytest.raises(ShardError, match=r"meta\.json"):
        open_split(out / "train")


def test_write_split_is_atomic(tmp_path: Path) -> None:
    arrays = {"x": ArraySpec((3,), "float32")}
    index = pd.DataFrame({"sample_id": ["a", "b"]})
    with pytest.raises(ValueError, match="1 of 2 rows"), write_split(tmp_path / "s", arrays, index, {}, "") as w:
        w.append({"x": np.ones((1, 3))})
    with pytest.raises(RuntimeError), write_split(tmp_path / "s", arrays, index, {}, "") as w:
        w.append({"x": np.ones((2, 3))})
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_shard_dataset_with_dataloader(binaural: tuple[Path, pd.DataFrame], tmp_path: Path) -> None:
    raw, manifest = binaural
    out = tmp_path / "features"
    compute_binaural_features(manifest, raw, out, CFG)
    dataset = ShardDataset(out / "train", {"mel": "mel", "depth": "depth"})
    batch = next(iter(DataLoader(dataset, batch_size=2, num_workers=0)))
    arrays = open_split(out / "train")
    assert batch["mel"].shape == (2, 3, 80, 26)
    torch.testing.assert_close(batch["mel"], torch.from_numpy(np.array(arrays["mel"])))
    torch.testing.assert_close(batch["depth"], torch.from_numpy(np.array(arrays["depth"])))

    plain = ShardDataset(out / "train", {"frame": "image"})
    assert plain[1]["image"].dtype == torch.uint8
    clone = pickle.loads(pickle.dumps(plain))
    assert clone._arrays is None and torch.equal(clone[1]["image"], plain[1]["image"])
    with pytest.raises(ShardError, match="spec"):
        ShardDataset(out / "train", {"spec": "x"})
