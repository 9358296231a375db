"""Mono2Binaural (Gao & Grauman, "2.5D Visual Sound", CVPR 2019): a complex mask for the L - R difference.

The input is the mono STFT ``[B, 2, F, T]`` (real and imaginary parts; 16 kHz, n_fft 512, hop 160,
win 400 in the paper, so F = 257 and a 0.63 s crop has 64 frames). An audio UNet goes down through
five strided 4x4 convolutions (BatchNorm, LeakyReLU 0.2) with ``ngf * (1, 2, 4, 8, 8)`` channels and
back up through five transposed 4x4 convolutions (BatchNorm, ReLU), each concatenating the encoder
map of its size. The frame goes through a ResNet-18 (:mod:`binaural_lab.models.visual`); a 1x1
convolution (BatchNorm, ReLU) reduces its features to ``visual_channels``, which are average-pooled
to ``visual_grid`` and flattened into one vector, tiled over the bottleneck and concatenated to it.
The original flattens the 8 x 7 x 14 map of a 224 x 448 frame (784 values, ``visual_grid: [7, 14]``),
which keeps where things are in the frame, the cue that tells left from right; ``[1, 1]`` is a
global average. The last transposed convolution gives a mask ``sigmoid * 2 - 1`` in [-1, 1] (in
float32, also under bf16 autocast), and the predicted difference spectrogram is the complex product
``mask * mono``.

F and T need not be multiples of 2**5: the input is zero-padded at the high-frequency and late
ends to the next multiple of 32 and the mask is cropped back (the original drops the Nyquist bin
instead). Convolutions followed by BatchNorm carry no bias, so the default size has 2,440
parameters fewer than the original's 34,262,746 (ResNet-18 included).

The audio encoder, the decoder blocks, the padding and the complex product are shared with the
depth-infused network (:mod:`binaural_lab.models.depth_infused`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from binaural_lab.config import ParamError, param
from binaural_lab.models.visual import ResNet18Encoder, VisualConfig, pool_features

NUM_LEVELS = 5
CHANNEL_MULTS = (1, 2, 4, 8, 8)  # audio channels per level, relative to ngf
PAD_MULTIPLE = 2**NUM_LEVELS  # F and T are padded to a multiple of this


@dataclass
class Mono2BinauralConfig:
    ngf: int = param(64, ge=1, doc="channels of the first audio level (64 in the paper)")
    visual: VisualConfig = field(default_factory=VisualConfig)
    visual_channels: int = param(8, ge=1, doc="channels of the 1x1 reduction of the ResNet-18 features (8)")
    visual_grid: tuple[int, int] = param(
        (7, 14), ge=1, doc="(rows, columns) the reduced features are pooled to and flattened; [1, 1] = global mean"
    )

    def validate(self, where: str) -> None:
        if len(self.visual_grid) != 2:
            raise ParamError(f"{where}.visual_grid: expected [rows, columns], got {list(self.visual_grid)}")


def level_channels(ngf: int) -> list[int]:
    """Audio channels of the five encoder levels, finest first."""
    return [ngf * m for m in CHANNEL_MULTS]


def decoder_inputs(channels: list[int]) -> list[int]:
    """Audio channels entering each of the five up-convolutions, bottleneck first (skips included)."""
    return [channels[-1], *(2 * c for c in reversed(channels[:-1]))]


def pad_spectrogram(x: Tensor) -> Tensor:
    """Zero-pad ``[..., F, T]`` at the high-frequency and late ends to multiples of ``PAD_MULTIPLE``."""
    f, t = x.shape[-2:]
    return F.pad(x, (0, -t % PAD_MULTIPLE, 0, -f % PAD_MULTIPLE))


def complex_multiply(a: Tensor, b: Tensor) -> Tensor:
    """Product of complex spectrograms given as ``[B, 2 (re, im), F, T]``."""
    re = a[:, 0] * b[:, 0] - a[:, 1] * b[:, 1]
    im = a[:, 0] * b[:, 1] + a[:, 1] * b[:, 0]
    return torch.stack((re, im), dim=1)


def check_spectrogram(mono: Tensor) -> None:
    if mono.ndim != 4 or mono.shape[1] != 2:
        raise ValueError(f"expected a mono STFT [B, 2 (re, im), F, T], got shape {list(mono.shape)}")


def mask_and_difference(logits: Tensor, mono: Tensor) -> dict[str, Tensor]:
    """``{"mask", "diff"}``: the mask in [-1, 1] cropped to the mono STFT's size, and ``mask * mono``."""
    f, t = mono.shape[-2:]
    mask = (torch.sigmoid(logits.float()) * 2 - 1)[..., :f, :t]
    return {"mask": mask, "diff": complex_multiply(mask, mono.float())}


class AudioEncoder(nn.Module):
    """Five strided 4x4 convolutions with BatchNorm and LeakyReLU; returns every level, finest first."""

    def __init__(self, channels: list[int]):
        super().__init__()
        c_in = [2, *channels[:-1]]
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(i, o, 4, 2, 1, bias=False), nn.BatchNorm2d(o), nn.LeakyReLU(0.2))
            for i, o in zip(c_in, channels, strict=True)
        )

    def forward(self, x: Tensor) -> list[Tensor]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return feats


def decoder_blocks(channels: list[int], extra: Sequence[int]) -> nn.ModuleList:
    """The five transposed 4x4 convolutions, bottleneck first; block i also takes ``extra[i]`` channels.

    Every block but the last is followed by BatchNorm and ReLU; the last gives the 2 mask logits.
    """
    c_in = [a + e for a, e in zip(decoder_inputs(channels), extra, strict=True)]
    c_out = [*reversed(channels[:-1]), 2]
    blocks = nn.ModuleList(
        nn.Sequential(nn.ConvTranspose2d(i, o, 4, 2, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU())
        for i, o in zip(c_in[:-1], c_out[:-1], strict=True)
    )
    blocks.append(nn.ConvTranspose2d(c_in[-1], c_out[-1], 4, 2, 1))
    return blocks


class Mono2Binaural(nn.Module):
    """``forward(mono [B, 2, F, T], image [B, 3, H, W])`` returns ``{"mask", "diff"}``, both ``[B, 2, F, T]``.

    A ``depth`` map is accepted and ignored, so every binauralizer is called the same way.
    ``encode(image)`` gives the visual vector alone; ``forward(mono, visual=...)`` reuses it, so the
    windows of one clip share one pass of the image encoder.

    ``mask`` is the complex mask (real, imaginary) in [-1, 1]; ``diff`` the predicted L - R STFT,
    ``mask * mono`` as complex numbers. Both are float32.
    """

    def __init__(self, cfg: Mono2BinauralConfig):
        super().__init__()
        self.grid = tuple(cfg.visual_grid)
        channels = level_channels(cfg.ngf)
        self.encoder = AudioEncoder(channels)
        self.visual = ResNet18Encoder(cfg.visual, where="visual")
        self.reduce = nn.Sequential(
            nn.Conv2d(self.visual.out_channels, cfg.visual_channels, 1, bias=False),
            nn.BatchNorm2d(cfg.visual_channels),
            nn.ReLU(),
        )
        visual_size = cfg.visual_channels * self.grid[0] * self.grid[1]
        self.decoder = decoder_blocks(channels, [visual_size] + [0] * (NUM_LEVELS - 1))

    def encode(self, image: Tensor, depth: Tensor | None = None) -> Tensor:
        """The visual vector ``[B, visual_channels * rows * columns]`` of frames ``[B, 3, H, W]``."""
        return pool_features(self.reduce(self.visual(image)), self.grid)

    def forward(
        self, mono: Tensor, image: Tensor | None = None, depth: Tensor | None = None, visual: Tensor | None = None
    ) -> dict[str, Tensor]:
        check_spectrogram(mono)
        if visual is None:
            if image is None:
                raise ValueError("forward needs the image or its encoded visual vector")
            visual = self.encode(image)
        feats = self.encoder(pad_spectrogram(mono))
        bottleneck = feats[-1]
        tiled = visual[:, :, None, None].expand(-1, -1, *bottleneck.shape[-2:])
        y = torch.cat([tiled, bottleneck], dim=1)
        for block, skip in zip(self.decoder, [*reversed(feats[:-1]), None], strict=True):
            y = block(y)
            if skip is not None:
                y = torch.cat([y, skip], dim=1)
        return mask_and_difference(y, mono)
