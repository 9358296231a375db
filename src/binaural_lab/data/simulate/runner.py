"""Parallel, deterministic and atomic generation of a simulated dataset.

Every sample is a task ``(room_id, index)`` rendered by a module-level function from its own random
generators (``default_rng([seed, room_id, 0])`` for the room, ``[seed, room_id, 1 + index]`` for the
sample), so results do not depend on the number of worker processes or on their order. Everything is
written into a temporary sibling of the output directory that replaces it in one rename at the end.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits
from tqdm import tqdm

from binaural_lab.config import ParamError
from binaural_lab.paths import atomic_path

Task = tuple[int, int]
RenderFn = Callable[[Path, Task], dict[str, Any]]


def room_rng(seed: int, room_id: int) -> np.random.Generator:
    """The generator of everything shared by a room's samples."""
    return np.random.default_rng([seed, room_id, 0])


def sample_rng(seed: int, room_id: int, index: int) -> np.random.Generator:
    """The generator of one sample."""
    return np.random.default_rng([seed, room_id, 1 + index])


def sample_id(prefix: str, room_id: int, index: int, n_rooms: int, per_room: int) -> str:
    """``r012_s03``-style id whose zero padding keeps string order equal to (room, index) order."""
    room_digits = max(3, len(str(n_rooms - 1)))
    index_digits = max(2, len(str(per_room - 1)))
    return f"r{room_id:0{room_digits}d}_{prefix}{index:0{index_digits}d}"


def _single_blas_thread() -> None:
    """Worker initialiser: the matrix products are small, and BLAS threads in every worker would
    oversubscribe the cores (OpenBLAS threads spin and slow everything down)."""
    threadpool_limits(limits=1, user_api="blas")


def generate(
    render: RenderFn, n_rooms: int, per_room: int, out_dir: Path, subdirs: tuple[str, ...], workers: int, desc: str
) -> pd.DataFrame:
    """Render every ``(room_id, index)`` into ``out_dir`` and write ``scenes.parquet`` (sorted by sample_id).

    ``render(tmp_dir, task)`` writes the sample's files under ``tmp_dir`` and returns its metadata row.
    ``workers`` processes render in parallel; 1 renders in this process.
    """
    if workers < 1:
        raise ParamError(f"workers: {workers!r} is out of range, expected a value >= 1")
    tasks = [(room, index) for room in range(n_rooms) for index in range(per_room)]
    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        for name in subdirs:
            (tmp / name).mkdir()
        job = functools.partial(render, tmp)
        bar = functools.partial(tqdm, total=len(tasks), desc=desc, unit="sample")
        if workers == 1:
            with threadpool_limits(limits=1, user_api="blas"):
                rows = [job(task) for task in bar(tasks)]
        else:
            with ProcessPoolExecutor(max_workers=workers, initializer=_single_blas_thread) as pool:
                chunk = max(1, len(tasks) // (8 * workers))
                rows = list(bar(pool.map(job, tasks, chunksize=chunk)))
        table = pd.DataFrame(rows).sort_values("sample_id").reset_index(drop=True)
        table.to_parquet(tmp / "scenes.parquet", index=False)
    return table
