"""RealBinaural (DiffBinaural's own recordings, REFERENCE.md section 5) in the binaural-scene layout.

:func:`adapt_realbinaural` reads a RealBinaural folder and writes the layout of
:mod:`binaural_lab.data.clips`: fixed-length segments of the time ranges the split CSVs list, one frame
per segment, and ``scenes.parquet`` with ``published_split`` and ``sources`` (the detections of the
sample's frame, a JSON list read by :func:`binaural_lab.data.features._source_positions`).

Layout, as the authors' public code names it (harukana1435/DiffBinaural-binaural-audio-generation:
``README.md``, ``QUICKSTART.md``, ``DiffBinaural/README.md``, ``DiffBinaural/train_realBinaural.py``):

* ``processed/binaural_audios_22050Hz/<video_id>.wav`` (stereo, left then right) and
  ``processed/mono_audios_22050Hz/<video_id>.wav`` (mono) at 22050 Hz;
* ``processed/frames/<video_id>/frame_XXXXXX.jpg``, numbered from ``frame_000001.jpg``;
* ``action_detection_results/detection_results.csv``;
* ``splits/train.csv`` and ``splits/val.csv``, columns ``video_id, start_time, end_time,
  action_label`` (seconds): each row is a time range of a video.

The authors' loader (``dataset/dataset_real_binaural.py``) is not public, so three things are assumed
and checked, failing with a message that says what was expected:

* frame timing: frame ``k`` shows time ``(k - 1) / frames_fps`` (frames extracted at a constant rate from
  t = 0, as ``ffmpeg -r`` does); ``frames_fps`` None infers it per video as the whole number nearest
  (frame count) / (audio length);
* the detection CSV: a header row and the columns ``video_id``, the frame (``frame`` or ``frame_id``:
  the ``XXXXXX`` of ``frame_XXXXXX.jpg``) or its time (``timestamp``, seconds), and the box corners
  ``x1, y1, x2, y2`` in pixels of that frame (``box_units="normalized"``: fractions of its width and
  height, as AVA-style CSVs store them); optional ``score`` (or ``confidence``) and ``label`` (or
  ``action_label``, ``class``). Corner boxes in pixels are what the authors' FAIR-Play detections use
  (harukana1435/DiffBinaural ``dataset/base.py``, ``normalize_and_pad_det_data``);
* mono: the shipped mono files (their README names the folder; whether the loader re-derives mono from
  the ears is not known); each must have the binaural file's sample rate and length.

Splits: the dataset has train and val only. ``val.csv`` is what the paper evaluates
(``train_realBinaural.py`` validates on ``--list_val``), so its rows become ``test``; ``val`` is a
video-disjoint ``val_fraction`` of the videos of ``train.csv``, drawn with ``seed``. ``room_id`` is the
video id: all segments of a video stay in one split, and a video listed in both CSVs is refused.

Samples: each row's range is cut into segments as :mod:`binaural_lab.data.clips` describes (a row
shorter than one segment gives none); ``scene_index`` counts the segments of a video over its rows in
order of start time. A sample's frame is the shipped frame nearest its centre on the ``fps`` grid,
copied as it is. Its ``sources`` are the detections of that frame (none: ``[]``), each
``{"pixel_x", "pixel_y", "box", "class", "score"}`` with the box centre and corners in pixels of the
frame (``class`` and ``score`` only when the CSV has them). Which source is loudest is unknown: they
are ordered by score, then by box area (larger first), so the first is the most confident, largest
detection.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from binaural_lab.audio.io import read_audio
from binaural_lab.audio.stft import resample
from binaural_lab.config import ParamError
from binaural_lab.data.clips import (
    AdapterError,
    Segment,
    check_params,
    grid_time,
    scene_output,
    segment_samples,
    segment_starts,
    slug,
    write_scenes,
    write_segment,
)
from binaural_lab.data.manifest import SPLITS

BINAURAL_DIR = Path("processed", "binaural_audios_22050Hz")
MONO_DIR = Path("processed", "mono_audios_22050Hz")
FRAMES_DIR = Path("processed", "frames")
DETECTIONS = Path("action_detection_results", "detection_results.csv")
SPLIT_CSVS = {"train": Path("splits", "train.csv"), "val": Path("splits", "val.csv")}
PUBLISHED = {"val": "test"}  # val.csv is what the paper reports; train.csv gives train and val
SPLIT_COLUMNS = ("video_id", "start_time", "end_time", "action_label")
FRAME_NAME = "frame_{:06d}.jpg"  # numbered from 1
BOX_COLUMNS = ("x1", "y1", "x2", "y2")
FRAME_KEYS, TIME_KEYS = ("frame", "frame_id"), ("timestamp",)
SCORE_KEYS, LABEL_KEYS = ("score", "confidence"), ("label", "action_label", "class")
BOX_UNITS = ("pixels", "normalized")
BOX_SLACK_PX = 1.0  # a pixel box may overhang its frame by this much (rounding of detector output)


class RealBinauralError(AdapterError):
    """A RealBinaural folder lacks what the adapter reads; the message names the file, line or column."""


@dataclass(frozen=True)
class _Row:
    """One row of a split CSV: a time range of a video."""

    csv: Path
    line: int  # 1-based line of the file (the header is line 1)
    csv_split: str  # train / val: the CSV it comes from
    video_id: str
    start: float
    end: float
    action_label: str

    @property
    def where(self) -> str:
        return f"{self.csv} line {self.line}"


@dataclass(frozen=True)
class _Detection:
    line: int
    frame: int | None  # the XXXXXX of frame_XXXXXX.jpg, or None when the CSV gives a time
    time: float | None
    box: tuple[float, float, float, float]
    score: float | None
    label: str | None


@dataclass
class _Video:
    video_id: str
    folder: str
    split: str  # published split
    rows: list[_Row] = field(default_factory=list)


def _read_csv(path: Path, required: tuple[str, ...] = ()) -> pd.DataFrame:
    """A CSV as strings, failing on a missing file or column and on empty cells of ``required``."""
    if not path.is_file():
        raise RealBinauralError(f"{path}: CSV not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise RealBinauralError(f"{path}: not a readable CSV ({exc})") from exc
    table.columns = [str(c).strip() for c in table.columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise RealBinauralError(
            f"{path}: column(s) {missing} missing (columns: {list(table.columns)}; expected {list(required)})"
        )
    for col in required:
        empty = np.flatnonzero(table[col].str.strip() == "")
        if len(empty):
            raise RealBinauralError(f"{path} line {empty[0] + 2}: column {col!r} is empty")
    return table


def _number(value: str, path: Path, line: int, column: str) -> float:
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise RealBinauralError(f"{path} line {line}: column {column!r} is {value!r}, not a finite number")
    return number


def _split_rows(root: Path) -> list[_Row]:
    """Every row of splits/train.csv and splits/val.csv, with valid time ranges."""
    rows = []
    for csv_split, rel in SPLIT_CSVS.items():
        path = root / rel
        table = _read_csv(path, SPLIT_COLUMNS)
        if table.empty:
            raise RealBinauralError(f"{path}: lists no time range")
        for i, rec in enumerate(table.to_dict("records")):
            line = i + 2
            start = _number(rec["start_time"], path, line, "start_time")
            end = _number(rec["end_time"], path, line, "end_time")
            if start < 0 or end <= start:
                raise RealBinauralError(
                    f"{path} line {line}: expected 0 <= start_time < end_time, got {start:g} and {end:g}"
                )
            rows.append(_Row(path, line, csv_split, rec["video_id"].strip(), start, end, rec["action_label"]))
    return rows


def _videos(root: Path, rows: list[_Row], val_fraction: float, seed: int) -> list[_Video]:
    """The videos of the split rows with their published split and files checked."""
    first: dict[str, _Row] = {}
    by_video: dict[str, list[_Row]] = defaultdict(list)
    for row in rows:
        other = first.setdefault(row.video_id, row)
        if other.csv_split != row.csv_split:
            raise RealBinauralError(
                f"{row.where}: video {row.video_id!r} is also listed in {other.where}; a video must stay in one "
                "split (room_id is the video)"
            )
        by_video[row.video_id].append(row)
    train = sorted(v for v, r in first.items() if r.csv_split == "train")
    n_val = max(1, round(val_fraction * len(train)))
    if n_val >= len(train):
        raise ParamError(
            f"val_fraction: {root / SPLIT_CSVS['train']} lists {len(train)} video(s), too few to hold out "
            f"{n_val} for val and keep one for train"
        )
    order = np.random.default_rng(seed).permutation(len(train))
    held_out = {train[i] for i in order[:n_val]}
    videos, folders = [], {}
    for video_id in sorted(by_video):
        row = first[video_id]
        split = PUBLISHED.get(row.csv_split, "val" if video_id in held_out else "train")
        folder = slug(video_id)
        if folder in folders:
            raise RealBinauralError(f"{row.where}: video ids {folders[folder]!r} and {video_id!r} give one folder name")
        folders[folder] = video_id
        for path in (root / BINAURAL_DIR / f"{video_id}.wav", root / MONO_DIR / f"{video_id}.wav"):
            if not path.is_file():
                raise RealBinauralError(f"{row.where}: video {video_id!r}: {path} not found")
        if not (root / FRAMES_DIR / video_id).is_dir():
            raise RealBinauralError(
                f"{row.where}: video {video_id!r}: frame folder {root / FRAMES_DIR / video_id} not found"
            )
        rows_sorted = sorted(by_video[video_id], key=lambda r: (r.start, r.end, r.line))
        videos.append(_Video(video_id, folder, split, rows_sorted))
    return videos


def _pick(table: pd.DataFrame, keys: tuple[str, ...]) -> str | None:
    return next((k for k in keys if k in table.columns), None)


def _read_detections(path: Path, known: set[str]) -> dict[str, list[_Detection]]:
    """Detections per video id; every id must be a video of the dataset."""
    table = _read_csv(path)
    frame_key, time_key = _pick(table, FRAME_KEYS), _pick(table, TIME_KEYS)
    key = frame_key or time_key
    expected = ["video_id", f"one of {list(FRAME_KEYS + TIME_KEYS)}", *BOX_COLUMNS]
    missing = [c for c in ("video_id", *BOX_COLUMNS) if c not in table.columns] + ([] if key else [expected[1]])
    if missing:
        raise RealBinauralError(
            f"{path}: column(s) {missing} missing (columns: {list(table.columns)}; expected {expected}, optional "
            f"score and label)"
        )
    score_key, label_key = _pick(table, SCORE_KEYS), _pick(table, LABEL_KEYS)
    detections: dict[str, list[_Detection]] = defaultdict(list)
    for i, rec in enumerate(table.to_dict("records")):
        line = i + 2
        video_id = rec["video_id"].strip()
        if video_id not in known:
            raise RealBinauralError(
                f"{path} line {line}: video_id {video_id!r} is not a video of the dataset (no "
                f"{BINAURAL_DIR / (video_id + '.wav')} and no split row)"
            )
        x1, y1, x2, y2 = (_number(rec[c], path, line, c) for c in BOX_COLUMNS)
        if not (0 <= x1 < x2 and 0 <= y1 < y2):
            raise RealBinauralError(f"{path} line {line}: box {[x1, y1, x2, y2]} is not 0 <= x1 < x2, 0 <= y1 < y2")
        value = _number(rec[key], path, line, key)
        frame = time = None
        if frame_key:
            if value != int(value) or value < 1:
                raise RealBinauralError(f"{path} line {line}: column {key!r} is {rec[key]!r}, not a frame number >= 1")
            frame = int(value)
        else:
            if value < 0:
                raise RealBinauralError(f"{path} line {line}: column {key!r} is {rec[key]!r}, a negative time")
            time = value
        score = _number(rec[score_key], path, line, score_key) if score_key else None
        label = rec[label_key] if label_key else None
        detections[video_id].append(_Detection(line, frame, time, (x1, y1, x2, y2), score, label))
    return detections


def _frame_rate(video: _Video, frames: Path, seconds: float, frames_fps: float | None) -> float:
    """The rate of the shipped frames: ``frames_fps``, or the whole number nearest count / audio length."""
    if frames_fps is not None:
        return float(frames_fps)
    count = sum(1 for _ in frames.glob("frame_*.jpg"))
    if count == 0:
        raise RealBinauralError(f"{frames}: no frame_XXXXXX.jpg files (video {video.video_id!r})")
    estimate = count / seconds
    rate = max(1, round(estimate))
    if abs(estimate - rate) > 0.1 * rate:
        raise RealBinauralError(
            f"{frames}: {count} frames for {seconds:.3f} s of audio ({estimate:.2f} per second) is no constant "
            "whole-number frame rate; give frames_fps"
        )
    return float(rate)


def _sources(
    dets: list[_Detection], size: tuple[int, int], box_units: str, csv: Path, frame: Path
) -> list[dict[str, Any]]:
    """Detections of one frame as source records (pixels of the frame), by score, then box area."""
    width, height = size
    scale = (width, height, width, height) if box_units == "normalized" else (1, 1, 1, 1)
    limit = (1.0, 1.0, 1.0, 1.0) if box_units == "normalized" else (width + BOX_SLACK_PX, height + BOX_SLACK_PX) * 2
    out = []
    for det in dets:
        if any(v > lim for v, lim in zip(det.box, limit, strict=True)):
            raise RealBinauralError(
                f"{csv} line {det.line}: box {list(det.box)} ({box_units}) lies outside {frame} ({width} x {height})"
            )
        x1, y1, x2, y2 = (v * s for v, s in zip(det.box, scale, strict=True))
        source: dict[str, Any] = {"pixel_x": (x1 + x2) / 2, "pixel_y": (y1 + y2) / 2, "box": [x1, y1, x2, y2]}
        if det.label is not None:
            source["class"] = det.label
        if det.score is not None:
            source["score"] = det.score
        out.append((-(det.score or 0.0), -(x2 - x1) * (y2 - y1), source["pixel_x"], source))
    return [s for *_, s in sorted(out, key=lambda t: t[:3])]


def _frame_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as image:
            image.verify()
            return image.size
    except (OSError, ValueError, SyntaxError) as exc:
        raise RealBinauralError(f"{path}: not a readable image ({exc})") from exc


def _convert(
    root: Path,
    video: _Video,
    out: Path,
    sample_rate: int,
    segment_seconds: float | None,
    fps: float,
    frames_fps: float | None,
    detections: list[_Detection],
    box_units: str,
) -> list[dict[str, Any]]:
    """Write the segments of one video's rows under ``out`` and return their table rows."""
    binaural_file, mono_file = root / BINAURAL_DIR / f"{video.video_id}.wav", root / MONO_DIR / f"{video.video_id}.wav"
    ears, rate = read_audio(binaural_file, expect_channels=2)
    mono, mono_rate = read_audio(mono_file, expect_channels=1)
    if (mono_rate, mono.shape[1]) != (rate, ears.shape[1]):
        raise RealBinauralError(
            f"{mono_file}: {mono.shape[1]} samples at {mono_rate} Hz, but the binaural {binaural_file} has "
            f"{ears.shape[1]} at {rate} Hz; expected the same rate and length"
        )
    seconds = ears.shape[1] / rate
    binaural, mono = resample(ears, rate, sample_rate), resample(mono[0], rate, sample_rate)
    frames = root / FRAMES_DIR / video.video_id
    frame_rate = _frame_rate(video, frames, seconds, frames_fps)
    by_frame: dict[int, list[_Detection]] = defaultdict(list)
    for det in detections:
        by_frame[det.frame if det.frame is not None else round(det.time * frame_rate) + 1].append(det)
    slack = 1.0 / fps  # a range may end up to one frame of the grid after the audio
    rows, k = [], 0
    for row in video.rows:
        if row.end > seconds + slack:
            raise RealBinauralError(
                f"{row.where}: end_time {row.end:g} s is after the end of {binaural_file} ({seconds:.3f} s)"
            )
        a, b = round(row.start * sample_rate), min(round(row.end * sample_rate), binaural.shape[1])
        n = segment_samples(segment_seconds, sample_rate, b - a)
        for start in segment_starts(b - a, n):
            seg = Segment(
                f"{video.folder}_{k:04d}", video.video_id, video.folder, k, video.split, a + start, n, sample_rate
            )
            t = grid_time(seg.centre_seconds, fps)
            index = round(t * frame_rate) + 1
            frame = frames / FRAME_NAME.format(index)
            if not frame.is_file():
                raise RealBinauralError(
                    f"{frame}: not found, the frame at {t:.3f} s ({frame_rate:g} frames per second from frame_000001) "
                    f"for {row.where}"
                )
            sources = _sources(by_frame.get(index, []), _frame_size(frame), box_units, root / DETECTIONS, frame)
            rows.append(
                {
                    **write_segment(out, seg, binaural, mono, frame),
                    "csv_split": row.csv_split,
                    "source_row": row.line,
                    "action_label": row.action_label,
                    "frame_index": index,
                    "frame_seconds": (index - 1) / frame_rate,
                    "frames_fps": frame_rate,
                    "n_sources": len(sources),
                    "sources": json.dumps(sources),
                }
            )
            k += 1
    return rows


def adapt_realbinaural(
    root: str | Path,
    out_dir: str | Path,
    sample_rate: int,
    segment_seconds: float | None,
    *,
    fps: float = 10.0,
    frames_fps: float | None = None,
    val_fraction: float = 0.1,
    seed: int = 0,
    box_units: str = "pixels",
) -> pd.DataFrame:
    """Convert the RealBinaural folder ``root`` into ``out_dir``; returns ``scenes.parquet``'s table.

    ``fps``: the grid a sample's frame time is rounded to; ``frames_fps``: the rate of the shipped
    frames (None: inferred per video); ``val_fraction`` of train.csv's videos (drawn with ``seed``)
    become val, val.csv becomes test; ``box_units``: "pixels" or "normalized" detection boxes.
    Besides :data:`binaural_lab.data.clips.COLUMNS` the table has ``csv_split``, ``source_row`` (line
    of the split CSV), ``action_label``, ``frame_index`` (the shipped frame used), ``frame_seconds``,
    ``frames_fps``, ``n_sources`` and ``sources``. The CSVs and listed files are checked before
    anything is written; the output is built in a temporary sibling that replaces ``out_dir`` at the
    end, so an error leaves it as it was.
    """
    check_params(sample_rate, segment_seconds, fps)
    if frames_fps is not None and (not isinstance(frames_fps, int | float) or not frames_fps > 0):
        raise ParamError(f"frames_fps: expected a positive number of frames per second or null, got {frames_fps!r}")
    if not isinstance(val_fraction, int | float) or not 0 < val_fraction < 1:
        raise ParamError(f"val_fraction: expected a fraction strictly between 0 and 1, got {val_fraction!r}")
    if box_units not in BOX_UNITS:
        raise ParamError(f"box_units: {box_units!r} is not one of {list(BOX_UNITS)}")
    root, out = Path(root).resolve(), Path(out_dir).resolve()
    if not root.is_dir():
        raise RealBinauralError(
            f"{root}: RealBinaural folder not found (expected processed/, action_detection_results/ and splits/ "
            "in it); set download.realbinaural.local_root to a copy from the authors"
        )
    videos = _videos(root, _split_rows(root), val_fraction, seed)
    on_disk = {p.stem for p in (root / BINAURAL_DIR).glob("*.wav")}
    detections = _read_detections(root / DETECTIONS, on_disk | {v.video_id for v in videos})
    rows: list[dict[str, Any]] = []
    with scene_output(root, out) as tmp:
        for video in tqdm(videos, desc="realbinaural", unit="video"):
            found = detections.get(video.video_id, [])
            rows += _convert(root, video, tmp, sample_rate, segment_seconds, fps, frames_fps, found, box_units)
        empty = [s for s in SPLITS if not any(r["published_split"] == s for r in rows)]
        if empty:
            raise RealBinauralError(
                f"{root}: no samples in split(s) {empty}: their time ranges are all shorter than segment_seconds "
                f"({segment_seconds} s)"
            )
        table = write_scenes(tmp, rows)
    return table
