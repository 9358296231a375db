"""BigVGAN's discriminators and the vocoder losses: shapes, hand-computed values, weights, config errors, gradients."""

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from binaural_lab.config import ParamError, parse
from binaural_lab.losses.vocoder import (
    VocoderLossConfig,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    generator_loss,
    multiscale_mel_loss,
    silence_aware_mel_loss,
    silence_weights,
)
from binaural_lab.models.discriminators import DiscriminatorConfig, DiscriminatorP, DiscriminatorR, Discriminators

SMALL = DiscriminatorConfig(channel_mult=1 / 16)  # widths 2, 8, 32, 64, 64 (periods) and 2 (resolutions)
N = 8192  # samples of a test wave (0.37 s at 22.05 kHz)


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def wave(batch: int = 2, n: int = N, seed: int = 0) -> torch.Tensor:
    """Broadband test audio [B, 1, n]: two tones plus noise, well above the mel floor at every scale."""
    g = torch.Generator().manual_seed(seed)
    t = torch.arange(n) / 22050
    tones = 0.3 * torch.sin(2 * math.pi * 440 * t) + 0.2 * torch.sin(2 * math.pi * 3100 * t)
    return (tones + 0.1 * torch.randn(batch, 1, n, generator=g)).float()


def losses(**over) -> VocoderLossConfig:
    return parse(VocoderLossConfig, over, "loss")


# --- discriminators -------------------------------------------------------------------------------


def expected_shapes(cfg: DiscriminatorConfig, batch: int, n: int) -> list[list[tuple[int, ...]]]:
    """Feature-map shapes of every sub-discriminator, from the layer arithmetic (the logits' map last)."""
    out = []
    widths = [int(c * cfg.channel_mult) for c in (32, 128, 512, 1024, 1024)]
    for p in cfg.periods:
        rows, shapes = ceil_div(n, p), []
        for i, c in enumerate(widths):
            rows = ceil_div(rows, 3) if i < 4 else rows  # kernel 5, padding 2, stride 3 (the last: stride 1)
            shapes.append((batch, c, rows, p))
        out.append([*shapes, (batch, 1, rows, p)])
    c = int(32 * cfg.channel_mult)
    for n_fft, hop, _ in cfg.resolutions:
        bins, frames = n_fft // 2 + 1, n // hop
        shapes = [(batch, c, bins, frames)]
        for _ in range(3):
            frames = ceil_div(frames, 2)  # kernel 9, padding 4, stride 2 along time
            shapes.append((batch, c, bins, frames))
        out.append([*shapes, (batch, c, bins, frames), (batch, 1, bins, frames)])
    return out


@pytest.mark.parametrize("n", [N, 8000, 4321])
def test_every_sub_discriminator_has_the_expected_shapes(n):
    torch.manual_seed(0)
    d = Discriminators(SMALL)
    real, fake = wave(3, n), wave(3, n, seed=1)
    out = d(real, fake)
    expected = expected_shapes(SMALL, 3, n)
    assert len(d.names) == len(expected) == 8
    assert d.names[0] == "period_2" and d.names[5] == "stft_1024_120_600"
    for k, shapes in enumerate(expected):
        for fmaps in (out.real_fmaps[k], out.fake_fmaps[k]):
            assert [tuple(f.shape) for f in fmaps] == shapes, d.names[k]
        for logits in (out.real_logits[k], out.fake_logits[k]):
            assert tuple(logits.shape) == (3, math.prod(shapes[-1][1:])), d.names[k]


def test_real_and_fake_are_judged_as_separate_calls_would():
    torch.manual_seed(0)
    d = Discriminators(SMALL)
    real, fake = wave(2), wave(2, seed=1)
    out = d(real, fake)
    subs = [*d.mpd.discriminators, *d.mrd.discriminators]
    for k, sub in enumerate(subs):
        for x, logits, fmaps in (
            (real, out.real_logits[k], out.real_fmaps[k]),
            (fake, out.fake_logits[k], out.fake_fmaps[k]),
        ):
            alone, alone_fmaps = sub(x)
            torch.testing.assert_close(logits, alone, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(fmaps[2], alone_fmaps[2], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out.real_logits[0], out.fake_logits[0])


def test_period_discriminator_judges_each_phase_of_the_period_apart():
    torch.manual_seed(0)
    d = DiscriminatorP(3, channel_mult=1 / 16)
    x = wave(1, 900)
    y = x.clone()
    y[..., 1::3] += 0.5  # samples of phase 1 only
    change = (d(y)[0] - d(x)[0]).abs().view(-1, 3).sum(0)  # logits [rows * 3] -> per column
    assert change[1] > 0 and change[0] == 0 and change[2] == 0


def test_resolution_discriminator_sees_the_linear_rectangular_window_magnitude():
    n_fft, hop, win = 512, 50, 240
    d = DiscriminatorR([n_fft, hop, win], channel_mult=1 / 16)
    x = wave(1, 2000)
    spec = d.spectrogram(x)[0, 0].numpy()
    pad = (n_fft - hop) // 2
    padded = np.pad(x[0, 0].numpy().astype(np.float64), pad, mode="reflect")
    window = np.zeros(n_fft)
    window[(n_fft - win) // 2 : (n_fft - win) // 2 + win] = 1.0
    assert spec.shape == (n_fft // 2 + 1, 2000 // hop)
    for k in (0, 7, 39):
        frame = padded[k * hop : k * hop + n_fft] * window
        np.testing.assert_allclose(spec[:, k], np.abs(np.fft.rfft(frame)), rtol=1e-4, atol=1e-4)


def test_papers_widths_and_weight_norm_on_every_convolution():
    with torch.device("meta"):
        d = Discriminators(DiscriminatorConfig(channel_mult=1.0))
    p = d.mpd.discriminators[0]
    assert [c.out_channels for c in [*p.convs, p.conv_post]] == [32, 128, 512, 1024, 1024, 1]
    assert [c.stride for c in p.convs] == [(3, 1)] * 4 + [(1, 1)]
    assert all(c.kernel_size == (5, 1) for c in p.convs) and p.conv_post.kernel_size == (3, 1)
    r = d.mrd.discriminators[0]
    assert [c.out_channels for c in [*r.convs, r.conv_post]] == [32] * 5 + [1]
    assert [c.stride for c in r.convs] == [(1, 1), (1, 2), (1, 2), (1, 2), (1, 1)]
    convs = [m for m in d.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 5 * 6 + 3 * 6
    assert all(parametrize.is_parametrized(c, "weight") for c in convs)


# --- adversarial and feature-matching losses ------------------------------------------------------


def test_least_squares_losses_match_hand_computed_values():
    ones, zeros = [torch.ones(2, 5), torch.ones(2, 3)], [torch.zeros(2, 5), torch.zeros(2, 3)]
    total, real, fake = discriminator_loss(ones, zeros)  # a perfect discriminator
    assert total.item() == 0 and real == [0, 0] and fake == [0, 0]
    total, real, fake = discriminator_loss(
        [torch.tensor([[0.5, 1.5]]), torch.tensor([[0.0, 2.0]])],
        [torch.tensor([[0.5, -0.5]]), torch.tensor([[1.0, 3.0]])],
    )
    assert real == pytest.approx([0.25, 1.0]) and fake == pytest.approx([0.25, 5.0])
    assert total.item() == pytest.approx(6.5)
    assert generator_adversarial_loss(ones).item() == 0  # the fakes fool the discriminator
    assert generator_adversarial_loss(zeros).item() == pytest.approx(2.0)
    assert generator_adversarial_loss([torch.tensor([[0.5, -0.5]])]).item() == pytest.approx(1.25)
    with pytest.raises(ValueError, match="as many real as fake"):
        discriminator_loss(ones, zeros[:1])


def test_feature_matching_is_zero_for_identical_maps_and_the_summed_l1_otherwise():
    maps = [[torch.randn(2, 3, 4), torch.randn(2, 1, 5)], [torch.randn(2, 6)]]
    assert feature_matching_loss(maps, maps).item() == 0
    shifted = [[m + 0.5 for m in maps[0]], [maps[1][0] - 1.0]]
    assert feature_matching_loss(maps, shifted).item() == pytest.approx(0.5 + 0.5 + 1.0)
    with pytest.raises(ValueError):
        feature_matching_loss(maps, maps[:1])


# --- mel losses -----------------------------------------------------------------------------------


def test_multiscale_mel_loss_is_zero_for_identical_waves_and_grows_with_noise():
    cfg = losses()
    x = wave()
    assert multiscale_mel_loss(x, x, cfg).item() == 0
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(5))
    values = [multiscale_mel_loss(x + s * noise, x, cfg).item() for s in (0.01, 0.05, 0.2)]
    assert 0 < values[0] < values[1] < values[2]


def test_multiscale_mel_loss_is_log10_and_sums_the_configured_scales():
    x = wave()
    full = losses()
    # a gain of 2 moves every log10-mel bin (all far above the 1e-5 floor) by log10(2), at every scale
    assert multiscale_mel_loss(2 * x, x, full).item() == pytest.approx(7 * math.log10(2), rel=1e-4)
    one = losses(mel_scales=[64], mel_scale_mels=[10])
    assert multiscale_mel_loss(2 * x, x, one).item() == pytest.approx(math.log10(2), rel=1e-4)


def test_multiscale_mel_loss_ignores_polarity_but_not_a_time_shift():
    cfg = losses()
    x = wave()
    assert multiscale_mel_loss(-x, x, cfg).item() == pytest.approx(0, abs=1e-6)  # a magnitude loss
    shifted = torch.roll(x, 64, dims=-1)
    assert multiscale_mel_loss(shifted, x, cfg).item() > 0.05
    with pytest.raises(ValueError, match="differ in shape"):
        multiscale_mel_loss(x[..., :-256], x, cfg)


def silent_mel() -> torch.Tensor:
    """A ground-truth log-mel [2, 80, 10]: frames 2 and 7 at the floor, frame 3 one loud band on the floor."""
    gt = torch.zeros(2, 80, 10)
    gt[:, :, [2, 3, 7]] = math.log(1e-5)
    gt[:, 40, 3] = 0.0  # energy log(1/80) = -4.4: not silent, though the bands' mean log is -11.4
    return gt


def test_silence_weights_mark_frames_below_the_threshold():
    w = silence_weights(silent_mel(), losses(silence_weight=3.0))
    expected = torch.ones(2, 1, 10)
    expected[..., [2, 7]] = 3.0
    torch.testing.assert_close(w, expected)
    cfg = losses(silence_threshold=-5.0, silence_weight=0.5)
    edge = torch.stack([torch.full((80,), -5.01), torch.full((80,), -4.99)], dim=-1)[None]  # energy = the value
    torch.testing.assert_close(silence_weights(edge, cfg), torch.tensor([[[0.5, 1.0]]]))


def test_silence_aware_loss_scales_silent_frames_errors_by_the_weight():
    gt = silent_mel()
    silent_err, loud_err = torch.zeros_like(gt), torch.zeros_like(gt)
    silent_err[..., [2, 7]] = 0.5
    loud_err[..., [0, 3, 9]] = 0.5
    plain = losses()
    for err in (silent_err, loud_err):
        assert silence_aware_mel_loss(gt + err, gt, plain).item() == pytest.approx(F.l1_loss(gt + err, gt).item())
    base = silence_aware_mel_loss(gt + silent_err, gt, plain).item()
    assert base > 0
    for w in (0.0, 0.25, 3.0):
        cfg = losses(silence_weight=w)
        assert silence_aware_mel_loss(gt + silent_err, gt, cfg).item() == pytest.approx(w * base)
        loud = silence_aware_mel_loss(gt + loud_err, gt, cfg).item()
        assert loud == pytest.approx(silence_aware_mel_loss(gt + loud_err, gt, plain).item())


# --- configuration errors -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"resolutions": [[1024, 120]]}, "disc.resolutions[0]"),
        ({"resolutions": [[512, 120, 600]]}, "disc.resolutions[0]"),
        ({"resolutions": [[1024, 121, 600]]}, "disc.resolutions[0]"),
        ({"resolutions": [[1024, 120, 0]]}, "disc.resolutions[0][2]"),
        ({"periods": [2, 0]}, "disc.periods[1]"),
        ({"periods": [], "resolutions": []}, "disc.periods"),
        ({"channel_mult": 0.02}, "disc.channel_mult"),
        ({"kind": "cqt"}, "disc.kind"),
    ],
)
def test_bad_discriminator_config_names_the_key(data, key):
    with pytest.raises(ParamError, match=re.escape(key)):
        parse(DiscriminatorConfig, data, "disc")


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"lambda_mel": -1.0}, "loss.lambda_mel"),
        ({"lambda_fm": -0.1}, "loss.lambda_fm"),
        ({"mel_scales": [4], "mel_scale_mels": [5]}, "loss.mel_scales[0]"),
        ({"mel_scales": [36], "mel_scale_mels": [5]}, "loss.mel_scales[0]"),
        ({"mel_scales": [32, 64]}, "loss.mel_scale_mels"),
        ({"mel_scale_mels": [5, 0, 20, 40, 80, 160, 320]}, "loss.mel_scale_mels[1]"),
        ({"lambda_mel_multiscale": 15.0, "mel_scales": [], "mel_scale_mels": []}, "loss.mel_scales"),
        ({"silence_weight": -0.5}, "loss.silence_weight"),
        ({"lambda_mel": 0.0, "lambda_mel_multiscale": 15.0, "silence_weight": 2.0}, "loss.silence_weight"),
        ({"lambda_adv": 0.0, "lambda_fm": 0.0, "lambda_mel": 0.0}, "loss: every lambda is 0"),
        ({"silence_threshold": "quiet"}, "loss.silence_threshold"),
    ],
)
def test_bad_loss_config_names_the_key(data, key):
    with pytest.raises(ParamError, match=re.escape(key)):
        parse(VocoderLossConfig, data, "loss")


# --- gradients ------------------------------------------------------------------------------------

ONLY = {
    "adv": {"lambda_fm": 0.0, "lambda_mel": 0.0},
    "fm": {"lambda_adv": 0.0, "lambda_mel": 0.0},
    "mel": {"lambda_adv": 0.0, "lambda_fm": 0.0, "silence_weight": 4.0},
    "mel_multiscale": {"lambda_adv": 0.0, "lambda_fm": 0.0, "lambda_mel": 0.0, "lambda_mel_multiscale": 15.0},
}


@pytest.mark.parametrize("term", [None, *ONLY])
def test_generator_loss_reaches_the_generator_and_its_input(term):
    torch.manual_seed(0)
    cfg = losses(lambda_mel_multiscale=15.0) if term is None else losses(**ONLY[term])
    generator = nn.Conv1d(1, 1, 9, padding=4)
    z = wave(2, seed=3).requires_grad_(True)
    real = wave(2)
    fake = generator(z)
    out = Discriminators(SMALL)(real, fake)
    total, parts = generator_loss(out.fake_logits, out.real_fmaps, out.fake_fmaps, fake, real, cfg)
    assert total.requires_grad and total.ndim == 0
    weights = {"adv": cfg.lambda_adv, "fm": cfg.lambda_fm, "mel": cfg.lambda_mel, "mel_multiscale": 15.0}
    assert set(parts) == (set(weights) if term is None else {term})
    assert total.item() == pytest.approx(sum(weights[k] * v for k, v in parts.items()), rel=1e-5)
    total.backward()
    for grad in (z.grad, generator.weight.grad):
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_discriminator_loss_reaches_every_discriminator_parameter_and_not_the_generator():
    torch.manual_seed(0)
    d = Discriminators(SMALL)
    generator = nn.Conv1d(1, 1, 9, padding=4)
    fake = generator(wave(2, seed=3))
    out = d(wave(2), fake.detach())
    total, real_parts, fake_parts = discriminator_loss(out.real_logits, out.fake_logits)
    assert len(real_parts) == len(fake_parts) == len(d.names)
    assert total.item() == pytest.approx(sum(real_parts) + sum(fake_parts), rel=1e-5)
    total.backward()
    params = dict(d.named_parameters())
    assert len(params) == 8 * 6 * 3  # per convolution: weight-norm gain and direction, bias
    missing = [name for name, p in params.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert not missing
    assert generator.weight.grad is None


def test_losses_stay_float32_under_bf16_autocast():
    torch.manual_seed(0)
    x = wave(2)
    d = Discriminators(SMALL)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = d(x, 2 * x)
        assert out.real_logits[0].dtype == torch.bfloat16  # the convolutions run in bf16
        total, _, _ = discriminator_loss(out.real_logits, out.fake_logits)
        g_total, parts = generator_loss(out.fake_logits, out.real_fmaps, out.fake_fmaps, 2 * x, x, losses())
        multiscale = multiscale_mel_loss(2 * x, x, losses())
    assert total.dtype == g_total.dtype == torch.float32
    # the mels are float32: a gain of 2 is exactly ln 2 (single scale) and 7 log10 2 (multi-scale)
    assert parts["mel"] == pytest.approx(math.log(2), rel=1e-4)
    assert multiscale.item() == pytest.approx(7 * math.log10(2), rel=1e-4)
