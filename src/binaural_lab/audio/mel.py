"""The one log-mel function (BigVGAN convention), used by every stage: diffusion, vocoder, metrics.

Slaney mel basis, Hann window, reflect padding of ``(n_fft - hop) / 2`` on both sides and no
centring, magnitude ``sqrt(re^2 + im^2 + 1e-9)``, natural log of ``max(mel, clamp_min)``. A clip of
``n`` samples, ``n`` a multiple of ``hop``, gives exactly ``n // hop`` frames.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
import torchaudio.functional as AF
from torch import Tensor

from binaural_lab.audio.stft import complex_stft
from binaural_lab.config import ParamError, param

MEL_HOP = 256  # BigVGAN's 22 kHz hop; simulated and adapted clips are cut to multiples of it
MEL_LOG_MIN = -12.0
MEL_LOG_MAX = 2.5


@dataclass(frozen=True)
class MelConfig:
    """BigVGAN v2 22 kHz, 80-band mel settings."""

    sample_rate: int = param(22050, gt=0, doc="Hz")
    n_fft: int = param(1024, gt=0)
    hop: int = param(MEL_HOP, gt=0, doc="samples per mel frame")
    win: int = param(1024, gt=0)
    n_mels: int = param(80, gt=0)
    fmin: float = param(0.0, ge=0)
    fmax: float | None = param(11025.0, gt=0, doc="Hz; null means sample_rate / 2")
    clamp_min: float = param(1e-5, gt=0, doc="floor before the log")

    def validate(self, where: str) -> None:
        """Check the relations between fields."""
        if self.win > self.n_fft:
            raise ParamError(f"{where}.win: {self.win} is larger than n_fft {self.n_fft}")
        if self.hop > self.n_fft or (self.n_fft - self.hop) % 2:
            raise ParamError(f"{where}.hop: n_fft - hop must be even and >= 0 (got n_fft {self.n_fft}, hop {self.hop})")
        if self.f_max > self.sample_rate / 2 or self.fmin >= self.f_max:
            raise ParamError(
                f"{where}.fmax: need fmin < fmax <= sample_rate / 2, got fmin {self.fmin}, fmax {self.f_max}"
            )

    @property
    def f_max(self) -> float:
        """The upper band edge in Hz (``fmax``, or Nyquist when unset)."""
        return self.sample_rate / 2 if self.fmax is None else self.fmax


@functools.lru_cache(maxsize=16)
def mel_basis(cfg: MelConfig, device: torch.device, dtype: torch.dtype) -> Tensor:
    """The cached Slaney mel filterbank ``[n_mels, n_fft // 2 + 1]``."""
    with torch.inference_mode(False):
        fbanks = AF.melscale_fbanks(
            cfg.n_fft // 2 + 1,
            f_min=cfg.fmin,
            f_max=cfg.f_max,
            n_mels=cfg.n_mels,
            sample_rate=cfg.sample_rate,
            norm="slaney",
            mel_scale="slaney",
        )
        return fbanks.T.contiguous().to(device=device, dtype=dtype)


def mel_spectrogram(audio: Tensor, cfg: MelConfig) -> Tensor:
    """Log-mel ``[..., n_mels, frames]`` of ``audio [..., samples]`` (float16/bfloat16 run in float32)."""
    if not audio.is_floating_point():
        raise TypeError(f"expected floating-point audio, got {audio.dtype}")
    if audio.dtype in (torch.float16, torch.bfloat16):
        audio = audio.float()
    pad = (cfg.n_fft - cfg.hop) // 2
    flat = audio.reshape(-1, 1, audio.shape[-1])
    if flat.shape[-1] <= pad:
        raise ValueError(f"audio of {flat.shape[-1]} samples is too short for reflect padding of {pad}")
    padded = F.pad(flat, (pad, pad), mode="reflect").squeeze(1)
    spec = torch.view_as_real(complex_stft(padded, cfg.n_fft, cfg.hop, cfg.win, center=False))
    mag = torch.sqrt(spec[..., 0].pow(2) + spec[..., 1].pow(2) + 1e-9)  # re^2 + im^2, no strided reduction
    mel = torch.matmul(mel_basis(cfg, mag.device, mag.dtype), mag)
    logmel = torch.log(torch.clamp(mel, min=cfg.clamp_min))
    return logmel.reshape(*audio.shape[:-1], *logmel.shape[-2:])


def normalize_mel(logmel: Tensor, lo: float = MEL_LOG_MIN, hi: float = MEL_LOG_MAX) -> Tensor:
    """DiffBinaural stage 1: clamp the log-mel to ``[lo, hi]`` and map it linearly to ``[-1, 1]``."""
    return (torch.clamp(logmel, lo, hi) - lo) / (hi - lo) * 2.0 - 1.0


def denormalize_mel(x: Tensor, lo: float = MEL_LOG_MIN, hi: float = MEL_LOG_MAX) -> Tensor:
    """Inverse of :func:`normalize_mel` (linear, no clamp: the sampler clips its own output)."""
    return (x + 1.0) / 2.0 * (hi - lo) + lo
