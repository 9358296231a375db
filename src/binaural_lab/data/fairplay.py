"""FAIR-Play (REFERENCE.md section 5) in the binaural-scene layout of the generation family.

:func:`adapt_fairplay` reads a FAIR-Play folder as distributed, ``binaural_audios/NNNNNN.wav`` (48 kHz
16-bit stereo, about 10 s), ``videos/NNNNNN.mp4`` and ``splits/split1..split10/{train,val,test}.h5``,
and writes the layout of :mod:`binaural_lab.data.clips`: fixed-length segments of every clip of one
split, their frames, and ``scenes.parquet`` whose ``published_split`` keeps the split's parts.

Splits (``split_set``):

* ``"official"``: ``splits/split<split>/<part>.h5``, ``split`` 1..10. Each holds one dataset ``audio``
  of fixed-length byte strings: absolute paths on the authors' machine into ``binaural16k/`` (a 16 kHz
  copy that is not distributed); only the file name is kept and looked up in ``binaural_audios/``.
* ``"pseudobinaural"``: the 5 scene-disjoint splits of PseudoBinaural (Xu et al., CVPR 2021),
  ``split`` 1..5, shipped in ``splits/pseudobinaural/`` (see its README.md): one ``NNNNNN.mp3`` per
  line, no newline after the last line. Lines are stripped rather than cut by one character (their
  loader's ``line[:-1]`` also eats the last line's final character); the stem names the clip.

A clip listed in a split file but missing on disk is an error naming the file and the clip; clips on
disk that no part lists are skipped. ``room_id`` is the clip id, so every segment of a clip stays in
its part.

Audio: resampled from the file's rate to ``sample_rate`` by the project's resampler (channel order
left, right kept); mono is ``(L + R) / 2`` of the resampled binaural. Frames: for each segment the
video frame nearest its centre on a ``fps`` grid, decoded from the mp4 with PyAV
(:func:`binaural_lab.data.clips.read_video_frames`: each video frame at most once) and saved as
JPEG quality 95.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import h5py
import numpy as np
import pandas as pd
from tqdm import tqdm

from binaural_lab.audio.io import read_audio
from binaural_lab.audio.stft import resample
from binaural_lab.config import ParamError
from binaural_lab.data.clips import (
    AdapterError,
    Segment,
    check_params,
    grid_time,
    read_video_frames,
    scene_output,
    segment_samples,
    segment_starts,
    write_scenes,
    write_segment,
)
from binaural_lab.data.datasets import SPLIT_SETS  # split set -> number of splits
from binaural_lab.data.manifest import SPLITS

PSEUDOBINAURAL_DIR = Path(__file__).parent / "splits" / "pseudobinaural"
H5_DATASET = "audio"
AUDIO_DIR, VIDEO_DIR = "binaural_audios", "videos"
_CLIP_ID = re.compile(r"\d{6}")
_LISTED_SUFFIXES = (".mp3", ".wav", ".mp4")


class FairPlayError(AdapterError):
    """A FAIR-Play folder or split file lacks what the adapter reads; the message names the file."""


@dataclass(frozen=True)
class _Clip:
    clip: str
    split: str  # train / val / test
    listed_in: Path
    audio: Path
    video: Path


def split_file(root: Path, split_set: str, split: int, part: str, pseudo_splits: Path | None = None) -> Path:
    """The file listing the clips of ``part`` (train, val or test) in split ``split`` of ``split_set``."""
    if split_set == "official":
        return root / "splits" / f"split{split}" / f"{part}.h5"
    return (pseudo_splits or PSEUDOBINAURAL_DIR) / f"split{split}" / f"{part}.txt"


def _clip_id(entry: str, source: Path, where: str) -> str:
    """The ``NNNNNN`` clip id of a listed path or file name (only its last component counts)."""
    name = PurePosixPath(entry.strip().replace("\\", "/")).name
    stem = name[: -len(suffix)] if (suffix := Path(name).suffix.lower()) in _LISTED_SUFFIXES else name
    if not _CLIP_ID.fullmatch(stem):
        raise FairPlayError(f"{source} {where}: {entry!r} does not name a FAIR-Play clip (NNNNNN.wav / NNNNNN.mp3)")
    return stem


def read_official_split(path: Path) -> list[str]:
    """Clip ids of an official split file: dataset ``audio`` of (absolute) paths, file names kept."""
    if not path.is_file():
        raise FairPlayError(f"{path}: split file not found")
    try:
        with h5py.File(path, "r") as f:
            if H5_DATASET not in f:
                raise FairPlayError(f"{path}: no dataset {H5_DATASET!r} (holds {sorted(f.keys())})")
            entries = np.asarray(f[H5_DATASET][()]).reshape(-1)
    except OSError as exc:
        raise FairPlayError(f"{path}: not a readable HDF5 file ({exc})") from exc
    clips = []
    for i, entry in enumerate(entries):
        if isinstance(entry, bytes | np.bytes_):
            try:
                entry = entry.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise FairPlayError(f"{path} {H5_DATASET}[{i}]: not UTF-8 text ({exc})") from exc
        if not isinstance(entry, str):
            raise FairPlayError(f"{path} {H5_DATASET}[{i}]: expected a path string, got {entry!r}")
        clips.append(_clip_id(entry, path, f"{H5_DATASET}[{i}]"))
    return clips


def read_pseudobinaural_split(path: Path) -> list[str]:
    """Clip ids of a PseudoBinaural split file: one ``NNNNNN.mp3`` per line, the last line without a
    newline; whitespace and blank lines are ignored."""
    if not path.is_file():
        raise FairPlayError(f"{path}: split file not found")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise FairPlayError(f"{path}: not a readable text file ({exc})") from exc
    return [_clip_id(line, path, f"line {i + 1}") for i, line in enumerate(lines) if line.strip()]


def _clips(root: Path, split_set: str, split: int, pseudo_splits: Path | None) -> list[_Clip]:
    """Every clip of the three parts of a split, checked: listed once, on disk with audio and video."""
    read = read_official_split if split_set == "official" else read_pseudobinaural_split
    clips: dict[str, _Clip] = {}
    for part in SPLITS:
        listing = split_file(root, split_set, split, part, pseudo_splits)
        ids = read(listing)
        if not ids:
            raise FairPlayError(f"{listing}: lists no clip")
        for clip in ids:
            if clip in clips:
                raise FairPlayError(f"{listing}: clip {clip} is also listed in {clips[clip].listed_in}")
            audio, video = root / AUDIO_DIR / f"{clip}.wav", root / VIDEO_DIR / f"{clip}.mp4"
            for kind, path in (("audio", audio), ("video", video)):
                if not path.is_file():
                    raise FairPlayError(f"{listing}: clip {clip} is listed but its {kind} {path} is not found")
            clips[clip] = _Clip(clip, part, listing, audio, video)
    return sorted(clips.values(), key=lambda c: c.clip)


def _convert(
    clip: _Clip, out: Path, sample_rate: int, segment_seconds: float | None, fps: float, listed_as: str
) -> list[dict[str, Any]]:
    """Write the segments of one clip under ``out`` and return their table rows."""
    audio, source_rate = read_audio(clip.audio, expect_channels=2)
    binaural = resample(audio, source_rate, sample_rate)
    mono = binaural.mean(axis=0)  # (L + R) / 2 of the resampled ears
    available = binaural.shape[1]
    n = segment_samples(segment_seconds, sample_rate, available)
    starts = segment_starts(available, n)
    if not starts:
        raise FairPlayError(
            f"{clip.audio}: {available / sample_rate:.3f} s of audio, shorter than one segment "
            f"({segment_seconds} s); lower segment_seconds"
        )
    segments = [
        Segment(f"{clip.clip}_{k:04d}", clip.clip, clip.clip, k, clip.split, start, n, sample_rate)
        for k, start in enumerate(starts)
    ]
    times = [grid_time(seg.centre_seconds, fps) for seg in segments]
    frames = read_video_frames(clip.video, times, audio.shape[1] / source_rate, fps)
    return [
        {**write_segment(out, seg, binaural, mono, frame), "frame_seconds": t, "split_file": listed_as}
        for seg, frame, t in zip(segments, frames, times, strict=True)
    ]


def adapt_fairplay(
    root: str | Path,
    out_dir: str | Path,
    sample_rate: int,
    split_set: str,
    split: int,
    segment_seconds: float | None,
    fps: float = 10.0,
    *,
    pseudo_splits: str | Path | None = None,
) -> pd.DataFrame:
    """Convert the clips of split ``split`` of ``split_set`` ("official" 1..10 or "pseudobinaural"
    1..5) of the FAIR-Play folder ``root`` into ``out_dir``; returns ``scenes.parquet``'s table.

    Besides the columns of :data:`binaural_lab.data.clips.COLUMNS` the table has ``frame_seconds``
    (the time of the frame, on the ``fps`` grid) and ``split_file`` (where the clip is listed, e.g.
    ``official/split1/train.h5``). ``pseudo_splits`` replaces the shipped PseudoBinaural split folder
    (one holding ``split1..split5/{train,val,test}.txt``). Every split file and listed file is checked
    before anything is written; the output is built in a temporary sibling that replaces ``out_dir`` at
    the end, so an error leaves it as it was.
    """
    if split_set not in SPLIT_SETS:
        raise ParamError(f"split_set: {split_set!r} is not one of {sorted(SPLIT_SETS)}")
    count = SPLIT_SETS[split_set]
    if isinstance(split, bool) or not isinstance(split, int | np.integer) or not 1 <= split <= count:
        raise ParamError(f"split: {split!r} is not a split of {split_set!r}; expected an integer 1..{count}")
    check_params(sample_rate, segment_seconds, fps)
    root, out = Path(root).resolve(), Path(out_dir).resolve()
    if not root.is_dir():
        raise FairPlayError(
            f"{root}: FAIR-Play folder not found (expected binaural_audios/, videos/ and splits/ in it); "
            "run `blab data fetch fairplay` or set download.fairplay.local_root"
        )
    pseudo = None if pseudo_splits is None else Path(pseudo_splits).resolve()
    clips = _clips(root, split_set, int(split), pseudo)
    rows: list[dict[str, Any]] = []
    with scene_output(root, out) as tmp:
        for clip in tqdm(clips, desc=f"fair-play {split_set} split{split}", unit="clip"):
            listed_as = f"{split_set}/split{split}/{clip.listed_in.name}"
            rows += _convert(clip, tmp, sample_rate, segment_seconds, float(fps), listed_as)
        table = write_scenes(tmp, rows)
    return table
