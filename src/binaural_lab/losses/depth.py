"""Depth losses and their curricula, one loss object per depth-model family.

A loss is built for a run of ``epochs`` epochs and called as ``loss_fn(outputs, target, epoch) ->
(total, parts)``: ``outputs`` is the model's dict, ``target`` is ``[B, 1, S, S]`` in metres with 0 at
invalid pixels, ``epoch`` counts from 0, ``parts`` holds each unweighted term as a float.
``loss_fn.weights(epoch)`` gives the weight in force for each term, keyed by the name of the params
key that sets it (``l_edge``, ``l_smooth``, ...), so a run logs them as ``loss_weight/<key>`` and a
study can check that every searched weight acts.

Curricula are expressed as fractions of the run, never as absolute epochs: a 6-epoch tuning trial
goes through the same phases as the 15-epoch training it stands for.

Conventions shared by every loss:
- valid pixels are ``target > 0``; a pixel that is not valid never reaches a term, so the
  prediction there changes nothing. Terms on neighbourhoods (Sobel, finite differences) only use
  pixels whose whole neighbourhood is valid.
- with ``normalize_depth`` (the default) every term is computed on ``depth / max_depth``, as
  Batvision trains on normalised depth, so the weights do not depend on the dataset's range.
- the computation runs in float32 even when the model ran under bf16 autocast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from binaural_lab.config import ParamError, param

CURRICULA = ("none", "adaptive")


def phase_start(fraction: float, epochs: int) -> int:
    """First epoch (from 0) of a curriculum phase that starts ``fraction`` of the way into the run."""
    return math.floor(fraction * epochs + 1e-9)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` over ``mask``; 0 when the mask is empty."""
    return torch.where(mask, values, 0.0).sum() / mask.sum().clamp_min(1)


def _prepare(pred: Tensor, target: Tensor, scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """(scaled float32 prediction, scaled target with invalid pixels at 0, valid mask)."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    target = target.float()
    mask = target > 0
    return pred.float() * scale, torch.where(mask, target, 0.0) * scale, mask


def masked_lowpass(x: Tensor, mask: Tensor, kernel: int) -> Tensor:
    """Mean of the valid pixels in each ``kernel x kernel`` window (a normalised convolution).

    Stride 1 with zero padding, ``(kernel-1)//2`` before and ``kernel//2`` after (so even kernels
    work), keeps the size without a resize. Dividing by the pooled mask means neither invalid
    pixels nor the padding pull the mean towards 0: a constant map stays constant up to the
    borders. Windows without a valid pixel give 0.
    """
    pad = ((kernel - 1) // 2, kernel // 2) * 2
    m = mask.to(x.dtype)
    total = F.avg_pool2d(F.pad(x * m, pad), kernel, stride=1)
    weight = F.avg_pool2d(F.pad(m, pad), kernel, stride=1)
    return torch.where(weight > 0, total / weight.clamp_min(1e-12), 0.0)


def frequency_split(x: Tensor, cutoff: float) -> tuple[Tensor, Tensor]:
    """(low, high) parts of ``[..., H, W]`` maps, split by a radial mask on ``rfft2``.

    ``cutoff`` is the radius of the pass band as a fraction of Nyquist (1.0 = Nyquist along an
    axis); ``low + high == x`` up to rounding.
    """
    h, w = x.shape[-2:]
    fy = torch.fft.fftfreq(h, device=x.device)[:, None]
    fx = torch.fft.rfftfreq(w, device=x.device)[None, :]
    low_band = torch.sqrt(fy**2 + fx**2) <= cutoff * 0.5  # Nyquist is 0.5 cycles per pixel
    spectrum = torch.fft.rfft2(x.float())
    low = torch.fft.irfft2(spectrum * low_band, s=(h, w))
    high = torch.fft.irfft2(spectrum * ~low_band, s=(h, w))
    return low, high


_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])


def sobel_magnitude(x: Tensor) -> Tensor:
    """Sobel gradient magnitude of ``[B, 1, H, W]`` maps on the interior: ``[B, 1, H-2, W-2]``."""
    kx = _SOBEL_X.to(x)[None, None]
    gx = F.conv2d(x, kx)
    gy = F.conv2d(x, kx.transpose(-1, -2))
    return torch.sqrt(gx**2 + gy**2 + 1e-12)


def erode(mask: Tensor) -> Tensor:
    """Pixels whose whole 3x3 neighbourhood is valid, on the interior: ``[B, 1, H-2, W-2]``."""
    return -F.max_pool2d(-mask.float(), 3, stride=1) > 0


def edge_term(pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """L1 between the Sobel gradient magnitudes of prediction and target."""
    return masked_mean((sobel_magnitude(pred) - sobel_magnitude(gt)).abs(), erode(mask))


def smoothness_term(pred: Tensor, gt: Tensor, mask: Tensor) -> Tensor:
    """Edge-aware smoothness: ``|d pred| * exp(-|d gt|)`` along x plus along y, valid pairs only."""
    dx_p, dx_g = (pred[..., 1:] - pred[..., :-1]).abs(), (gt[..., 1:] - gt[..., :-1]).abs()
    dy_p, dy_g = (pred[..., 1:, :] - pred[..., :-1, :]).abs(), (gt[..., 1:, :] - gt[..., :-1, :]).abs()
    mx, my = mask[..., 1:] & mask[..., :-1], mask[..., 1:, :] & mask[..., :-1, :]
    return masked_mean(dx_p * torch.exp(-dx_g), mx) + masked_mean(dy_p * torch.exp(-dy_g), my)


@dataclass
class L1DepthLossConfig:
    normalize_depth: bool = param(True, doc="compute the loss on depth / max_depth")


class L1DepthLoss:
    """UNet baseline: L1 between predicted and target depth on valid pixels."""

    def __init__(self, cfg: L1DepthLossConfig, max_depth: float, epochs: int):
        self.cfg = cfg
        self.scale = 1.0 / max_depth if cfg.normalize_depth else 1.0

    def weights(self, epoch: int) -> dict[str, float]:
        return {"l1": 1.0}

    def __call__(self, outputs: dict[str, Tensor], target: Tensor, epoch: int) -> tuple[Tensor, dict[str, float]]:
        pred, gt, mask = _prepare(outputs["depth"], target, self.scale)
        l1 = masked_mean((pred - gt).abs(), mask)
        return l1, {"l1": l1.item()}


@dataclass
class BaseResidualLossConfig:
    normalize_depth: bool = param(True, doc="compute the loss on depth / max_depth")
    l_recon: float = param(1.0, ge=0, doc="weight of L1(base + residual, gt)")
    l_base: float = param(0.5, ge=0, doc="weight of L1(base, lowpass(gt))")
    l_sparse: float = param(
        0.1, ge=0, doc="weight of mean|residual|, or of L1(residual, high(gt)) when frequency_aware"
    )
    lowpass_kernel: int = param(8, ge=1, doc="average-pool kernel K of the low-pass")
    curriculum: str = param("none", choices=CURRICULA, doc="adaptive: move weight from base to recon")
    warmup_fraction: float = param(0.4, gt=0, le=1, doc="fraction of the run over which the adaptive weights move")
    frequency_aware: bool = param(False, doc="match base to the FFT low band of gt, residual to the high band")
    cutoff: float = param(0.25, gt=0, lt=1, doc="frequency-aware band split, as a fraction of Nyquist")

    def validate(self, where: str) -> None:
        if self.curriculum == "adaptive" and self.l_base > self.l_recon:
            raise ParamError(
                f"{where}.l_base: {self.l_base} is above l_recon {self.l_recon}; the adaptive curriculum "
                "moves weight from the base term to the reconstruction term and needs l_base <= l_recon"
            )


class BaseResidualLoss:
    """``w_recon * L1(depth, gt) + w_base * L1(base, low(gt)) + w_residual * R(residual)``.

    Plain: ``low(gt)`` is :func:`masked_lowpass` (K x K mean of the valid pixels) and
    ``R = mean|residual|`` on valid pixels. Frequency-aware: the invalid pixels of gt are first
    filled with the image's mean valid depth, :func:`frequency_split` gives ``low`` and ``high``,
    and ``R = L1(residual, high)``. Every term is averaged over valid pixels only.

    Curriculum ``none``: weights ``(l_recon, l_base, l_sparse)``. ``adaptive``: over the first
    ``W = max(1, round(warmup_fraction * epochs))`` epochs, with ``t = min(epoch / W, 1)``, the
    reconstruction and base weights swap linearly, ``w_recon = l_base + (l_recon - l_base) * t`` and
    ``w_base = l_recon + (l_base - l_recon) * t`` (defaults: 0.5 / 1.0 at epoch 0, 0.75 / 0.75
    halfway, 1.0 / 0.5 from the end of the warm-up); ``w_residual = l_sparse`` throughout. No term is
    ever switched off.
    """

    def __init__(self, cfg: BaseResidualLossConfig, max_depth: float, epochs: int):
        self.cfg = cfg
        self.scale = 1.0 / max_depth if cfg.normalize_depth else 1.0
        self.warmup = max(1, round(cfg.warmup_fraction * epochs))

    def weights(self, epoch: int) -> dict[str, float]:
        c = self.cfg
        recon, base = c.l_recon, c.l_base
        if c.curriculum == "adaptive":
            t = min(epoch / self.warmup, 1.0)
            recon, base = c.l_base + (c.l_recon - c.l_base) * t, c.l_recon + (c.l_base - c.l_recon) * t
        return {"l_recon": recon, "l_base": base, "l_sparse": c.l_sparse}

    def __call__(self, outputs: dict[str, Tensor], target: Tensor, epoch: int) -> tuple[Tensor, dict[str, float]]:
        depth, gt, mask = _prepare(outputs["depth"], target, self.scale)
        base, residual = outputs["base"].float() * self.scale, outputs["residual"].float() * self.scale
        if self.cfg.frequency_aware:
            valid_mean = gt.sum((-2, -1), keepdim=True) / mask.sum((-2, -1), keepdim=True).clamp_min(1)
            low, high = frequency_split(torch.where(mask, gt, valid_mean), self.cfg.cutoff)
            residual_err = (residual - high).abs()
        else:
            low = masked_lowpass(gt, mask, self.cfg.lowpass_kernel)
            residual_err = residual.abs()
        terms = {
            "recon": masked_mean((depth - gt).abs(), mask),
            "base": masked_mean((base - low).abs(), mask),
            "residual": masked_mean(residual_err, mask),
        }
        w = self.weights(epoch)
        total = w["l_recon"] * terms["recon"] + w["l_base"] * terms["base"] + w["l_sparse"] * terms["residual"]
        return total, {k: v.item() for k, v in terms.items()}


@dataclass
class AttentionDepthLossConfig:
    normalize_depth: bool = param(True, doc="compute the loss on depth / max_depth")
    l_edge: float = param(0.2, ge=0, doc="weight of the L1 between Sobel gradient magnitudes")
    l_smooth: float = param(0.1, ge=0, doc="weight of the edge-aware smoothness term")
    curriculum: str = param("none", choices=CURRICULA, doc="adaptive: switch edge, then smoothness on")
    edge_from: float = param(0.25, ge=0, lt=1, doc="adaptive: fraction of the run before the edge term acts")
    smooth_from: float = param(0.5, ge=0, lt=1, doc="adaptive: fraction of the run before smoothness acts")

    def validate(self, where: str) -> None:
        if self.smooth_from < self.edge_from:
            raise ParamError(
                f"{where}.smooth_from: {self.smooth_from} is before edge_from {self.edge_from}; "
                "the curriculum adds the edge term first"
            )


class AttentionDepthLoss:
    """``L1 + w_edge * edge_term + w_smooth * smoothness_term`` on valid pixels.

    Curriculum ``none``: weights ``(l_edge, l_smooth)`` from the start. ``adaptive``:
    reconstruction only before epoch ``floor(edge_from * epochs)``, then the edge term, then from
    epoch ``floor(smooth_from * epochs)`` the smoothness term too (weights jump from 0 to their value).
    """

    def __init__(self, cfg: AttentionDepthLossConfig, max_depth: float, epochs: int):
        self.cfg = cfg
        self.scale = 1.0 / max_depth if cfg.normalize_depth else 1.0
        adaptive = cfg.curriculum == "adaptive"
        self.edge_start = phase_start(cfg.edge_from, epochs) if adaptive else 0
        self.smooth_start = phase_start(cfg.smooth_from, epochs) if adaptive else 0

    def weights(self, epoch: int) -> dict[str, float]:
        c = self.cfg
        return {
            "l1": 1.0,
            "l_edge": c.l_edge if epoch >= self.edge_start else 0.0,
            "l_smooth": c.l_smooth if epoch >= self.smooth_start else 0.0,
        }

    def __call__(self, outputs: dict[str, Tensor], target: Tensor, epoch: int) -> tuple[Tensor, dict[str, float]]:
        pred, gt, mask = _prepare(outputs["depth"], target, self.scale)
        terms = {
            "l1": masked_mean((pred - gt).abs(), mask),
            "edge": edge_term(pred, gt, mask),
            "smooth": smoothness_term(pred, gt, mask),
        }
        w = self.weights(epoch)
        total = terms["l1"] + w["l_edge"] * terms["edge"] + w["l_smooth"] * terms["smooth"]
        return total, {k: v.item() for k, v in terms.items()}
