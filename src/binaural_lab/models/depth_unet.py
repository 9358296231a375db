"""UNet depth baseline: binaural echo spectrograms -> depth map (Batvision's pix2pix ``unet_256``).

The input ``[B, 2, S, S]`` (left, right log-magnitude) goes down through ``log2(S / min_size)``
strided 4x4 convolutions to a ``min_size x min_size`` bottleneck and back up through transposed
4x4 convolutions, each decoder level concatenating the encoder feature map of the same size.
Channels are ``ngf * (1, 2, 4, 8, 8, ...)``. S = 256 with min_size = 1 is pix2pix ``unet_256``
(eight levels). As in pix2pix: no BatchNorm on the outermost and innermost encoder convolutions,
LeakyReLU(0.2) on the way down, ReLU on the way up, optional dropout in the deep decoder blocks
whose channels are at the cap. The tanh of pix2pix is replaced by ``sigmoid * max_depth``, so the
output is in metres in [0, max_depth]; it is computed in float32 even under bf16 autocast, where
bf16 would round 10 m to steps of 6 cm.

The encoder and decoder are also the parts of the Base + Residual network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from binaural_lab.config import ParamError, param

MAX_MULT = 8  # channels stop doubling at ngf * 8, as in pix2pix


@dataclass
class UNetConfig:
    in_channels: int = param(2, ge=1, doc="input channels: left and right ear")
    ngf: int = param(64, ge=1, doc="channels of the first level (64 in pix2pix and Batvision)")
    min_size: int = param(1, ge=1, doc="bottleneck side in pixels, a power of two; 1 = pix2pix unet_256")
    dropout: float = param(0.0, ge=0, lt=1, doc="dropout in the deep decoder blocks (pix2pix: 0.5)")

    def validate(self, where: str) -> None:
        if not _is_power_of_two(self.min_size):
            raise ParamError(f"{where}.min_size: {self.min_size} is not a power of two")


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def num_levels(input_size: int, min_size: int) -> int:
    """Number of stride-2 levels that take an ``input_size`` square down to ``min_size``."""
    if not _is_power_of_two(input_size) or input_size <= min_size:
        raise ParamError(
            f"input_size: {input_size} must be a power of two larger than the bottleneck min_size {min_size}"
        )
    return int(math.log2(input_size // min_size))


def level_channels(ngf: int, levels: int) -> list[int]:
    """Channels of each level, finest first: ngf doubling up to ngf * MAX_MULT."""
    return [ngf * min(2**i, MAX_MULT) for i in range(levels)]


class UNetEncoder(nn.Module):
    """Strided 4x4 convolutions; returns the feature map of every level, finest first."""

    def __init__(self, in_channels: int, channels: list[int]):
        super().__init__()
        self.blocks = nn.ModuleList()
        for i, c in enumerate(channels):
            outer, inner = i == 0, i == len(channels) - 1
            layers: list[nn.Module] = [] if outer else [nn.LeakyReLU(0.2)]
            c_in = in_channels if outer else channels[i - 1]
            layers.append(nn.Conv2d(c_in, c, 4, stride=2, padding=1, bias=outer or inner))
            if not (outer or inner):
                layers.append(nn.BatchNorm2d(c))
            self.blocks.append(nn.Sequential(*layers))

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats


class UNetDecoder(nn.Module):
    """Transposed 4x4 convolutions from the bottleneck to full size, concatenating encoder skips."""

    def __init__(self, channels: list[int], out_channels: int, dropout: float):
        super().__init__()
        n = len(channels)
        self.blocks = nn.ModuleList()
        for i in reversed(range(n)):
            c_in = channels[i] if i == n - 1 else 2 * channels[i]
            c_out = out_channels if i == 0 else channels[i - 1]
            layers: list[nn.Module] = [nn.ReLU(), nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=i == 0)]
            if i > 0:
                layers.append(nn.BatchNorm2d(c_out))
            if dropout > 0 and 0 < i < n - 1 and channels[i - 1] == channels[i]:
                layers.append(nn.Dropout(dropout))
            self.blocks.append(nn.Sequential(*layers))

    def forward(self, feats: list[Tensor]) -> Tensor:
        x = self.blocks[0](feats[-1])
        for block, skip in zip(self.blocks[1:], reversed(feats[:-1]), strict=True):
            x = block(torch.cat([skip, x], dim=1))
        return x


class UNetDepth(nn.Module):
    """pix2pix UNet; ``forward(x)`` returns ``{"depth": [B, 1, S, S]}`` in metres."""

    def __init__(self, cfg: UNetConfig, input_size: int, max_depth: float):
        super().__init__()
        channels = level_channels(cfg.ngf, num_levels(input_size, cfg.min_size))
        self.encoder = UNetEncoder(cfg.in_channels, channels)
        self.decoder = UNetDecoder(channels, 1, cfg.dropout)
        self.max_depth = max_depth

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return {"depth": torch.sigmoid(self.decoder(self.encoder(x)).float()) * self.max_depth}
