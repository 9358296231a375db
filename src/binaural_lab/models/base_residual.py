"""Base + Residual depth network: one shared encoder, a base decoder and a residual decoder.

Both decoders are UNet decoders (``depth_unet``) fed by the same encoder skips. The base decoder
gives the coarse scene layout, the residual decoder the fine corrections:

    base     = sigmoid(b) * max_depth                      in [0, max_depth]
    residual = tanh(r) * residual_scale * max_depth        in [-residual_scale, residual_scale] * max_depth
    depth    = clamp(base + residual, 0, max_depth)

The output activations run in float32, also under bf16 autocast. The clamp keeps the final map in
range; where it is active it passes no gradient, and the base term of
:class:`~binaural_lab.losses.depth.BaseResidualLoss` still trains the base decoder there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from binaural_lab.config import param
from binaural_lab.models.depth_unet import UNetConfig, UNetDecoder, UNetEncoder, level_channels, num_levels


@dataclass
class BaseResidualConfig(UNetConfig):
    residual_scale: float = param(0.25, gt=0, le=1, doc="bound of |residual| as a fraction of max_depth")


class BaseResidualDepth(nn.Module):
    """``forward(x)`` returns ``{"depth", "base", "residual"}``, each ``[B, 1, S, S]`` in metres."""

    def __init__(self, cfg: BaseResidualConfig, input_size: int, max_depth: float):
        super().__init__()
        channels = level_channels(cfg.ngf, num_levels(input_size, cfg.min_size))
        self.encoder = UNetEncoder(cfg.in_channels, channels)
        self.base_decoder = UNetDecoder(channels, 1, cfg.dropout)
        self.residual_decoder = UNetDecoder(channels, 1, cfg.dropout)
        self.max_depth = max_depth
        self.residual_max = cfg.residual_scale * max_depth

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.encoder(x)
        base = torch.sigmoid(self.base_decoder(feats).float()) * self.max_depth
        residual = torch.tanh(self.residual_decoder(feats).float()) * self.residual_max
        depth = (base + residual).clamp(0.0, self.max_depth)
        return {"depth": depth, "base": base, "residual": residual}
