"""BigVGAN's discriminators: multi-period (HiFi-GAN), multi-resolution STFT (UnivNet) and v2's sub-band CQT.

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

``kind`` chooses the spectral discriminators that follow the periods: ``"mrd"`` (the default, BigVGAN
v1: the resolutions above) or ``"cqtd"``, BigVGAN v2's multi-scale sub-band CQT discriminator (Gu et
al. 2024, NVIDIA's ``use_cqtd_instead_of_mrd: true``; the ``cqtd_*`` keys are those of its configs):

- :class:`ConstantQ`: a constant-Q transform in plain torch, CQT2010-style (as nnAudio's
  ``CQT2010v2``, which BigVGAN v2 calls). Bin ``k`` has the centre ``f_k = fmin 2^(k / bins_per_octave)``
  and ``Q = 1 / (2^(1 / bins_per_octave) - 1)``; its kernel is a Hann window of ``l_k = ceil(Q sr / f_k)``
  samples times ``exp(-2 pi i f_k tau / sr)``, ``tau`` counted from the frame centre, divided by the
  window's sum (L1 normalisation, so a unit sine at ``f_k`` gives ``|X| = 1/2``). Only the top octave's
  kernels are built (a few hundred samples); they are applied by one ``conv1d`` of stride ``hop``, then the
  signal is low-passed and decimated by 2 (a Kaiser-windowed sinc, cut off at half its Nyquist, stopband
  where an alias would reach the top bin) and the same kernels, at stride ``hop / 2``, give the next octave
  down, and so on: ``n_octaves`` short convolutions instead of kernels of ``Q sr / fmin`` samples (92 700
  at 44.1 kHz and 32.7 Hz). Frame ``t`` is centred on sample ``t hop`` (zero padding, ``T // hop + 1``
  frames, nnAudio's ``center=True, pad_mode="constant"``), in every octave: the decimation keeps the even
  samples of a zero-phase filter. As nnAudio's default ``normalization_type="librosa"``, bin ``k`` is then
  multiplied by ``sqrt(l_k)``. It returns real and imaginary parts ``[B, 2, n_bins, frames]`` in float32
  (autocast off).
- :class:`DiscriminatorCQT` (one ``[hop, n_octaves, bins_per_octave]`` triple): the wave, optionally
  freed of its DC offset and peak-normalised to 0.8 (``cqtd_normalize_volume``), is upsampled by
  ``cqtd_upsample`` (2 in BigVGAN v2: the CQT runs at twice the sample rate, so that 9 octaves from
  32.7 Hz, top bin 16.3 kHz, fit below its Nyquist); its CQT is an image ``[2 (real, imag), frames,
  bins]``, time first. Each octave's ``bins_per_octave`` columns go through their own ``(3, 9)``
  convolution (2 -> 2 channels, no activation: the sub-band split), the results are concatenated along
  frequency, then a ``(3, 9)`` convolution to ``cqtd_filters`` channels, one ``(3, 9)`` convolution of
  stride ``(1, 2)`` (halving the bins) and dilation ``(d, 1)`` (over time) per ``cqtd_dilations`` entry
  ``d``, a ``(3, 3)`` convolution, LeakyReLU(0.1) after each of these, and a ``(3, 3)`` convolution to one
  channel. Layer ``i`` has ``min(cqtd_filters * cqtd_filters_scale^i, cqtd_max_filters)`` channels, times
  ``channel_mult``.
- :class:`MultiScaleSubbandCQTDiscriminator`: one per ``(cqtd_hop_lengths[i], cqtd_n_octaves[i],
  cqtd_bins_per_octaves[i])``, named ``cqt_{hop}_{octaves}_{bins}``.

Where this differs from NVIDIA's code, on purpose: every convolution is weight-normalised (theirs leaves
the per-octave ones and the first one plain); the feature maps end with the logits' map, as the other
discriminators here (theirs stop before it); the widths chain (their first dilated layer takes
``cqtd_filters * cqtd_filters_scale`` inputs, which breaks for a scale other than 1); and the resampling and
decimation filters are this module's Kaiser sincs, not torchaudio's and nnAudio's. The ``cqtd_*`` keys are
read only when ``kind`` is ``"cqtd"``, which also ignores ``resolutions``; with ``"mrd"`` the module, its
parameters and its state dict are those of before the CQT option existed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
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
CQTD_KERNEL = (3, 9)  # (time, frequency) of the CQT discriminator's per-octave, first and dilated convolutions
CQTD_STRIDE = (1, 2)  # of its dilated convolutions: the bins halve, the frames stay
CQTD_PEAK = 0.8  # the peak its volume normalisation scales each wave to
FILTER_ATTENUATION_DB = 80.0  # stopband of the resampling filters (Kaiser design)


@dataclass
class DiscriminatorConfig:
    periods: list[int] = param([2, 3, 5, 7, 11], ge=1, doc="one period sub-discriminator per period (samples)")
    resolutions: list[list[int]] = param(
        [[1024, 120, 600], [2048, 240, 1200], [512, 50, 240]],
        ge=1,
        doc="[n_fft, hop, win] of each STFT sub-discriminator",
    )
    kind: str = param(
        "mrd",
        choices=("mrd", "cqtd"),
        doc="the spectral discriminator: multi-resolution STFT (mrd, BigVGAN v1) or sub-band CQT (cqtd, BigVGAN v2)",
    )
    channel_mult: float = param(0.25, gt=0, doc="widths relative to the papers' (1.0 = BigVGAN)")
    cqtd_sample_rate: int = param(
        22050, ge=1, doc="cqtd: sample rate (Hz) of the waves judged, the vocoder's own (BigVGAN's sampling_rate)"
    )
    cqtd_upsample: int = param(2, ge=1, le=4, doc="cqtd: the CQT runs at this many times the sample rate (v2: 2)")
    cqtd_fmin: float = param(32.70, gt=0, doc="cqtd: centre of the lowest bin, Hz (nnAudio's default, C1)")
    cqtd_filters: int = param(128, ge=1, doc="cqtd: channels of the first layer")
    cqtd_max_filters: int = param(1024, ge=1, doc="cqtd: at most this many channels in any layer")
    cqtd_filters_scale: int = param(1, ge=1, doc="cqtd: channel factor from one layer to the next")
    cqtd_dilations: list[int] = param([1, 2, 4], ge=1, doc="cqtd: time dilation of each strided layer")
    cqtd_hop_lengths: list[int] = param(
        [512, 256, 256], ge=1, doc="cqtd: CQT hop (samples at the CQT's rate) of each sub-discriminator"
    )
    cqtd_n_octaves: list[int] = param([9, 9, 9], ge=1, doc="cqtd: octaves of each sub-discriminator's CQT")
    cqtd_bins_per_octaves: list[int] = param(
        [24, 36, 48], ge=1, doc="cqtd: bins per octave of each sub-discriminator's CQT"
    )
    cqtd_normalize_volume: bool = param(
        True, doc="cqtd: remove each wave's DC offset and scale its peak to 0.8 before the CQT"
    )

    def validate(self, where: str) -> None:
        if self.kind == "cqtd":
            self.validate_cqtd(where)
        elif not self.periods and not self.resolutions:
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

    def validate_cqtd(self, where: str) -> None:
        """The ``cqtd_*`` keys: matching lists, every top bin below the CQT's Nyquist, hops that halve evenly."""
        hops, octaves, bins = self.cqtd_hop_lengths, self.cqtd_n_octaves, self.cqtd_bins_per_octaves
        if not self.periods and not hops:
            raise ParamError(f"{where}.periods: periods and cqtd_hop_lengths are both empty, so nothing would judge")
        for name, values in (("cqtd_n_octaves", octaves), ("cqtd_bins_per_octaves", bins)):
            if len(values) != len(hops):
                raise ParamError(f"{where}.{name}: {len(values)} values for {len(hops)} cqtd_hop_lengths")
        if int(self.cqtd_filters * self.channel_mult) < 1:
            raise ParamError(
                f"{where}.channel_mult: {self.channel_mult} leaves the CQT discriminator's layers with no channels "
                f"(cqtd_filters {self.cqtd_filters})"
            )
        sr = self.cqtd_sample_rate * self.cqtd_upsample
        for i, (hop, n_octaves, n_bins) in enumerate(zip(hops, octaves, bins, strict=True)):
            top = top_bin_frequency(self.cqtd_fmin, n_octaves, n_bins)
            if top >= sr / 2:
                fit = max(
                    n for n in range(n_octaves) if n == 0 or top_bin_frequency(self.cqtd_fmin, n, n_bins) < sr / 2
                )
                raise ParamError(
                    f"{where}.cqtd_n_octaves[{i}]: {n_octaves} octaves of {n_bins} bins from {self.cqtd_fmin} Hz put "
                    f"the top bin at {top:.0f} Hz, not below the CQT's Nyquist frequency {sr / 2:.0f} Hz "
                    f"(cqtd_sample_rate {self.cqtd_sample_rate} x cqtd_upsample {self.cqtd_upsample} / 2); "
                    f"at most {fit} octaves fit"
                )
            if hop % 2 ** (n_octaves - 1):
                raise ParamError(
                    f"{where}.cqtd_hop_lengths[{i}]: {hop} is not a multiple of 2^(n_octaves - 1) = "
                    f"{2 ** (n_octaves - 1)}: the CQT halves the hop once per octave below the top one"
                )


def top_bin_frequency(fmin: float, n_octaves: int, bins_per_octave: int) -> float:
    """Centre of the highest of ``n_octaves * bins_per_octave`` constant-Q bins from ``fmin``, Hz."""
    return fmin * 2 ** ((n_octaves * bins_per_octave - 1) / bins_per_octave)


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


def kaiser_lowpass(cutoff: float, transition: float, gain: float = 1.0) -> Tensor:
    """A zero-phase low-pass FIR ``[1, 1, K]`` (``K`` odd): a Kaiser-windowed sinc of DC gain ``gain``.

    ``cutoff`` and ``transition`` (the width of the band from pass to stop) are fractions of the Nyquist
    frequency; the length and the window's beta come from Kaiser's formulas for ``FILTER_ATTENUATION_DB``.
    """
    a = FILTER_ATTENUATION_DB
    beta = 0.1102 * (a - 8.7)
    taps = math.ceil((a - 7.95) / (2.285 * math.pi * transition)) + 1
    taps += 1 - taps % 2
    n = np.arange(taps) - taps // 2
    h = cutoff * np.sinc(cutoff * n) * np.kaiser(taps, beta)
    return torch.from_numpy(gain * h / h.sum()).float().view(1, 1, -1)


class ConstantQ(nn.Module):
    """A constant-Q transform, CQT2010-style: the top octave's kernels, reused on a signal halved per octave.

    ``ConstantQ(sr, hop, n_octaves, bins_per_octave, fmin)(x [B, 1, T])`` gives the real and imaginary
    parts ``[B, 2, n_octaves * bins_per_octave, T // hop + 1]``, lowest bin first, frame ``t`` centred on
    sample ``t * hop``; see the module doc. ``librosa_scale`` multiplies bin ``k`` by ``sqrt(l_k)`` as
    nnAudio's and librosa's CQTs do (off: a unit sine at a bin's centre gives magnitude 1/2 in every bin).
    The kernels and filters are buffers outside the state dict (they follow from the arguments).
    """

    def __init__(
        self,
        sample_rate: float,
        hop: int,
        n_octaves: int,
        bins_per_octave: int,
        fmin: float,
        librosa_scale: bool = True,
    ):
        super().__init__()
        n_bins = n_octaves * bins_per_octave
        if top_bin_frequency(fmin, n_octaves, bins_per_octave) >= sample_rate / 2:
            raise ValueError(f"{n_octaves} octaves from {fmin} Hz reach the Nyquist frequency of {sample_rate} Hz")
        if hop % 2 ** (n_octaves - 1):
            raise ValueError(f"hop {hop} is not a multiple of 2^(n_octaves - 1) = {2 ** (n_octaves - 1)}")
        self.hop, self.n_octaves, self.bins_per_octave = hop, n_octaves, bins_per_octave
        self.q = 1 / (2 ** (1 / bins_per_octave) - 1)
        self.freqs = fmin * 2 ** (np.arange(n_bins) / bins_per_octave)  # Hz, lowest first
        lengths = np.ceil(self.q * sample_rate / self.freqs)  # every bin's kernel at the full rate
        top = self.freqs[-bins_per_octave:]
        top_lengths = lengths[-bins_per_octave:]
        width = 2 * int(top_lengths.max() // 2) + 1  # odd, so that tau = 0 is the middle tap
        tau = np.arange(width) - width // 2
        window = np.where(
            np.abs(tau)[None, :] < top_lengths[:, None] / 2,
            0.5 + 0.5 * np.cos(2 * np.pi * tau[None, :] / top_lengths[:, None]),
            0.0,
        )
        window /= window.sum(axis=1, keepdims=True)  # L1 normalisation
        phase = 2 * np.pi * top[:, None] * tau[None, :] / sample_rate
        kernels = np.concatenate([window * np.cos(phase), -window * np.sin(phase)])  # real rows, then imaginary
        self.register_buffer("kernels", torch.from_numpy(kernels).float().unsqueeze(1), persistent=False)
        # Decimation by 2: the next octave's top bin (and its main lobe) sits at rho times the new Nyquist;
        # passing it and stopping whatever would alias onto it leaves a band of width 1 - rho around half
        # the Nyquist; the filter uses at most 0.1 of it (sharp, like nnAudio's) and at least 0.02.
        rho = top[-1] * (1 + 1 / self.q) / (sample_rate / 2)
        self.register_buffer("lowpass", kaiser_lowpass(0.5, min(max(1 - rho, 0.02), 0.1)), persistent=False)
        scale = np.sqrt(lengths) if librosa_scale else np.ones(n_bins)
        self.register_buffer("scale", torch.from_numpy(scale).float().view(1, 1, -1, 1), persistent=False)

    def octave(self, x: Tensor, hop: int, frames: int) -> Tensor:
        """The top-octave kernels on ``x [N, 1, T]`` at stride ``hop``: ``[N, 2, bins_per_octave, frames]``."""
        half = self.kernels.shape[-1] // 2
        x = F.pad(x, (half, half + hop))  # room for frame T // hop (centred at T, past the last sample)
        out = F.conv1d(x, self.kernels, stride=hop)[..., :frames]
        return out.view(x.shape[0], 2, self.bins_per_octave, frames)

    def decimate(self, x: Tensor) -> Tensor:
        """Low-pass ``x [N, 1, T]`` at half its Nyquist and keep the even samples: ``[N, 1, ceil(T / 2)]``."""
        half = self.lowpass.shape[-1] // 2
        return F.conv1d(F.pad(x, (half, half)), self.lowpass, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, 1, T]`` -> real and imaginary parts ``[B, 2, n_bins, T // hop + 1]`` (float32)."""
        frames = x.shape[-1] // self.hop + 1
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            hop, octaves = self.hop, []
            for i in range(self.n_octaves):
                if i:
                    x, hop = self.decimate(x), hop // 2
                octaves.append(self.octave(x, hop, frames))
            return torch.cat(octaves[::-1], dim=2) * self.scale


def upsample(x: Tensor, factor: int, kernel: Tensor) -> Tensor:
    """``x [N, 1, T]`` at ``factor`` times its rate, ``[N, 1, factor * T]``: zeros stuffed, then ``kernel``."""
    half = kernel.shape[-1] // 2
    return F.conv_transpose1d(x, kernel, stride=factor, padding=half, output_padding=factor - 1)


class DiscriminatorCQT(nn.Module):
    """BigVGAN v2's sub-band CQT discriminator at one ``(hop, n_octaves, bins_per_octave)``: see the module doc."""

    def __init__(self, cfg: DiscriminatorConfig, hop: int, n_octaves: int, bins_per_octave: int):
        super().__init__()
        self.n_octaves, self.bins_per_octave = n_octaves, bins_per_octave
        self.normalize_volume = cfg.cqtd_normalize_volume
        self.factor = cfg.cqtd_upsample
        if self.factor > 1:  # pass to 0.9 of the old Nyquist, stop images from 1.1 of it
            self.register_buffer(
                "interpolator", kaiser_lowpass(1 / self.factor, 0.2 / self.factor, self.factor), persistent=False
            )
        sr = cfg.cqtd_sample_rate * self.factor
        self.cqt = ConstantQ(sr, hop, n_octaves, bins_per_octave, cfg.cqtd_fmin)
        k_t, k_f = CQTD_KERNEL
        same = (k_t // 2, k_f // 2)
        self.conv_pres = nn.ModuleList(conv2d(2, 2, CQTD_KERNEL, padding=same) for _ in range(n_octaves))
        n_layers = len(cfg.cqtd_dilations) + 2
        widths = [
            max(1, int(min(cfg.cqtd_filters * cfg.cqtd_filters_scale**i, cfg.cqtd_max_filters) * cfg.channel_mult))
            for i in range(n_layers)
        ]
        self.convs = nn.ModuleList(
            [
                conv2d(2, widths[0], CQTD_KERNEL, padding=same),
                *(
                    weight_norm(
                        nn.Conv2d(
                            c_in, c_out, CQTD_KERNEL, CQTD_STRIDE, padding=(d * (k_t // 2), k_f // 2), dilation=(d, 1)
                        )
                    )
                    for c_in, c_out, d in zip(widths[:-2], widths[1:-1], cfg.cqtd_dilations, strict=True)
                ),
                conv2d(widths[-2], widths[-1], (k_t, k_t), padding=(k_t // 2, k_t // 2)),
            ]
        )
        self.conv_post = conv2d(widths[-1], 1, (k_t, k_t), padding=(k_t // 2, k_t // 2))

    def spectrogram(self, x: Tensor) -> Tensor:
        """``x [B, 1, T]`` -> the CQT image ``[B, 2 (real, imag), frames, n_bins]``, time first (float32)."""
        with torch.autocast(x.device.type, enabled=False):
            x = x.float()
            if self.normalize_volume:
                x = x - x.mean(dim=-1, keepdim=True)
                x = CQTD_PEAK * x / (x.abs().amax(dim=-1, keepdim=True) + 1e-9)
            if self.factor > 1:
                x = upsample(x, self.factor, self.interpolator)
            return self.cqt(x).transpose(2, 3)

    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """``x [B, 1, T]`` -> logits ``[B, N]`` and the feature maps ``[B, C, frames, bins']``."""
        z = self.spectrogram(x)
        bands = z.split(self.bins_per_octave, dim=-1)
        z = torch.cat([conv(band) for conv, band in zip(self.conv_pres, bands, strict=True)], dim=-1)
        return run_layers(self.convs, self.conv_post, z)


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


class MultiScaleSubbandCQTDiscriminator(nn.Module):
    """One :class:`DiscriminatorCQT` per ``(cqtd_hop_lengths, cqtd_n_octaves, cqtd_bins_per_octaves)`` triple."""

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        scales = zip(cfg.cqtd_hop_lengths, cfg.cqtd_n_octaves, cfg.cqtd_bins_per_octaves, strict=True)
        self.discriminators = nn.ModuleList(DiscriminatorCQT(cfg, *scale) for scale in scales)

    def forward(self, real: Tensor, fake: Tensor) -> DiscriminatorOutput:
        return judge(self.discriminators, real, fake)


class Discriminators(nn.Module):
    """The vocoder's discriminators: the periods' then the spectral sub-discriminators, in one output.

    The spectral ones are ``mrd`` (the resolutions) or ``cqtd`` (the CQT scales), after ``cfg.kind``.
    """

    def __init__(self, cfg: DiscriminatorConfig):
        super().__init__()
        self.mpd = MultiPeriodDiscriminator(cfg.periods, cfg.channel_mult)
        self.names = [f"period_{p}" for p in cfg.periods]
        if cfg.kind == "cqtd":
            self.cqtd = MultiScaleSubbandCQTDiscriminator(cfg)
            scales = zip(cfg.cqtd_hop_lengths, cfg.cqtd_n_octaves, cfg.cqtd_bins_per_octaves, strict=True)
            self.names += [f"cqt_{h}_{o}_{b}" for h, o, b in scales]
        else:
            self.mrd = MultiResolutionDiscriminator(cfg.resolutions, cfg.channel_mult)
            self.names += [f"stft_{n}_{h}_{w}" for n, h, w in cfg.resolutions]
        self.kind = cfg.kind

    @property
    def spectral(self) -> MultiResolutionDiscriminator | MultiScaleSubbandCQTDiscriminator:
        """The spectral discriminators (a property, not a second attribute, so the state dict names them once)."""
        return self.cqtd if self.kind == "cqtd" else self.mrd

    def forward(self, real: Tensor, fake: Tensor) -> DiscriminatorOutput:
        """Logits and feature maps of ``real`` and ``fake [B, 1, T]``, one entry per name in ``names``."""
        return judge([*self.mpd.discriminators, *self.spectral.discriminators], real, fake)
