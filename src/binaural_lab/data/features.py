"""Feature shards of the binaural and echo datasets, computed once and shared by every later stage.

Each function reads a manifest (one row per sample, file paths relative to the raw dataset
directory), checks every column and file up front, then writes ``out_dir/<split>/`` shards (see
:mod:`binaural_lab.data.shards`) batch by batch. The whole ``out_dir`` is written into a temporary
sibling and renamed at the end: bad input raises an error naming the file or column and leaves no
output. ``workers > 1`` runs batches in threads (file decoding and torch kernels release the GIL);
batches are written in manifest order, so the result does not depend on ``workers``.
"""

from __future__ import annotations

import functools
import json
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm import tqdm

from binaural_lab.audio.io import AudioFileError, read_audio
from binaural_lab.audio.mel import MelConfig, mel_spectrogram
from binaural_lab.audio.stft import echo_spectrogram, resample, stft_features
from binaural_lab.config import ParamError, UserError, param, to_dict
from binaural_lab.data.datasets import dataset
from binaural_lab.data.manifest import SPLITS, ManifestError, check_table, load_manifest
from binaural_lab.data.shards import ArraySpec, write_split
from binaural_lab.paths import atomic_path
from binaural_lab.stage import config, section

BINAURAL_CONVENTION = (
    "mel: BigVGAN log-mel (binaural_lab.audio.mel), channels (mono, left, right), clips cut from their start "
    "to clip_samples, a multiple of hop; stft: resampled to stft_sample_rate, Hann STFT centred with "
    "reflect padding, channels (mono, left - right), parts (re, im); frame: RGB uint8, bilinear resize; "
    "positions: per source (x, y, present), x and y the source's pixel position over the frame's width and "
    "height (0..1), present 0 for padding rows and for datasets without positions; "
    "depth: metres, 0 = invalid (non-finite or <= 0), nearest resize so invalid zeros do not blend into edges"
)
ECHO_CONVENTION = (
    "spec: Batvision echo input, per ear (left, right) log1p(|STFT|), Hann window win zero-padded to n_fft, "
    "centred, antialiased bilinear resize to input_size x input_size (frequency x time); "
    "depth: metres, 0 = invalid (non-finite, <= 0 or > max_depth_m), nearest resize so invalid zeros "
    "do not blend into edges"
)
BINAURAL_INDEX = ["sample_id", "room_id"]
# the main source's geometry, indexed where the dataset knows it (the synthetic scenes; not FAIR-Play)
BINAURAL_GEOMETRY = ["azimuth_deg", "elevation_deg", "distance_m", "pixel_x", "pixel_y"]
BINAURAL_FILES = ["binaural_path", "mono_path", "frame_path"]  # and depth_path where the dataset has depth
MAX_SOURCES = 4  # rows of the positions array; a scene with more sources keeps the first MAX_SOURCES
ECHO_INDEX = ["sample_id", "room_id"]
ECHO_FILES = ["audio_path", "depth_path"]


class FeatureInputError(UserError, ValueError):
    """An input file of a manifest row is unreadable or has the wrong shape or length."""


@dataclass(frozen=True)
class BinauralFeatureConfig:
    """Features of the binaural-generation dataset."""

    mel: MelConfig = param(MelConfig(), doc="the one mel function's settings")
    clip_seconds: float | None = param(None, gt=0, doc="clip length; null = the shortest clip of the manifest")
    stft_sample_rate: int = param(16000, gt=0, doc="Hz; Gao & Grauman STFT convention")
    stft_n_fft: int = param(512, gt=0)
    stft_hop: int = param(160, gt=0)
    stft_win: int = param(400, gt=0)
    frame_size: tuple[int, int] = param((224, 224), ge=1, doc="(height, width) of frames and depth maps")
    batch_size: int = param(16, ge=1, doc="clips per batch")

    def validate(self, where: str) -> None:
        """Check the relations between fields."""
        if self.stft_win > self.stft_n_fft:
            raise ParamError(f"{where}.stft_win: {self.stft_win} is larger than stft_n_fft {self.stft_n_fft}")
        if len(self.frame_size) != 2:
            raise ParamError(f"{where}.frame_size: expected [height, width], got {list(self.frame_size)}")


@dataclass(frozen=True)
class EchoFeatureConfig:
    """Features of the depth-from-echo dataset (Batvision conventions)."""

    input_size: int = param(64, ge=8, doc="S of the S x S spectrogram and depth map; 256 in the papers")
    n_fft: int = param(512, gt=0)
    win: int = param(64, gt=0)
    hop: int = param(16, gt=0)
    max_depth_m: float = param(12.0, gt=0, doc="deeper pixels are invalid; Batvision V1 12, V2 30, Replica 14.104")
    sample_rate: int = param(44100, gt=0, doc="Hz every echo file must have")
    audio_seconds: float | None = param(None, gt=0, doc="keep the first seconds (V2: 2 * max_depth / 340)")
    batch_size: int = param(64, ge=1, doc="samples per batch")

    def validate(self, where: str) -> None:
        """Check the relations between fields."""
        if self.win > self.n_fft:
            raise ParamError(f"{where}.win: {self.win} is larger than n_fft {self.n_fft}")


def slot_features(params: Mapping[str, Any], slot: str) -> tuple[BinauralFeatureConfig | EchoFeatureConfig, Callable]:
    """The feature config of ``featurize_<slot>`` with the dataset's facts filled in, and the function
    that computes them (:func:`compute_binaural_features` or :func:`compute_echo_features`)."""
    data = dataset(params, slot)
    if slot == "binaural":
        # the mel sample rate is the dataset's: one key in params, not two to keep in step
        mel = {**(section(params, "featurize_binaural").get("mel") or {}), "sample_rate": data.sample_rate}
        return config(params, "featurize_binaural", BinauralFeatureConfig, mel=mel), compute_binaural_features
    facts = {"sample_rate": data.sample_rate, "max_depth_m": data.max_depth_m}
    return config(params, "featurize_echoes", EchoFeatureConfig, **facts), compute_echo_features


def compute_binaural_features(
    manifest: pd.DataFrame | Path, raw_dir: Path, out_dir: Path, cfg: BinauralFeatureConfig, workers: int = 0
) -> dict[str, int]:
    """Write ``mel``, ``stft``, ``frame``, ``depth``, ``positions`` and the index per split; returns samples
    per split.

    Shapes per sample: mel [3, n_mels, clip_samples // hop], stft [2, 2, stft_n_fft // 2 + 1, T'],
    frame uint8 [3, H, W], depth [H, W], positions [MAX_SOURCES, 3] (from the manifest's ``sources``
    column, a JSON list of objects with ``pixel_x`` and ``pixel_y``; all absent when it has none).
    A dataset without depth maps (no ``depth_path`` column: FAIR-Play, RealBinaural) gets all-zero
    depth, the value of an invalid pixel, and ``has_depth: false`` in the shards' config.
    """
    table, _ = _checked_manifest(manifest, raw_dir, BINAURAL_INDEX + BINAURAL_FILES)
    index = BINAURAL_INDEX + [c for c in BINAURAL_GEOMETRY if c in table.columns]
    n = _clip_samples(table, raw_dir, cfg)
    probe = _binaural_audio_features(torch.zeros(1, 3, n), cfg)
    arrays = {name: ArraySpec(tuple(values.shape[1:]), "float32") for name, values in probe.items()}
    arrays["frame"] = ArraySpec((3, *cfg.frame_size), "uint8")
    arrays["depth"] = ArraySpec(tuple(cfg.frame_size), "float32")
    arrays["positions"] = ArraySpec((MAX_SOURCES, 3), "float32")
    featurize = functools.partial(_binaural_batch, raw_dir=raw_dir, cfg=cfg, n=n)
    config = {**to_dict(cfg), "clip_samples": n, "has_depth": "depth_path" in table.columns}
    return _write_splits(table, out_dir, arrays, featurize, index, config, BINAURAL_CONVENTION, cfg.batch_size, workers)


def compute_echo_features(
    manifest: pd.DataFrame | Path, raw_dir: Path, out_dir: Path, cfg: EchoFeatureConfig, workers: int = 0
) -> dict[str, int]:
    """Write ``spec`` [2, S, S] and ``depth`` [S, S] (metres) and the index per split; returns samples per split."""
    table, source = _checked_manifest(manifest, raw_dir, ECHO_INDEX + ECHO_FILES + ["sample_rate"])
    wrong = table[table["sample_rate"] != cfg.sample_rate]
    if len(wrong):
        row = wrong.iloc[0]
        raise ManifestError(
            f"{source}: {len(wrong)} row(s) at another sample rate than {cfg.sample_rate} Hz, "
            f"e.g. {raw_dir / row['audio_path']} at {row['sample_rate']} Hz"
        )
    size = cfg.input_size
    arrays = {"spec": ArraySpec((2, size, size), "float32"), "depth": ArraySpec((size, size), "float32")}
    featurize = functools.partial(_echo_batch, raw_dir=raw_dir, cfg=cfg)
    return _write_splits(
        table, out_dir, arrays, featurize, ECHO_INDEX, to_dict(cfg), ECHO_CONVENTION, cfg.batch_size, workers
    )


def _checked_manifest(manifest: pd.DataFrame | Path, raw_dir: Path, columns: list[str]) -> tuple[pd.DataFrame, str]:
    """The manifest table and its name, after checking columns, splits, sample ids and files."""
    if not isinstance(manifest, pd.DataFrame):
        return load_manifest(Path(manifest), raw_dir, columns), str(manifest)
    check_table(manifest, "manifest (DataFrame)", columns, raw_dir)
    return manifest, "manifest (DataFrame)"


def _audio_frames(path: Path) -> int:
    """Samples in an audio file, read from its header."""
    try:
        return int(sf.info(str(path)).frames)
    except (sf.LibsndfileError, RuntimeError) as exc:
        raise AudioFileError(f"{path}: not a readable audio file ({exc})") from exc


def _clip_samples(table: pd.DataFrame, raw_dir: Path, cfg: BinauralFeatureConfig) -> int:
    """Samples per clip: ``clip_seconds`` (or the shortest clip) cut down to a multiple of hop."""
    hop, sr = cfg.mel.hop, cfg.mel.sample_rate
    lengths = {raw_dir / p: _audio_frames(raw_dir / p) for col in ("binaural_path", "mono_path") for p in table[col]}
    shortest = min(lengths, key=lengths.__getitem__)
    wanted = lengths[shortest] if cfg.clip_seconds is None else round(cfg.clip_seconds * sr)
    n = wanted // hop * hop
    if lengths[shortest] < n:
        raise FeatureInputError(f"{shortest}: {lengths[shortest]} samples, shorter than clip_seconds ({n} samples)")
    window = max(cfg.mel.n_fft, cfg.stft_n_fft)
    if n < window:
        raise FeatureInputError(f"{shortest}: clips of {n} samples are shorter than one STFT window ({window})")
    return n


def _binaural_audio_features(audio: torch.Tensor, cfg: BinauralFeatureConfig) -> dict[str, np.ndarray]:
    """``mel`` and ``stft`` arrays of a batch ``[B, 3 (mono, left, right), n]``."""
    mel = mel_spectrogram(audio, cfg.mel)
    pair = torch.stack((audio[:, 0], audio[:, 1] - audio[:, 2]), dim=1)
    low = resample(pair, cfg.mel.sample_rate, cfg.stft_sample_rate)
    stft = stft_features(low, cfg.stft_n_fft, cfg.stft_hop, cfg.stft_win, center=True)
    return {"mel": mel.numpy(), "stft": stft.numpy()}


def _binaural_batch(rows: pd.DataFrame, raw_dir: Path, cfg: BinauralFeatureConfig, n: int) -> dict[str, np.ndarray]:
    """All arrays of a batch of manifest rows."""
    sr = cfg.mel.sample_rate
    clips = []
    for binaural_path, mono_path in zip(rows["binaural_path"], rows["mono_path"], strict=True):
        binaural, _ = read_audio(raw_dir / binaural_path, expect_sr=sr, expect_channels=2)
        mono, _ = read_audio(raw_dir / mono_path, expect_sr=sr, expect_channels=1)
        for path, audio in ((raw_dir / binaural_path, binaural), (raw_dir / mono_path, mono)):
            if audio.shape[1] < n:
                raise FeatureInputError(f"{path}: {audio.shape[1]} samples, expected at least {n}")
        clips.append(np.concatenate((mono[:, :n], binaural[:, :n])))
    out = _binaural_audio_features(torch.from_numpy(np.stack(clips)), cfg)
    frames = [_load_frame(raw_dir / p, cfg.frame_size) for p in rows["frame_path"]]
    out["frame"] = np.stack([f for f, _ in frames])
    sources = rows["sources"] if "sources" in rows else [None] * len(rows)
    pairs = zip(sources, frames, rows["frame_path"], strict=True)
    out["positions"] = np.stack([_source_positions(s, size, raw_dir / p) for s, (_, size), p in pairs])
    if "depth_path" in rows:
        out["depth"] = np.stack([_load_depth(raw_dir / p, cfg.frame_size, None) for p in rows["depth_path"]])
    else:
        out["depth"] = np.zeros((len(rows), *cfg.frame_size), np.float32)
    return out


def _echo_batch(rows: pd.DataFrame, raw_dir: Path, cfg: EchoFeatureConfig) -> dict[str, np.ndarray]:
    """Echo spectrograms and depth maps of a batch of manifest rows."""
    specs = []
    for audio_path in rows["audio_path"]:
        path = raw_dir / audio_path
        audio, sr = read_audio(path, expect_sr=cfg.sample_rate, expect_channels=2)
        if cfg.audio_seconds is not None:
            audio = audio[:, : round(cfg.audio_seconds * sr)]
        if audio.shape[1] <= cfg.n_fft // 2:
            raise FeatureInputError(f"{path}: {audio.shape[1]} samples, too short for n_fft {cfg.n_fft}")
        specs.append(echo_spectrogram(torch.from_numpy(audio), cfg.n_fft, cfg.win, cfg.hop, cfg.input_size))
    size = (cfg.input_size, cfg.input_size)
    depth = [_load_depth(raw_dir / p, size, cfg.max_depth_m) for p in rows["depth_path"]]
    return {"spec": torch.stack(specs).numpy(), "depth": np.stack(depth)}


def _load_frame(path: Path, size: tuple[int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    """An RGB image as uint8 ``[3, H, W]``, resized bilinearly (PIL, antialiased), and its original (width, height)."""
    try:
        with Image.open(path) as image:
            original = image.size
            rgb = image.convert("RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
    except (OSError, ValueError) as exc:
        raise FeatureInputError(f"{path}: not a readable image ({exc})") from exc
    return np.asarray(rgb).transpose(2, 0, 1), original


def _source_positions(sources: str | None, frame_size: tuple[int, int], frame_path: Path) -> np.ndarray:
    """``[MAX_SOURCES, 3]`` rows (x / width, y / height, 1) of a ``sources`` JSON list, zero rows after it."""
    out = np.zeros((MAX_SOURCES, 3), np.float32)
    if sources is None or (isinstance(sources, float) and np.isnan(sources)):
        return out
    try:
        items = json.loads(sources)
        for i, src in enumerate(items[:MAX_SOURCES]):
            out[i] = (float(src["pixel_x"]) / frame_size[0], float(src["pixel_y"]) / frame_size[1], 1.0)
    except (ValueError, TypeError, KeyError) as exc:
        raise FeatureInputError(
            f"manifest row of {frame_path}: column 'sources' should be a JSON list of objects with pixel_x and "
            f"pixel_y ({exc}): {sources!r}"
        ) from exc
    return out


def _load_depth(path: Path, size: tuple[int, int], max_depth: float | None) -> np.ndarray:
    """A depth map in metres as float32 ``[H, W]``: invalid pixels set to 0, then a nearest resize."""
    try:
        depth = np.squeeze(np.load(path, allow_pickle=False)).astype(np.float32)
    except (OSError, ValueError) as exc:
        raise FeatureInputError(f"{path}: not a readable .npy depth map ({exc})") from exc
    if depth.ndim != 2:
        raise FeatureInputError(f"{path}: expected a 2-D depth map, got shape {depth.shape}")
    valid = np.isfinite(depth) & (depth > 0)
    if max_depth is not None:
        valid &= depth <= max_depth
    clean = torch.from_numpy(np.where(valid, depth, np.float32(0)))
    return F.interpolate(clean[None, None], size=size, mode="nearest-exact")[0, 0].numpy()


def _write_splits(
    table: pd.DataFrame,
    out_dir: Path,
    arrays: dict[str, ArraySpec],
    featurize: Callable[[pd.DataFrame], dict[str, np.ndarray]],
    index_columns: list[str],
    config: dict[str, Any],
    convention: str,
    batch_size: int,
    workers: int,
) -> dict[str, int]:
    """Featurize every split batch by batch into ``out_dir/<split>``, all of it renamed into place at the end."""
    counts = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for split in (s for s in SPLITS if (table["split"] == s).any()):
            rows = table[table["split"] == split].reset_index(drop=True)
            batches = [rows.iloc[i : i + batch_size] for i in range(0, len(rows), batch_size)]
            with (
                write_split(tmp / split, arrays, rows[index_columns], config, convention) as writer,
                tqdm(total=len(rows), desc=f"{out_dir.name}/{split}", unit="sample") as bar,
            ):
                for batch, values in zip(batches, _ordered_map(featurize, batches, workers), strict=True):
                    writer.append(values)
                    bar.update(len(batch))
            counts[split] = len(rows)
    return counts


def _ordered_map(fn: Callable[[Any], Any], items: Sequence[Any], workers: int) -> Iterator[Any]:
    """``map(fn, items)``; with ``workers > 1`` in threads, at most ``2 * workers`` items ahead."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pool = ThreadPoolExecutor(workers)
    pending: deque[Future[Any]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
