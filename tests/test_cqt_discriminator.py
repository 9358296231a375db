"""BigVGAN v2's sub-band CQT discriminator: the plain-torch CQT, shapes and gradients, the config."""

import math
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from binaural_lab.config import ParamError, parse
from binaural_lab.models.discriminators import (
    ConstantQ,
    DiscriminatorConfig,
    Discriminators,
    MultiScaleSubbandCQTDiscriminator,
    kaiser_lowpass,
    upsample,
)

SR, HOP, OCTAVES, BINS, FMIN = 8000, 64, 4, 12, 62.5  # a small CQT: 48 bins, 62.5 Hz to 943.9 Hz
CQTD = {"kind": "cqtd", "channel_mult": 1 / 16}  # the published cqtd_* defaults, widths 128 / 16 = 8
N = 8192  # samples of a test wave at 22.05 kHz


def small_cqt(librosa_scale: bool = False) -> ConstantQ:
    return ConstantQ(SR, HOP, OCTAVES, BINS, FMIN, librosa_scale=librosa_scale)


def tone(freq: float, n: int = 4096, sr: float = SR) -> torch.Tensor:
    return torch.sin(2 * math.pi * freq * torch.arange(n, dtype=torch.float64) / sr).float().view(1, 1, -1)


def magnitude(z: torch.Tensor) -> torch.Tensor:
    """``[B, 2, bins, frames]`` real and imaginary parts -> ``[B, bins, frames]``."""
    return torch.hypot(z[:, 0], z[:, 1])


def direct_cqt(x: np.ndarray, cqt: ConstantQ, sr: float, hop: int) -> np.ndarray:
    """Every bin's full-length kernel on the full-rate signal (CQT1992-style), ``[bins, frames]`` complex."""
    lengths = np.ceil(cqt.q * sr / cqt.freqs)
    half = int(lengths.max())
    frames = len(x) // hop + 1
    padded = np.pad(x.astype(np.float64), (half, half + hop))
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * half + 1)[::hop][:frames]
    tau = np.arange(-half, half + 1)
    out = np.empty((len(cqt.freqs), frames), complex)
    for k, (f, length) in enumerate(zip(cqt.freqs, lengths, strict=True)):
        w = np.where(np.abs(tau) < length / 2, 0.5 + 0.5 * np.cos(2 * np.pi * tau / length), 0.0)
        out[k] = windows @ (w / w.sum() * np.exp(-2j * np.pi * f * tau / sr))
    return out


# --- the constant-Q transform ---------------------------------------------------------------------


def test_kernels_are_the_top_octaves_and_the_filters_stay_out_of_the_state_dict():
    cqt = small_cqt()
    assert cqt.q == pytest.approx(1 / (2 ** (1 / 12) - 1))
    np.testing.assert_allclose(cqt.freqs[[0, 12, 47]], [62.5, 125.0, 62.5 * 2 ** (47 / 12)])
    longest = math.ceil(cqt.q * SR / cqt.freqs[-BINS])  # the top octave's lowest bin, not fmin's 2150 samples
    assert cqt.kernels.shape == (2 * BINS, 1, 2 * (longest // 2) + 1)
    assert cqt.lowpass.sum().item() == pytest.approx(1.0, abs=1e-6)
    assert dict(cqt.state_dict()) == {}


@pytest.mark.parametrize("k", [3, 17, 29, 45])  # one bin in each octave: three go through the decimations
def test_a_sine_at_a_bins_centre_peaks_at_that_bin_with_magnitude_one_half(k):
    cqt = small_cqt()
    z = cqt(tone(cqt.freqs[k]))
    assert z.shape == (1, 2, OCTAVES * BINS, 4096 // HOP + 1)
    mag = magnitude(z)[0, :, 20:-20].mean(1)  # away from the edges, where the longest kernels reach
    assert int(mag.argmax()) == k
    assert mag[k].item() == pytest.approx(0.5, rel=0.01)  # L1-normalised Hann: the unit sine's half
    assert mag[k - 1].item() == pytest.approx(0.25, rel=0.03)  # one bin off: Hann's first neighbour


def test_librosa_scale_multiplies_each_bin_by_the_root_of_its_kernel_length():
    plain, scaled = small_cqt(), small_cqt(librosa_scale=True)
    x = tone(plain.freqs[10])
    lengths = np.ceil(plain.q * SR / plain.freqs)
    ratio = magnitude(scaled(x))[0, :, 30] / magnitude(plain(x))[0, :, 30]
    np.testing.assert_allclose(ratio.numpy(), np.sqrt(lengths), rtol=1e-4)


def test_the_octave_by_octave_cqt_matches_the_direct_one():
    cqt = small_cqt()
    x = torch.randn(1, 1, 4096, generator=torch.Generator().manual_seed(0))
    fast = cqt(x)[0].double().numpy()
    fast = fast[0] + 1j * fast[1]
    ref = direct_cqt(x[0, 0].numpy(), cqt, SR, HOP)
    for octave in range(OCTAVES):
        rows = slice(octave * BINS, (octave + 1) * BINS)
        err, mag = np.abs(fast[rows] - ref[rows])[:, 20:-20], np.abs(ref[rows])[:, 20:-20]
        assert np.sqrt((err**2).mean() / (mag**2).mean()) < 0.02, octave
    np.testing.assert_allclose(fast[-BINS:], ref[-BINS:], atol=1e-5)  # the top octave: the same sums


def test_every_octave_centres_frame_t_on_sample_t_hop():
    cqt = small_cqt()
    x = torch.zeros(1, 1, 4096)
    x[..., 30 * HOP] = 1.0  # a click at frame 30
    peaks = magnitude(cqt(x))[0].argmax(dim=1)
    assert (peaks == 30).all()


def test_the_cqt_of_silence_is_zero():
    for librosa_scale in (False, True):
        z = small_cqt(librosa_scale)(torch.zeros(2, 1, 3000))
        assert z.shape == (2, 2, 48, 3000 // HOP + 1) and z.abs().max().item() < 1e-7


def test_the_interpolator_resamples_a_sine_to_twice_the_rate():
    kernel = kaiser_lowpass(0.5, 0.1, 2.0)
    x = tone(3000.0, 2000, 22050)
    up = upsample(x, 2, kernel)
    assert up.shape == (1, 1, 4000)
    torch.testing.assert_close(up[..., 200:-200], tone(3000.0, 4000, 44100)[..., 200:-200], atol=2e-3, rtol=0)


# --- the discriminator ----------------------------------------------------------------------------


def cqtd(**over) -> DiscriminatorConfig:
    return parse(DiscriminatorConfig, {**CQTD, **over}, "disc")


def test_each_cqt_scale_has_the_expected_shapes_and_weight_norm():
    torch.manual_seed(0)
    cfg = cqtd()
    d = Discriminators(cfg)
    assert d.names == ["period_2", "period_3", "period_5", "period_7", "period_11"] + [
        "cqt_512_9_24",
        "cqt_256_9_36",
        "cqt_256_9_48",
    ]
    assert not hasattr(d, "mrd")
    x = torch.randn(2, 1, N, generator=torch.Generator().manual_seed(1))
    out = d(x, 0.5 * x.flip(-1))
    for k, (hop, bins) in enumerate([(512, 216), (256, 324), (256, 432)], start=5):
        frames = 2 * N // hop + 1  # the CQT runs at twice the sample rate
        shapes = [(2, 8, frames, bins)]
        for _ in range(3):
            bins = -(-bins // 2)  # kernel 9, padding 4, stride 2 along frequency; dilated time keeps its length
            shapes.append((2, 8, frames, bins))
        shapes += [(2, 8, frames, bins), (2, 1, frames, bins)]
        for fmaps in (out.real_fmaps[k], out.fake_fmaps[k]):
            assert [tuple(f.shape) for f in fmaps] == shapes, d.names[k]
        assert tuple(out.real_logits[k].shape) == (2, frames * bins)
    sub = d.cqtd.discriminators[2]
    assert len(sub.conv_pres) == 9 and [c.dilation for c in sub.convs] == [(1, 1), (1, 1), (2, 1), (4, 1), (1, 1)]
    assert [c.stride for c in sub.convs] == [(1, 1), (1, 2), (1, 2), (1, 2), (1, 1)]
    convs = [m for m in d.cqtd.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 3 * (9 + 5 + 1) and all(parametrize.is_parametrized(c, "weight") for c in convs)


def test_published_widths_at_channel_mult_one():
    with torch.device("meta"):
        d = MultiScaleSubbandCQTDiscriminator(cqtd(channel_mult=1.0, cqtd_filters_scale=2))
    sub = d.discriminators[0]
    assert [c.out_channels for c in sub.conv_pres] == [2] * 9
    assert [c.out_channels for c in [*sub.convs, sub.conv_post]] == [128, 256, 512, 1024, 1024, 1]
    assert [c.in_channels for c in sub.convs] == [2, 128, 256, 512, 1024]


def test_gradients_reach_the_input_and_every_parameter():
    torch.manual_seed(0)
    d = MultiScaleSubbandCQTDiscriminator(cqtd(cqtd_hop_lengths=[256], cqtd_n_octaves=[9], cqtd_bins_per_octaves=[24]))
    real = torch.randn(1, 1, 4096, generator=torch.Generator().manual_seed(2))
    fake = (0.3 * real).requires_grad_(True)
    out = d(real, fake)
    (out.fake_logits[0].pow(2).mean() + out.fake_fmaps[0][2].mean()).backward()
    assert fake.grad is not None and torch.isfinite(fake.grad).all() and fake.grad.abs().sum() > 0
    missing = [name for name, p in d.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing


def test_volume_normalisation_ignores_gain_and_dc_offset():
    d = MultiScaleSubbandCQTDiscriminator(cqtd(cqtd_hop_lengths=[256], cqtd_n_octaves=[9], cqtd_bins_per_octaves=[24]))
    x = torch.randn(1, 1, 4096, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = d(x, 3.0 * x + 0.2)
    torch.testing.assert_close(out.real_logits[0], out.fake_logits[0], atol=1e-4, rtol=1e-4)


def test_the_cqt_stays_float32_under_bf16_autocast():
    d = MultiScaleSubbandCQTDiscriminator(cqtd(cqtd_hop_lengths=[512], cqtd_n_octaves=[9], cqtd_bins_per_octaves=[24]))
    x = torch.randn(2, 1, 2048, generator=torch.Generator().manual_seed(4))
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        assert d.discriminators[0].spectrogram(x).dtype == torch.float32
        assert d(x, x).real_logits[0].dtype == torch.bfloat16


# --- the config -----------------------------------------------------------------------------------


def test_the_default_still_builds_the_resolution_discriminators_with_the_same_state_dict():
    cfg = parse(DiscriminatorConfig, {}, "disc")
    assert cfg.kind == "mrd"
    with torch.device("meta"):
        d = Discriminators(cfg)
    assert not hasattr(d, "cqtd") and d.spectral is d.mrd
    assert d.names[5:] == ["stft_1024_120_600", "stft_2048_240_1200", "stft_512_50_240"]
    keys = list(d.state_dict())
    assert len(keys) == 8 * 6 * 3 and all(k.startswith(("mpd.discriminators.", "mrd.discriminators.")) for k in keys)
    # with kind mrd the cqtd_* keys are not read: values that could not build a CQT are no error
    parse(DiscriminatorConfig, {"cqtd_n_octaves": [12, 9, 9]}, "disc")


def test_the_cqt_discriminator_state_dict_holds_parameters_only():
    with torch.device("meta"):
        d = Discriminators(cqtd())
    assert d.spectral is d.cqtd
    assert set(d.state_dict()) == {name for name, _ in d.named_parameters()}


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"cqtd_n_octaves": [10, 9, 9]}, "disc.cqtd_n_octaves[0]"),  # top bin 32.5 kHz, Nyquist 22.05 kHz
        ({"cqtd_upsample": 1}, "disc.cqtd_n_octaves[0]"),  # 9 octaves need the 2x upsampling at 22.05 kHz
        ({"cqtd_sample_rate": 16000}, "disc.cqtd_n_octaves[0]"),
        ({"cqtd_hop_lengths": [384, 256, 256]}, "disc.cqtd_hop_lengths[0]"),  # not a multiple of 2^8
        ({"cqtd_hop_lengths": [512, 256]}, "disc.cqtd_n_octaves"),
        ({"cqtd_bins_per_octaves": [24, 36]}, "disc.cqtd_bins_per_octaves"),
        ({"cqtd_bins_per_octaves": [24, 0, 48]}, "disc.cqtd_bins_per_octaves[1]"),
        ({"cqtd_dilations": [1, 0, 4]}, "disc.cqtd_dilations[1]"),
        ({"cqtd_fmin": 0.0}, "disc.cqtd_fmin"),
        ({"cqtd_upsample": 8}, "disc.cqtd_upsample"),
        ({"cqtd_normalize_volume": "yes"}, "disc.cqtd_normalize_volume"),
        ({"cqtd_filters": 8}, "disc.channel_mult"),  # 8 / 16 = 0.5 channels
        ({"periods": [], "cqtd_hop_lengths": [], "cqtd_n_octaves": [], "cqtd_bins_per_octaves": []}, "disc.periods"),
        ({"kind": "cqt"}, "disc.kind"),  # the choice is named cqtd, after BigVGAN's cqtd_* keys
    ],
)
def test_bad_cqt_config_names_the_key(data, key):
    with pytest.raises(ParamError, match=re.escape(key)):
        cqtd(**data)


def test_the_nyquist_error_says_how_many_octaves_fit():
    with pytest.raises(ParamError, match=r"16266 Hz.*Nyquist frequency 11025 Hz.*at most 8 octaves fit"):
        cqtd(cqtd_upsample=1)
