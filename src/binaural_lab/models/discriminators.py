"""BigVGAN's discriminators (v1, after HiFi-GAN and UnivNet): multi-period and multi-resolution STFT.

``Discriminators(cfg)(real, fake)`` takes two waves ``[B, 1, T]`` and returns a
:class:`DiscriminatorOutput`: for every sub-discriminator, in a fixed order (the periods, then the
resolutions; ``Discriminators.names`` names them), the logits ``[B, N]`` of the real and of the fake
wave and their feature maps (every layer's output after its activation, the logits' map last). These
are the four lists of HiFi-GAN's and BigVGAN's code (``y_d_rs, y_d_gs, fmap_rs, fmap_gs``), which the
least-squares GAN and feature-matching losses of :mod:`binaural_lab.losses.vocoder` take.

- ``DiscriminatorP(period)`` (HiFi-GAN): the wave, reflect-padded at its end to a multiple of the
  period ``p``, is folded into an image ``[T / p, p]`` whose column ``j`` holds the samples
  ``j, j + p, j + 2p, ...``; four ``(5, 1)`` convolutions of stride ``(3, 1)`` (1 -> 32 -> 128 ->
  512 -> 1024 channels), one of stride 1 (1024 -> 1024), then a ``(3, 1)`` convolution to one
  channel. The kernels never mix columns, so each column (one phase of the period) is judged apart.
- ``DiscriminatorR([n_fft, hop, win])`` (UnivNet): the STFT magnitude ``|X| [F = n_fft / 2 + 1,
  frames]`` (reflect padding of ``(n_fft - hop) / 2`` on both sides, no centring, so ``T // hop``
  frames) as a one-channel image, frequency first: a ``(3, 9)`` convolution, three ``(3, 9)``
  convolutions of stride ``(1, 2)`` (halving the frames), a ``(3, 3)`` one, all 32 channels, and a
  ``(3, 3)`` convolution to one channel. As in BigVGAN's and UnivNet's code, the magnitude is linear
  (not its log) and the window is rectangular (their ``torch.stft`` calls pass no window: ``win``
  ones, centred in ``n_fft``).

LeakyReLU(0.1) follows every convolution but the last; every convolution is weight-normalised. The
widths are the papers' times ``channel_mult`` (1.0 = BigVGAN's ``discriminator_channel_mult: 1``,
about 41.1 M parameters in the periods and 0.28 M in the resolutions). Real and fake go through each
sub-discriminator as one batch ``[2B, 1, T]``: no layer mixes batch rows, so this gives the numbers of
two separate calls with half the calls. The spectrogram is computed in float32 (also under bf16
autocast); the convolutions run in whatever precision autocast chooses.

BigVGAN v2 replaces the multi-resolution discriminator by a multi-scale CQT sub-band one (nnAudio's
``CQT2010v2``); that one is not implemented here, so ``kind`` has the one value ``"mrd"``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from binaural_lab.config import ParamError, param

MPD_CHANNELS = (32, 128, 512, 1024, 1024)  # the period discriminator's widths; the last layer has stride 1
MPD_KERNEL = 5
MPD_STRIDE = 3
MRD_CHANNELS = 32  # every layer of the resolution discriminator
MRD_STRIDED_LAYERS = 3  # (3, 9) convolutions of stride (1, 2) after the first one
LRELU_SLOPE = 0.1


@dataclass
class DiscriminatorConfig:
    periods: list[int] = param([2, 3, 5, 7, 11], ge=1, doc="one period sub-discriminator per period (samples)")
    resolutions: list[list[int]] = param(
        [[1024, 120, 600], [2048, 240, 1200], [512, 50, 240]],
        ge=1,
        doc="[n_fft, hop, win] of each STFT sub-discriminator",
    )
    kind: str = param("mrd", choices=("mrd",), doc="the spectral discriminator: multi-resolution STFT (BigVGAN v1)")
    channel_mult: float = param(0.25, gt=0, doc="widths relative to the papers' (1.0 = BigVGAN)")

    def validate(self, where: str) -> None:
        if not self.periods and not self.resolutions:
            raise ParamError(f"{where}.periods: periods and resolutions are both empty, so nothing would judge")
        for i, res in enumerate(self.resolutions):
            key = f"{where}.resolutions[{i}]"
            if len(res) != 3:
                raise ParamError(f"{key}: expected [n_fft, hop, win], got {res}")
            n_fft, hop, win = res
            if win > n_fft:
                raise ParamError(f"{key}: win {win} is larger than n_fft {n_fft}")
            if hop > n_fft or (n_fft - hop) % 2:
                raise ParamError(f"{key}: n_fft - hop must be even and >= 0 (got n_fft {n_fft}, hop {hop})")
        if int(min(MPD_CHANNELS[0], MRD_CHANNELS) * self.channel_mult) < 1:
            raise ParamError(f"{where}.channel_mult: {self.channel_mult} leaves a layer with no channels (min 1/32)")


class DiscriminatorOutput(NamedTuple):
    """Per sub-discriminator: logits ``[B, N]`` and feature maps, for the real and the fake wave."""

    real_logits: list[Tensor]
    fake_logits: list[Tensor]
    real_fmaps: list[list[Tensor]]
    fake_fmaps: list[list[Tensor]]


def conv2d(
    c_in: int, c_out: int, kernel: tuple[int, int], stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0)
) -> nn.Module:
    """A weight-normalised 2-D convolution: ``w = g * v / ||v||``, one gain ``g`` per output channel."""
    return weight_norm(nn.Conv2d(c_in, c_out, kernel, stride, padding))


def run_layers(convs: nn.ModuleList, conv_post: nn.Module, x: Tensor) -> tuple[Tensor, list[Tensor]]:
    """LeakyReLU(conv(x)) through ``convs``, then ``conv_post``: the flattened logits and every layer's map."""
    fmaps = []
    for conv in convs:
        x = F.leaky_relu(conv(x), LRELU_SLOPE)
        fmaps.append(x)
    x = conv_post(x)
    fmaps.append(x)
    return x.flatten(1), fmaps


class DiscriminatorP(nn.Module):
    """HiFi-GAN's period discriminator: the wave folded into ``[T / period, period]``, judged per column."""

    def __init__(self, period: int, channel_mult: float = 1.0):
        super().__init__()
        self.period = period
        widths = [1, *(int(c * channel_mult) for c in MPD_CHANNELS)]
        strides = [MPD_STRIDE] * (len(MPD_CHANNELS) - 1) + [1]
        self.convs = nn.ModuleList(
            conv2d(c_in, c_out, (MPD_KERNEL, 1), (s, 1), (MPD_KERNEL // 2, 0))
            for c_in, c_out, s in zip(widths[:-1], widths[1:], strides, strict=True)
        )
        self.conv_post = conv2d(widths[-1], 1, (3, 1), padding=(1, 0))

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``x [B, 1, T]`` -> logits ``[B, N]`` and the feature maps ``[B, C, rows, period]``."""
        b, c, t = x.shape
        x = F.pad(x, (0, -t % self.period), mode="reflect")
        return run_layers(self.convs, self.conv_post, x.view(b, c, -1, self.period))


class DiscriminatorR(nn.Module):
    """UnivNet's resolution discriminator: 2-D convolutions over one STFT magnitude ``[F, frames]``."""

    def __init__(self, resolution: Sequence[int], channel_mult: float = 1.0):
        super().__init__()
        self.n_fft, self.hop, self.win = resolution
        c = int(MRD_CHANNELS * channel_mult)
        self.convs = nn.ModuleList(
            [
                conv2d(1, c, (3, 9), padding=(1, 4)),
                *(conv2d(c, c, (3, 9), (1, 2), (1, 4)) for _ in range(MRD_STRIDED_LAYERS)),
                conv2d(c, c, (3, 3), padding=(1, 1)),
            ]
        )
        self.conv_post = conv2d(c, 1, (3, 3), padding=(1, 1))

    def spectrogram(self, x: Tensor) -> Tensor:
        """``x [B, 1, T]`` -> the linear magnitude ``[B, 1, n_fft / 2 + 1, T // hop]`` (rectangular window)."""
        pad = (self.n_fft - self.hop) // 2
        if x.shape[-1] <= pad:
            raise ValueError(f"a wave of {x.shape[-1]} samples is too short for n_fft {self.n_fft} (padding {pad})")
        if x.dtype in (torch.float16, torch.bfloat16):
            x = x.float()
        x = F.pad(x, (pad, pad), mode="reflect").squeeze(1)
        window = torch.ones(self.win, device=x.device, dtype=x.dtype)
        spec = torch.stft(x, self.n_fft, self.hop, self.win, window=window, center=False, return_complex=True)
        return spec.abs().unsqueeze(1)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``x [B, 1, T]`` -> logits ``[B, N]`` and the feature maps ``[B, C, F, frames']``."""
        return run_layers(self.convs, self.conv_post, self.spectrogram(x))


def judge(discriminators: Iterable[nn.Module], real: Tensor, fake: Tensor) -> DiscriminatorOutput:
    """Run each sub-discriminator on ``real`` and ``fake [B, 1, T]`` as one batch and split the results."""
    if real.ndim != 3 or real.shape[1] != 1 or real.shape != fake.shape:
        shapes = f"{tuple(real.shape)} and {tuple(fake.shape)}"
        raise ValueError(f"expected real and fake waves of one shape [B, 1, T], got {shapes}")
    both = torch.cat((real, fake))
    out = DiscriminatorOutput([], [], [], [])
    for d in discriminators:
        logits, fmaps = d(both)
        real_logits, fake_logits = logits.chunk(2)
        out.real_logits.append(real_logits)
        out.fake_logits.append(fake_logits)
        out.real_fmaps.append([f.chunk(2)[0] for f in fmaps])
        out.fake_fmaps.append([f.chunk(2)[1] for f in fmaps])
    return out


class MultiPeriodDiscriminator(nn.Module):
    """One :class:`DiscriminatorP` per period."""

    def __init__(self, periods: Sequence[int], channel_mult: float = 1.0):
        super().__init__()
        self.discriminators = nn.ModuleList(DiscriminatorP(p, channel_mult) for p in periods)

    def forward(self, real: Tensor, fake: Tensor) -> DiscriminatorOutput:
        return judge(self.discriminators, real, fake)


class MultiResolutionDiscriminator(nn.Module):
    """One :class:`DiscriminatorR` per ``[n_fft, hop, win]``."""

    def __init__(self, resolutions: Sequence[Sequence[int]], channel_mult: float = 1.0):
        super().__init__()
        self.discriminators = nn.ModuleList(DiscriminatorR(r, channel_mult) for r in resolutions)

    def forward(self, real: Tensor, fake: Tensor) -> DiscriminatorOutput:
        return judge(self.discriminators, real, fake)


class Discriminators(nn.Module):
    """The vocoder's discriminators: the periods' then the resolutions' sub-discriminators, in one output."""

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.mpd = MultiPeriodDiscriminator(cfg.periods, cfg.channel_mult)
        self.mrd = MultiResolutionDiscriminator(cfg.resolutions, cfg.channel_mult)
        self.names = [f"period_{p}" for p in cfg.periods] + [f"stft_{n}_{h}_{w}" for n, h, w in cfg.resolutions]

    def forward(self, real: Tensor, fake: Tensor) -> DiscriminatorOutput:
        """Logits and feature maps of ``real`` and ``fake [B, 1, T]``, one entry per name in ``names``."""
        return judge([*self.mpd.discriminators, *self.mrd.discriminators], real, fake)
