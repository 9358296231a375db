"""What the real binaural-generation adapters share: fixed-length segments cut from stereo recordings.

:mod:`binaural_lab.data.fairplay` and :mod:`binaural_lab.data.realbinaural` turn a dataset's recordings
into the layout :func:`binaural_lab.data.simulate.synthesize_binaural` writes, so prepare and featurize
read real and synthetic data alike. Paths are relative to the output folder:

* ``binaural/<sample_id>.wav``: float WAV, 2 channels (left, right), at ``sample_rate``;
* ``mono/<sample_id>.wav``: float WAV, 1 channel;
* ``frames/<clip>/<sample_id>.jpg``: one RGB frame per sample, the one nearest the segment's centre;
* ``scenes.parquet``: one row per sample with at least :data:`COLUMNS`.

Samples are fixed-length segments: ``segment_seconds`` long (:func:`segment_samples`: rounded down to
a multiple of the mel hop, :data:`MEL_HOP`), cut back to back from the start of a recording (or of a time
range of it), a trailing partial segment dropped; ``segment_seconds`` None makes one sample of the
whole recording (or range). A sample's frame is taken at its centre rounded to a grid of ``fps``
frames per second (:func:`grid_time`; 10 in the FAIR-Play papers).

``room_id`` is the grouping unit that never straddles splits: the source clip (video) id, so every
segment of one recording lands in the split of its recording. The whole output is built in a
temporary sibling that replaces the output folder at the end (:func:`scene_output`), so an error
midway leaves a previous output untouched and nothing half-written.
"""

from __future__ import annotations

import bisect
import contextlib
import re
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pandas as pd
from PIL import Image

from binaural_lab.audio.io import write_audio
from binaural_lab.audio.mel import MEL_HOP
from binaural_lab.config import ParamError, UserError
from binaural_lab.paths import atomic_path, nested

SUBDIRS = ("binaural", "mono", "frames")
JPEG_QUALITY = 95
COLUMNS = (
    "sample_id",
    "room_id",
    "scene_index",
    "sample_rate",
    "num_samples",
    "published_split",
    "binaural_path",
    "mono_path",
    "frame_path",
    "clip",
    "start_seconds",
)
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class AdapterError(UserError, ValueError):
    """A dataset folder lacks what an adapter reads; the message names the file, column or value."""


class VideoFileError(AdapterError):
    """A video is unreadable, has no video stream or is shorter than its audio."""


def segment_samples(segment_seconds: float | None, sample_rate: int, available: int) -> int:
    """Samples per segment: ``round(segment_seconds * sample_rate)`` rounded down to a multiple of
    :data:`MEL_HOP`; with ``segment_seconds`` None, the ``available`` samples rounded down the same way."""
    wanted = available if segment_seconds is None else round(segment_seconds * sample_rate)
    return wanted // MEL_HOP * MEL_HOP


def segment_starts(available: int, length: int) -> list[int]:
    """Starts of back-to-back segments of ``length`` samples within ``available`` (from 0; a trailing
    partial segment is dropped)."""
    if length <= 0:
        return []
    return list(range(0, available - length + 1, length))


def grid_time(seconds: float, fps: float) -> float:
    """``seconds`` rounded to the nearest point of a grid of ``fps`` frames per second."""
    return round(seconds * fps) / fps


def check_params(sample_rate: int, segment_seconds: float | None, fps: float | None) -> None:
    """Fail with a :class:`ParamError` on a non-positive sample rate, segment length or frame rate."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, int) or sample_rate <= 0:
        raise ParamError(f"sample_rate: expected a positive integer (Hz), got {sample_rate!r}")
    if segment_seconds is not None:
        if not isinstance(segment_seconds, int | float) or not segment_seconds > 0:
            raise ParamError(f"segment_seconds: expected a positive number or null, got {segment_seconds!r}")
        if segment_samples(segment_seconds, sample_rate, 0) == 0:
            raise ParamError(
                f"segment_seconds: {segment_seconds} s at {sample_rate} Hz is shorter than one mel hop "
                f"({MEL_HOP} samples)"
            )
    if fps is not None and (not isinstance(fps, int | float) or not fps > 0):
        raise ParamError(f"fps: expected a positive number of frames per second, got {fps!r}")


def slug(name: str) -> str:
    """A file-system-safe form of a clip id (letters, digits, ``.``, ``_`` and ``-``)."""
    return _UNSAFE.sub("-", name).strip("-.") or "clip"


@dataclass(frozen=True)
class Segment:
    """One output sample: a segment of a recording resampled to ``sample_rate``."""

    sample_id: str
    clip: str  # the original clip / video id
    folder: str  # frames/<folder>/: the clip id made file-system safe
    scene_index: int  # segment number within the clip
    published_split: str
    start: int  # first sample, counted at sample_rate from the start of the recording
    num_samples: int
    sample_rate: int

    @property
    def start_seconds(self) -> float:
        return self.start / self.sample_rate

    @property
    def centre_seconds(self) -> float:
        return (self.start + self.num_samples / 2) / self.sample_rate

    @property
    def paths(self) -> dict[str, str]:
        return {
            "binaural_path": f"binaural/{self.sample_id}.wav",
            "mono_path": f"mono/{self.sample_id}.wav",
            "frame_path": f"frames/{self.folder}/{self.sample_id}.jpg",
        }


def write_segment(
    out: Path, seg: Segment, binaural: np.ndarray, mono: np.ndarray, frame: np.ndarray | Path
) -> dict[str, Any]:
    """Write ``seg``'s audio, cut from whole recordings at ``seg.sample_rate`` (``binaural`` [2, n],
    ``mono`` [n]), and its frame (an RGB array saved as JPEG, or a JPEG file copied as it is) under
    ``out``; return the sample's :data:`COLUMNS`."""
    cut = slice(seg.start, seg.start + seg.num_samples)
    ears, mix = binaural[:, cut], mono[cut]
    if ears.shape != (2, seg.num_samples) or mix.shape != (seg.num_samples,):
        raise ValueError(f"{seg.sample_id}: segment [{cut.start}, {cut.stop}) lies outside the recording")
    paths = seg.paths
    write_audio(out / paths["binaural_path"], ears, seg.sample_rate)
    write_audio(out / paths["mono_path"], mix, seg.sample_rate)
    frame_file = out / paths["frame_path"]
    frame_file.parent.mkdir(exist_ok=True)
    if isinstance(frame, Path):
        shutil.copyfile(frame, frame_file)
    else:
        Image.fromarray(frame).save(frame_file, format="JPEG", quality=JPEG_QUALITY)
    return {
        "sample_id": seg.sample_id,
        "room_id": seg.clip,
        "scene_index": seg.scene_index,
        "sample_rate": seg.sample_rate,
        "num_samples": seg.num_samples,
        "published_split": seg.published_split,
        **paths,
        "clip": seg.clip,
        "start_seconds": seg.start_seconds,
    }


@contextlib.contextmanager
def scene_output(source_root: Path, out_dir: Path) -> Iterator[Path]:
    """Yield a new temporary folder holding :data:`SUBDIRS`; on success it replaces ``out_dir`` in one
    rename, on error it is removed and ``out_dir`` is left as it was."""
    if nested(source_root, out_dir):
        raise ParamError(
            f"source_root {source_root} and the output {out_dir} overlap: the output replaces its folder; "
            "give datasets.<slot>.name another name than the download folder"
        )
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for name in SUBDIRS:
            (tmp / name).mkdir()
        yield tmp


def write_scenes(out: Path, rows: list[dict[str, Any]]) -> pd.DataFrame:
    """``scenes.parquet`` of ``rows``, sorted by sample_id; returns the table."""
    table = pd.DataFrame(rows).sort_values("sample_id").reset_index(drop=True)
    table.to_parquet(out / "scenes.parquet", index=False)
    return table


def read_video_frames(path: Path, times: Sequence[float], audio_seconds: float, fps: float) -> list[np.ndarray]:
    """The RGB frames (uint8 ``[H, W, 3]``) of the video ``path`` nearest each of ``times`` (seconds from
    the start of the container), in the order given.

    Each frame is decoded once at most, and only what the wanted frames need: the packets are read
    once (without decoding) for the keyframes' times, then the wanted times are visited in order,
    decoding forward from the current position, or from the keyframe before the next time when that
    keyframe lies ahead. Fails, naming the file, on an unreadable video, one without a video stream,
    or one that ends more than a frame of the ``fps`` grid before the audio (``audio_seconds`` long)
    or before a wanted time.
    """
    slack = 1.0 / fps
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError, UnicodeDecodeError) as exc:
        raise VideoFileError(f"{path}: not a readable video ({exc})") from exc
    with container:
        if not container.streams.video:
            raise VideoFileError(f"{path}: holds no video stream")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        duration = _duration(container, stream)
        if duration is not None and duration < audio_seconds - slack:
            raise VideoFileError(
                f"{path}: video lasts {duration:.3f} s, shorter than its audio ({audio_seconds:.3f} s)"
            )
        period = 1.0 / float(stream.average_rate) if stream.average_rate else slack
        try:
            picked = _nearest_frames(container, stream, sorted(set(times)))
        except av.FFmpegError as exc:
            raise VideoFileError(f"{path}: decoding failed ({exc})") from exc
    out = []
    for t in times:
        if t not in picked:
            raise VideoFileError(f"{path}: no video frame could be decoded near {t:.3f} s")
        image, frame_time = picked[t]
        if frame_time < t - max(period, slack):
            raise VideoFileError(
                f"{path}: video ends at {frame_time + period:.3f} s, before the frame wanted at {t:.3f} s "
                f"(audio lasts {audio_seconds:.3f} s)"
            )
        out.append(image)
    return out


def _duration(container: av.container.InputContainer, stream: av.VideoStream) -> float | None:
    """Seconds the video stream lasts, from the stream's or the container's header (None if neither says)."""
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return None


def _nearest_frames(
    container: av.container.InputContainer, stream: av.VideoStream, times: list[float]
) -> dict[float, tuple[np.ndarray, float]]:
    """``{t: (rgb image, its time)}`` for the sorted ``times``: the decoded frame nearest each ``t``
    (the earlier one on a tie). A frame's time counts from the container's start."""
    origin = container.start_time / av.time_base if container.start_time is not None else 0.0
    keyframes = sorted(
        packet.pts for packet in container.demux(stream) if packet.is_keyframe and packet.pts is not None
    ) or [stream.start_time or 0]  # no keyframe flagged: decode from the start
    key_times = [float(pts * stream.time_base) - origin for pts in keyframes]
    decoded: Iterator[av.VideoFrame] = iter(())
    window: list[tuple[av.VideoFrame, float]] = []  # the last two frames decoded, in time order
    picked: dict[float, tuple[np.ndarray, float]] = {}
    for t in times:
        key = max(bisect.bisect_right(key_times, t) - 1, 0)  # the keyframe at or before t (else the first)
        if not window or window[-1][1] < key_times[key]:
            container.seek(keyframes[key], stream=stream, backward=True, any_frame=False)
            decoded, window = container.decode(stream), []
        while not window or window[-1][1] <= t:
            frame = next((f for f in decoded if f.time is not None), None)
            if frame is None:  # the end of the video
                break
            window = [*window[-1:], (frame, frame.time - origin)]
        if window:
            frame, frame_time = min(window, key=lambda item: (abs(item[1] - t), item[1]))
            picked[t] = frame.to_ndarray(format="rgb24"), frame_time
    return picked
