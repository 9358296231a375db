"""The one mel function against a plain numpy reimplementation, and the STFT helpers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from binaural_lab.audio import (
    MEL_LOG_MAX,
    MEL_LOG_MIN,
    MelConfig,
    denormalize_mel,
    echo_spectrogram,
    istft_features,
    mel_spectrogram,
    normalize_mel,
    resample,
    stft_features,
)
from binaural_lab.config import ParamError, parse


def _hz_to_mel(f: np.ndarray) -> np.ndarray:
    """Slaney mel scale: linear below 1 kHz, logarithmic above."""
    f = np.asarray(f, dtype=np.float64)
    step, knee_mel, log_step = 200.0 / 3, 1000.0 / (200.0 / 3), np.log(6.4) / 27.0
    return np.where(f < 1000.0, f / step, knee_mel + np.log(np.maximum(f, 1e-10) / 1000.0) / log_step)


def _mel_to_hz(m: np.ndarray) -> np.ndarray:
    step, knee_mel, log_step = 200.0 / 3, 1000.0 / (200.0 / 3), np.log(6.4) / 27.0
    return np.where(m < knee_mel, m * step, 1000.0 * np.exp(log_step * (m - knee_mel)))


def _numpy_mel_basis(sr: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-normalised triangular filters [n_mels, n_fft // 2 + 1]."""
    freqs = np.linspace(0, sr / 2, n_fft // 2 + 1)
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))
    basis = np.zeros((n_mels, len(freqs)))
    for m in range(n_mels):
        lo, centre, hi = edges[m], edges[m + 1], edges[m + 2]
        rising = (freqs - lo) / (centre - lo)
        falling = (hi - freqs) / (hi - centre)
        basis[m] = np.maximum(0, np.minimum(rising, falling)) * 2.0 / (hi - lo)
    return basis


def _numpy_logmel(x: np.ndarray, cfg: MelConfig) -> np.ndarray:
    pad = (cfg.n_fft - cfg.hop) // 2
    padded = np.pad(x.astype(np.float64), (pad, pad), mode="reflect")
    n = np.arange(cfg.win)
    window = np.zeros(cfg.n_fft)
    offset = (cfg.n_fft - cfg.win) // 2
    window[offset : offset + cfg.win] = 0.5 - 0.5 * np.cos(2 * np.pi * n / cfg.win)
    n_frames = 1 + (len(padded) - cfg.n_fft) // cfg.hop
    frames = np.stack([padded[t * cfg.hop : t * cfg.hop + cfg.n_fft] * window for t in range(n_frames)])
    spec = np.fft.rfft(frames, axis=-1).T
    mag = np.sqrt(spec.real**2 + spec.imag**2 + 1e-9)
    basis = _numpy_mel_basis(cfg.sample_rate, cfg.n_fft, cfg.n_mels, cfg.fmin, cfg.f_max)
    return np.log(np.maximum(basis @ mag, cfg.clamp_min))


@pytest.mark.parametrize("cfg", [MelConfig(), MelConfig(fmax=8000.0, win=800), MelConfig(fmax=None)])
def test_mel_matches_numpy_reference(cfg: MelConfig) -> None:
    rng = np.random.default_rng(0)
    x = (0.3 * rng.standard_normal(cfg.hop * 40) * np.linspace(0.01, 1, cfg.hop * 40)).astype(np.float32)
    ours = mel_spectrogram(torch.from_numpy(x), cfg).numpy()
    ref = _numpy_logmel(x, cfg)
    assert ours.shape == ref.shape == (cfg.n_mels, 40)
    np.testing.assert_allclose(ours, ref, atol=1e-4)


def test_mel_frames_align_with_hop_and_keep_leading_dims() -> None:
    cfg = MelConfig()
    for frames in (4, 17, 80):
        x = torch.randn(2, 3, frames * cfg.hop)
        out = mel_spectrogram(x, cfg)
        assert out.shape == (2, 3, cfg.n_mels, frames)
        torch.testing.assert_close(out[1, 2], mel_spectrogram(x[1, 2], cfg))


def test_mel_of_silence_is_the_clamp_floor_and_half_precision_runs_in_float32() -> None:
    cfg = MelConfig()
    silent = mel_spectrogram(torch.zeros(cfg.hop * 8, dtype=torch.bfloat16), cfg)
    assert silent.dtype == torch.float32
    assert torch.all(silent <= np.log(cfg.clamp_min) + 1e-3)


def test_mel_config_is_validated_on_parse() -> None:
    assert parse(MelConfig, {"fmax": None}, "mel").f_max == 11025
    with pytest.raises(ParamError, match=r"mel\.fmax"):
        parse(MelConfig, {"fmax": 12000}, "mel")
    with pytest.raises(ParamError, match=r"mel\.hop"):
        parse(MelConfig, {"hop": 255}, "mel")


def test_normalize_round_trip_and_range() -> None:
    logmel = torch.linspace(MEL_LOG_MIN, MEL_LOG_MAX, 101)
    x = normalize_mel(logmel)
    assert x[0] == -1 and x[-1] == 1
    torch.testing.assert_close(denormalize_mel(x), logmel)
    clamped = normalize_mel(torch.tensor([-20.0, 5.0]))
    assert clamped.tolist() == [-1.0, 1.0]


def test_stft_round_trip() -> None:
    x = torch.randn(2, 3, 16000)
    feats = stft_features(x, 512, 160, 400)
    assert feats.shape == (2, 3, 2, 257, 16000 // 160 + 1)
    back = istft_features(feats, 512, 160, 400, length=x.shape[-1])
    torch.testing.assert_close(back, x, atol=1e-5, rtol=0)


def test_resample_identity_and_length() -> None:
    x = torch.randn(2, 22050)
    assert resample(x, 22050, 22050) is x
    assert resample(x, 22050, 16000).shape == (2, 16000)


def test_echo_spectrogram_shape_and_ears() -> None:
    left = torch.zeros(22050)
    left[100] = 1.0
    audio = torch.stack((left, torch.zeros(22050)))
    spec = echo_spectrogram(audio, size=32)
    assert spec.shape == (2, 32, 32)
    assert spec[0].max() > 0 and torch.all(spec[1] == 0)
    assert echo_spectrogram(torch.randn(5, 2, 4000), size=16).shape == (5, 2, 16, 16)
    with pytest.raises(ValueError, match="binaural"):
        echo_spectrogram(torch.randn(3, 4000))


def test_written_wav_is_byte_identical_for_equal_audio(tmp_path):
    """No timestamped PEAK chunk: DVC must see re-simulated identical audio as unchanged."""
    import time

    from binaural_lab.audio.io import read_audio, write_audio

    audio = np.random.default_rng(0).uniform(-0.5, 0.5, (2, 4000)).astype(np.float32)
    write_audio(tmp_path / "a.wav", audio, 22050)
    time.sleep(1.1)
    write_audio(tmp_path / "b.wav", audio, 22050)
    assert (tmp_path / "a.wav").read_bytes() == (tmp_path / "b.wav").read_bytes()
    back, sr = read_audio(tmp_path / "a.wav")
    assert sr == 22050 and np.array_equal(back, audio)
