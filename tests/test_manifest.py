"""Manifests: room-disjoint splits, files checked before anything is written."""

import numpy as np
import pandas as pd
import pytest

from binaural_lab.config import ParamError, parse
from binaural_lab.data.manifest import ManifestError, SplitConfig, build_manifest, load_manifest


def make_raw(root, n_rooms=10, per_room=3):
    (root / "audio").mkdir(parents=True)
    rows = []
    for r in range(n_rooms):
        for s in range(per_room):
            sid = f"r{r:03d}_s{s:02d}"
            (root / "audio" / f"{sid}.npy").write_bytes(b"x")
            rows.append({"sample_id": sid, "room_id": r, "audio_path": f"audio/{sid}.npy"})
    pd.DataFrame(rows).to_parquet(root / "scenes.parquet")
    return rows


def test_splits_are_room_disjoint_and_deterministic(tmp_path):
    make_raw(tmp_path / "raw")
    cfg = SplitConfig()
    a = build_manifest(tmp_path / "raw", tmp_path / "prep", cfg, seed=1)
    b = load_manifest(tmp_path / "prep" / "manifest.parquet", tmp_path / "raw")
    pd.testing.assert_frame_equal(a, b)
    assert list(a.columns[:3]) == ["sample_id", "split", "room_id"]
    rooms = {s: set(a.loc[a.split == s, "room_id"]) for s in ("train", "val", "test")}
    assert all(rooms.values())
    assert (
        not (rooms["train"] & rooms["val"])
        and not (rooms["train"] & rooms["test"])
        and not (rooms["val"] & rooms["test"])
    )
    assert (tmp_path / "prep" / "splits.json").is_file()
    again = build_manifest(tmp_path / "raw", tmp_path / "prep2", cfg, seed=1)
    assert np.array_equal(a["split"], again["split"])


def test_missing_file_is_named_and_nothing_is_written(tmp_path):
    make_raw(tmp_path / "raw")
    (tmp_path / "raw" / "audio" / "r004_s01.npy").unlink()
    with pytest.raises(ManifestError, match=r"audio_path.*r004_s01\.npy"):
        build_manifest(tmp_path / "raw", tmp_path / "prep", SplitConfig(), seed=0)
    assert not (tmp_path / "prep").exists()


def test_existing_manifest_survives_a_failed_rebuild(tmp_path):
    make_raw(tmp_path / "raw")
    build_manifest(tmp_path / "raw", tmp_path / "prep", SplitConfig(), seed=0)
    before = (tmp_path / "prep" / "manifest.parquet").read_bytes()
    (tmp_path / "raw" / "audio" / "r000_s00.npy").unlink()
    with pytest.raises(ManifestError):
        build_manifest(tmp_path / "raw", tmp_path / "prep", SplitConfig(), seed=0)
    assert (tmp_path / "prep" / "manifest.parquet").read_bytes() == before
    with pytest.raises(ManifestError, match="r000_s00"):
        load_manifest(tmp_path / "prep" / "manifest.parquet", tmp_path / "raw")


def test_split_fractions_must_sum_to_one_and_rooms_must_suffice(tmp_path):
    with pytest.raises(ParamError, match="prepare.splits: train \\+ val \\+ test must sum to 1"):
        parse(SplitConfig, {"train": 0.9, "val": 0.2, "test": 0.1}, "prepare.splits")
    make_raw(tmp_path / "raw", n_rooms=2)
    with pytest.raises(ParamError, match="2 room"):
        build_manifest(tmp_path / "raw", tmp_path / "prep", SplitConfig(), seed=0)
