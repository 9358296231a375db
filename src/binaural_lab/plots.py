"""Figures people would rather look at than numbers: spectrograms, depth maps, errors, attention."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

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


_DB_RANGE = 80.0  # dB shown below the loudest bin of an example


def _stft_db(x: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Log-magnitude (dB) of a Hann-window STFT of a 1-D signal, no padding: [n_fft // 2 + 1, frames]."""
    frames = np.lib.stride_tricks.sliding_window_view(x, n_fft)[::hop]
    spec = np.fft.rfft(frames * np.hanning(n_fft + 1)[:-1], axis=-1)  # periodic Hann
    return 20.0 * np.log10(np.abs(spec).T + 1e-10)


def _binaural_pair(example: str, label: str, x: Any, n_fft: int) -> np.ndarray:
    """``x`` as a float [2, n] array with n >= n_fft, or a ValueError naming the example and signal."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[0] != 2:
        raise ValueError(f"example {example!r}, {label}: expected a [2, n] (left, right) array, got {arr.shape}")
    if arr.shape[1] < n_fft:
        raise ValueError(f"example {example!r}, {label}: {arr.shape[1]} samples is shorter than n_fft={n_fft}")
    if not np.isfinite(arr).all():
        raise ValueError(f"example {example!r}, {label}: contains NaN or inf")
    return arr


def binaural_examples(
    path: Path,
    examples: Sequence[Mapping[str, Any]],
    sample_rate: int,
    n_fft: int = 512,
    hop: int = 128,
) -> None:
    """Spectrograms of binaural signals: one row per (example, signal), ground truth then each prediction.

    Each example is ``{"name": str, "gt": [2, n], "preds": {label: [2, n]}}``. Columns: left ear,
    right ear and the L - R difference signal, in dB; signals of one example are cut to the shortest
    and share one colour range (the top ``_DB_RANGE`` dB) so ground truth and predictions compare.
    """
    if sample_rate <= 0 or n_fft <= 0 or hop <= 0:
        raise ValueError(f"sample_rate, n_fft and hop must be positive, got {sample_rate}, {n_fft}, {hop}")
    if not examples:
        raise ValueError("binaural_examples needs at least one example")
    blocks = []  # per example: (name, [(label, [left, right, L - R] in dB)])
    for k, example in enumerate(examples):
        name = str(example.get("name", f"example {k}"))
        if "gt" not in example:
            raise ValueError(f"example {name!r}: no 'gt' array")
        signals = {"ground truth": _binaural_pair(name, "ground truth", example["gt"], n_fft)}
        for label, pred in dict(example.get("preds") or {}).items():
            signals[str(label)] = _binaural_pair(name, f"prediction {label!r}", pred, n_fft)
        n = min(x.shape[1] for x in signals.values())
        specs = []
        for label, x in signals.items():
            left, right = x[0, :n], x[1, :n]
            specs.append((label, [_stft_db(s, n_fft, hop) for s in (left, right, left - right)]))
        blocks.append((name, specs))

    rows = sum(len(specs) for _, specs in blocks)
    fig, axes = plt.subplots(rows, 3, figsize=(3.2 * 3 + 0.8, 2.2 * rows), squeeze=False, layout="constrained")
    df = sample_rate / n_fft / 1000.0  # kHz per bin
    r = 0
    for name, specs in blocks:
        vmax = max(float(db.max()) for _, dbs in specs for db in dbs)
        vmin = vmax - _DB_RANGE
        first = r
        for label, dbs in specs:
            frames = dbs[0].shape[1]
            t0 = (n_fft - hop) / 2 / sample_rate  # frame i is centred at (i * hop + n_fft / 2) / sr
            extent = (t0, t0 + frames * hop / sample_rate, -df / 2, sample_rate / 2000.0 + df / 2)
            for c, (db, part) in enumerate(zip(dbs, ("left", "right", "L - R"), strict=True)):
                ax = axes[r, c]
                im = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=vmin, vmax=vmax, extent=extent)
                ax.set_title(f"{name} {label}: {part}", fontsize=8)
                ax.tick_params(labelsize=7, labelbottom=False)
            axes[r, 0].set_ylabel("kHz", fontsize=8)
            r += 1
        for ax in axes[r - 1]:  # time axis on the last row of the example only
            ax.tick_params(labelbottom=True)
            ax.set_xlabel("s", fontsize=8)
        fig.colorbar(im, ax=axes[first:r].ravel().tolist(), shrink=0.8, label="dB")
    _save(fig, path)


def ear_spectrograms(
    path: Path, x: np.ndarray, sample_rate: int, title: str, vmax: float | None = None, n_fft: int = 512, hop: int = 128
) -> float:
    """The left and right spectrograms (dB) of one ``[2, n]`` signal side by side, showing the
    ``_DB_RANGE`` dB below ``vmax`` (the signal's loudest bin when None). Returns that ``vmax``, so
    that the signals of one scene can share a colour range."""
    pair = _binaural_pair(title, "signal", x, n_fft)
    dbs = [_stft_db(ear, n_fft, hop) for ear in pair]
    vmax = max(float(db.max()) for db in dbs) if vmax is None else vmax
    t0 = (n_fft - hop) / 2 / sample_rate
    extent = (t0, t0 + dbs[0].shape[1] * hop / sample_rate, 0.0, sample_rate / 2000.0)
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.0), layout="constrained")
    for ax, db, ear in zip(axes, dbs, ("left", "right"), strict=True):
        im = ax.imshow(db, origin="lower", aspect="auto", cmap="magma", vmin=vmax - _DB_RANGE, vmax=vmax, extent=extent)
        ax.set_title(f"{title}: {ear}", fontsize=8)
        ax.set_xlabel("s", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("kHz", fontsize=8)
    fig.colorbar(im, ax=list(axes), shrink=0.8, label="dB")
    _save(fig, path)
    return vmax


def _grey(frame_hwc: np.ndarray) -> np.ndarray:
    """Luma (ITU-R BT.601) of an RGB [H, W, 3] image, 0..255."""
    return frame_hwc[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def _nearest(att: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour upsampling of a [gh, gw] map to [height, width]."""
    gh, gw = att.shape
    rows = np.arange(height) * gh // height
    cols = np.arange(width) * gw // width
    return att[rows[:, None], cols[None, :]]


def binaural_attention(
    path: Path,
    frame: np.ndarray,
    depth: np.ndarray | None,
    maps: Mapping[str, Mapping[int, np.ndarray]],
    title: str = "",
) -> None:
    """Where the audio decoder looks in the scene, per modality and decoder level, for one sample.

    ``frame`` is RGB uint8 [3, H, W], ``depth`` [H, W] in metres (0 = invalid) or None, and
    ``maps[modality][level]`` [h, w, gh, gw] gives, for every audio position, a distribution over the
    gh x gw visual positions. Each level's panel shows the mean over audio positions, upsampled
    (nearest) to H x W and laid over a grey frame ("image") or depth map ("depth").
    """
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[0] != 3:
        raise ValueError(f"frame: expected an RGB [3, H, W] array, got {frame.shape}")
    if frame.dtype != np.uint8:
        raise ValueError(f"frame: expected dtype uint8, got {frame.dtype}")
    rgb = frame.transpose(1, 2, 0)
    height, width = rgb.shape[:2]
    if depth is not None:
        depth = np.asarray(depth, dtype=np.float64)
        if depth.shape != (height, width):
            raise ValueError(f"depth: expected shape {(height, width)} to match the frame, got {depth.shape}")
    if not maps:
        raise ValueError("maps: no modality to draw")
    rows = []
    for modality, levels in maps.items():
        if modality not in ("image", "depth"):
            raise ValueError(f"maps: unknown modality {modality!r}, expected 'image' or 'depth'")
        if modality == "depth" and depth is None:
            raise ValueError("maps has 'depth' attention but depth is None")
        if not levels:
            raise ValueError(f"maps[{modality!r}]: no decoder level")
        means = {}
        for level in sorted(levels):
            att = np.asarray(levels[level], dtype=np.float64)
            if att.ndim != 4 or 0 in att.shape:
                raise ValueError(
                    f"maps[{modality!r}] level {level}: expected a non-empty [h, w, gh, gw] array, got {att.shape}"
                )
            means[level] = att.mean(axis=(0, 1))
        rows.append((modality, means))

    cols = 1 + max(len(means) for _, means in rows)
    fig, axes = plt.subplots(len(rows), cols, figsize=(2.6 * cols, 2.4 * len(rows)), squeeze=False)
    grey_frame = _grey(rgb)
    valid_depth = None if depth is None else np.where(depth > 0, depth, np.nan)
    for r, (modality, means) in enumerate(rows):
        row = axes[r]
        if modality == "image":
            row[0].imshow(rgb)
            row[0].set_title("frame", fontsize=9)
            back, back_lim = grey_frame, (0.0, 255.0)
        else:
            finite = valid_depth[np.isfinite(valid_depth)]
            top = float(finite.max()) if finite.size else 1.0
            im = row[0].imshow(valid_depth, cmap="magma", vmin=0.0, vmax=top)
            fig.colorbar(im, ax=row[0], shrink=0.8, label="m")
            row[0].set_title("depth", fontsize=9)
            back, back_lim = valid_depth, (0.0, top)
        for c, (level, mean) in enumerate(means.items(), start=1):
            row[c].imshow(back, cmap="gray", vmin=back_lim[0], vmax=back_lim[1])
            row[c].imshow(_nearest(mean, height, width), cmap="viridis", alpha=0.5)
            gh, gw = mean.shape
            row[c].set_title(f"level {level} ({gh} x {gw})", fontsize=9)
        for ax in row[1 + len(means) :]:
            ax.axis("off")
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    if title:
        fig.suptitle(title)
    _save(fig, path)


def mel_examples(path: Path, examples: Sequence[Mapping[str, Any]]) -> None:
    """Generated against true binaural log-mels: one row per example.

    Each example is ``{"name": str, "mono": [F, T], "truth": [2, F, T], "generated": [2, F, T]}`` (natural-log
    mel magnitudes). Columns: mono, L and R truth, L and R generated (one colour range per row), then
    the L - R log-mel difference of the truth and of the generation (one symmetric range per row).
    """
    if not examples:
        raise ValueError("mel_examples needs at least one example")
    titles = ("mono", "L truth", "R truth", "L generated", "R generated", "L - R truth", "L - R generated")
    fig, axes = plt.subplots(
        len(examples),
        len(titles),
        figsize=(2.1 * len(titles) + 1.2, 1.9 * len(examples)),
        squeeze=False,
        layout="constrained",
    )
    for r, ex in enumerate(examples):
        truth, gen = np.asarray(ex["truth"]), np.asarray(ex["generated"])
        if truth.shape != gen.shape or truth.ndim != 3 or truth.shape[0] != 2:
            raise ValueError(
                f"example {ex.get('name')!r}: truth {truth.shape} and generated {gen.shape}, expected [2, F, T]"
            )
        levels = [np.asarray(ex["mono"]), truth[0], truth[1], gen[0], gen[1]]
        diffs = [truth[0] - truth[1], gen[0] - gen[1]]
        vmin, vmax = min(float(x.min()) for x in levels), max(float(x.max()) for x in levels)
        span = max(float(np.abs(d).max()) for d in diffs) or 1.0
        for c, (img, title) in enumerate(zip(levels + diffs, titles, strict=True)):
            diff = c >= len(levels)
            im = axes[r, c].imshow(
                img,
                origin="lower",
                aspect="auto",
                cmap="RdBu_r" if diff else "magma",
                vmin=-span if diff else vmin,
                vmax=span if diff else vmax,
            )
            axes[r, c].set_title(f"{ex.get('name', r)}: {title}" if c == 0 else title, fontsize=8)
            axes[r, c].tick_params(labelsize=6)
            if c in (len(levels) - 1, len(titles) - 1):
                fig.colorbar(im, ax=axes[r, c], shrink=0.8, label="log-mel" if not diff else "L - R")
        axes[r, 0].set_ylabel("mel band", fontsize=7)
    for ax in axes[-1]:
        ax.set_xlabel("frame", fontsize=7)
    _save(fig, path)
