"""Figures people would rather look at than numbers: spectrograms, depth maps, errors, attention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from binaural_lab.paths import atomic_path  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=path.suffix.lstrip(".") or "png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def depth_examples(
    path: Path,
    spec: np.ndarray,
    gt: np.ndarray,
    preds: Mapping[str, np.ndarray],
    max_depth: float,
    diverging: Sequence[str] = (),
) -> None:
    """One row per sample: left and right echo spectrograms, each prediction, ground truth, error.

    ``spec`` [N, 2, S, S], ``gt`` [N, S, S], each ``preds[name]`` [N, S, S]; names listed in
    ``diverging`` (e.g. a residual) get a symmetric diverging colour map. The error map is that of
    the first prediction, on valid pixels only.
    """
    names = list(preds)
    cols = 2 + len(names) + 2
    n = len(gt)
    fig, axes = plt.subplots(n, cols, figsize=(2.2 * cols, 2.2 * n), squeeze=False)
    for i in range(n):
        row = axes[i]
        for c, ear in enumerate(("left echo", "right echo")):
            row[c].imshow(spec[i, c], origin="lower", aspect="auto", cmap="magma")
            row[c].set_title(ear if i == 0 else "")
        for c, name in enumerate(names, start=2):
            img = preds[name][i]
            if name in diverging:
                lim = float(np.abs(img).max()) or 1.0
                im = row[c].imshow(img, cmap="RdBu_r", vmin=-lim, vmax=lim)
            else:
                im = row[c].imshow(img, cmap="viridis", vmin=0, vmax=max_depth)
            row[c].set_title(name if i == 0 else "")
        row[-2].imshow(gt[i], cmap="viridis", vmin=0, vmax=max_depth)
        row[-2].set_title("ground truth" if i == 0 else "")
        err = np.where(gt[i] > 0, np.abs(preds[names[0]][i] - gt[i]), np.nan)
        im = row[-1].imshow(err, cmap="inferno", vmin=0, vmax=max_depth / 4)
        row[-1].set_title(f"|error| {names[0]}" if i == 0 else "")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.colorbar(im, ax=axes[:, -1].tolist(), shrink=0.6, label="m")
    _save(fig, path)


def attention_maps(path: Path, spec: np.ndarray, maps: Mapping[int, np.ndarray], queries: np.ndarray) -> None:
    """Where a few left-ear query positions attend on the right ear, per attention level.

    ``maps[level]`` is [Q, h, w]: for each query (row, col given as fractions of the map in
    ``queries`` [Q, 2]) the attention weights over the right ear's positions at that level.
    """
    levels = sorted(maps)
    q = len(queries)
    fig, axes = plt.subplots(q, len(levels) + 1, figsize=(2.4 * (len(levels) + 1), 2.4 * q), squeeze=False)
    size = spec.shape[-1]
    for r in range(q):
        axes[r, 0].imshow(spec[0], origin="lower", aspect="auto", cmap="magma")
        axes[r, 0].plot(queries[r, 1] * size, queries[r, 0] * size, "c+", ms=12, mew=2)
        axes[r, 0].set_title("left ear, query" if r == 0 else "")
        for c, level in enumerate(levels, start=1):
            axes[r, c].imshow(maps[level][r], origin="lower", aspect="auto", cmap="viridis")
            axes[r, c].set_title(f"right ear, level {level}" if r == 0 else "")
    for ax in axes.ravel():
        ax.set_xticks([])
        ax.set_yticks([])
    _save(fig, path)
