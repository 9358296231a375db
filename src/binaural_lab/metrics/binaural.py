"""Binaural-audio metrics in two named conventions (REFERENCE.md section 3).

The two conventions come from the reference evaluation scripts and give numbers that cannot be
compared with each other, so every result names its convention.

``gao`` -- Gao & Grauman (2.5D Visual Sound, Sep-Stereo, PseudoBinaural; the FAIR-Play tables)
    Both clips are resampled to 16 kHz (soxr "HQ", then zero-padded or cut to
    ``ceil(n * 16000 / sr)`` samples, as ``librosa.load`` does) and, by default, peak-normalised:
    ``x / max(1e-20, max|x|)`` with the peak taken over both channels together, for the prediction
    and the ground truth separately. STFT: n_fft 512, hop 160, periodic Hann window of 400 samples
    centred in the 512-point frame, ``center=True`` with REFLECT padding (librosa < 0.9, which made
    the published tables). A signal of ``n`` samples gives ``1 + n // 160`` frames.

    - ``stft``  = sum over L, R of the mean over (Re, Im) entries of (X_pred - X_gt)^2, no root
      (the reference stacks Re and Im as separate entries: per channel this is mean(|dX|^2) / 2)
    - ``env``   = sum over L, R of sqrt(mean((|hilbert(gt)| - |hilbert(pred)|)^2))
    - ``mag``   = sum over L, R of mean(|X_pred - X_gt|^2), exactly 2 x ``stft``
    - ``phase`` = mean over time-frequency bins of min(d, 2 pi - d),
      d = |angle(STFT(pred_L - pred_R)) - angle(STFT(gt_L - gt_R))|
    - ``snr``   = 10 log10((mean(gt^2) + 1e-4) / (mean((pred - gt)^2) + 1e-4)), channels pooled

``diffbinaural`` -- DiffBinaural ``evaluate_binaural_22050.py``
    Both clips are resampled to 22 050 Hz (as above), trimmed by 2048 samples (8 mel frames) at
    each end, cut to the shorter length, and peak-normalised only on request (after trimming).
    STFT: n_fft 512, hop 256, periodic Hann window of 512, ``center=True`` with ZERO padding
    (``1 + n // 256`` frames).

    - ``stft``, ``mag``, ``phase``, ``env``, ``mel_rmse``: a root-mean-square error per channel,
      averaged over L and R; of the (Re, Im) entries, of |X|, of the raw ``np.angle`` difference
      (neither wrapped nor unwrapped), of the Hilbert envelopes, and of the BigVGAN log-mel
      (:func:`binaural_lab.audio.mel.mel_spectrogram`, 22.05 kHz, 1024/256/1024, 80 bands,
      fmax 11025; no frame crop)
    - ``snr`` = 10 log10(sum gt^2 / sum (pred - gt)^2), ``inf`` when pred equals gt
    - ``iacc``, ``ild``, ``itd``: mean over analysis frames of |value_pred - value_gt|, see
      :func:`iacc_frames`, :func:`ild_frames`, :func:`itd_frames`; ``itd`` in milliseconds.

Analysis frames (IACC, ILD, ITD): 1024 samples, hop 512, starting at 0, 512, 1024, ... while
``start + 1024 <= n``; a clip of ``n >= 1024`` samples has ``(n - 1024) // 512 + 1`` frames and the
samples after the last full frame are not analysed (:func:`frame_count`).

Shortest clips accepted, per file after resampling (and trimming): ``gao`` one STFT frame, 512
samples at 16 kHz (32 ms); ``diffbinaural`` one analysis frame, 1024 samples after removing
2 x 2048, i.e. 5120 samples at 22.05 kHz (0.23 s). Pairs of different lengths are cut to the
shorter one in both conventions (the Gao scripts assume equal lengths; resampling a clip made at
another rate may add or drop a sample).

Over a set of clips (:func:`score_dirs`) each metric is the plain mean of the per-clip values.
An infinite per-clip value (only the DiffBinaural ``snr`` of a prediction equal to its ground
truth) is left out of the mean and counted in ``n_infinite`` -- as the DiffBinaural script's
``safe_statistics`` does; when every clip is infinite the mean is ``inf``.

Arrays are channel-first ``[2, samples]``, channel 0 the left ear, channel 1 the right ear.
Nothing here writes files.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import numpy as np
import torch
import torch.nn.functional as F
from scipy import fft as sp_fft
from tqdm import tqdm

from binaural_lab.audio.io import AudioFileError, read_audio
from binaural_lab.audio.mel import MelConfig, mel_spectrogram
from binaural_lab.audio.stft import complex_stft, resample
from binaural_lab.config import UserError

GAO = "gao"
DIFFBINAURAL = "diffbinaural"

CONVENTIONS: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {
        GAO: ("stft", "env", "mag", "phase", "snr"),
        DIFFBINAURAL: ("stft", "mag", "phase", "env", "snr", "mel_rmse", "iacc", "ild", "itd"),
    }
)
"""Convention name -> the metric keys it reports (all lower is better except ``snr``)."""

SAMPLE_RATES: Mapping[str, int] = MappingProxyType({GAO: 16000, DIFFBINAURAL: 22050})
DEFAULT_NORMALIZE: Mapping[str, bool] = MappingProxyType({GAO: True, DIFFBINAURAL: False})

CONVENTION_DESCRIPTIONS: Mapping[str, str] = MappingProxyType(
    {
        GAO: (
            "Gao & Grauman convention (2.5D Visual Sound / PseudoBinaural evaluate.py, FAIR-Play tables): "
            "16 kHz (soxr HQ), STFT 512/160/400 Hann reflect-padded; stft, env, mag summed over L and R, "
            "phase of the L-R difference, snr with a 1e-4 floor"
        ),
        DIFFBINAURAL: (
            "DiffBinaural convention (evaluate_binaural_22050.py): 22.05 kHz (soxr HQ), 2048 samples trimmed "
            "at each end, STFT 512/256/512 Hann zero-padded; per-channel RMSEs averaged over L and R, "
            "snr, BigVGAN log-mel RMSE, frame errors of IACC, ILD (dB) and ITD (ms)"
        ),
    }
)

GAO_STFT = (512, 160, 400)  # n_fft, hop, win
GAO_SNR_EPS = 1e-4
DB_STFT = (512, 256, 512)
DB_TRIM = 8 * 256
FRAME = 1024
FRAME_HOP = 512
ILD_BANDS_HZ: tuple[tuple[float, float | None], ...] = (
    (0.0, 500.0),
    (500.0, 1000.0),
    (1000.0, 1500.0),
    (1500.0, 3000.0),
    (3000.0, 6000.0),
    (6000.0, None),  # None: up to (excluding) Nyquist
)
ILD_WEIGHTS = (0.5, 0.7, 1.0, 1.5, 1.5, 1.3)
ILD_EPS = 1e-10
IACC_MIN_DENOM = 1e-10
ITD_NFFT = 2 * FRAME
ITD_MAX_S = 0.001
PHAT_EPS = 1e-10
PARABOLA_MIN_DENOM = 1e-10
MEL_CONFIG = MelConfig(sample_rate=22050, n_fft=1024, hop=256, win=1024, n_mels=80, fmin=0.0, fmax=11025.0)

MIN_SAMPLES: Mapping[str, int] = MappingProxyType({GAO: GAO_STFT[0], DIFFBINAURAL: 2 * DB_TRIM + FRAME})
"""Fewest samples a clip may have after resampling to the convention's rate (before trimming)."""


class BinauralMetricsError(UserError, ValueError):
    """A clip or a folder of clips cannot be scored; the message names the file."""


# ---------------------------------------------------------------------------------------------------------------
# input handling


def check_convention(convention: str) -> str:
    """Return ``convention`` if it is known, else raise :class:`BinauralMetricsError`."""
    if convention not in CONVENTIONS:
        raise BinauralMetricsError(
            f"unknown binaural metric convention {convention!r}; choose one of {list(CONVENTIONS)}"
        )
    return convention


def _as_clip(x: np.ndarray, name: str) -> np.ndarray:
    """Validate a ``[2, samples]`` clip and return it as contiguous float32."""
    x = np.asarray(x)
    if x.ndim != 2 or x.shape[0] != 2:
        if x.ndim == 1:
            what = "1 channel (mono)"
        elif x.ndim == 2:
            what = f"{x.shape[0]} channels"
        else:
            what = f"shape {x.shape}"
        raise BinauralMetricsError(f"{name}: {what}, expected stereo audio [2, samples] (left, right)")
    if x.shape[1] == 0:
        raise BinauralMetricsError(f"{name}: holds no samples")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise BinauralMetricsError(f"{name}: expected real-valued audio, got dtype {x.dtype}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise BinauralMetricsError(f"{name}: holds NaN or infinite samples")
    return x


def peak_normalize(x: np.ndarray) -> np.ndarray:
    """``x / max(1e-20, max|x|)``, the peak taken over all channels together."""
    return x / np.maximum(np.float32(1e-20), np.max(np.abs(x)))


def frame_count(n: int, frame: int = FRAME, hop: int = FRAME_HOP) -> int:
    """Analysis frames in ``n`` samples: starts 0, hop, 2 hop, ... while ``start + frame <= n``."""
    return 0 if n < frame else (n - frame) // hop + 1


def _frames(x: np.ndarray, frame: int = FRAME, hop: int = FRAME_HOP) -> np.ndarray:
    """``[..., n]`` -> ``[..., frame_count(n), frame]`` (a strided view; the tail is dropped)."""
    return np.lib.stride_tricks.sliding_window_view(x, frame, axis=-1)[..., ::hop, :]


def prepare_pair(
    pred: np.ndarray,
    gt: np.ndarray,
    sr: int,
    convention: str,
    *,
    gt_sr: int | None = None,
    normalize: bool | None = None,
    pred_name: str = "prediction",
    gt_name: str = "ground truth",
) -> tuple[np.ndarray, np.ndarray]:
    """Validate, resample, trim, cut and (optionally) normalise a pair as ``convention`` does.

    Returns float32 ``(pred, gt)``, both ``[2, n]`` at ``SAMPLE_RATES[convention]``. Raises
    :class:`BinauralMetricsError` naming ``pred_name`` or ``gt_name`` for a clip that is not stereo,
    holds NaN/inf, is too short (:data:`MIN_SAMPLES`) or, for the ground truth, is silent.
    """
    convention = check_convention(convention)
    if normalize is None:
        normalize = DEFAULT_NORMALIZE[convention]
    gt_sr = sr if gt_sr is None else gt_sr
    target = SAMPLE_RATES[convention]
    clips = []
    for x, rate, name in ((pred, sr, pred_name), (gt, gt_sr, gt_name)):
        if int(rate) <= 0:
            raise BinauralMetricsError(f"{name}: sample rate must be positive, got {rate}")
        x = resample(_as_clip(x, name), int(rate), target)
        need = MIN_SAMPLES[convention]
        if x.shape[1] < need:
            raise BinauralMetricsError(
                f"{name}: too short for the {convention} metrics: {x.shape[1]} samples at {target} Hz "
                f"({x.shape[1] / target:.3f} s), need at least {need} ({need / target:.3f} s)"
            )
        if convention == DIFFBINAURAL:
            x = x[:, DB_TRIM:-DB_TRIM]
        clips.append(x)
    n = min(clips[0].shape[1], clips[1].shape[1])
    p, g = clips[0][:, :n], clips[1][:, :n]
    if not np.any(g):
        where = " after trimming" if convention == DIFFBINAURAL else ""
        raise BinauralMetricsError(f"{gt_name}: ground truth is silent (all samples zero{where})")
    if normalize:
        p, g = peak_normalize(p), peak_normalize(g)
    return np.ascontiguousarray(p), np.ascontiguousarray(g)


# ---------------------------------------------------------------------------------------------------------------
# shared transforms


def _stft(x: np.ndarray, n_fft: int, hop: int, win: int, pad_mode: str) -> np.ndarray:
    """Complex STFT ``[..., n_fft // 2 + 1, 1 + n // hop]`` with ``center=True`` and ``pad_mode`` padding."""
    t = torch.from_numpy(np.ascontiguousarray(x))
    with torch.no_grad():
        if pad_mode == "reflect":
            spec = complex_stft(t, n_fft, hop, win, center=True)
        elif pad_mode == "constant":
            flat = F.pad(t.reshape(-1, t.shape[-1]), (n_fft // 2, n_fft // 2))
            spec = complex_stft(flat, n_fft, hop, win, center=False)
            spec = spec.reshape(*t.shape[:-1], *spec.shape[-2:])
        else:
            raise ValueError(f"pad_mode must be 'reflect' or 'constant', got {pad_mode!r}")
    return spec.numpy()


def _envelope(x: np.ndarray) -> np.ndarray:
    """Hilbert envelope ``|hilbert(x)|`` along the last axis, as ``scipy.signal.hilbert`` defines it.

    That is an ``n``-point DFT (no padding): the analytic signal is ``x + i y`` with
    ``y = irfft(-i X m)``, ``m`` = 1 for ``0 < k < n / 2`` and 0 at DC and Nyquist, so the envelope is
    ``hypot(x, y)``. Computed in float32 with torch's real FFTs (several times faster than scipy's
    complex FFT for lengths with a large prime factor, such as 216 404 = 4 x 54 101).
    """
    n = x.shape[-1]
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    with torch.no_grad():
        spec = torch.fft.rfft(t, dim=-1)
        spec[..., 0] = 0
        if n % 2 == 0:
            spec[..., -1] = 0
        y = torch.fft.irfft(torch.complex(spec.imag, -spec.real), n=n, dim=-1)  # -i (a + ib) = b - ia
        return torch.hypot(t, y).numpy()


def _rms(x: np.ndarray, axis: int | tuple[int, ...] = -1) -> np.ndarray:
    return np.sqrt(np.mean(np.square(x, dtype=np.float64), axis=axis))


# ---------------------------------------------------------------------------------------------------------------
# frame analyses (DiffBinaural)


def iacc_frames(x: np.ndarray) -> np.ndarray:
    """Interaural cross-correlation per analysis frame of ``x [..., 2, n]`` -> ``[..., frames]``.

    Frames of 1024 samples, hop 512, no window. Per frame: the largest ``|xcorr(L, R)|`` over all
    lags (-1023 ... 1023), divided by ``sqrt(E_L * E_R)`` (energies = zero-lag autocorrelations),
    clipped to [0, 1]; 0 when that denominator is <= 1e-10. The correlation is taken through
    2048-point float32 FFTs (the reference correlates float32 audio; 2048 >= 2 * 1024 - 1, so the
    circular correlation is the linear one), the energies in float64.
    """
    fr = _frames(np.asarray(x, dtype=np.float32))
    spec = sp_fft.rfft(fr, n=ITD_NFFT, axis=-1)
    xcorr = sp_fft.irfft(spec[..., 0, :, :] * np.conj(spec[..., 1, :, :]), n=ITD_NFFT, axis=-1)
    peak = np.max(np.abs(xcorr), axis=-1).astype(np.float64)
    energy = np.einsum("...i,...i->...", fr, fr, dtype=np.float64)  # [..., 2, frames]
    denom = np.sqrt(energy[..., 0, :] * energy[..., 1, :])
    ok = denom > IACC_MIN_DENOM
    return np.where(ok, np.clip(peak / np.where(ok, denom, 1.0), 0.0, 1.0), 0.0)


def _windowed_spectrum(x: np.ndarray) -> np.ndarray:
    """The 2048-point rfft of the Hann-windowed float64 frames of ``x [..., 2, n]``.

    Its even bins ``2m`` are the 1024-point rfft bins ``m`` used by the ILD (the same sums).
    """
    fr = _frames(np.asarray(x, dtype=np.float64)) * np.hanning(FRAME)
    return np.fft.rfft(fr, n=ITD_NFFT, axis=-1)


def _ild_band_weights(sr: int) -> tuple[np.ndarray, np.ndarray]:
    """Band membership ``[FRAME // 2 + 1, bands]`` and weights (0 for a band without a bin)."""
    freqs = np.fft.rfftfreq(FRAME, 1.0 / sr)
    nyquist = sr / 2
    member = np.stack(
        [(freqs >= lo) & (freqs < (nyquist if hi is None else hi)) for lo, hi in ILD_BANDS_HZ], axis=1
    ).astype(np.float64)
    weights = np.asarray(ILD_WEIGHTS, dtype=np.float64) / np.sum(ILD_WEIGHTS)
    return member, np.where(member.any(axis=0), weights, 0.0)


def _ild_from_spectrum(spec: np.ndarray, sr: int) -> np.ndarray:
    half = spec[..., ::2]  # the 1024-point spectrum
    power = half.real**2 + half.imag**2  # [..., 2, frames, 513]
    member, weights = _ild_band_weights(sr)
    energy = power @ member  # [..., 2, frames, bands]
    ild = 10.0 * np.log10((energy[..., 0, :, :] + ILD_EPS) / (energy[..., 1, :, :] + ILD_EPS))
    return ild @ weights


def _itd_from_spectrum(spec: np.ndarray, sr: int) -> np.ndarray:
    max_lag = int(ITD_MAX_S * sr)
    if max_lag + 1 >= ITD_NFFT // 2:
        raise ValueError(f"sample rate {sr} Hz is too high for a {ITD_NFFT}-point GCC-PHAT search of +-1 ms")
    cross = spec[..., 0, :, :] * np.conj(spec[..., 1, :, :])
    norm = np.abs(cross)
    norm += PHAT_EPS
    cross.real /= norm  # PHAT weighting C / (|C| + eps), in place
    cross.imag /= norm
    gcc = np.fft.irfft(cross, n=ITD_NFFT, axis=-1)
    lags = np.arange(-max_lag - 1, max_lag + 2)
    seg = gcc[..., lags % ITD_NFFT]  # lags -D-1 ... D+1; the search covers -D ... D
    i = np.argmax(seg[..., 1:-1], axis=-1)[..., None]
    alpha = np.take_along_axis(seg, i, axis=-1)[..., 0]
    beta = np.take_along_axis(seg, i + 1, axis=-1)[..., 0]
    gamma = np.take_along_axis(seg, i + 2, axis=-1)[..., 0]
    denom = alpha - 2.0 * beta + gamma
    flat = np.abs(denom) <= PARABOLA_MIN_DENOM
    offset = np.where(flat, 0.0, np.clip(0.5 * (alpha - gamma) / np.where(flat, 1.0, denom), -0.5, 0.5))
    return (i[..., 0] - max_lag) + offset


def ild_frames(x: np.ndarray, sr: int) -> np.ndarray:
    """Weighted interaural level difference in dB per analysis frame of ``x [..., 2, n]``.

    Frames of 1024 samples, hop 512, times a symmetric Hann window (``np.hanning``). Per band
    ``[lo, hi)`` of :data:`ILD_BANDS_HZ` (the last one up to, excluding, Nyquist) the energies
    ``E = sum |rfft|^2`` give ``10 log10((E_L + 1e-10) / (E_R + 1e-10))``; the frame's ILD is the sum
    of these with weights 0.5, 0.7, 1.0, 1.5, 1.5, 1.3 divided by 6.5 (a band without bins adds 0).
    Signed: positive when the left ear is louder.
    """
    return _ild_from_spectrum(_windowed_spectrum(x), sr)


def itd_frames(x: np.ndarray, sr: int) -> np.ndarray:
    """Interaural time difference in samples per analysis frame of ``x [..., 2, n]`` (GCC-PHAT).

    Frames of 1024 samples, hop 512, times a symmetric Hann window; 2048-point FFTs ``S_L, S_R``;
    ``g = real(ifft(C / (|C| + 1e-10)))`` with ``C = S_L conj(S_R)``, i.e. the phase-transformed
    ``r[k] = sum_n L[n + k] R[n]``. The peak is the first maximum of ``g`` over the lags
    ``-D ... D``, ``D = int(0.001 sr)`` (22 at 22.05 kHz), refined by a parabola through it and its
    two neighbours (offset clipped to +-0.5 sample; none when the parabola is flat, |denominator|
    <= 1e-10).

    Sign: POSITIVE WHEN THE LEFT CHANNEL LAGS, i.e. ``L[n] = R[n - k]`` with ``k > 0`` (the left ear
    hears it later: a source on the listener's right). ``R = L`` delayed by ``k`` samples gives
    ``-k``. As in the reference, a frame that is silent in both channels has a flat ``g`` and
    reports ``-D`` (the first lag searched).
    """
    return _itd_from_spectrum(_windowed_spectrum(x), sr)


def binaural_cues(x: np.ndarray, sr: int) -> dict[str, np.ndarray]:
    """``{"iacc", "ild", "itd"}`` per analysis frame of ``x [..., 2, n]`` (one shared windowed FFT)."""
    spec = _windowed_spectrum(x)
    return {"iacc": iacc_frames(x), "ild": _ild_from_spectrum(spec, sr), "itd": _itd_from_spectrum(spec, sr)}


# ---------------------------------------------------------------------------------------------------------------
# per-clip metrics


def gao_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    sr: int,
    *,
    gt_sr: int | None = None,
    normalize: bool = True,
    pred_name: str = "prediction",
    gt_name: str = "ground truth",
) -> dict[str, float]:
    """Gao & Grauman metrics of one clip: ``stft``, ``env``, ``mag``, ``phase``, ``snr`` (module doc).

    ``pred`` and ``gt`` are ``[2, samples]`` at ``sr`` (``gt`` at ``gt_sr`` when given); they are
    resampled to 16 kHz and peak-normalised unless ``normalize`` is false.
    """
    p, g = prepare_pair(pred, gt, sr, GAO, gt_sr=gt_sr, normalize=normalize, pred_name=pred_name, gt_name=gt_name)
    n_fft, hop, win = GAO_STFT
    signals = np.concatenate([p, g, (p[0] - p[1])[None], (g[0] - g[1])[None]])  # pL pR gL gR pD gD
    spec = _stft(signals, n_fft, hop, win, "reflect")
    diff = spec[0:2] - spec[2:4]
    sq = np.square(diff.real, dtype=np.float64) + np.square(diff.imag, dtype=np.float64)
    per_channel = np.mean(sq, axis=(-2, -1))  # mean(|dX|^2) per channel
    env = _envelope(np.stack([p, g]))
    d = np.abs(np.angle(spec[4]) - np.angle(spec[5]))
    err = p.astype(np.float64) - g
    return {
        "stft": float(np.sum(per_channel / 2.0)),
        "env": float(np.sum(_rms(env[1] - env[0]))),
        "mag": float(np.sum(per_channel)),
        "phase": float(np.mean(np.minimum(d, 2.0 * np.pi - d), dtype=np.float64)),
        "snr": float(
            10.0
            * np.log10((np.mean(np.square(g, dtype=np.float64)) + GAO_SNR_EPS) / (np.mean(err * err) + GAO_SNR_EPS))
        ),
    }


def diffbinaural_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    sr: int,
    *,
    gt_sr: int | None = None,
    normalize: bool = False,
    pred_name: str = "prediction",
    gt_name: str = "ground truth",
) -> dict[str, float]:
    """DiffBinaural metrics of one clip: ``stft``, ``mag``, ``phase``, ``env``, ``snr``, ``mel_rmse``,
    ``iacc``, ``ild`` (dB), ``itd`` (ms) (module doc).

    ``pred`` and ``gt`` are ``[2, samples]`` at ``sr`` (``gt`` at ``gt_sr`` when given); they are
    resampled to 22.05 kHz, trimmed by 2048 samples at each end, cut to the shorter, and
    peak-normalised only when ``normalize`` is true.
    """
    p, g = prepare_pair(
        pred, gt, sr, DIFFBINAURAL, gt_sr=gt_sr, normalize=normalize, pred_name=pred_name, gt_name=gt_name
    )
    target = SAMPLE_RATES[DIFFBINAURAL]
    pair = np.stack([p, g])  # [pred/gt, L/R, n]
    n_fft, hop, win = DB_STFT
    spec = _stft(pair, n_fft, hop, win, "constant")
    diff = spec[0] - spec[1]
    sq = np.square(diff.real, dtype=np.float64) + np.square(diff.imag, dtype=np.float64)
    stft = np.sqrt(np.mean(sq, axis=(-2, -1)) / 2.0)  # RMSE over the (Re, Im) entries, per channel
    mag = _rms(np.abs(spec[0]) - np.abs(spec[1]), axis=(-2, -1))
    phase = _rms(np.angle(spec[0]) - np.angle(spec[1]), axis=(-2, -1))
    env = _envelope(pair)
    with torch.no_grad():
        mel = mel_spectrogram(torch.from_numpy(pair), MEL_CONFIG).numpy()
    err = p.astype(np.float64) - g
    noise = float(np.sum(err * err))
    signal = float(np.sum(np.square(g, dtype=np.float64)))
    cues = binaural_cues(pair, target)
    iacc, ild, itd = cues["iacc"], cues["ild"], cues["itd"]
    return {
        "stft": float(np.mean(stft)),
        "mag": float(np.mean(mag)),
        "phase": float(np.mean(phase)),
        "env": float(np.mean(_rms(env[0] - env[1]))),
        "snr": math.inf if noise == 0.0 else float(10.0 * np.log10(signal / noise)),
        "mel_rmse": float(np.mean(_rms(mel[0] - mel[1], axis=(-2, -1)))),
        "iacc": float(np.mean(np.abs(iacc[0] - iacc[1]))),
        "ild": float(np.mean(np.abs(ild[0] - ild[1]))),
        "itd": float(np.mean(np.abs(itd[0] - itd[1])) / target * 1000.0),
    }


def clip_metrics(
    pred: np.ndarray,
    gt: np.ndarray,
    sr: int,
    convention: str,
    *,
    gt_sr: int | None = None,
    normalize: bool | None = None,
    pred_name: str = "prediction",
    gt_name: str = "ground truth",
) -> dict[str, float]:
    """The metrics of ``convention`` for one clip; ``normalize=None`` uses the convention's default."""
    convention = check_convention(convention)
    if normalize is None:
        normalize = DEFAULT_NORMALIZE[convention]
    fn = gao_metrics if convention == GAO else diffbinaural_metrics
    return fn(pred, gt, sr, gt_sr=gt_sr, normalize=normalize, pred_name=pred_name, gt_name=gt_name)


# ---------------------------------------------------------------------------------------------------------------
# folders of WAV files


def _wav_names(folder: Path, role: str) -> set[str]:
    if not folder.is_dir():
        raise BinauralMetricsError(f"{folder}: {role} folder not found")
    return {f.name for f in folder.iterdir() if f.suffix.lower() == ".wav" and not f.name.startswith(".")}


def _list(names: set[str], limit: int = 10) -> str:
    shown = sorted(names)
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more


def _read(path: Path) -> tuple[np.ndarray, int]:
    try:
        audio, sr = read_audio(path)
    except AudioFileError as exc:
        raise BinauralMetricsError(str(exc)) from exc
    if audio.shape[0] != 2:
        what = "1 channel (mono)" if audio.shape[0] == 1 else f"{audio.shape[0]} channels"
        raise BinauralMetricsError(f"{path}: {what}, expected a stereo (left, right) file")
    return audio, sr


def describe(convention: str, normalize: bool | None = None) -> str:
    """The convention's description, noting a non-default peak normalisation."""
    convention = check_convention(convention)
    text = CONVENTION_DESCRIPTIONS[convention]
    default = DEFAULT_NORMALIZE[convention]
    on = default if normalize is None else bool(normalize)
    state = "peak-normalised" if on else "not normalised"
    return f"{text}; {state}" + ("" if on == default else " (not the convention's default)")


def score_dirs(pred_dir: str | Path, gt_dir: str | Path, convention: str, normalize: bool | None = None) -> dict:
    """Score every stereo WAV of ``pred_dir`` against the file of the same name in ``gt_dir``.

    Files may have any sample rate (read with soundfile, resampled per convention); names starting
    with a dot are ignored. Returns ``{"convention", "convention_description", "normalize",
    "sample_rate", "n", "mean": {key: value}, "n_infinite": {key: count}, "per_file": {name: {key:
    value}}}``; ``mean`` leaves out infinite per-clip values and ``n_infinite`` counts them (only keys
    with a count). Raises :class:`BinauralMetricsError` naming the files for a missing folder, files
    present on one side only, no WAV at all, an unreadable or non-stereo file, NaN/inf samples, a
    silent ground truth or a clip too short for the convention.
    """
    convention = check_convention(convention)
    norm = DEFAULT_NORMALIZE[convention] if normalize is None else bool(normalize)
    pred_dir, gt_dir = Path(pred_dir), Path(gt_dir)
    pred_names = _wav_names(pred_dir, "prediction")
    gt_names = _wav_names(gt_dir, "ground-truth")
    missing = gt_names - pred_names
    if missing:
        raise BinauralMetricsError(
            f"{pred_dir}: no prediction for {len(missing)} ground-truth file(s) of {gt_dir}: {_list(missing)}"
        )
    extra = pred_names - gt_names
    if extra:
        raise BinauralMetricsError(
            f"{pred_dir}: {len(extra)} prediction file(s) without a ground truth in {gt_dir}: {_list(extra)}"
        )
    if not gt_names:
        raise BinauralMetricsError(f"{gt_dir}: no .wav files to score (and none in {pred_dir})")
    pairs = [(pred_dir / name, gt_dir / name) for name in sorted(gt_names)]
    return score_files(pairs, convention, norm)


def score_files(
    pairs: Sequence[tuple[Path, Path]], convention: str, normalize: bool | None = None, progress: bool = False
) -> dict:
    """Score each ``(prediction, ground truth)`` pair of WAV files; returns what :func:`score_dirs` does.

    ``per_file`` is keyed by the prediction's file name. With ``progress`` a bar shows the clips done.
    """
    convention = check_convention(convention)
    norm = DEFAULT_NORMALIZE[convention] if normalize is None else bool(normalize)
    keys = CONVENTIONS[convention]
    per_file: dict[str, dict[str, float]] = {}
    for pred_path, gt_path in tqdm(pairs, desc=f"{convention} metrics", disable=not progress, leave=False):
        pred, pred_sr = _read(pred_path)
        gt, gt_sr = _read(gt_path)
        per_file[pred_path.name] = clip_metrics(
            pred, gt, pred_sr, convention, gt_sr=gt_sr, normalize=norm, pred_name=str(pred_path), gt_name=str(gt_path)
        )
    if not per_file:
        raise BinauralMetricsError(f"no clips to score in the {convention} convention")
    mean: dict[str, float] = {}
    n_infinite: dict[str, int] = {}
    for key in keys:
        values = np.array([m[key] for m in per_file.values()], dtype=np.float64)
        finite = values[np.isfinite(values)]
        if len(finite) < len(values):
            n_infinite[key] = int(len(values) - len(finite))
        mean[key] = float(np.mean(finite)) if len(finite) else float(values[0])
    return {
        "convention": convention,
        "convention_description": describe(convention, norm),
        "normalize": norm,
        "sample_rate": SAMPLE_RATES[convention],
        "n": len(per_file),
        "mean": mean,
        "n_infinite": n_infinite,
        "per_file": per_file,
    }
