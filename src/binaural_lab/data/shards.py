"""Sharded feature store: a few files per split instead of one file per sample.

A split directory holds one ``<name>.npy`` per array (first axis = sample, written through
``np.lib.format.open_memmap`` so memory does not grow with the dataset), ``index.parquet`` (the
sample order and per-sample scalars) and ``meta.json`` (shapes, dtypes, feature config, convention).
A split is written into a temporary sibling and renamed at the end, so a killed run leaves nothing.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from torch.utils.data import Dataset

from binaural_lab.config import UserError
from binaural_lab.paths import atomic_path, write_json

SHARD_FORMAT = "binaural-lab feature shards v1"
META_FILE = "meta.json"
INDEX_FILE = "index.parquet"


class ShardError(UserError, ValueError):
    """A feature split is missing, incomplete or does not match its meta.json."""


@dataclass(frozen=True)
class ArraySpec:
    """Per-sample shape and dtype of one array of a split."""

    shape: tuple[int, ...]
    dtype: str


class ShardWriter:
    """Fills the memory-mapped arrays of one split batch by batch, in sample order."""

    def __init__(self, directory: Path, num_samples: int, arrays: Mapping[str, ArraySpec]):
        self.num_samples = num_samples
        self.written = 0
        self._specs = dict(arrays)
        self._arrays = {
            name: np.lib.format.open_memmap(
                directory / f"{name}.npy", mode="w+", dtype=np.dtype(spec.dtype), shape=(num_samples, *spec.shape)
            )
            for name, spec in arrays.items()
        }

    def append(self, batch: Mapping[str, np.ndarray]) -> None:
        """Write the next rows: one array per name, all with the same number of rows."""
        if set(batch) != set(self._specs):
            raise ValueError(f"batch arrays {sorted(batch)} differ from the split's {sorted(self._specs)}")
        sizes = {len(values) for values in batch.values()}
        if len(sizes) != 1:
            raise ValueError(f"batch arrays have different numbers of rows: {sizes}")
        n = sizes.pop()
        if self.written + n > self.num_samples:
            raise ValueError(f"{self.written + n} rows written to a split of {self.num_samples}")
        for name, values in batch.items():
            spec = self._specs[name]
            if tuple(values.shape[1:]) != spec.shape:
                raise ValueError(f"array {name!r}: rows of shape {tuple(values.shape[1:])}, expected {spec.shape}")
            self._arrays[name][self.written : self.written + n] = values
        self.written += n

    def close(self) -> dict[str, dict[str, Any]]:
        """Flush every array and return its meta.json entry; fails unless every row was written."""
        if self.written != self.num_samples:
            raise ValueError(f"only {self.written} of {self.num_samples} rows were written")
        entries = {}
        for name, array in self._arrays.items():
            array.flush()
            entries[name] = {"file": f"{name}.npy", "shape": list(array.shape), "dtype": array.dtype.str}
        self._arrays.clear()
        return entries


@contextlib.contextmanager
def write_split(
    split_dir: Path,
    arrays: Mapping[str, ArraySpec],
    index: pd.DataFrame,
    config: Mapping[str, Any],
    convention: str,
) -> Iterator[ShardWriter]:
    """Yield a :class:`ShardWriter` for ``len(index)`` samples; on success the split appears at once."""
    with atomic_path(split_dir) as tmp:
        tmp.mkdir()
        writer = ShardWriter(tmp, len(index), arrays)
        yield writer
        entries = writer.close()
        index.reset_index(drop=True).to_parquet(tmp / INDEX_FILE, index=False)
        meta = {
            "format": SHARD_FORMAT,
            "num_samples": len(index),
            "arrays": entries,
            "index": {"file": INDEX_FILE, "columns": list(index.columns)},
            "config": dict(config),
            "convention": convention,
        }
        write_json(tmp / META_FILE, meta)


class ShardReader:
    """Read-only view of one split: its meta.json, memory-mapped arrays and index."""

    def __init__(self, split_dir: str | Path):
        self.dir = Path(split_dir)
        meta_file = self.dir / META_FILE
        if not self.dir.is_dir():
            raise ShardError(f"{self.dir}: feature split not found; run the features stage first")
        if not meta_file.is_file():
            raise ShardError(f"{meta_file}: not found, so {self.dir} is not a complete feature split")
        try:
            self.meta: dict[str, Any] = json.loads(meta_file.read_text())
        except json.JSONDecodeError as exc:
            raise ShardError(f"{meta_file}: not valid JSON ({exc})") from exc
        if self.meta.get("format") != SHARD_FORMAT or not isinstance(self.meta.get("arrays"), dict):
            raise ShardError(f"{meta_file}: not a '{SHARD_FORMAT}' meta file")

    def __len__(self) -> int:
        return int(self.meta["num_samples"])

    @property
    def names(self) -> list[str]:
        """The array names of the split."""
        return list(self.meta["arrays"])

    def open(self, name: str) -> np.memmap:
        """Memory-map array ``name`` read-only, checking it against meta.json."""
        if name not in self.meta["arrays"]:
            raise ShardError(f"{self.dir}: no array {name!r}; the split holds {self.names}")
        entry = self.meta["arrays"][name]
        path = self.dir / entry["file"]
        if not path.is_file():
            raise ShardError(f"{path}: array file listed in {self.dir / META_FILE} is missing")
        try:
            array = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise ShardError(f"{path}: not a readable .npy file ({exc})") from exc
        if list(array.shape) != entry["shape"] or array.dtype != np.dtype(entry["dtype"]):
            raise ShardError(
                f"{path}: holds {array.dtype} {list(array.shape)}, but {META_FILE} says "
                f"{np.dtype(entry['dtype'])} {entry['shape']}; recompute the features"
            )
        return array

    def arrays(self) -> dict[str, np.memmap]:
        """Every array of the split, memory-mapped read-only."""
        return {name: self.open(name) for name in self.names}

    def index(self) -> pd.DataFrame:
        """The per-sample table (sample order of the arrays)."""
        path = self.dir / INDEX_FILE
        if not path.is_file():
            raise ShardError(f"{path}: index of the feature split is missing")
        table = pd.read_parquet(path)
        if len(table) != len(self):
            raise ShardError(f"{path}: {len(table)} rows, but {META_FILE} says {len(self)} samples")
        return table


def open_split(split_dir: str | Path) -> dict[str, np.memmap]:
    """Every array of a split, memory-mapped read-only (see :class:`ShardReader`)."""
    return ShardReader(split_dir).arrays()


class ShardDataset(Dataset[dict[str, Tensor]]):
    """Samples of one split as dicts of tensors, read from the memory maps.

    ``keys`` maps array names to output keys. The memory maps are opened lazily in each process and
    never pickled, so DataLoader workers are safe.
    """

    def __init__(self, split_dir: str | Path, keys: Mapping[str, str]):
        reader = ShardReader(split_dir)
        missing = sorted(set(keys) - set(reader.names))
        if missing:
            raise ShardError(f"{reader.dir}: no array(s) {missing}; the split holds {reader.names}")
        self.split_dir = reader.dir
        self.keys = dict(keys)
        self._length = len(reader)
        self._arrays: dict[str, np.memmap] | None = None

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        if self._arrays is None:
            reader = ShardReader(self.split_dir)
            self._arrays = {name: reader.open(name) for name in self.keys}
        return {key: torch.from_numpy(np.array(self._arrays[name][i])) for name, key in self.keys.items()}

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_arrays"] = None
        return state
