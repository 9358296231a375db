"""Batvision V1 and V2 (REFERENCE.md section 5) in the echo-scene layout of the depth family.

:func:`adapt_batvision` reads a Batvision folder through its CSVs as shipped and writes what
:func:`binaural_lab.data.simulate.synthesize_echoes` writes, so prepare and featurize run unchanged:
``echoes/<id>.wav`` (float WAV, channels left, right, at ``sample_rate``), ``depth/<id>.npy``
(float32 metres, 0 = invalid) and ``scenes.parquet`` (one row per sample, paths relative to the folder).

Layouts (paths in the CSVs are relative to the dataset root, as the authors' loaders read them):

* V1: ``train.csv``, ``val.csv``, ``test.csv`` at the root, columns ``depth path``, ``audio path left``,
  ``audio path right``; depth ``.npy`` in millimetres (NaN and +-inf invalid); one ``.npy`` per ear
  at 44.1 kHz.
* V2: one folder per location, each with the three CSVs, columns ``depth path``, ``depth file name``,
  ``audio path``, ``audio file name`` (folder and file name joined below the root); a stereo WAV;
  depth ``.npy`` uint16 millimetres, 0 invalid.

Depth: millimetres to metres; non-finite, <= 0 and > ``max_depth_m`` pixels become 0 (the authors'
loaders clamp deeper pixels to max depth instead; here they are invalid, as for the synthetic echoes).
Audio: resampled by the project's resampler (:func:`binaural_lab.audio.stft.resample`), then, with
``cut_audio``, cut to ``int(2 * max_depth_m / 340 * sample_rate)`` samples (the V2 loader's cut).

Splits: ``csv_split`` names the CSV a row comes from. With ``published_splits`` it is copied to
``published_split``, which :func:`binaural_lab.data.manifest.build_manifest` keeps; without, prepare
draws splits by ``room_id``. ``room_id`` is the location folder in V2 (also in ``location``). V1 names
no location, so its ``room_id`` is its published split and V1 keeps the published splits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from binaural_lab.audio.io import read_audio, write_audio
from binaural_lab.audio.stft import resample
from binaural_lab.config import ParamError, UserError
from binaural_lab.data.manifest import SPLITS
from binaural_lab.paths import atomic_path, nested

VERSIONS = {"batvision-v1": "v1", "batvision-v2": "v2"}  # datasets.<slot>.kind -> version
FOLDERS = {"v1": "BatvisionV1", "v2": "BatvisionV2"}  # what registry.yaml's archives unpack to
DEPTH_COLUMNS = {"v1": ("depth path",), "v2": ("depth path", "depth file name")}
AUDIO_COLUMNS = {"v1": (("audio path left",), ("audio path right",)), "v2": (("audio path", "audio file name"),)}
V1_SAMPLE_RATE = 44100  # V1's .npy audio carries no rate
SPEED_OF_SOUND = 340.0  # m/s of the V2 loader's cut, 2 * max_depth / 340 s
DEPTH_KIND = "planar"  # ZED stereo depth: along the optical axis (REFERENCE.md section 4)
SUBDIRS = ("echoes", "depth")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class BatvisionError(UserError, ValueError):
    """A Batvision folder lacks the layout the adapter reads; the message names the file or column."""


@dataclass(frozen=True)
class _Sample:
    """One CSV row: where it is listed, its id, grouping and source files."""

    csv: Path
    row: int
    sample_id: str
    room_id: str
    split: str
    location: str | None
    depth: Path
    audio: tuple[Path, ...]  # V1: (left, right); V2: (stereo,)
    source_depth: str  # as the CSV names them
    source_audio: str

    @property
    def where(self) -> str:
        return f"{self.csv} line {self.row + 2}"


def echo_samples(max_depth_m: float, sample_rate: int) -> int:
    """Samples of the round trip to ``max_depth_m`` at 340 m/s (the V2 loader's cut)."""
    return int(2 * max_depth_m / SPEED_OF_SOUND * sample_rate)


def depth_metres(depth_mm: np.ndarray, max_depth_m: float) -> np.ndarray:
    """Float32 metres of a millimetre depth map; non-finite, <= 0 and > ``max_depth_m`` pixels are 0."""
    mm = np.asarray(depth_mm, dtype=np.float64)
    metres = np.where(np.isfinite(mm), mm, 0.0) / 1000.0
    return np.where((metres > 0) & (metres <= max_depth_m), metres, 0.0).astype(np.float32)


def _read_csv(path: Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """A Batvision CSV as strings, failing on a missing file or column and on empty cells."""
    if not path.is_file():
        raise BatvisionError(f"{path}: CSV not found")
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise BatvisionError(f"{path}: not a readable CSV ({exc})") from exc
    missing = [c for c in columns if c not in table.columns]
    if missing:
        raise BatvisionError(f"{path}: column(s) {missing} missing (columns: {list(table.columns)})")
    for col in columns:
        empty = np.flatnonzero(table[col].str.strip() == "")
        if len(empty):
            raise BatvisionError(f"{path} line {empty[0] + 2}: column {col!r} is empty")
    return table


def _join(root: Path, row: Mapping[str, str], columns: tuple[str, ...]) -> Path:
    return root.joinpath(*(row[c] for c in columns))


def _slug(name: str) -> str:
    return _UNSAFE.sub("-", name).strip("-") or "location"


def _samples(root: Path, version: str) -> list[_Sample]:
    """Every row of every CSV, V1's at the root, V2's in each location folder."""
    if version == "v1":
        folders: list[tuple[Path, str | None]] = [(root, None)]
    else:
        found = [p for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        folders = [(p, p.name) for p in found if any((p / f"{s}.csv").is_file() for s in SPLITS)]
        if not folders:
            raise BatvisionError(f"{root}: no location folder holding train.csv, val.csv or test.csv (Batvision V2)")
    columns = (*DEPTH_COLUMNS[version], *(c for cols in AUDIO_COLUMNS[version] for c in cols))
    samples, slugs = [], {}
    for folder, location in folders:
        prefix = ""
        if location is not None:
            prefix = f"{_slug(location)}_"
            if prefix in slugs:
                raise BatvisionError(f"{folder} and {slugs[prefix]}: location names that give the same sample ids")
            slugs[prefix] = folder
        for split in SPLITS:
            csv = folder / f"{split}.csv"
            for i, row in enumerate(_read_csv(csv, columns).to_dict("records")):
                samples.append(
                    _Sample(
                        csv=csv,
                        row=i,
                        sample_id=f"{prefix}{split}_{i:06d}",
                        room_id=split if location is None else location,
                        split=split,
                        location=location,
                        depth=_join(root, row, DEPTH_COLUMNS[version]),
                        audio=tuple(_join(root, row, cols) for cols in AUDIO_COLUMNS[version]),
                        source_depth="/".join(row[c] for c in DEPTH_COLUMNS[version]),
                        source_audio=";".join("/".join(row[c] for c in cols) for cols in AUDIO_COLUMNS[version]),
                    )
                )
    if not samples:
        raise BatvisionError(f"{root}: the CSVs list no samples")
    return samples


def _check_files(samples: list[_Sample], version: str) -> None:
    """Fail, naming the CSV line, column and file, when a listed file does not exist."""
    missing = []
    for s in samples:
        listed = zip((DEPTH_COLUMNS[version], *AUDIO_COLUMNS[version]), (s.depth, *s.audio), strict=True)
        missing += [(s, cols, path) for cols, path in listed if not path.is_file()]
    if missing:
        s, cols, path = missing[0]
        named = " + ".join(repr(c) for c in cols)
        raise BatvisionError(f"{s.where}: {named}: {path} not found ({len(missing)} listed file(s) missing in all)")


def _load_npy(path: Path, ndim: int) -> np.ndarray:
    try:
        data = np.squeeze(np.load(path, allow_pickle=False))
    except (OSError, ValueError) as exc:
        raise BatvisionError(f"{path}: not a readable .npy file ({exc})") from exc
    if data.ndim != ndim:
        raise BatvisionError(f"{path}: expected {ndim} dimension(s), got shape {data.shape}")
    return data


def _load_audio(s: _Sample) -> tuple[np.ndarray, int]:
    """Float32 ``[2 (left, right), samples]`` and its sample rate."""
    if len(s.audio) == 1:
        return read_audio(s.audio[0], expect_channels=2)
    ears = [_load_npy(path, 1).astype(np.float32) for path in s.audio]
    if len(ears[0]) != len(ears[1]):
        raise BatvisionError(f"{s.where}: left and right audio differ in length ({len(ears[0])}, {len(ears[1])})")
    if not all(np.isfinite(ear).all() for ear in ears):
        raise BatvisionError(f"{s.audio[0]} / {s.audio[1]}: audio holds NaN or infinite samples")
    return np.stack(ears), V1_SAMPLE_RATE


def _convert(
    s: _Sample, out: Path, max_depth_m: float, sample_rate: int, keep: int | None, published: bool
) -> dict[str, Any]:
    """Write one sample's echoes and depth map under ``out`` and return its table row."""
    audio, sr = _load_audio(s)
    audio = resample(audio, sr, sample_rate)
    if keep is not None:
        if audio.shape[1] < keep:
            raise BatvisionError(
                f"{s.audio[0]}: {audio.shape[1]} samples at {sample_rate} Hz, fewer than the {keep} of "
                f"2 * max_depth_m / {SPEED_OF_SOUND:g} s"
            )
        audio = audio[:, :keep]
    depth = depth_metres(_load_npy(s.depth, 2), max_depth_m)
    paths = {"audio_path": f"echoes/{s.sample_id}.wav", "depth_path": f"depth/{s.sample_id}.npy"}
    write_audio(out / paths["audio_path"], audio, sample_rate)
    np.save(out / paths["depth_path"], depth)
    return {
        "sample_id": s.sample_id,
        "room_id": s.room_id,
        **({} if s.location is None else {"location": s.location}),
        "csv_split": s.split,
        **({"published_split": s.split} if published else {}),
        "source_row": s.row,
        "source_depth": s.source_depth,
        "source_audio": s.source_audio,
        "sample_rate": sample_rate,
        "num_samples": audio.shape[1],
        "max_depth_m": max_depth_m,
        "depth_kind": DEPTH_KIND,
        "valid_fraction": float(np.mean(depth > 0)),
        **paths,
    }


def adapt_batvision(
    source_root: str | Path,
    out_raw_dir: str | Path,
    version: str,
    max_depth_m: float,
    sample_rate: int,
    *,
    published_splits: bool = True,
    cut_audio: bool = True,
) -> pd.DataFrame:
    """Convert the Batvision ``version`` ("v1" or "v2") folder ``source_root`` into ``out_raw_dir``.

    Every CSV and listed file is checked before anything is written; the output is written into a
    temporary sibling that replaces ``out_raw_dir`` at the end, so an error leaves it as it was.
    Returns the ``scenes.parquet`` table, sorted by sample_id.
    """
    if version not in FOLDERS:
        raise ParamError(f"version: {version!r} is not one of {sorted(FOLDERS)}")
    if version == "v1" and not published_splits:
        raise ParamError("published_splits: Batvision V1 names no location to draw disjoint splits from; keep true")
    root, out = Path(source_root).resolve(), Path(out_raw_dir).resolve()
    if not root.is_dir():
        raise BatvisionError(
            f"{root}: Batvision {version.upper()} folder not found; run `blab data fetch batvision-{version}` "
            "or set download.<registry name>.local_root"
        )
    if nested(root, out):
        raise ParamError(
            f"source_root {root} and the output {out} overlap: the output replaces its folder; "
            "give datasets.<slot>.name another name than the download folder"
        )
    samples = _samples(root, version)
    _check_files(samples, version)
    keep = echo_samples(max_depth_m, sample_rate) if cut_audio else None
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        for name in SUBDIRS:
            (tmp / name).mkdir()
        rows = [
            _convert(s, tmp, max_depth_m, sample_rate, keep, published_splits)
            for s in tqdm(samples, desc=f"batvision-{version}", unit="sample")
        ]
        table = pd.DataFrame(rows).sort_values("sample_id").reset_index(drop=True)
        table.to_parquet(tmp / "scenes.parquet", index=False)
    return table
