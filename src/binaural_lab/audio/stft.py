"""STFT features, their inverse, resampling and echo spectrograms (Hann windows throughout).

Every function takes a tensor ``[..., samples]``; leading dimensions are kept, so one call works on
a clip, on its channels or on a batch.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import soxr
import torch
import torch.nn.functional as F
from torch import Tensor


@functools.lru_cache(maxsize=32)
def hann_window(win: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """A cached periodic Hann window (created outside inference mode, so autograd may use it)."""
    with torch.inference_mode(False):
        return torch.hann_window(win, device=device, dtype=dtype)


def _flat(audio: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    """``[..., n]`` -> ``[batch, n]`` and the leading shape to restore."""
    if audio.ndim == 0:
        raise ValueError("expected audio of shape [..., samples], got a scalar")
    return audio.reshape(-1, audio.shape[-1]), tuple(audio.shape[:-1])


def complex_stft(audio: Tensor, n_fft: int, hop: int, win: int, center: bool = True) -> Tensor:
    """Complex STFT ``[..., n_fft // 2 + 1, frames]`` (Hann window of ``win`` zero-padded to ``n_fft``).

    With ``center`` the signal is reflect-padded by ``n_fft // 2`` on both sides (librosa and torch).
    """
    flat, lead = _flat(audio)
    spec = torch.stft(
        flat,
        n_fft,
        hop_length=hop,
        win_length=win,
        window=hann_window(win, flat.device, flat.dtype),
        center=center,
        pad_mode="reflect",
        return_complex=True,
    )
    return spec.reshape(*lead, *spec.shape[-2:])


def stft_features(audio: Tensor, n_fft: int, hop: int, win: int, center: bool = True) -> Tensor:
    """Real and imaginary STFT parts, ``[..., 2, n_fft // 2 + 1, frames]``."""
    spec = complex_stft(audio, n_fft, hop, win, center)
    return torch.stack((spec.real, spec.imag), dim=-3)


def istft_features(
    features: Tensor, n_fft: int, hop: int, win: int, center: bool = True, length: int | None = None
) -> Tensor:
    """Inverse of :func:`stft_features`: ``[..., 2, F, frames]`` -> ``[..., samples]``."""
    if features.ndim < 3 or features.shape[-3] != 2:
        raise ValueError(f"expected features of shape [..., 2, F, frames], got {tuple(features.shape)}")
    lead = tuple(features.shape[:-3])
    flat = features.reshape(-1, *features.shape[-3:])
    spec = torch.complex(flat[:, 0], flat[:, 1])
    audio = torch.istft(
        spec,
        n_fft,
        hop_length=hop,
        win_length=win,
        window=hann_window(win, flat.device, flat.dtype),
        center=center,
        length=length,
    )
    return audio.reshape(*lead, audio.shape[-1])


def resample(audio: Tensor | np.ndarray, orig_sr: int, new_sr: int) -> Tensor | np.ndarray:
    """The project's one resampler: soxr "HQ" along the last dimension (librosa's default since 0.10,
    what the published binaural metrics ran), to exactly ``ceil(n * new_sr / orig_sr)`` samples
    (``librosa.load``'s length rule: cut or zero-padded). Takes and returns a tensor (on its device)
    or an array of the same dtype; the input itself when the rates match."""
    if orig_sr == new_sr:
        return audio
    x = audio.detach().cpu().numpy() if torch.is_tensor(audio) else np.asarray(audio)
    flat = x.reshape(-1, x.shape[-1])
    out = soxr.resample(np.ascontiguousarray(flat.T), int(orig_sr), int(new_sr), quality="HQ").T
    n_out = math.ceil(x.shape[-1] * new_sr / orig_sr)
    out = np.pad(out[:, :n_out], ((0, 0), (0, max(0, n_out - out.shape[-1]))))
    out = np.ascontiguousarray(out.reshape(*x.shape[:-1], n_out), dtype=x.dtype)
    return torch.from_numpy(out).to(audio.device) if torch.is_tensor(audio) else out


def echo_spectrogram(audio: Tensor, n_fft: int = 512, win: int = 64, hop: int = 16, size: int = 64) -> Tensor:
    """Batvision-style echo input ``[..., 2, size, size]`` (frequency x time) from ``[..., 2, samples]``.

    Per ear: magnitude STFT (Hann window of ``win`` zero-padded to ``n_fft``, centred), compressed as
    ``log1p(magnitude)`` so the strong direct sound does not swamp the late echoes, then resized
    bilinearly (antialiased, as torchvision's ``Resize``) to ``size x size``.
    """
    if audio.ndim < 2 or audio.shape[-2] != 2:
        raise ValueError(f"expected binaural audio of shape [..., 2, samples], got {tuple(audio.shape)}")
    mag = torch.log1p(complex_stft(audio, n_fft, hop, win, center=True).abs())
    flat = mag.reshape(-1, 2, *mag.shape[-2:])
    out = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return out.reshape(*audio.shape[:-1], size, size)
