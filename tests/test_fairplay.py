"""FAIR-Play adapter on tiny trees in the distributed layout (REFERENCE.md section 5): real WAVs, h5 split
files and mp4 videos whose frames carry their own index."""

from collections.abc import Callable, Sequence
from pathlib import Path

import av
import h5py
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from PIL import Image

from binaural_lab.audio.mel import MEL_HOP
from binaural_lab.config import ParamError, UserError
from binaural_lab.data.clips import COLUMNS, VideoFileError, grid_time, read_video_frames
from binaural_lab.data.fairplay import (
    PSEUDOBINAURAL_DIR,
    FairPlayError,
    adapt_fairplay,
    read_official_split,
    read_pseudobinaural_split,
)
from binaural_lab.data.manifest import SPLITS, SplitConfig, build_manifest

SOURCE_SR = 48000
LEAD = 12  # samples at 48 kHz by which the left ear leads (0.25 ms)
AUTHORS_ROOT = "/private/home/someone/datasets/BINAURAL_MUSIC_ROOM/binaural16k"
LAST_CLIP = 1871
SIZE = (48, 64)  # frame height, width
BLOCK = 16  # the frame index is written in bits, one 16 x 16 block per bit (4 x 3 blocks)


def clip_name(i: int) -> str:
    return f"{i:06d}"


def ears(seed: int, n: int, lead: int = LEAD) -> np.ndarray:
    """``[2, n]`` noise heard first by the left ear, ``lead`` samples before the quieter right one."""
    noise = np.random.default_rng(seed).standard_normal(n + lead) * 0.2
    return np.stack([noise[lead:], 0.6 * noise[:n]]).astype(np.float32)


def index_image(i: int) -> np.ndarray:
    """An RGB frame whose 12 blocks are white where the bits of ``i`` are set."""
    img = np.zeros((*SIZE, 3), np.uint8)
    for bit in range(12):
        if (i >> bit) & 1:
            row, col = divmod(bit, 4)
            img[row * BLOCK : (row + 1) * BLOCK, col * BLOCK : (col + 1) * BLOCK] = 255
    return img


def image_index(img: np.ndarray) -> int:
    """The frame index written by :func:`index_image` (block centres, robust to compression)."""
    value = 0
    for bit in range(12):
        row, col = divmod(bit, 4)
        centre = img[row * BLOCK + 4 : (row + 1) * BLOCK - 4, col * BLOCK + 4 : (col + 1) * BLOCK - 4]
        value |= int(centre.mean() > 128) << bit
    return value


def write_video(
    path: Path, seconds: float, fps: float, image: Callable[[int], np.ndarray] = index_image, gop: int = 12
) -> None:
    """An h264 mp4 (a keyframe every ``gop`` frames, B-frames) of ``seconds * fps`` frames ``image(i)``."""
    size = image(0).shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=round(fps))
        stream.height, stream.width = size
        stream.pix_fmt = "yuv420p"
        stream.options = {"g": str(gop)}
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(image(i), format="rgb24")
            frame.pts = i
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def write_clip(root: Path, i: int, seconds: float, video_seconds: float | None = None, video_fps: float = 30.0) -> None:
    name = clip_name(i)
    sf.write(root / "binaural_audios" / f"{name}.wav", ears(i, round(seconds * SOURCE_SR)).T, SOURCE_SR, "PCM_16")
    write_video(root / "videos" / f"{name}.mp4", seconds if video_seconds is None else video_seconds, video_fps)


def default_ids(n_clips: int) -> list[int]:
    """The first ``n_clips - 1`` clips and the last clip of the real dataset (001871), which the registry
    expects in a download."""
    return [*range(1, n_clips), LAST_CLIP]


def parts_of(ids: Sequence[int], k: int) -> dict[str, list[str]]:
    """Split ``k``'s parts: the clips rotated by ``k - 1``, one for test, one for val, the rest train."""
    names = [clip_name(i) for i in ids]
    names = names[k - 1 :] + names[: k - 1]
    return {"test": names[:1], "val": names[1:2], "train": names[2:]}


def make_fairplay(
    root: Path,
    n_clips: int = 6,
    seconds: float = 3.0,
    video_fps: float = 30.0,
    ids: Sequence[int] | None = None,
) -> Path:
    """``root`` as distributed, with the clips ``ids`` (default :func:`default_ids`): binaural_audios/,
    videos/, splits/split1..10/{train,val,test}.h5 (absolute binaural16k paths, :func:`parts_of`) and, as
    PseudoBinaural ships them, new_splits/split1..5/*.txt (``NNNNNN.mp3`` lines, no newline after the
    last). Returns ``root``."""
    ids = default_ids(n_clips) if ids is None else list(ids)
    for sub in ("binaural_audios", "videos"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i in ids:
        write_clip(root, i, seconds, video_fps=video_fps)
    for k in range(1, 11):
        (root / "splits" / f"split{k}").mkdir(parents=True)
        for part, names in parts_of(ids, k).items():
            with h5py.File(root / "splits" / f"split{k}" / f"{part}.h5", "w") as f:
                f.create_dataset("audio", data=np.array([f"{AUTHORS_ROOT}/{n}.wav".encode() for n in names]))
    for k in range(1, 6):
        (root / "new_splits" / f"split{k}").mkdir(parents=True)
        for part, names in parts_of(ids[::-1], k).items():
            (root / "new_splits" / f"split{k}" / f"{part}.txt").write_text("\n".join(f"{n}.mp3" for n in names))
    return root


def leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name != "src")


def lag(audio: np.ndarray, max_lag: int = 40) -> int:
    """Samples by which the right channel lags the left (positive: left earlier), by cross-correlation."""
    left, right = audio[0], audio[1]
    n = len(left) - 2 * max_lag
    scores = [
        float(np.dot(left[max_lag : max_lag + n], right[max_lag + d : max_lag + d + n]))
        for d in range(-max_lag, max_lag + 1)
    ]
    return int(np.argmax(scores)) - max_lag


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    return make_fairplay(tmp_path_factory.mktemp("fairplay") / "src")


@pytest.fixture(scope="module")
def adapted(source, tmp_path_factory) -> tuple[pd.DataFrame, Path]:
    out = tmp_path_factory.mktemp("adapted") / "raw"
    return adapt_fairplay(source, out, 16000, "official", 1, 1.0), out


def test_layout_and_columns(adapted):
    table, out = adapted
    assert table.equals(pd.read_parquet(out / "scenes.parquet"))
    assert set(COLUMNS) <= set(table.columns) and "depth_path" not in table.columns
    n = 16000 // MEL_HOP * MEL_HOP
    assert len(table) == 6 * 3 and (table["num_samples"] == n).all() and (table["sample_rate"] == 16000).all()
    assert sorted(p.name for p in out.iterdir()) == ["binaural", "frames", "mono", "scenes.parquet"]
    for row in table.itertuples():
        assert row.room_id == row.clip and row.binaural_path == f"binaural/{row.sample_id}.wav"
        assert row.frame_path == f"frames/{row.clip}/{row.sample_id}.jpg"
        assert row.start_seconds == pytest.approx(row.scene_index * n / 16000)
        for path, channels in ((row.binaural_path, 2), (row.mono_path, 1)):
            info = sf.info(out / path)
            assert (info.samplerate, info.channels, info.frames) == (16000, channels, n)
        with Image.open(out / row.frame_path) as img:
            assert (img.format, img.mode, img.size) == ("JPEG", "RGB", SIZE[::-1])
    assert sorted(table["published_split"].unique()) == sorted(SPLITS)


def test_official_split_maps_absolute_paths_by_file_name(source, adapted):
    table, _ = adapted
    with h5py.File(source / "splits" / "split1" / "train.h5") as f:
        listed = f["audio"][()]
    assert listed.dtype.kind == "S" and all(p.startswith(AUTHORS_ROOT.encode()) for p in listed)
    assert read_official_split(source / "splits" / "split1" / "train.h5") == parts_of(default_ids(6), 1)["train"]
    for part, names in parts_of(default_ids(6), 1).items():
        rows = table[table["published_split"] == part]
        assert sorted(rows["clip"].unique()) == sorted(names)
        assert set(rows["split_file"]) == {f"official/split1/{part}.h5"}


def test_segments_never_straddle_splits_and_prepare_keeps_them(adapted, tmp_path):
    table, out = adapted
    assert (table.groupby("room_id")["published_split"].nunique() == 1).all()
    assert (table.groupby("room_id").size() == 3).all()
    manifest = build_manifest(out, tmp_path / "prep", SplitConfig(), seed=0)
    assert (manifest["split"] == manifest["published_split"]).all()


@pytest.mark.parametrize("rate", [22050, 16000])
def test_left_ear_still_leads_after_resampling(source, tmp_path, rate):
    table = adapt_fairplay(source, tmp_path / "raw", rate, "official", 1, None)
    assert len(table) == 6 and (table["num_samples"] == 3 * rate // MEL_HOP * MEL_HOP).all()
    for row in table.itertuples():
        binaural, sr = sf.read(tmp_path / "raw" / row.binaural_path, dtype="float32", always_2d=True)
        mono, _ = sf.read(tmp_path / "raw" / row.mono_path, dtype="float32")
        assert sr == rate
        measured = lag(binaural.T)
        assert measured > 0 and abs(measured - LEAD * rate / SOURCE_SR) <= 1
        assert np.abs(binaural[:, 0]).mean() > np.abs(binaural[:, 1]).mean()  # L stays L
        np.testing.assert_allclose(mono, binaural.mean(axis=1), atol=1e-6)


@pytest.mark.parametrize("video_fps", [30.0, 10.0])
def test_frame_is_the_one_at_the_segment_centre(tmp_path, video_fps):
    source = make_fairplay(tmp_path / "src", n_clips=3, seconds=2.0, video_fps=video_fps)
    table = adapt_fairplay(source, tmp_path / "raw", 22050, "official", 2, 0.3)
    n = round(0.3 * 22050) // MEL_HOP * MEL_HOP
    assert len(table) == 3 * (2 * 22050 // n)
    for row in table.itertuples():
        centre = (row.scene_index * n + n / 2) / 22050
        assert row.frame_seconds == pytest.approx(grid_time(centre, 10.0))
        with Image.open(tmp_path / "raw" / row.frame_path) as img:
            assert image_index(np.asarray(img)) == round(row.frame_seconds * video_fps)


@pytest.mark.parametrize("gop", [1, 12, 300])  # a keyframe on every frame, twice a second, none after the first
def test_each_wanted_time_gets_its_nearest_frame_whatever_the_keyframes(tmp_path, gop):
    video = tmp_path / "v.mp4"
    write_video(video, 4.0, 30.0, gop=gop)
    # unsorted, repeated, within one frame of each other, across keyframes, the first and the last frame
    frames = [61.3, 2.2, 0.0, 61.3, 61.4, 61.6, 30.2, 29.9, 119.0, 12.7, 11.8, 100.1, 0.4]
    images = read_video_frames(video, [f / 30.0 for f in frames], 4.0, 10.0)
    assert [image_index(img) for img in images] == [round(f) for f in frames]


def test_pseudobinaural_lines_without_final_newline(source, tmp_path):
    listing = source / "new_splits" / "split3" / "train.txt"
    text = listing.read_text()
    assert not text.endswith("\n") and text.endswith(".mp3")
    expected = parts_of(default_ids(6)[::-1], 3)["train"]
    assert read_pseudobinaural_split(listing) == expected
    odd = tmp_path / "odd.txt"
    odd.write_text("\r\n".join(f"  {n}.mp3 " for n in expected) + "\r\n\n")
    assert read_pseudobinaural_split(odd) == expected
    table = adapt_fairplay(
        source, tmp_path / "raw", 16000, "pseudobinaural", 3, None, pseudo_splits=source / "new_splits"
    )
    assert sorted(table.loc[table["published_split"] == "train", "clip"]) == sorted(expected)
    assert set(table["split_file"]) == {f"pseudobinaural/split3/{p}.txt" for p in SPLITS}


def test_shipped_pseudobinaural_splits():
    assert (PSEUDOBINAURAL_DIR / "README.md").is_file()
    assert "a5d562c979c524daebb102656a0df2c5d16f45f6" in (PSEUDOBINAURAL_DIR / "README.md").read_text()
    every_clip = {clip_name(i) for i in range(1, 1872)}
    for k in range(1, 6):
        parts = {}
        for part, count in (("train", 1497), ("val", 187), ("test", 187)):
            path = PSEUDOBINAURAL_DIR / f"split{k}" / f"{part}.txt"
            raw = path.read_bytes()
            assert not raw.endswith(b"\n") and raw.count(b"\n") == count - 1
            assert all(len(line) == 10 and line.endswith(b".mp3") for line in raw.split(b"\n"))
            parts[part] = read_pseudobinaural_split(path)
            assert len(parts[part]) == len(set(parts[part])) == count
        train, val, test = (set(parts[p]) for p in ("train", "val", "test"))
        assert not (train & val or train & test or val & test)
        assert train | val | test == every_clip


def test_clips_in_no_part_are_skipped(tmp_path):
    source = make_fairplay(tmp_path / "src", n_clips=3, seconds=1.0)
    write_clip(source, 42, 1.0)
    table = adapt_fairplay(source, tmp_path / "raw", 16000, "official", 1, None)
    assert sorted(table["clip"]) == [clip_name(i) for i in default_ids(3)]


@pytest.mark.parametrize(
    ("split_set", "split", "pattern"),
    [
        ("official", 11, r"split: 11 is not a split of 'official'; expected an integer 1\.\.10"),
        ("official", 0, r"expected an integer 1\.\.10"),
        ("pseudobinaural", 6, r"split: 6 is not a split of 'pseudobinaural'; expected an integer 1\.\.5"),
        ("official", "1", r"split: '1' is not a split"),
        ("paper", 1, r"split_set: 'paper' is not one of \['official', 'pseudobinaural'\]"),
    ],
)
def test_bad_split_is_named(tmp_path, split_set, split, pattern):
    source = make_fairplay(tmp_path / "src", n_clips=3, seconds=1.0)
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "keep.txt").write_text("previous output")
    with pytest.raises(ParamError, match=pattern):
        adapt_fairplay(source, tmp_path / "raw", 16000, split_set, split, None)
    assert leftovers(tmp_path) == ["raw"] and (tmp_path / "raw" / "keep.txt").read_text() == "previous output"


def test_bad_params_are_named(tmp_path):
    with pytest.raises(ParamError, match="sample_rate: expected a positive integer"):
        adapt_fairplay(tmp_path, tmp_path / "raw", 0, "official", 1, None)
    with pytest.raises(ParamError, match="segment_seconds: 0.001 s at 16000 Hz is shorter than one mel hop"):
        adapt_fairplay(tmp_path, tmp_path / "raw", 16000, "official", 1, 0.001)
    with pytest.raises(ParamError, match="fps: expected a positive number"):
        adapt_fairplay(tmp_path, tmp_path / "raw", 16000, "official", 1, None, fps=0)


def adapt_fails(source: Path, error: type[Exception], pattern: str, split: int = 1, **kwargs) -> None:
    """Adapt twice: once cleanly, then after the test broke ``source``; the error must name the problem
    and leave the first output as it was, with no temporary folders left."""
    out = source.parent / "raw"
    if not out.exists():
        adapt_fairplay(make_fairplay(source.parent / "good"), out, 16000, "official", split, None)
    before = (out / "scenes.parquet").read_bytes()
    with pytest.raises(error, match=pattern):
        adapt_fairplay(source, out, 16000, "official", split, None, **kwargs)
    assert (out / "scenes.parquet").read_bytes() == before
    assert leftovers(source.parent) == ["good", "raw"]


def test_missing_clip_names_split_file_and_clip(tmp_path):
    source = make_fairplay(tmp_path / "src", n_clips=3, seconds=1.0)
    (source / "binaural_audios" / "000002.wav").unlink()
    adapt_fails(
        source,
        FairPlayError,
        r"split2/test\.h5: clip 000002 is listed but its audio .*000002\.wav is not found",
        split=2,
    )


def test_missing_video_names_split_file_and_clip(tmp_path):
    source = make_fairplay(tmp_path / "src", n_clips=3, seconds=1.0)
    (source / "videos" / "001871.mp4").unlink()
    adapt_fails(source, FairPlayError, r"split1/train\.h5: clip 001871 is listed but its video .*001871\.mp4")


def test_missing_split_file_is_named(tmp_path):
    source = make_fairplay(tmp_path / "src", n_clips=3, seconds=1.0)
    (source / "splits" / "split1" / "val.h5").unlink()
    adapt_fails(source, FairPlayError, r"split1/val\.h5: split file not found")


def test_split_file_without_audio_dataset_is_named(tmp_path):
    source = make_fairplay(tmp_path / "src", n_clips=3, seconds=1.0)
    with h5py.File(source / "splits" / "split1" / "val.h5", "w") as f:
        f.create_dataset("paths", data=np.array([b"x/000002.wav"]))
    adapt_fails(source, FairPlayError, r"val\.h5: no dataset 'audio' \(holds \['paths'\]\)")


def test_clip_in_two_parts_is_refused(tmp_path):
    source = make_fairplay(tmp_path / "src", n_clips=3, seconds=1.0)
    with h5py.File(source / "splits" / "split1" / "test.h5", "w") as f:
        f.create_dataset("audio", data=np.array([f"{AUTHORS_ROOT}/001871.wav".encode()]))
    adapt_fails(source, FairPlayError, r"test\.h5: clip 001871 is also listed in .*train\.h5")


def test_unreadable_video_is_named(tmp_path):
    source = make_fairplay(tmp_path / "src", n_clips=3, seconds=1.0)
    (source / "videos" / "001871.mp4").write_bytes(b"not a video at all")
    adapt_fails(source, VideoFileError, r"001871\.mp4: not a readable video")


def test_short_video_is_named(tmp_path):
    source = make_fairplay(tmp_path / "src", n_clips=3, seconds=1.0)
    write_clip(source, 2, 1.0, video_seconds=0.5)
    adapt_fails(source, VideoFileError, r"000002\.mp4: video lasts 0\.500 s, shorter than its audio \(1\.000 s\)")


def test_unreadable_audio_is_named(tmp_path):
    source = make_fairplay(tmp_path / "src", n_clips=3, seconds=1.0)
    (source / "binaural_audios" / "000001.wav").write_bytes(b"RIFF garbage")
    adapt_fails(source, UserError, r"000001\.wav: not a readable audio file")


def test_segment_longer_than_a_clip_is_named(tmp_path):
    source = make_fairplay(tmp_path / "src", n_clips=3, seconds=1.0)
    with pytest.raises(FairPlayError, match=r"000001\.wav: 1\.000 s of audio, shorter than one segment \(2\.0 s\)"):
        adapt_fairplay(source, tmp_path / "raw", 16000, "official", 1, 2.0)
    assert leftovers(tmp_path) == []


def test_missing_folder_and_overlapping_output_are_refused(tmp_path):
    with pytest.raises(FairPlayError, match="FAIR-Play folder not found"):
        adapt_fairplay(tmp_path / "nowhere", tmp_path / "raw", 16000, "official", 1, None)
    source = make_fairplay(tmp_path / "src", n_clips=3, seconds=1.0)
    with pytest.raises(ParamError, match="overlap"):
        adapt_fairplay(source, source / "raw", 16000, "official", 1, None)
    assert not (source / "raw").exists()
