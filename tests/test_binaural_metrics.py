"""Binaural metrics (Gao & Grauman and DiffBinaural conventions) on real WAV files.

Most checks are invariants that hold whatever the implementation: zero distances for identical
clips, the phase of a swapped L/R pair, the level and time differences of constructed signals, and
numbers recomputed here directly with numpy / scipy.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import soxr
from scipy.signal import get_window, hilbert, lfilter

from binaural_lab.config import UserError
from binaural_lab.metrics.binaural import (
    CONVENTIONS,
    BinauralMetricsError,
    diffbinaural_metrics,
    frame_count,
    gao_metrics,
    iacc_frames,
    ild_frames,
    itd_frames,
    score_dirs,
)

SR_DB = 22050
SR_GAO = 16000


def _noise(n: int, seed: int, channels: int = 2, scale: float = 0.1) -> np.ndarray:
    """Coloured noise [channels, n] (one-pole low-pass, so it is not perfectly white)."""
    rng = np.random.default_rng(seed)
    return (scale * lfilter([1.0], [1.0, -0.5], rng.standard_normal((channels, n)), axis=-1)).astype(np.float32)


def _write(path: Path, audio: np.ndarray, sr: int, subtype: str = "FLOAT") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.asarray(audio, dtype=np.float32).T, sr, subtype=subtype)
    return path


def _dirs(tmp_path: Path, clips: dict[str, tuple[np.ndarray, np.ndarray]], sr: int, tag: str = "") -> tuple[Path, Path]:
    """Write {name: (pred, gt)} as float WAVs into tmp_path/pred<tag>, tmp_path/gt<tag>."""
    pred_dir, gt_dir = tmp_path / f"pred{tag}", tmp_path / f"gt{tag}"
    for name, (pred, gt) in clips.items():
        _write(pred_dir / name, pred, sr)
        _write(gt_dir / name, gt, sr)
    return pred_dir, gt_dir


def _delay(x: np.ndarray, k: int) -> np.ndarray:
    """``x`` delayed by ``k`` samples (zeros shifted in)."""
    return np.concatenate([np.zeros(k, dtype=x.dtype), x[:-k]])


def test_conventions_list_their_keys():
    assert CONVENTIONS["gao"] == ("stft", "env", "mag", "phase", "snr")
    assert CONVENTIONS["diffbinaural"] == ("stft", "mag", "phase", "env", "snr", "mel_rmse", "iacc", "ild", "itd")
    with pytest.raises(BinauralMetricsError, match="unknown"):
        score_dirs(".", ".", "fairplay")


def test_identical_clips_gao(tmp_path):
    gt = _noise(SR_GAO, 0)
    pred_dir, gt_dir = _dirs(tmp_path, {"a.wav": (gt, gt)}, SR_GAO)
    out = score_dirs(pred_dir, gt_dir, "gao")
    assert out["convention"] == "gao" and "Gao" in out["convention_description"] and out["n"] == 1
    m = out["per_file"]["a.wav"]
    assert set(m) == set(CONVENTIONS["gao"]) == set(out["mean"])
    for key in ("stft", "env", "mag", "phase"):
        assert m[key] == 0.0
    g = gt.astype(np.float64) / np.abs(gt).max()  # peak normalisation, on by default
    assert m["snr"] == pytest.approx(10 * math.log10((np.mean(g**2) + 1e-4) / 1e-4), rel=1e-6)
    assert out["mean"] == m and out["n_infinite"] == {}


def test_identical_clips_diffbinaural(tmp_path):
    gt = _noise(48000, 1)  # 1 s at 48 kHz: resampled to 22.05 kHz, the same way on both sides
    pred_dir, gt_dir = _dirs(tmp_path, {"a.wav": (gt, gt), "b.wav": (gt, gt)}, 48000)
    out = score_dirs(pred_dir, gt_dir, "diffbinaural")
    assert out["convention"] == "diffbinaural" and "DiffBinaural" in out["convention_description"]
    assert out["n"] == 2 and out["normalize"] is False and out["sample_rate"] == SR_DB
    for m in out["per_file"].values():
        assert m["snr"] == math.inf
        for key in ("stft", "mag", "phase", "env", "mel_rmse", "iacc", "ild", "itd"):
            assert m[key] == 0.0, key
    assert out["mean"]["snr"] == math.inf and out["n_infinite"] == {"snr": 2}


def test_swapped_channels_gao_phase_is_pi():
    gt = _noise(SR_GAO, 2)  # independent L and R: L - R is nowhere zero
    m = gao_metrics(gt[::-1], gt, SR_GAO)
    assert m["phase"] == pytest.approx(math.pi, abs=1e-5)


def test_swapped_channels_ild_error_is_twice_the_level_difference():
    left = _noise(SR_DB, 3, channels=1)[0]
    gt = np.stack([left, 0.5 * left])  # right 6.02 dB quieter in every band
    expected = 10 * math.log10(4.0)
    assert np.allclose(ild_frames(gt, SR_DB), expected, atol=1e-6)
    assert np.allclose(ild_frames(gt[::-1], SR_DB), -expected, atol=1e-6)
    m = diffbinaural_metrics(gt[::-1], gt, SR_DB)
    assert m["ild"] == pytest.approx(2 * expected, abs=1e-5)
    assert m["iacc"] == pytest.approx(0.0, abs=1e-6)  # L = 2 R: fully correlated either way


@pytest.mark.parametrize("k", [3, 9])
def test_delayed_copy_gives_its_itd(k):
    left = _noise(SR_DB, 4, channels=1)[0]
    right_lags = np.stack([left, _delay(left, k)])  # R = L delayed: left leads -> negative ITD
    left_lags = right_lags[::-1]
    itd = itd_frames(right_lags[:, 2048:-2048], SR_DB)
    assert np.all(np.abs(itd + k) < 0.01), itd
    assert np.all(np.abs(itd_frames(left_lags[:, 2048:-2048], SR_DB) - k) < 0.01)
    zero_itd = np.stack([left, left])
    assert np.all(np.abs(itd_frames(zero_itd, SR_DB)) < 1e-9)
    m = diffbinaural_metrics(zero_itd, right_lags, SR_DB)
    assert m["itd"] == pytest.approx(k / SR_DB * 1000, abs=0.01 / SR_DB * 1000)  # ms


def test_gao_mag_is_twice_stft():
    for seed in range(3):
        pred, gt = _noise(12000, 10 + seed), _noise(12000, 20 + seed)
        m = gao_metrics(pred, gt, SR_GAO, normalize=seed % 2 == 0)
        assert m["mag"] == pytest.approx(2 * m["stft"], rel=1e-12)


def _numpy_gao_stft(x: np.ndarray) -> np.ndarray:
    """librosa < 0.9 STFT, restated: reflect-pad 256, frames of 512 every 160, periodic Hann 400 centred."""
    win = np.zeros(512)
    win[56 : 56 + 400] = get_window("hann", 400, fftbins=True)
    padded = np.pad(x.astype(np.float64), (256, 256), mode="reflect")
    n_frames = 1 + len(x) // 160
    frames = np.stack([padded[i * 160 : i * 160 + 512] for i in range(n_frames)])
    return np.fft.rfft(frames * win, axis=-1)


def test_gao_stft_distance_of_scaled_prediction_matches_numpy():
    gt = _noise(8000, 5)
    a = 0.5
    per_channel = [np.mean(np.abs(_numpy_gao_stft(gt[c])) ** 2) / 2 for c in range(2)]  # mean over (Re, Im)
    m = gao_metrics(a * gt, gt, SR_GAO, normalize=False)
    assert m["stft"] == pytest.approx((1 - a) ** 2 * sum(per_channel), rel=1e-5)
    # peak normalisation removes a pure gain (0.5 is exact in binary)
    assert gao_metrics(a * gt, gt, SR_GAO)["stft"] == 0.0


def test_gao_env_matches_scipy_hilbert():
    for n in (12000, 12001):  # even and odd lengths
        pred, gt = _noise(n, 6), _noise(n, 7)
        expected = sum(
            np.sqrt(
                np.mean((np.abs(hilbert(gt[c].astype(np.float64))) - np.abs(hilbert(pred[c].astype(np.float64)))) ** 2)
            )
            for c in range(2)
        )
        assert gao_metrics(pred, gt, SR_GAO, normalize=False)["env"] == pytest.approx(expected, rel=1e-5)


def test_snr_of_known_noise(tmp_path):
    gt = _noise(SR_GAO, 8)
    noise = 0.3 * _noise(SR_GAO, 9)
    pred = gt + noise
    g, e = gt.astype(np.float64), (pred - gt).astype(np.float64)
    expected = 10 * math.log10((np.mean(g**2) + 1e-4) / (np.mean(e**2) + 1e-4))
    assert gao_metrics(pred, gt, SR_GAO, normalize=False)["snr"] == pytest.approx(expected, rel=1e-6)

    gt, noise = _noise(SR_DB, 8), 0.3 * _noise(SR_DB, 9)
    pred = gt + noise
    g, e = gt[:, 2048:-2048].astype(np.float64), (pred - gt)[:, 2048:-2048].astype(np.float64)
    expected = 10 * math.log10(np.sum(g**2) / np.sum(e**2))
    pred_dir, gt_dir = _dirs(tmp_path, {"n.wav": (pred, gt)}, SR_DB)
    assert score_dirs(pred_dir, gt_dir, "diffbinaural")["mean"]["snr"] == pytest.approx(expected, rel=1e-5)


def test_mel_rmse_of_halved_signal_is_log_two():
    gt = _noise(SR_DB, 11, scale=0.3)
    m = diffbinaural_metrics(0.5 * gt, gt, SR_DB)
    assert m["mel_rmse"] == pytest.approx(math.log(2.0), abs=2e-3)  # log-mel shifts by log 2 everywhere


def test_iacc_frames_and_framing_rule():
    assert [frame_count(n) for n in (1023, 1024, 1535, 1536, 2048)] == [0, 1, 1, 2, 3]
    x = _noise(3000, 12)
    iacc = iacc_frames(x)
    assert iacc.shape == (frame_count(3000),) == (4,)
    assert np.all(iacc < 0.5)  # independent noise
    assert np.allclose(iacc_frames(np.stack([x[0], -x[0]])), 1.0, atol=1e-6)  # |xcorr|: polarity ignored
    assert np.array_equal(iacc_frames(np.zeros((2, 2048))), np.zeros(3))  # silent: 0


def test_shortest_diffbinaural_clip(tmp_path):
    ok = _noise(2 * 2048 + 1024, 13)
    m = diffbinaural_metrics(ok, ok, SR_DB)
    assert m["iacc"] == 0.0 and m["snr"] == math.inf
    with pytest.raises(BinauralMetricsError, match="too short"):
        diffbinaural_metrics(ok[:, :-1], ok, SR_DB)


def _band_limited(n: int, sr: int, seed: int) -> np.ndarray:
    """Stereo noise low-passed well below 8 kHz, so 16 / 22.05 / 48 kHz versions hold the same content."""
    t = np.arange(n) / sr
    rng = np.random.default_rng(seed)
    sig = np.zeros((2, n))
    for f in rng.uniform(100, 6000, 40):
        sig += 0.02 * np.sin(2 * np.pi * f * t + rng.uniform(0, 2 * np.pi, (2, 1)))
    return sig.astype(np.float32)


def test_resampled_files_score_consistently(tmp_path):
    n48 = int(1.2 * 48000)
    gt = _band_limited(n48, 48000, 14)
    pred = np.stack([0.8 * gt[0], _delay(gt[1], 3)]) + 0.3 * _band_limited(n48, 48000, 15)
    dirs_48 = _dirs(tmp_path, {"c.wav": (pred, gt)}, 48000, "48")
    down = [soxr.resample(x.T, 48000, SR_DB, quality="HQ").T for x in (pred, gt)]
    dirs_22 = _dirs(tmp_path, {"c.wav": (down[0], down[1])}, SR_DB, "22")
    mixed = (dirs_22[0], dirs_48[1])  # prediction at 22.05 kHz, ground truth at 48 kHz
    for conv in CONVENTIONS:
        ref = score_dirs(*dirs_48, conv)["mean"]
        for dirs in (dirs_22, mixed):
            other = score_dirs(*dirs, conv)["mean"]
            for key in CONVENTIONS[conv]:
                assert other[key] == pytest.approx(ref[key], rel=2e-3), (conv, key)


@pytest.fixture
def good_pair():
    gt = _noise(SR_DB, 16)
    return gt + 0.1 * _noise(SR_DB, 17), gt


@pytest.mark.parametrize(
    ("case", "culprit"),
    [
        ("missing", "b.wav"),
        ("extra", "c.wav"),
        ("mono", "pred/a.wav"),
        ("three_channels", "gt/a.wav"),
        ("nan", "pred/a.wav"),
        ("inf", "gt/a.wav"),
        ("silent", "gt/a.wav"),
        ("short_gao", "pred/a.wav"),
        ("short_db", "gt/a.wav"),
    ],
)
def test_bad_inputs_name_the_file(tmp_path, good_pair, case, culprit):
    pred, gt = good_pair
    pred_dir, gt_dir = tmp_path / "pred", tmp_path / "gt"
    conv = "gao" if case == "short_gao" else "diffbinaural"
    if case == "short_gao":
        pred = pred[:, :600]  # 600 samples at 22.05 kHz -> 436 at 16 kHz, less than one 512 STFT frame
    elif case == "short_db":
        gt = gt[:, :5000]  # fewer than 2 x 2048 + 1024 samples
    _write(pred_dir / "a.wav", pred, SR_DB)
    _write(gt_dir / "a.wav", gt, SR_DB)
    if case == "missing":
        _write(gt_dir / "b.wav", gt, SR_DB)
    elif case == "extra":
        _write(pred_dir / "c.wav", pred, SR_DB)
    elif case == "mono":
        _write(pred_dir / "a.wav", pred[:1], SR_DB)
    elif case == "three_channels":
        _write(gt_dir / "a.wav", np.concatenate([gt, gt[:1]]), SR_DB)
    elif case == "nan":
        bad = pred.copy()
        bad[1, 100] = np.nan
        _write(pred_dir / "a.wav", bad, SR_DB)
    elif case == "inf":
        bad = gt.copy()
        bad[0, 7] = np.inf
        _write(gt_dir / "a.wav", bad, SR_DB)
    elif case == "silent":
        _write(gt_dir / "a.wav", np.zeros_like(gt), SR_DB, subtype="PCM_16")
    with pytest.raises(BinauralMetricsError) as info:
        score_dirs(pred_dir, gt_dir, conv)
    assert culprit in str(info.value), str(info.value)
    assert isinstance(info.value, UserError) and isinstance(info.value, ValueError)


def test_empty_or_missing_folders(tmp_path):
    (tmp_path / "p").mkdir()
    (tmp_path / "g").mkdir()
    with pytest.raises(BinauralMetricsError, match="no .wav files"):
        score_dirs(tmp_path / "p", tmp_path / "g", "gao")
    with pytest.raises(BinauralMetricsError, match="not found"):
        score_dirs(tmp_path / "nope", tmp_path / "g", "gao")


def test_normalisation_flag_is_named(tmp_path, good_pair):
    pred, gt = good_pair
    pred_dir, gt_dir = _dirs(tmp_path, {"a.wav": (pred, gt)}, SR_DB)
    default = score_dirs(pred_dir, gt_dir, "diffbinaural")
    on = score_dirs(pred_dir, gt_dir, "diffbinaural", normalize=True)
    assert on["normalize"] is True and "not the convention's default" in on["convention_description"]
    assert "not the convention's default" not in default["convention_description"]
    assert on["mean"]["stft"] != default["mean"]["stft"]
    off = score_dirs(pred_dir, gt_dir, "gao", normalize=False)
    assert off["normalize"] is False and "not normalised" in off["convention_description"]
