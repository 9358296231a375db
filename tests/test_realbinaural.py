"""RealBinaural adapter on tiny trees in the layout of the DiffBinaural code (REFERENCE.md section 5): real
WAVs, JPEG frames that carry their own number, a detection CSV and the two split CSVs."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image
from test_fairplay import image_index, index_image, lag, leftovers

from binaural_lab.audio.mel import MEL_HOP
from binaural_lab.config import ParamError, UserError
from binaural_lab.data.clips import COLUMNS, grid_time
from binaural_lab.data.manifest import SPLITS, SplitConfig, build_manifest
from binaural_lab.data.realbinaural import RealBinauralError, adapt_realbinaural

SOURCE_SR = 22050
LEAD = 6  # samples at 22.05 kHz by which the left ear leads (0.27 ms)
FRAMES_FPS = 10
SIZE = (48, 64)  # frame height, width
VIDEOS = ("video001", "video002", "video003", "video004", "video005")
TRAIN_ROWS = [  # video_id, start_time, end_time, action_label
    ("video001", 0.0, 2.0, "speaking"),
    ("video001", 2.0, 4.0, "playing_instrument"),
    ("video002", 0.5, 3.5, "speaking"),
    ("video003", 0.0, 4.0, "clapping"),
    ("video004", 0.0, 4.0, "speaking"),
]
VAL_ROWS = [("video005", 0.0, 4.0, "playing_instrument")]


def ears(seed: int, n: int) -> np.ndarray:
    """``[2, n]`` noise heard first by the left ear, LEAD samples before the quieter right one."""
    noise = np.random.default_rng(seed).standard_normal(n + LEAD) * 0.2
    return np.stack([noise[LEAD:], 0.6 * noise[:n]]).astype(np.float32)


def boxes(frame: int) -> list[tuple[float, float, float, float, float, str]]:
    """The detections of frame ``frame`` (x1, y1, x2, y2, score, label): a large, less sure box first in
    the file, then a small, surer one; every third frame has none."""
    if frame % 3 == 0:
        return []
    x = frame % 20
    return [(x, 4.0, x + 40.0, 44.0, 0.55, "person"), (2.0 + x, 2.0, 12.0 + x, 10.0, 0.9, "guitar")]


def make_realbinaural(root: Path, seconds: float = 4.0, frames_fps: int = FRAMES_FPS) -> Path:
    """``root`` laid out as the DiffBinaural code reads it: processed/{binaural,mono}_audios_22050Hz/<id>.wav,
    processed/frames/<id>/frame_000001.jpg... (``frames_fps`` per second from t = 0, each showing its number),
    action_detection_results/detection_results.csv (:func:`boxes`) and splits/{train,val}.csv. Returns ``root``."""
    for sub in ("processed/binaural_audios_22050Hz", "processed/mono_audios_22050Hz", "splits"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "action_detection_results").mkdir(exist_ok=True)
    detections = []
    for v, video in enumerate(VIDEOS):
        binaural = ears(v, round(seconds * SOURCE_SR))
        sf.write(root / "processed/binaural_audios_22050Hz" / f"{video}.wav", binaural.T, SOURCE_SR, "PCM_16")
        sf.write(root / "processed/mono_audios_22050Hz" / f"{video}.wav", binaural.mean(0), SOURCE_SR, "PCM_16")
        frames = root / "processed/frames" / video
        frames.mkdir(parents=True, exist_ok=True)
        for k in range(1, round(seconds * frames_fps) + 1):
            Image.fromarray(index_image(k)).save(frames / f"frame_{k:06d}.jpg", quality=95)
            detections += [(video, k, *box) for box in boxes(k)]
    columns = ["video_id", "frame", "x1", "y1", "x2", "y2", "score", "label"]
    pd.DataFrame(detections, columns=columns).to_csv(
        root / "action_detection_results/detection_results.csv", index=False
    )
    for name, rows in (("train", TRAIN_ROWS), ("val", VAL_ROWS)):
        pd.DataFrame(rows, columns=["video_id", "start_time", "end_time", "action_label"]).to_csv(
            root / "splits" / f"{name}.csv", index=False
        )
    return root


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_realbinaural(tmp_path_factory.mktemp("realbinaural") / "src")


@pytest.fixture(scope="module")
def adapted(source, tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    out = tmp_path_factory.mktemp("adapted") / "raw"
    return adapt_realbinaural(source, out, 16000, 0.5, seed=3), out


def test_layout_and_columns(adapted):
    table, out = adapted
    assert table.equals(pd.read_parquet(out / "scenes.parquet"))
    assert set(COLUMNS) | {"sources", "action_label", "csv_split", "frame_index"} <= set(table.columns)
    assert "depth_path" not in table.columns
    n = 8000 // MEL_HOP * MEL_HOP
    per_row = [int((end - start) * 16000) // n for _, start, end, _ in TRAIN_ROWS + VAL_ROWS]
    assert len(table) == sum(per_row) and (table["num_samples"] == n).all()
    assert sorted(p.name for p in out.iterdir()) == ["binaural", "frames", "mono", "scenes.parquet"]
    for row in table.itertuples():
        assert row.room_id == row.clip and row.frame_path == f"frames/{row.clip}/{row.sample_id}.jpg"
        for path, channels in ((row.binaural_path, 2), (row.mono_path, 1)):
            info = sf.info(out / path)
            assert (info.samplerate, info.channels, info.frames) == (16000, channels, n)
    video1 = table[table["clip"] == "video001"].sort_values("scene_index")
    assert list(video1["scene_index"]) == list(range(len(video1)))
    assert list(video1["start_seconds"]) == pytest.approx(
        [k * n / 16000 for k in range(4)] + [2 + k * n / 16000 for k in range(4)]
    )
    assert list(video1["action_label"]) == ["speaking"] * 4 + ["playing_instrument"] * 4


def test_splits_val_is_test_and_val_comes_from_train_videos(adapted, source, tmp_path):
    table, out = adapted
    videos = table.groupby("room_id")["published_split"].agg(set)
    assert (videos.map(len) == 1).all()  # no video in two splits
    videos = videos.map(min)
    assert videos["video005"] == "test"
    assert sorted(videos.value_counts().to_dict().items()) == [("test", 1), ("train", 3), ("val", 1)]
    assert set(table.loc[table["published_split"] == "val", "csv_split"]) == {"train"}
    again = adapt_realbinaural(source, tmp_path / "again", 16000, None, seed=3)
    assert again.groupby("room_id")["published_split"].first().equals(videos)  # the seed fixes the draw
    drawn = {
        adapt_realbinaural(source, tmp_path / f"s{s}", 16000, None, seed=s)
        .query("published_split == 'val'")["clip"]
        .iloc[0]
        for s in range(6)
    }
    assert len(drawn) > 1 and drawn <= {"video001", "video002", "video003", "video004"}
    manifest = build_manifest(out, tmp_path / "prep", SplitConfig(), seed=0)
    assert (manifest["split"] == manifest["published_split"]).all() and set(manifest["split"]) == set(SPLITS)


def test_frame_and_sources_are_those_at_the_segment_centre(adapted):
    table, out = adapted
    for row in table.itertuples():
        centre = row.start_seconds + row.num_samples / 2 / 16000
        assert row.frame_index == round(grid_time(centre, 10.0) * FRAMES_FPS) + 1
        assert row.frame_seconds == pytest.approx((row.frame_index - 1) / FRAMES_FPS)
        with Image.open(out / row.frame_path) as img:
            assert img.size == SIZE[::-1] and image_index(np.asarray(img)) == row.frame_index
        sources = json.loads(row.sources)
        expected = sorted(boxes(row.frame_index), key=lambda b: -b[4])
        assert row.n_sources == len(sources) == len(expected)
        for src, (x1, y1, x2, y2, score, label) in zip(sources, expected, strict=True):
            assert src == {
                "pixel_x": (x1 + x2) / 2,
                "pixel_y": (y1 + y2) / 2,
                "box": [x1, y1, x2, y2],
                "class": label,
                "score": score,
            }
    assert (table["n_sources"] == 0).any() and (table["n_sources"] == 2).any()


@pytest.mark.parametrize("rate", [SOURCE_SR, 16000])
def test_left_ear_leads_and_mono_is_the_shipped_one(source, tmp_path, rate):
    table = adapt_realbinaural(source, tmp_path / "raw", rate, None)
    assert len(table) == len(TRAIN_ROWS) + len(VAL_ROWS)
    for row in table.itertuples():
        binaural, sr = sf.read(tmp_path / "raw" / row.binaural_path, dtype="float32", always_2d=True)
        mono, _ = sf.read(tmp_path / "raw" / row.mono_path, dtype="float32")
        assert sr == rate and len(mono) == row.num_samples
        measured = lag(binaural.T)
        assert measured > 0 and abs(measured - LEAD * rate / SOURCE_SR) <= 1
        assert np.abs(binaural[:, 0]).mean() > np.abs(binaural[:, 1]).mean()  # L stays L
        np.testing.assert_allclose(mono, binaural.mean(axis=1), atol=2e-4)  # 16-bit mono, mean of 16-bit ears
        if rate == SOURCE_SR:
            shipped, _ = sf.read(source / "processed/mono_audios_22050Hz" / f"{row.clip}.wav", dtype="float32")
            start = round(row.start_seconds * rate)
            np.testing.assert_array_equal(mono, shipped[start : start + row.num_samples])


def test_normalized_boxes_and_timestamps(tmp_path):
    source = make_realbinaural(tmp_path / "src")
    csv = source / "action_detection_results/detection_results.csv"
    det = pd.read_csv(csv)
    det = det.assign(timestamp=(det["frame"] - 1) / FRAMES_FPS).drop(columns=["frame", "score"])
    for col, size in (("x1", 64), ("x2", 64), ("y1", 48), ("y2", 48)):
        det[col] = det[col] / size
    det.rename(columns={"label": "action_label"}).to_csv(csv, index=False)
    table = adapt_realbinaural(source, tmp_path / "raw", 16000, 0.5, frames_fps=10, box_units="normalized")
    for row in table.itertuples():
        expected = sorted(boxes(row.frame_index), key=lambda b: -(b[2] - b[0]) * (b[3] - b[1]))  # no score: by area
        got = json.loads(row.sources)
        assert [s["class"] for s in got] == [b[5] for b in expected] and all("score" not in s for s in got)
        assert [s["pixel_x"] for s in got] == pytest.approx([(b[0] + b[2]) / 2 for b in expected])
        assert [s["pixel_y"] for s in got] == pytest.approx([(b[1] + b[3]) / 2 for b in expected])


def test_frame_rate_is_inferred_or_given(tmp_path):
    source = make_realbinaural(tmp_path / "src", frames_fps=5)
    inferred = adapt_realbinaural(source, tmp_path / "a", 16000, 0.5)
    given = adapt_realbinaural(source, tmp_path / "b", 16000, 0.5, frames_fps=5)
    assert (inferred["frames_fps"] == 5).all() and inferred["frame_index"].equals(given["frame_index"])
    for row in inferred.itertuples():
        with Image.open(tmp_path / "a" / row.frame_path) as img:
            assert image_index(np.asarray(img)) == row.frame_index == round(row.frame_seconds * 5) + 1


def adapt_fails(source: Path, error: type[Exception], pattern: str, **kwargs) -> None:
    """Adapt a clean copy, then ``source`` that the test broke: the error must name the problem and leave
    the first output as it was, with no temporary folders left."""
    out = source.parent / "raw"
    adapt_realbinaural(make_realbinaural(source.parent / "good"), out, 16000, None)
    before = (out / "scenes.parquet").read_bytes()
    with pytest.raises(error, match=pattern):
        adapt_realbinaural(source, out, 16000, None, **kwargs)
    assert (out / "scenes.parquet").read_bytes() == before
    assert leftovers(source.parent) == ["good", "raw"]


def edit_csv(path: Path, **changes) -> None:
    table = pd.read_csv(path)
    for key, value in changes.items():
        if value is None:
            table = table.drop(columns=key)
        else:
            table = value(table)
    table.to_csv(path, index=False)


@pytest.fixture
def broken(tmp_path) -> Path:
    return make_realbinaural(tmp_path / "src")


@pytest.mark.parametrize("name", ["train", "val"])
def test_missing_split_column_is_named(broken, name):
    edit_csv(broken / "splits" / f"{name}.csv", end_time=None)
    adapt_fails(broken, RealBinauralError, rf"splits/{name}\.csv: column\(s\) \['end_time'\] missing")


def test_missing_detection_column_is_named(broken):
    edit_csv(broken / "action_detection_results/detection_results.csv", y2=None)
    adapt_fails(broken, RealBinauralError, r"detection_results\.csv: column\(s\) \['y2'\] missing")
    edit_csv(broken / "action_detection_results/detection_results.csv", frame=None)
    adapt_fails(
        broken, RealBinauralError, r"missing .*expected \['video_id', \"one of \['frame', 'frame_id', 'timestamp'\]\""
    )


def test_unknown_video_in_detections_is_named(broken):
    csv = broken / "action_detection_results/detection_results.csv"
    edit_csv(csv, video_id=lambda t: t.assign(video_id=t["video_id"].where(t.index != 7, "ghost")))
    adapt_fails(
        broken, RealBinauralError, r"detection_results\.csv line 9: video_id 'ghost' is not a video of the dataset"
    )


def test_bad_split_values_are_named(broken):
    edit_csv(
        broken / "splits/train.csv",
        end_time=lambda t: t.assign(end_time=t["end_time"].astype(str).where(t.index != 2, "soon")),
    )
    adapt_fails(broken, RealBinauralError, r"train\.csv line 4: column 'end_time' is 'soon', not a finite number")


def test_reversed_time_range_is_named(broken):
    edit_csv(broken / "splits/val.csv", start_time=lambda t: t.assign(start_time=5.0))
    adapt_fails(broken, RealBinauralError, r"val\.csv line 2: expected 0 <= start_time < end_time, got 5 and 4")


def test_range_beyond_the_audio_is_named(broken):
    edit_csv(broken / "splits/train.csv", end_time=lambda t: t.assign(end_time=t["end_time"].where(t.index != 4, 9.0)))
    adapt_fails(
        broken, RealBinauralError, r"train\.csv line 6: end_time 9 s is after the end of .*video004\.wav \(4\.000 s\)"
    )


def test_video_in_both_csvs_is_refused(broken):
    edit_csv(broken / "splits/val.csv", video_id=lambda t: t.assign(video_id="video002"))
    adapt_fails(broken, RealBinauralError, r"val\.csv line 2: video 'video002' is also listed in .*train\.csv line 4")


def test_missing_mono_file_is_named(broken):
    (broken / "processed/mono_audios_22050Hz/video003.wav").unlink()
    adapt_fails(
        broken, RealBinauralError, r"train\.csv line 5: video 'video003': .*mono_audios_22050Hz/video003\.wav not found"
    )


def test_mono_of_another_length_is_named(broken):
    path = broken / "processed/mono_audios_22050Hz/video004.wav"
    mono, _ = sf.read(path)
    sf.write(path, mono[:-10], SOURCE_SR, "PCM_16")
    adapt_fails(
        broken,
        RealBinauralError,
        r"video004\.wav: 88190 samples at 22050 Hz, but the binaural .* has 88200 at 22050 Hz",
    )


def test_missing_frame_is_named(broken):
    (broken / "processed/frames/video003/frame_000021.jpg").unlink()  # the centre of 0..4 s
    adapt_fails(broken, RealBinauralError, r"video003/frame_000021\.jpg: not found, the frame at 2\.000 s")


def test_frame_count_off_any_rate_is_named(broken):
    for k in range(11, 41):
        (broken / f"processed/frames/video002/frame_{k:06d}.jpg").unlink()
    for k in range(101, 109):
        (broken / f"processed/frames/video002/frame_{k:06d}.jpg").write_bytes(b"")
    adapt_fails(
        broken, RealBinauralError, r"video002: 18 frames for 4\.000 s of audio \(4\.50 per second\) is no constant"
    )


def test_box_outside_its_frame_is_named(broken):
    csv = broken / "action_detection_results/detection_results.csv"
    edit_csv(csv, x2=lambda t: t.assign(x2=t["x2"] + 100.0 * (t["video_id"] == "video001")))
    adapt_fails(
        broken,
        RealBinauralError,
        r"detection_results\.csv line \d+: box .* \(pixels\) lies outside .*video001/frame_\d+\.jpg \(64 x 48\)",
    )


def test_empty_box_is_named(broken):
    csv = broken / "action_detection_results/detection_results.csv"
    edit_csv(csv, x2=lambda t: t.assign(x2=t["x2"].where(t.index != 0, t.loc[0, "x1"])))
    adapt_fails(broken, RealBinauralError, r"detection_results\.csv line 2: box .* is not 0 <= x1 < x2")


def test_bad_params_are_named(tmp_path):
    with pytest.raises(ParamError, match=r"val_fraction: expected a fraction strictly between 0 and 1, got 1\.0"):
        adapt_realbinaural(tmp_path, tmp_path / "raw", 16000, None, val_fraction=1.0)
    with pytest.raises(ParamError, match=r"box_units: 'percent' is not one of \['pixels', 'normalized'\]"):
        adapt_realbinaural(tmp_path, tmp_path / "raw", 16000, None, box_units="percent")
    with pytest.raises(ParamError, match="frames_fps: expected a positive number"):
        adapt_realbinaural(tmp_path, tmp_path / "raw", 16000, None, frames_fps=-1)
    with pytest.raises(ParamError, match="segment_seconds: expected a positive number"):
        adapt_realbinaural(tmp_path, tmp_path / "raw", 16000, 0)
    source = make_realbinaural(tmp_path / "src")
    with pytest.raises(ParamError, match=r"val_fraction: .*train\.csv lists 4 video\(s\), too few to hold out 4"):
        adapt_realbinaural(source, tmp_path / "raw", 16000, None, val_fraction=0.9)
    with pytest.raises(
        RealBinauralError, match=r"no samples in split\(s\) \[.*\]: .*shorter than segment_seconds \(4\.5 s\)"
    ):
        adapt_realbinaural(source, tmp_path / "raw", 16000, 4.5)
    with pytest.raises(RealBinauralError, match="RealBinaural folder not found"):
        adapt_realbinaural(tmp_path / "nowhere", tmp_path / "raw", 16000, None)
    with pytest.raises(ParamError, match="overlap"):
        adapt_realbinaural(source, source / "raw", 16000, None)
    assert leftovers(tmp_path) == []


def test_unreadable_audio_is_a_user_error(broken):
    (broken / "processed/binaural_audios_22050Hz/video002.wav").write_bytes(b"RIFF?")
    adapt_fails(broken, UserError, r"video002\.wav: not a readable audio file")
