"""Training losses; the depth losses are built by model-family name here.

A depth loss is called as ``loss_fn(outputs, target, epoch) -> (total, parts)``; see
:mod:`binaural_lab.losses.depth` for the conventions (valid mask, normalisation, curricula).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor

from binaural_lab.config import ParamError, parse
from binaural_lab.losses.depth import (
    AttentionDepthLoss,
    AttentionDepthLossConfig,
    BaseResidualLoss,
    BaseResidualLossConfig,
    L1DepthLoss,
    L1DepthLossConfig,
)

DepthLoss = Callable[[dict[str, Tensor], Tensor, int], tuple[Tensor, dict[str, float]]]

DEPTH_LOSSES: dict[str, tuple[type, type]] = {
    "unet": (L1DepthLossConfig, L1DepthLoss),
    "base_residual": (BaseResidualLossConfig, BaseResidualLoss),
    "binaural_attention": (AttentionDepthLossConfig, AttentionDepthLoss),
}


def build_depth_loss(
    name: str, cfg_dict: dict[str, Any] | None, max_depth: float, where: str | None = None
) -> DepthLoss:
    """Parse ``cfg_dict`` (errors name ``where``, default ``losses.<name>``) and build the loss."""
    if name not in DEPTH_LOSSES:
        raise ParamError(f"loss: {name!r} is not one of {sorted(DEPTH_LOSSES)}")
    if max_depth <= 0:
        raise ParamError(f"max_depth: {max_depth} must be positive")
    cfg_cls, loss_cls = DEPTH_LOSSES[name]
    return loss_cls(parse(cfg_cls, cfg_dict, where or f"losses.{name}"), max_depth)


__all__ = [
    "DEPTH_LOSSES",
    "AttentionDepthLoss",
    "AttentionDepthLossConfig",
    "BaseResidualLoss",
    "BaseResidualLossConfig",
    "DepthLoss",
    "L1DepthLoss",
    "L1DepthLossConfig",
    "build_depth_loss",
]
