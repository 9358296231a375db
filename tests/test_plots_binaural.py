"""The binaural figures: spectrogram rows per example and signal, attention over the scene per level."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from binaural_lab import plots

SR = 16000
N = 4000  # 0.25 s


def _binaural_sine(freq: float = 1000.0, delay: int = 12, n: int = N, gain: float = 0.6) -> np.ndarray:
    """A sine in the left ear, delayed by ``delay`` samples and attenuated in the right ear: [2, n]."""
    t = np.arange(n + delay) / SR
    s = np.sin(2 * np.pi * freq * t)
    return np.stack([s[delay:], gain * s[:n]])


def _open_png(path: Path) -> Image.Image:
    assert path.is_file()
    assert path.stat().st_size > 10_000  # a real figure, not an empty canvas
    img = Image.open(path)
    img.load()
    assert img.format == "PNG"
    return img


def _no_temporaries(directory: Path) -> None:
    assert not [p.name for p in directory.iterdir() if p.name.endswith(".tmp")]


def _examples() -> list[dict]:
    rng = np.random.default_rng(0)
    gt = _binaural_sine()
    good = gt[:, : N - 37] + 0.01 * rng.standard_normal((2, N - 37))  # a little shorter than gt
    mono = np.stack([gt[0], gt[0]])  # lost the interaural difference
    return [
        {"name": "r003_s01", "gt": gt, "preds": {"model": good, "mono": mono}},
        {"name": "r007_s02", "gt": _binaural_sine(freq=3000.0, delay=5), "preds": {}},
    ]


def test_stft_db_peaks_at_the_sine_frequency():
    n_fft = 512
    db = plots._stft_db(_binaural_sine()[0], n_fft, 128)
    assert db.shape == (n_fft // 2 + 1, 1 + (N - n_fft) // 128)
    peak_hz = db.mean(axis=1).argmax() * SR / n_fft
    assert peak_hz == pytest.approx(1000.0, abs=SR / n_fft)
    # the L - R of a pure delay plus gain is still a 1 kHz sine; L - L is silence
    left, right = _binaural_sine()
    assert plots._stft_db(left - right, n_fft, 128).mean(axis=1).argmax() * SR / n_fft == pytest.approx(1000.0, abs=32)
    assert plots._stft_db(left - left, n_fft, 128).max() < -150


def test_binaural_examples_writes_png(tmp_path):
    out = tmp_path / "figs" / "binaural_examples.png"
    plots.binaural_examples(out, _examples(), SR, n_fft=256, hop=64)
    img = _open_png(out)
    assert img.mode == "RGBA"
    width, height = img.size
    assert height > width / 2  # four rows of panels (gt, model, mono; gt) over three columns
    pixels = np.asarray(img.convert("RGB"), dtype=np.float64)
    assert pixels.std() > 10  # drawn spectrograms, not a blank page
    _no_temporaries(out.parent)


def test_binaural_examples_rejects_bad_shapes(tmp_path):
    out = tmp_path / "bad.png"
    gt = _binaural_sine()
    with pytest.raises(ValueError, match=r"r003_s01.*'model'.*\[2, n\].*\(4000,\)"):
        plots.binaural_examples(out, [{"name": "r003_s01", "gt": gt, "preds": {"model": gt[0]}}], SR)
    with pytest.raises(ValueError, match=r"r003_s01.*'model'.*\[2, n\].*\(3, 4000\)"):
        plots.binaural_examples(out, [{"name": "r003_s01", "gt": gt, "preds": {"model": np.zeros((3, N))}}], SR)
    with pytest.raises(ValueError, match=r"r009_s04.*ground truth.*100 samples.*n_fft=512"):
        plots.binaural_examples(out, [{"name": "r009_s04", "gt": gt[:, :100], "preds": {}}], SR)
    with pytest.raises(ValueError, match=r"r003_s01.*'model'.*NaN"):
        bad = gt.copy()
        bad[1, 7] = np.nan
        plots.binaural_examples(out, [{"name": "r003_s01", "gt": gt, "preds": {"model": bad}}], SR)
    with pytest.raises(ValueError, match="at least one example"):
        plots.binaural_examples(out, [], SR)
    assert not out.exists()
    _no_temporaries(tmp_path)


def _scene(height: int = 48, width: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A gradient RGB frame [3, H, W] uint8 and a depth map [H, W] (a wall getting farther, a hole of zeros)."""
    yy, xx = np.mgrid[0:height, 0:width]
    frame = np.stack([xx * 255 // (width - 1), yy * 255 // (height - 1), np.full_like(xx, 128)]).astype(np.uint8)
    depth = 1.0 + 3.0 * xx / (width - 1)
    depth[:8, :8] = 0.0  # invalid
    return frame, depth


def _attention(h: int, w: int, gh: int, gw: int, focus: tuple[int, int]) -> np.ndarray:
    """[h, w, gh, gw] distributions over the visual grid, peaked at ``focus``, each summing to 1."""
    rng = np.random.default_rng(gh * 100 + gw)
    att = rng.random((h, w, gh, gw))
    att[:, :, focus[0], focus[1]] += 5.0
    return att / att.sum(axis=(2, 3), keepdims=True)


def _maps() -> dict[str, dict[int, np.ndarray]]:
    return {
        "image": {level: _attention(4, 4, 3 * level, 4 * level, (level, 2 * level)) for level in (1, 2, 3)},
        "depth": {level: _attention(2, 8, 3 * level, 4 * level, (0, 0)) for level in (1, 2)},
    }


def test_nearest_upsampling_keeps_blocks():
    grid = np.arange(6.0).reshape(2, 3)
    up = plots._nearest(grid, 4, 6)
    assert up.shape == (4, 6)
    assert np.array_equal(up[:2, :2], np.zeros((2, 2)))
    assert np.array_equal(up[2:, 4:], np.full((2, 2), 5.0))


def test_binaural_attention_writes_png(tmp_path):
    frame, depth = _scene()
    maps = _maps()
    for levels in maps.values():
        for att in levels.values():
            np.testing.assert_allclose(att.sum(axis=(2, 3)), 1.0)
    out = tmp_path / "attention.png"
    plots.binaural_attention(out, frame, depth, maps, title="r003_s01 frame 12")
    img = _open_png(out)
    assert img.mode == "RGBA"
    width, height = img.size
    assert width > height  # two rows, four columns
    _no_temporaries(tmp_path)


def test_binaural_attention_image_only_without_depth(tmp_path):
    frame, _ = _scene()
    out = tmp_path / "attention_image.png"
    plots.binaural_attention(out, frame, None, {"image": _maps()["image"]})
    assert _open_png(out).mode == "RGBA"


def test_binaural_attention_rejects_bad_input(tmp_path):
    frame, depth = _scene()
    out = tmp_path / "bad.png"
    maps = _maps()
    maps["depth"][3] = np.ones((2, 8, 9))  # [h, w, gh * gw] flattened: not 4-D
    with pytest.raises(ValueError, match=r"'depth'.*level 3.*\[h, w, gh, gw\].*\(2, 8, 9\)"):
        plots.binaural_attention(out, frame, depth, maps)
    with pytest.raises(ValueError, match="'depth' attention but depth is None"):
        plots.binaural_attention(out, frame, None, _maps())
    with pytest.raises(ValueError, match=r"frame: expected an RGB \[3, H, W\].*\(48, 64, 3\)"):
        plots.binaural_attention(out, frame.transpose(1, 2, 0), depth, _maps())
    with pytest.raises(ValueError, match="frame: expected dtype uint8"):
        plots.binaural_attention(out, frame.astype(np.float32) / 255, depth, _maps())
    with pytest.raises(ValueError, match=r"depth: expected shape \(48, 64\)"):
        plots.binaural_attention(out, frame, depth[:-1], _maps())
    with pytest.raises(ValueError, match="unknown modality 'audio'"):
        plots.binaural_attention(out, frame, depth, {"audio": _maps()["image"]})
    assert not out.exists()
