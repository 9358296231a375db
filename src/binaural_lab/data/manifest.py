"""Manifests: one Parquet table per dataset, one row per sample, with its split.

Splits are drawn by room, so no room (and hence no impulse response geometry) appears in two splits,
unless the raw table has a ``published_split`` column (a real dataset's own splits): that is kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from binaural_lab.config import ParamError, UserError, param
from binaural_lab.paths import atomic_path, write_json

SPLITS = ("train", "val", "test")
PUBLISHED_SPLIT = "published_split"  # raw-table column of a dataset's own splits, kept as they are


@dataclass
class SplitConfig:
    """Fractions of rooms per split."""

    train: float = param(0.8, gt=0, lt=1)
    val: float = param(0.1, gt=0, lt=1)
    test: float = param(0.1, gt=0, lt=1)

    def validate(self, where: str) -> None:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ParamError(f"{where}: train + val + test must sum to 1, got {total:.4f}")


class ManifestError(UserError, ValueError):
    """A manifest is missing, lacks a column or points at files that do not exist."""


def assign_splits(room_ids: pd.Series, cfg: SplitConfig, seed: int) -> pd.Series:
    """Map every row to train/val/test by its room, with at least one room in each split."""
    rooms = np.array(sorted(room_ids.unique()))
    if len(rooms) < 3:
        raise ParamError(f"splits: {len(rooms)} room(s) cannot be split three ways; simulate at least 3 rooms")
    order = np.random.default_rng(seed).permutation(len(rooms))
    n_val = max(1, round(cfg.val * len(rooms)))
    n_test = max(1, round(cfg.test * len(rooms)))
    n_train = len(rooms) - n_val - n_test
    if n_train < 1:
        raise ParamError(f"splits: no room left for training out of {len(rooms)}; lower val/test or add rooms")
    labels = np.empty(len(rooms), dtype=object)
    labels[order[:n_train]] = "train"
    labels[order[n_train : n_train + n_val]] = "val"
    labels[order[n_train + n_val :]] = "test"
    return room_ids.map(dict(zip(rooms, labels, strict=True)))


def published_splits(table: pd.DataFrame, source: str) -> pd.Series:
    """The ``published_split`` column, checked to hold every split and nothing else."""
    values = table[PUBLISHED_SPLIT]
    unknown = sorted(set(values.astype(str)) - set(SPLITS))
    if unknown:
        raise ManifestError(f"{source}: column {PUBLISHED_SPLIT!r} holds {unknown}; expected {list(SPLITS)}")
    absent = [s for s in SPLITS if not (values == s).any()]
    if absent:
        raise ManifestError(f"{source}: column {PUBLISHED_SPLIT!r} has no {absent} rows")
    return values


def check_files(table: pd.DataFrame, root: Path, columns: list[str], source: str) -> None:
    """Fail, naming the first missing files, when a path column points at files that do not exist."""
    for col in columns:
        if col not in table.columns:
            raise ManifestError(f"{source}: column {col!r} is missing (columns: {list(table.columns)})")
        missing = [p for p in table[col] if not (root / p).is_file()]
        if missing:
            shown = ", ".join(str(root / p) for p in missing[:3])
            raise ManifestError(f"{source}: {len(missing)} file(s) of column {col!r} not found, e.g. {shown}")


def path_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in table.columns if c.endswith("_path")]


def check_table(
    table: pd.DataFrame, source: str, columns: list[str] = (), raw_dir: Path | None = None, with_split: bool = True
) -> None:
    """Fail, naming ``source``, on missing columns, no rows, unknown splits, repeated sample ids or
    (when ``raw_dir`` is given) files that do not exist."""
    required = ["sample_id", "room_id", *(["split"] if with_split else []), *columns]
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise ManifestError(f"{source}: column(s) {missing} missing (columns: {list(table.columns)})")
    if table.empty:
        raise ManifestError(f"{source}: no rows")
    if with_split:
        unknown = sorted(set(table["split"]) - set(SPLITS))
        if unknown:
            raise ManifestError(f"{source}: unknown split value(s) {unknown}; expected {list(SPLITS)}")
    repeated = table.loc[table["sample_id"].duplicated(), "sample_id"]
    if len(repeated):
        raise ManifestError(f"{source}: sample_id {repeated.iloc[0]!r} appears more than once")
    if raw_dir is not None:
        check_files(table, raw_dir, path_columns(table), source)


def build_manifest(raw_dir: Path, out_dir: Path, cfg: SplitConfig, seed: int) -> pd.DataFrame:
    """Read ``raw_dir/scenes.parquet``, check its files, add ``split`` (its ``published_split`` when it
    has one, else drawn by room), write ``out_dir/manifest.parquet``."""
    scenes_file = raw_dir / "scenes.parquet"
    if not scenes_file.is_file():
        raise ManifestError(f"{scenes_file}: scene table not found; run the synthesis stage first")
    table = pd.read_parquet(scenes_file)
    check_table(table, str(scenes_file), raw_dir=raw_dir, with_split=False)
    published = PUBLISHED_SPLIT in table.columns
    split = published_splits(table, str(scenes_file)) if published else assign_splits(table["room_id"], cfg, seed)
    table = table.assign(split=split)
    first = ["sample_id", "split", "room_id"]
    table = table[first + [c for c in table.columns if c not in first]].sort_values("sample_id")
    table = table.reset_index(drop=True)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        table.to_parquet(tmp / "manifest.parquet", index=False)
        sizes = table.groupby("split").agg(samples=("sample_id", "size"), rooms=("room_id", "nunique"))
        counts = {s: {k: int(v) for k, v in sizes.loc[s].items()} for s in SPLITS}
        origin = {"splits_from": PUBLISHED_SPLIT} if published else {}
        write_json(tmp / "splits.json", {"seed": seed, **origin, "splits": counts})
    return table


def load_manifest(path: Path, raw_dir: Path | None = None, columns: list[str] = ()) -> pd.DataFrame:
    """Read a manifest and :func:`check_table` it (its files too when ``raw_dir`` is given)."""
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found; run the prepare stage first")
    table = pd.read_parquet(path)
    check_table(table, str(path), columns, raw_dir)
    return table
