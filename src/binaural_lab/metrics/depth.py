"""Depth metrics as Batvision and "Beyond Image to Depth" define them.

Per image, in metres, on the pixels where gt is finite and > 0, then averaged over images:

- abs_rel = mean(|gt - pred| / gt)        - rmse = sqrt(mean((gt - pred)**2))
- mae     = mean(|gt - pred|)             - log10 = mean(|log10 gt - log10 pred|)
- delta_i = mean(max(gt / pred, pred / gt) < 1.25**i), i = 1, 2, 3

The prediction is clamped to at least ``PRED_EPS`` (1 mm) inside the ratio and the logarithm only,
so a prediction <= 0 counts as a large error instead of a division by zero; abs_rel, rmse and mae
use the prediction as it is. Images without a valid pixel are skipped and counted.
"""

from __future__ import annotations

import numpy as np
import torch

METRIC_NAMES = ("abs_rel", "rmse", "delta1", "delta2", "delta3", "log10", "mae")
PRED_EPS = 1e-3


def _images(x: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """``[N, H, W]`` or ``[N, 1, H, W]`` -> float64 ``[N, H * W]``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    if x.ndim != 3:
        raise ValueError(f"{name}: expected [N, H, W] or [N, 1, H, W], got shape {x.shape}")
    return x.reshape(len(x), -1)


def depth_metrics_per_image(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> dict[str, np.ndarray]:
    """Each metric per image (NaN where an image has no valid pixel) and ``n_valid`` pixel counts."""
    p, g = _images(pred, "pred"), _images(gt, "gt")
    if p.shape != g.shape:
        raise ValueError(f"pred {p.shape} and gt {g.shape} differ in shape")
    valid = np.isfinite(g) & (g > 0)
    n_valid = valid.sum(axis=1)
    g = np.where(valid, g, 1.0)  # neutral values at invalid pixels; they are masked out below
    p = np.where(valid, p, 1.0)
    p_pos = np.maximum(p, PRED_EPS)
    thresh = np.maximum(g / p_pos, p_pos / g)

    def mean(values: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(valid, values, 0.0).sum(axis=1) / n_valid

    err = g - p
    out = {
        "abs_rel": mean(np.abs(err) / g),
        "rmse": np.sqrt(mean(err**2)),
        "delta1": mean(thresh < 1.25),
        "delta2": mean(thresh < 1.25**2),
        "delta3": mean(thresh < 1.25**3),
        "log10": mean(np.abs(np.log10(g) - np.log10(p_pos))),
        "mae": mean(np.abs(err)),
    }
    return {**out, "n_valid": n_valid}


class DepthMetricAccumulator:
    """Streaming mean over images: ``update(pred, gt)`` per batch, ``compute()`` at the end."""

    def __init__(self) -> None:
        self.sums = dict.fromkeys(METRIC_NAMES, 0.0)
        self.n_images = 0
        self.n_skipped = 0

    def update(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> None:
        per_image = depth_metrics_per_image(pred, gt)
        keep = per_image["n_valid"] > 0
        for name in METRIC_NAMES:
            self.sums[name] += float(per_image[name][keep].sum())
        self.n_images += int(keep.sum())
        self.n_skipped += int((~keep).sum())

    def compute(self) -> dict[str, float]:
        """Mean of each metric over the images seen (NaN if none), plus ``n_images`` and ``n_skipped``."""
        means = {k: v / self.n_images if self.n_images else float("nan") for k, v in self.sums.items()}
        return {**means, "n_images": self.n_images, "n_skipped": self.n_skipped}


def depth_metrics(pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> dict[str, float]:
    """All metrics of a set of images at once; the same numbers as one accumulator over batches."""
    acc = DepthMetricAccumulator()
    acc.update(pred, gt)
    return acc.compute()
