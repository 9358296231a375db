"""BigVGAN v2 generator (Lee et al., "BigVGAN", ICLR 2023; NVIDIA's v2 release): log-mel -> waveform.

``BigVGAN(cfg)(mel [B, num_mels, T])`` returns the wave ``[B, 1, T * hop_length]`` in [-1, 1]. The mel
is BigVGAN's (REFERENCE section 2: natural log of a Slaney mel magnitude, hop 256 at 22.05 kHz).

The network, as NVIDIA's ``bigvgan==2.4.1`` builds it from a ``config.json``:

- ``conv_pre``: a 7-tap convolution ``num_mels -> upsample_initial_channel``;
- one stage per upsampling rate ``u`` (kernel ``k``): a transposed convolution of stride ``u`` (padding
  ``(k - u) / 2``, so exactly ``u`` times longer) halves the channels, then ``len(resblock_kernel_sizes)``
  AMP blocks read the same input and their outputs are averaged;
- an AMP block (``AMPBlock1``) is, for each dilation ``d`` of its list,
  ``x = x + conv2(act2(conv1_d(act1(x))))``: ``conv1_d`` has the block's kernel and dilation ``d``,
  ``conv2`` the same kernel and dilation 1, both "same" padded;
- a final anti-aliased activation, ``conv_post`` (7 taps, to one channel, no bias in v2), then a clamp
  to [-1, 1] (v2) or a tanh (v1, ``use_tanh_at_final``).

Every activation is anti-aliased (``Activation1d``): upsample 2x, apply the periodic activation at the
doubled rate, where its harmonics fit, then low-pass and decimate 2x. The activation is SnakeBeta,
``x + 1 / (beta + 1e-9) * sin^2(alpha * x)`` with ``alpha`` (frequency) and ``beta`` (magnitude) per
channel, stored as logarithms (``snake_logscale``: initialised to 0, i.e. ``alpha = beta = 1``), or
Snake (``beta = alpha``). Both resamplers use one 12-tap Kaiser-windowed sinc low-pass with its cutoff
at a quarter of the doubled rate (the original Nyquist) and a transition half-width of 0.3 of it; the
signal is replicate-padded at its ends.

Fast and equal. Both resamplers are computed in polyphase form, on the original time axis: the 2x
upsampled signal is two phases, ``y[2n + p] = sum_r 2 h[M - 1 + p - 2r] x[n + r]`` (``M`` = taps / 2,
``|r| <= M // 2``), and decimating ``z`` is ``sum_p sum_r h[M - 1 + p + 2r] z[2(n + r) + p]``: 6 taps per
phase instead of 12 over zero-stuffed samples, and no interleaving copy or gain pass (NVIDIA's code runs
a transposed convolution, a gain and a strided convolution). On CUDA each filter is one grouped
convolution. On the CPU the activation runs over time chunks of about ``CPU_CHUNK_ELEMENTS`` values plus
the filters' halo, so that its temporaries stay in the cache instead of being fresh allocations of tens
of MB, and each filter is a few shifted multiply-adds, which PyTorch's CPU kernels run faster than a
depthwise convolution. The results equal NVIDIA's to float32 rounding (tests against the ``bigvgan``
package: the wave to 1e-4, and the gradients); ``benchmarks/bench_vocoder.py`` times both.

Checkpoints. Module and parameter names are NVIDIA's, so ``{"generator": state_dict}`` files
(``bigvgan_generator.pt``) load 1:1 with :func:`load_checkpoint`, and this model's ``state_dict`` loads into
NVIDIA's code. Their code uses ``torch.nn.utils.weight_norm``, whose parameters are ``weight_g`` and
``weight_v``, so this file uses it too (the newer ``parametrizations.weight_norm`` would name them
``parametrizations.weight.original0/1``, and NVIDIA's code could not read this model's checkpoints back).
:meth:`BigVGAN.remove_weight_norm` folds ``w = g * v / ||v||`` into plain weights for inference. Convolution
weights keep PyTorch's default initialisation: NVIDIA's ``init_weights`` (normal, std 0.01) runs after
``weight_norm`` and only rewrites the cached ``weight``, which the next forward recomputes from
``weight_g`` and ``weight_v``, so the default initialisation is what their training starts from too.

Named configurations (:data:`NAMED_CONFIGS`, :func:`named_config`), all hop 256; parameters with weight
norm (after :meth:`BigVGAN.remove_weight_norm`, without the gains), as NVIDIA's code counts them:

- ``22khz_80band_256x``: NVIDIA's ``bigvgan_v2_22khz_80band_256x``, 112,231,249 (112,199,472);
- ``base_22khz_80band``: NVIDIA's ``bigvgan_base_22khz_80band``, 13,953,474 (13,943,361); a v1 model, whose
  config.json has no ``use_tanh_at_final`` / ``use_bias_at_final``, which NVIDIA's code then takes as true;
- ``small``: rates 8, 8, 4 from 64 channels (32, 16, 8 after the stages), 251,569 (250,384), for training
  on a CPU.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from binaural_lab.config import ParamError, UserError, param, parse

FILTER_TAPS = 12  # taps of the Kaiser-windowed sinc low-pass of the 2x resamplers
SNAKE_EPS = 1e-9  # added to the magnitude before dividing, as NVIDIA's code does
CPU_CHUNK_ELEMENTS = 2**20  # batch x channels x samples per time chunk of an activation on the CPU
MIN_CHUNK = 256  # samples: the shortest chunk (the filters' halo is 2 x 3 samples)


@dataclass
class BigVGANConfig:
    """The generator keys of NVIDIA's config.json (defaults: bigvgan_v2_22khz_80band_256x)."""

    num_mels: int = param(80, ge=1, doc="mel bands of the input")
    upsample_rates: list[int] = param([4, 4, 2, 2, 2, 2], ge=1, doc="stride of each upsampling stage")
    upsample_kernel_sizes: list[int] = param([8, 8, 4, 4, 4, 4], ge=1, doc="kernel of each upsampling stage")
    upsample_initial_channel: int = param(1536, ge=1, doc="channels after conv_pre; halved at every stage")
    resblock_kernel_sizes: list[int] = param([3, 7, 11], ge=1, doc="kernel of each AMP block of a stage (odd)")
    resblock_dilation_sizes: list[list[int]] = param(
        [[1, 3, 5], [1, 3, 5], [1, 3, 5]], ge=1, doc="dilations of each AMP block (one residual unit each)"
    )
    activation: str = param("snakebeta", choices=("snakebeta", "snake"), doc="periodic activation")
    snake_logscale: bool = param(True, doc="alpha and beta are stored as logarithms (initialised to 0)")
    use_bias_at_final: bool = param(False, doc="conv_post has a bias (v1: true, v2: false)")
    use_tanh_at_final: bool = param(False, doc="tanh at the end (v1); false clamps to [-1, 1] (v2)")

    @property
    def hop_length(self) -> int:
        """Output samples per mel frame: the product of the upsampling rates."""
        return math.prod(self.upsample_rates)

    def stage_channels(self) -> list[int]:
        """Channels after each upsampling stage."""
        return [self.upsample_initial_channel // 2 ** (i + 1) for i in range(len(self.upsample_rates))]

    def validate(self, where: str) -> None:
        if self.num_mels < 1:
            raise ParamError(f"{where}.num_mels: {self.num_mels} is out of range, expected a value >= 1")
        if not self.upsample_rates:
            raise ParamError(f"{where}.upsample_rates: expected at least one upsampling stage")
        if len(self.upsample_kernel_sizes) != len(self.upsample_rates):
            raise ParamError(
                f"{where}.upsample_kernel_sizes: {len(self.upsample_kernel_sizes)} kernels for "
                f"{len(self.upsample_rates)} upsample_rates, expected one per stage"
            )
        for i, (u, k) in enumerate(zip(self.upsample_rates, self.upsample_kernel_sizes, strict=True)):
            if u < 1:
                raise ParamError(f"{where}.upsample_rates[{i}]: {u} is out of range, expected a value >= 1")
            if k < u or (k - u) % 2:
                raise ParamError(
                    f"{where}.upsample_kernel_sizes[{i}]: {k} must be >= the rate {u} and differ from it by an even "
                    "number, so that the stage is exactly that many times longer"
                )
        if self.stage_channels()[-1] < 1:
            raise ParamError(
                f"{where}.upsample_initial_channel: {self.upsample_initial_channel} leaves no channel after "
                f"{len(self.upsample_rates)} halvings (expected at least {2 ** len(self.upsample_rates)})"
            )
        if not self.resblock_kernel_sizes:
            raise ParamError(f"{where}.resblock_kernel_sizes: expected at least one AMP block per stage")
        if len(self.resblock_dilation_sizes) != len(self.resblock_kernel_sizes):
            raise ParamError(
                f"{where}.resblock_dilation_sizes: {len(self.resblock_dilation_sizes)} lists for "
                f"{len(self.resblock_kernel_sizes)} resblock_kernel_sizes, expected one per AMP block"
            )
        for i, k in enumerate(self.resblock_kernel_sizes):
            if k < 1 or k % 2 == 0:
                raise ParamError(f"{where}.resblock_kernel_sizes[{i}]: {k} must be odd and >= 1 ('same' padding)")
        for i, dilations in enumerate(self.resblock_dilation_sizes):
            if not dilations or min(dilations) < 1:
                raise ParamError(f"{where}.resblock_dilation_sizes[{i}]: expected dilations >= 1, got {dilations}")
        if self.activation not in ("snakebeta", "snake"):
            raise ParamError(f"{where}.activation: {self.activation!r} is not one of ['snakebeta', 'snake']")


_AMP_BLOCKS = {"resblock_kernel_sizes": [3, 7, 11], "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]]}
NAMED_CONFIGS: dict[str, dict[str, Any]] = {
    # NVIDIA's configs/bigvgan_v2_22khz_80band_256x.json
    "22khz_80band_256x": {
        "upsample_rates": [4, 4, 2, 2, 2, 2],
        "upsample_kernel_sizes": [8, 8, 4, 4, 4, 4],
        "upsample_initial_channel": 1536,
        **_AMP_BLOCKS,
    },
    # NVIDIA's configs/bigvgan_base_22khz_80band.json (v1: tanh and bias at the end by their code's defaults)
    "base_22khz_80band": {
        "upsample_rates": [8, 8, 2, 2],
        "upsample_kernel_sizes": [16, 16, 4, 4],
        "upsample_initial_channel": 512,
        **_AMP_BLOCKS,
        "use_bias_at_final": True,
        "use_tanh_at_final": True,
    },
    # this project's: hop 256 in three stages (32, 16, 8 channels), v2 ends
    "small": {
        "upsample_rates": [8, 8, 4],
        "upsample_kernel_sizes": [16, 16, 8],
        "upsample_initial_channel": 64,
        **_AMP_BLOCKS,
    },
}


def named_config(name: str, **overrides: Any) -> BigVGANConfig:
    """A fresh :class:`BigVGANConfig` of :data:`NAMED_CONFIGS` ``name``, with keys overridden."""
    if name not in NAMED_CONFIGS:
        raise ParamError(f"bigvgan: unknown config {name!r}, expected one of {sorted(NAMED_CONFIGS)}")
    return parse(BigVGANConfig, {**NAMED_CONFIGS[name], **overrides}, f"bigvgan[{name}]")


def config_from_nvidia(h: Mapping[str, Any], where: str = "config.json") -> BigVGANConfig:
    """The generator part of an NVIDIA ``config.json`` (its training keys are ignored).

    As NVIDIA's code, a missing ``use_bias_at_final`` / ``use_tanh_at_final`` means true (v1 files).
    """
    if str(h.get("resblock", "1")) != "1":
        raise ParamError(f"{where}.resblock: {h['resblock']!r} is not supported, only AMPBlock1 ('1', BigVGAN v2)")
    generator = {k: h[k] for k in BigVGANConfig.__dataclass_fields__ if k in h}
    return parse(BigVGANConfig, {"use_bias_at_final": True, "use_tanh_at_final": True, **generator}, where)


# --- weight norm -----------------------------------------------------------------------------------


def weight_norm(module: nn.Module) -> nn.Module:
    """``w = g * v / ||v||``, one gain per slice of dim 0, with NVIDIA's parameter names ``weight_g, weight_v``.

    ``torch.nn.utils.weight_norm`` warns that it is deprecated; it is used on purpose (see the module
    docstring), so that warning is silenced here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.nn\.utils\.weight_norm.*", category=FutureWarning)
        return nn.utils.weight_norm(module)


def has_weight_norm(module: nn.Module) -> bool:
    return hasattr(module, "weight_g")


def conv1d(c_in: int, c_out: int, kernel: int, dilation: int = 1, bias: bool = True) -> nn.Module:
    """A weight-normalised "same" convolution (odd ``kernel``)."""
    padding = dilation * (kernel - 1) // 2
    return weight_norm(nn.Conv1d(c_in, c_out, kernel, dilation=dilation, padding=padding, bias=bias))


# --- anti-aliased periodic activation --------------------------------------------------------------


def kaiser_sinc_filter(cutoff: float, half_width: float, taps: int) -> Tensor:
    """Low-pass FIR ``[1, 1, taps]``: a sinc of cutoff ``cutoff`` (cycles per sample) times a Kaiser window.

    The window's ``beta`` follows Kaiser's design formulas for the attenuation
    ``A = 2.285 (taps / 2 - 1) pi (4 half_width) + 7.95`` dB. ``taps`` is even: the taps sit at the
    half-integer times ``-taps / 2 + 0.5 .. taps / 2 - 0.5``, symmetric about the middle of two samples.
    They sum to 1 (unit gain at DC).
    """
    if taps < 2 or taps % 2:
        raise ValueError(f"kaiser_sinc_filter: taps must be even and >= 2, got {taps}")
    half = taps // 2
    attenuation = 2.285 * (half - 1) * math.pi * 4 * half_width + 7.95
    if attenuation > 50:
        beta = 0.1102 * (attenuation - 8.7)
    elif attenuation >= 21:
        beta = 0.5842 * (attenuation - 21) ** 0.4 + 0.07886 * (attenuation - 21)
    else:
        beta = 0.0
    window = torch.kaiser_window(taps, periodic=False, beta=beta)
    h = 2 * cutoff * window * torch.sinc(2 * cutoff * (torch.arange(-half, half) + 0.5))
    return (h / h.sum()).view(1, 1, taps)


def polyphase(h: Tensor, upsample: bool) -> Tensor:
    """The two 2x-resampling phases of the even-length filter ``h`` as ``[2, 2R + 1]`` taps on the original rate.

    With ``M = len(h) / 2`` and ``R = M // 2`` (3 for 12 taps), and the padding of NVIDIA's resamplers:
    upsampling (zero-stuffing, low-pass, gain 2) gives ``y[2n + p] = sum_r 2 h[M - 1 + p - 2r] x[n + r]``;
    low-pass and decimation of ``z`` gives ``sum_p sum_r h[M - 1 + p + 2r] z[2(n + r) + p]``; ``r`` runs over
    ``-R..R`` (column ``r + R``), taps outside ``h`` are zero.
    """
    taps = h.numel()
    m, reach = taps // 2, taps // 4
    r = torch.arange(-reach, reach + 1, device=h.device)
    p = torch.arange(2, device=h.device)[:, None]
    k = m - 1 + p - 2 * r if upsample else m - 1 + p + 2 * r
    w = torch.where((k >= 0) & (k < taps), h.flatten()[k.clamp(0, taps - 1)], 0.0)
    return 2 * w if upsample else w


def fir(x: Tensor, weight: Tensor, length: int) -> Tensor:
    """``out[..., p, n] = sum_k weight[p, k] x[..., p, n + k]``, ``n < length``: the rows of ``weight [P, K]``
    correlated with ``x [..., P or 1, L]`` (one row broadcast over all ``P``) as ``K`` multiply-adds."""
    out = x[..., :length] * weight[:, :1]
    for k in range(1, weight.shape[1]):
        out.addcmul_(x[..., k : k + length], weight[:, k : k + 1])
    return out


def upsample_phases(x: Tensor, weight: Tensor) -> Tensor:
    """``[B, C, L]`` -> ``[B, C, 2, L - 2R]``: both phases of the 2x upsampled signal where ``x`` has ``R``
    neighbours on each side (``weight`` from :meth:`UpSample1d.weight`)."""
    b, c, _ = x.shape
    return F.conv1d(x, weight, groups=c).view(b, c, 2, -1)


def downsample_phases(z: Tensor, weight: Tensor) -> Tensor:
    """``[B, C, 2, L]`` (the two phases of a 2x signal) -> ``[B, C, L - 2R]``, low-passed and decimated
    (``weight`` from :meth:`DownSample1d.weight`)."""
    b, c, _, length = z.shape
    return F.conv1d(z.reshape(b, 2 * c, length), weight, groups=c)


def pad_phases(z: Tensor, left: int, right: int) -> Tensor:
    """Replicate-pad the 2x signal held as its phases ``z [B, C, 2, L]``: ``left`` more samples of its first
    value (phase 0, column 0) in both phases, ``right`` more of its last (phase 1, last column)."""
    if left == right == 0:
        return z
    b, c, _, _ = z.shape
    first = z[:, :, :1, :1].expand(b, c, 2, left)
    last = z[:, :, 1:, -1:].expand(b, c, 2, right)
    return torch.cat([first, z, last], dim=-1)


class LowPassFilter1d(nn.Module):
    """The Kaiser-windowed sinc of :class:`DownSample1d` (cutoff 0.25 and half-width 0.3 cycles per sample)."""

    def __init__(self, taps: int = FILTER_TAPS):
        super().__init__()
        self.register_buffer("filter", kaiser_sinc_filter(0.25, 0.3, taps))


class UpSample1d(nn.Module):
    """2x upsampling: zero-stuffing, the Kaiser-windowed sinc low-pass at the original Nyquist, gain 2."""

    def __init__(self, taps: int = FILTER_TAPS):
        super().__init__()
        self.reach = taps // 4  # R: each output phase reads x[n - R .. n + R]
        self.register_buffer("filter", kaiser_sinc_filter(0.25, 0.3, taps))

    def weight(self, channels: int, dtype: torch.dtype) -> Tensor:
        """Grouped-convolution weight ``[2C, 1, 2R + 1]``: output ``2c + p`` is phase ``p`` of channel ``c``."""
        return polyphase(self.filter, upsample=True).to(dtype).repeat(channels, 1).unsqueeze(1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, T]`` -> ``[B, C, 2T]``; the signal is replicate-padded at its ends."""
        b, c, t = x.shape
        y = upsample_phases(F.pad(x, (self.reach, self.reach), mode="replicate"), self.weight(c, x.dtype))
        return y.transpose(2, 3).reshape(b, c, 2 * t)


class DownSample1d(nn.Module):
    """2x decimation after the Kaiser-windowed sinc low-pass of :class:`LowPassFilter1d`."""

    def __init__(self, taps: int = FILTER_TAPS):
        super().__init__()
        self.reach = taps // 4  # R: output n reads both phases at n - R .. n + R
        self.lowpass = LowPassFilter1d(taps)

    def weight(self, channels: int, dtype: torch.dtype) -> Tensor:
        """Grouped-convolution weight ``[C, 2, 2R + 1]``: channel ``c`` filters its two phases and sums them."""
        return polyphase(self.lowpass.filter, upsample=False).to(dtype).unsqueeze(0).expand(channels, -1, -1)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, C, L]`` -> ``[B, C, ceil(L / 2)]``; the signal is replicate-padded at its ends."""
        if x.shape[-1] % 2:  # the replicate padding gives the odd length its last sample of phase 1
            x = F.pad(x, (0, 1), mode="replicate")
        b, c, t2 = x.shape
        z = pad_phases(x.view(b, c, t2 // 2, 2).transpose(2, 3), self.reach, self.reach)
        return downsample_phases(z, self.weight(c, x.dtype))


class Snake(nn.Module):
    """Snake, ``x + 1 / (alpha + 1e-9) * sin^2(alpha * x)``, one ``alpha`` per channel of ``[B, C, T]``.

    The identity plus a periodic term: ``alpha`` sets its frequency. With ``logscale`` the parameter
    is ``log alpha``, initialised to 0; otherwise ``alpha``, initialised to 1.
    """

    def __init__(self, channels: int, logscale: bool = True):
        super().__init__()
        self.logscale = logscale
        self.alpha = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))

    def _value(self, p: Tensor) -> Tensor:
        return (p.exp() if self.logscale else p).unsqueeze(-1)  # [C, 1]

    def coefficients(self) -> tuple[Tensor, Tensor]:
        """``(alpha, 1 / (magnitude + 1e-9))`` as ``[C, 1]``; Snake's magnitude is ``alpha``."""
        alpha = self._value(self.alpha)
        return alpha, 1 / (alpha + SNAKE_EPS)

    def forward(self, x: Tensor) -> Tensor:
        alpha, gain = self.coefficients()
        return torch.addcmul(x, torch.sin(x * alpha).square(), gain)


class SnakeBeta(Snake):
    """SnakeBeta, ``x + 1 / (beta + 1e-9) * sin^2(alpha * x)``: Snake with its own magnitude ``beta`` per channel."""

    def __init__(self, channels: int, logscale: bool = True):
        super().__init__(channels, logscale)
        self.beta = nn.Parameter(torch.zeros(channels) if logscale else torch.ones(channels))

    def coefficients(self) -> tuple[Tensor, Tensor]:
        return self._value(self.alpha), 1 / (self._value(self.beta) + SNAKE_EPS)


class Activation1d(nn.Module):
    """Anti-aliased activation ``[B, C, T] -> [B, C, T]``: 2x upsampling, ``act``, 2x downsampling.

    Both resamplers in polyphase form (module docstring), computed one of two ways with the same result:

    - :meth:`forward_grouped` (CUDA and other devices): each filter is one grouped convolution over the
      whole signal;
    - :meth:`forward_chunked` (the CPU): the time axis is cut into chunks of ``CPU_CHUNK_ELEMENTS / (B C)``
      samples (at least ``MIN_CHUNK``), and each filter is seven shifted multiply-adds on both phases at
      once (:func:`fir`), which PyTorch's CPU kernels run about twice as fast as a depthwise convolution.
      Chunk ``[a, b)`` upsamples the samples ``[a - R, b + R)`` that its decimation reads; where that halo
      crosses an end of the signal it is the replicate padding of the 2x signal.
    """

    def __init__(self, act: Snake, taps: int = FILTER_TAPS):
        super().__init__()
        self.act = act
        self.upsample = UpSample1d(taps)
        self.downsample = DownSample1d(taps)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_chunked(x) if x.device.type == "cpu" else self.forward_grouped(x)

    def forward_grouped(self, x: Tensor) -> Tensor:
        b, c, t = x.shape
        r = self.upsample.reach
        u = upsample_phases(F.pad(x, (r, r), mode="replicate"), self.upsample.weight(c, x.dtype))
        z = pad_phases(self.act(u.view(b, c, 2 * t)).view(b, c, 2, t), r, r)
        return downsample_phases(z, self.downsample.weight(c, x.dtype))

    def forward_chunked(self, x: Tensor) -> Tensor:
        b, c, t = x.shape
        r = self.upsample.reach
        up = polyphase(self.upsample.filter, upsample=True).to(x.dtype)
        down = polyphase(self.downsample.lowpass.filter, upsample=False).to(x.dtype)
        xp = F.pad(x, (r, r), mode="replicate").unsqueeze(2)  # [B, C, 1, T + 2R]: x[i] is xp[..., i + R]
        step = max(MIN_CHUNK, CPU_CHUNK_ELEMENTS // (b * c))
        pieces = []
        for start in range(0, t, step):
            stop = min(start + step, t)
            lo, hi = max(start - r, 0), min(stop + r, t)  # the samples of both phases that this chunk reads
            u = fir(xp[..., lo : hi + 2 * r], up, hi - lo)  # [B, C, 2, hi - lo]
            z = pad_phases(self.act(u.view(b, c, -1)).view(b, c, 2, -1), r - (start - lo), r - (hi - stop))
            d = fir(z, down, stop - start)  # each phase filtered; their sum is the decimated signal
            pieces.append(d[:, :, 0] + d[:, :, 1])
        return pieces[0] if len(pieces) == 1 else torch.cat(pieces, dim=-1)


# --- the generator ---------------------------------------------------------------------------------


def make_activation(cfg: BigVGANConfig, channels: int) -> Activation1d:
    snake = SnakeBeta if cfg.activation == "snakebeta" else Snake
    return Activation1d(snake(channels, logscale=cfg.snake_logscale))


class AMPBlock1(nn.Module):
    """BigVGAN's anti-aliased multi-periodicity block: per dilation ``d``,
    ``x = x + conv2(act2(conv1_d(act1(x))))`` ("same" convolutions of one kernel, ``conv2`` undilated)."""

    def __init__(self, cfg: BigVGANConfig, channels: int, kernel: int, dilations: list[int]):
        super().__init__()
        self.convs1 = nn.ModuleList(conv1d(channels, channels, kernel, dilation=d) for d in dilations)
        self.convs2 = nn.ModuleList(conv1d(channels, channels, kernel) for _ in dilations)
        self.activations = nn.ModuleList(make_activation(cfg, channels) for _ in range(2 * len(dilations)))

    def forward(self, x: Tensor) -> Tensor:
        units = zip(self.convs1, self.convs2, self.activations[::2], self.activations[1::2], strict=True)
        for conv1, conv2, act1, act2 in units:
            x = conv2(act2(conv1(act1(x)))).add_(x)  # in place on conv2's fresh output
        return x


class BigVGAN(nn.Module):
    """``forward(mel [B, num_mels, T])`` -> wave ``[B, 1, T * hop_length]`` in [-1, 1] (module docstring)."""

    def __init__(self, cfg: BigVGANConfig):
        super().__init__()
        cfg.validate("BigVGANConfig")
        self.cfg = cfg
        c0 = cfg.upsample_initial_channel
        self.num_kernels = len(cfg.resblock_kernel_sizes)
        self.conv_pre = conv1d(cfg.num_mels, c0, 7)
        channels = cfg.stage_channels()
        stages = zip([c0, *channels[:-1]], channels, cfg.upsample_rates, cfg.upsample_kernel_sizes, strict=True)
        self.ups = nn.ModuleList(
            nn.ModuleList([weight_norm(nn.ConvTranspose1d(i, o, k, u, padding=(k - u) // 2))]) for i, o, u, k in stages
        )
        self.resblocks = nn.ModuleList(
            AMPBlock1(cfg, ch, k, d)
            for ch in channels
            for k, d in zip(cfg.resblock_kernel_sizes, cfg.resblock_dilation_sizes, strict=True)
        )
        self.activation_post = make_activation(cfg, channels[-1])
        self.conv_post = conv1d(channels[-1], 1, 7, bias=cfg.use_bias_at_final)

    @property
    def hop_length(self) -> int:
        return self.cfg.hop_length

    def forward(self, mel: Tensor) -> Tensor:
        if mel.ndim != 3 or mel.shape[1] != self.cfg.num_mels:
            raise ValueError(f"expected a mel [B, {self.cfg.num_mels}, T], got shape {list(mel.shape)}")
        x = self.conv_pre(mel)
        for i, up in enumerate(self.ups):
            x = up[0](x)
            blocks = self.resblocks[i * self.num_kernels : (i + 1) * self.num_kernels]
            xs = blocks[0](x)
            for block in blocks[1:]:
                xs = xs.add_(block(x))
            x = xs.div_(self.num_kernels)  # the blocks' mean
        x = self.conv_post(self.activation_post(x))
        return torch.tanh(x) if self.cfg.use_tanh_at_final else x.clamp(-1.0, 1.0)

    def remove_weight_norm(self) -> BigVGAN:
        """Fold every ``w = g * v / ||v||`` into a plain ``weight`` (for inference; a no-op when done already)."""
        for module in self.modules():
            if has_weight_norm(module):
                nn.utils.remove_weight_norm(module)
        return self


class CheckpointError(UserError):
    """A generator checkpoint that is missing, unreadable or of another configuration."""


def _key_list(keys: list[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def load_checkpoint(model: BigVGAN, path: str | Path) -> BigVGAN:
    """Load NVIDIA's ``bigvgan_generator.pt`` (``{"generator": state_dict}``) into ``model``, strictly.

    The file is read with ``torch.load(weights_only=True)`` on the CPU; nothing is ever downloaded. A
    checkpoint without weight norm (plain ``weight`` keys) first removes the model's. Raises
    :class:`CheckpointError` naming the file: not found, not such a dict, or keys or shapes that are not
    this model's (a checkpoint of another config).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file (expected a BigVGAN generator checkpoint, bigvgan_generator.pt)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and weights-only errors have no common base class
        raise CheckpointError(f"{path}: not a PyTorch checkpoint readable with weights_only=True ({exc})") from exc
    if not isinstance(ckpt, Mapping) or not isinstance(ckpt.get("generator"), Mapping):
        found = f"keys {_key_list([str(k) for k in ckpt])}" if isinstance(ckpt, Mapping) else type(ckpt).__name__
        raise CheckpointError(f"{path}: expected {{'generator': state_dict}} as NVIDIA publishes it, got {found}")
    state = ckpt["generator"]
    if "conv_pre.weight" in state and has_weight_norm(model.conv_pre):
        model.remove_weight_norm()
    if "conv_pre.weight_g" in state and not has_weight_norm(model.conv_pre):
        raise CheckpointError(
            f"{path}: the checkpoint has weight norm (weight_g, weight_v) and the model not: load it before "
            "remove_weight_norm()"
        )
    ours = model.state_dict()
    missing, unexpected = [k for k in ours if k not in state], [k for k in state if k not in ours]
    shapes = [k for k in ours if k in state and tuple(ours[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or shapes:
        problems = [
            f"missing keys {_key_list(missing)}" if missing else "",
            f"unexpected keys {_key_list(unexpected)}" if unexpected else "",
            ", ".join(f"{k} is {list(state[k].shape)}, expected {list(ours[k].shape)}" for k in shapes[:3]),
        ]
        raise CheckpointError(
            f"{path}: a checkpoint of another config ({'; '.join(p for p in problems if p)}); this model has "
            f"upsample_rates {model.cfg.upsample_rates}, upsample_initial_channel {model.cfg.upsample_initial_channel}"
        )
    model.load_state_dict(state, strict=True)
    return model
