"""The diffusion schedule and DDIM sampler against diffusers, the DiffBinaural UNet's invariants and the
ResNet-18 encoder against torchvision (both references are dev-only dependencies, never fetched weights)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from binaural_lab.config import ParamError, parse
from binaural_lab.diffbinaural import SamplingConfig, sample_windows
from binaural_lab.diffusion.ddim import DDIMScheduler, DiffusionConfig, classifier_free_guidance
from binaural_lab.models.diffbinaural import CrossAttention, DiffBinaural, DiffBinauralConfig
from binaural_lab.models.visual import ResNet18Encoder, VisualConfig

diffusers = pytest.importorskip("diffusers")
torchvision = pytest.importorskip("torchvision")


def reference_scheduler(clip_sample: bool = True, prediction: str = "epsilon", spacing: str = "leading"):
    return diffusers.DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="squaredcos_cap_v2",
        prediction_type=prediction,
        clip_sample=clip_sample,
        set_alpha_to_one=True,
        timestep_spacing=spacing,
        steps_offset=0,
    )


def ours(clip_sample: bool = True, loss: str = "l1", prediction: str = "epsilon") -> DDIMScheduler:
    return DDIMScheduler(DiffusionConfig(timesteps=1000, clip_sample=clip_sample, loss=loss, prediction=prediction))


# --- schedule and sampler vs diffusers --------------------------------------------------------------------


def test_schedule_and_timesteps_match_diffusers():
    mine, ref = ours(), reference_scheduler()
    assert mine.betas.shape == ref.betas.shape == (1000,)
    torch.testing.assert_close(mine.betas.double(), ref.betas.double(), atol=1e-6, rtol=0)
    torch.testing.assert_close(mine.alphas_cumprod.double(), ref.alphas_cumprod.double(), atol=1e-6, rtol=0)
    assert (mine.betas == 0.999).any(), "the last beta is capped by max_beta, as in diffusers"
    for n in (7, 10, 25, 50):
        mine.set_timesteps(n)
        ref.set_timesteps(n)
        assert mine.timesteps.tolist() == ref.timesteps.tolist(), n
        assert len(mine.timesteps) == n and mine.timesteps[-1] == 0
        trailing = reference_scheduler(spacing="trailing")
        trailing.set_timesteps(n)
        mine.set_timesteps(n, "trailing")
        assert mine.timesteps.tolist() == trailing.timesteps.tolist(), n
        assert mine.timesteps[0] == 999, "trailing spacing starts at the last training step"
    with pytest.raises(ParamError, match="spacing"):
        mine.set_timesteps(10, "middle")


def fake_eps(sample: torch.Tensor, t: int) -> torch.Tensor:
    """A deterministic stand-in for the network: any function of the sample and the step."""
    return 0.3 * sample + 0.1 * math.sin(t)


def trajectories(
    eta: float, clip_sample: bool, steps: int = 10, prediction: str = "epsilon", spacing: str = "leading"
) -> tuple[list, list]:
    mine, ref = ours(clip_sample, prediction=prediction), reference_scheduler(clip_sample, prediction, spacing)
    mine.set_timesteps(steps, spacing)
    ref.set_timesteps(steps)
    gen = torch.Generator().manual_seed(3)
    x0 = 3.0 * torch.randn(2, 2, 8, 8, generator=gen)
    step_noise = torch.randn(steps, 2, 2, 8, 8, generator=gen)
    a, b, out_a, out_b = x0.clone(), x0.clone(), [], []
    for i, t in enumerate(ref.timesteps.tolist()):
        kw = {"variance_noise": step_noise[i]} if eta > 0 else {}
        a = mine.step(fake_eps(a, t), t, a, eta=eta, **kw)
        b = ref.step(fake_eps(b, t), t, b, eta=eta, **kw).prev_sample
        out_a.append(a)
        out_b.append(b)
    return out_a, out_b


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
@pytest.mark.parametrize("clip_sample", [True, False])
@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_trajectory_matches_diffusers(eta, clip_sample, prediction, spacing):
    mine, ref = trajectories(eta, clip_sample, 7, prediction, spacing)
    for i, (a, b) in enumerate(zip(mine, ref, strict=True)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5, msg=lambda m, i=i: f"step {i}: {m}")
    assert torch.isfinite(mine[-1]).all()


def test_clipping_matters_in_the_compared_trajectory():
    # the initial sample's x0 predictions leave [-1, 1], so the clipped and the unclipped paths must differ
    sched = ours()
    sched.set_timesteps(10)
    t = int(sched.timesteps[0])
    gen = torch.Generator().manual_seed(3)
    x = 3.0 * torch.randn(2, 2, 8, 8, generator=gen)
    ab = sched.alphas_cumprod[t]
    x0 = (x - (1 - ab).sqrt() * fake_eps(x, t)) / ab.sqrt()
    assert (x0.abs() > 1).float().mean() > 0.5
    clipped, _ = trajectories(0.0, True)
    free, _ = trajectories(0.0, False)
    assert (clipped[-1] - free[-1]).abs().max() > 0.1
    assert clipped[-1].abs().max() <= 1 + 1e-5  # the last step returns the clipped x0 itself (alpha_bar_prev = 1)


def test_eta_noise_is_used():
    det, _ = trajectories(0.0, True)
    noisy, _ = trajectories(0.5, True)
    assert (det[0] - noisy[0]).abs().max() > 1e-3


def test_add_noise_matches_diffusers():
    mine, ref = ours(), reference_scheduler()
    gen = torch.Generator().manual_seed(0)
    x0 = torch.randn(5, 2, 4, 6, generator=gen)
    noise = torch.randn(5, 2, 4, 6, generator=gen)
    t = torch.tensor([0, 1, 250, 700, 999])
    torch.testing.assert_close(mine.add_noise(x0, noise, t), ref.add_noise(x0, noise, t), atol=1e-6, rtol=1e-6)
    # t = 0 is nearly clean, t = 999 nearly pure noise
    out = mine.add_noise(x0, noise, t)
    assert (out[0] - x0[0]).abs().max() < 0.05 and (out[-1] - noise[-1]).abs().max() < 0.05


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction", "sample"])
def test_training_target_is_what_the_step_inverts(prediction):
    # a network that outputs exactly its training target lets one step recover x0 and the noise
    sched = ours(clip_sample=False, prediction=prediction)
    gen = torch.Generator().manual_seed(2)
    x0, noise = torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen)
    t = torch.tensor([999, 500, 20])
    target = sched.training_target(x0, noise, t)
    xt = sched.add_noise(x0, noise, t)
    ref = reference_scheduler(False, prediction)
    if prediction == "v_prediction":
        torch.testing.assert_close(target, ref.get_velocity(x0, noise, t), atol=1e-6, rtol=1e-6)
    sched.set_timesteps(1000)  # step ratio 1: from t to t - 1
    for i, step in enumerate(t.tolist()):
        ab_prev = sched.alphas_cumprod[step - 1]
        expected = ab_prev.sqrt() * x0[i] + (1 - ab_prev).sqrt() * noise[i]
        got = sched.step(target[i], step, xt[i])
        torch.testing.assert_close(
            got, expected, atol=2e-4, rtol=1e-4, msg=lambda m, step=step: f"{prediction} t={step}: {m}"
        )


def test_loss_l1_and_l2():
    predicted = torch.tensor([[1.0, -2.0], [0.5, 0.0]])
    noise = torch.tensor([[0.0, 0.0], [0.0, 1.0]])
    l1, l2 = ours(loss="l1").loss(predicted, noise), ours(loss="l2").loss(predicted, noise)
    assert l1.item() == pytest.approx((1 + 2 + 0.5 + 1) / 4)
    assert l2.item() == pytest.approx((1 + 4 + 0.25 + 1) / 4)
    assert l1.item() == pytest.approx(F.l1_loss(predicted, noise).item())
    assert l2.item() == pytest.approx(F.mse_loss(predicted, noise).item())


# --- classifier-free guidance in the sampler ------------------------------------------------------------


def guidance_inputs():
    gen = torch.Generator().manual_seed(1)
    return torch.randn(3, 4, generator=gen), torch.randn(3, 4, generator=gen)


def test_guidance_scale_endpoints():
    c, u = guidance_inputs()
    assert torch.equal(classifier_free_guidance(c, u, 0.0), u)
    torch.testing.assert_close(classifier_free_guidance(c, u, 1.0), c, atol=1e-6, rtol=0)
    torch.testing.assert_close(classifier_free_guidance(c, u, 3.0), 3 * c - 2 * u)
    torch.testing.assert_close(classifier_free_guidance(c, u, -1.0), 2 * u - c)


def test_guidance_scale_one_is_exactly_the_conditional_prediction():
    c, u = guidance_inputs()
    assert torch.equal(classifier_free_guidance(c, u, 1.0), c)


class Recorder(nn.Module):
    """A context-dependent noise predictor that records the batches it receives."""

    def __init__(self):
        super().__init__()
        self.calls: list[dict] = []

    @staticmethod
    def predict(x, t, mono, context):
        return 0.2 * x + 0.05 * mono + context.mean(dim=(1, 2)).view(-1, 1, 1, 1) + 1e-4 * t.view(-1, 1, 1, 1)

    def forward(self, x, t, mono, context):
        self.calls.append({"x": x.clone(), "t": t.clone(), "mono": mono.clone(), "context": context.clone()})
        return self.predict(x, t, mono, context)


def sampler_inputs():
    gen = torch.Generator().manual_seed(2)
    mono = torch.randn(3, 1, 4, 6, generator=gen)
    context = torch.randn(3, 5, 8, generator=gen) + 0.5
    noise = torch.randn(3, 2, 4, 6, generator=gen)
    return mono, context, noise


def test_sampler_without_guidance_makes_one_conditional_call_per_step():
    model = Recorder()
    mono, context, noise = sampler_inputs()
    cfg = SamplingConfig(steps=5, guidance_scale=1.0)
    out = sample_windows(model, ours(), mono, context, noise, cfg)
    assert len(model.calls) == 5
    ref = ours()
    ref.set_timesteps(5)
    assert [int(c["t"][0]) for c in model.calls] == ref.timesteps.tolist()
    x = noise
    for call, t in zip(model.calls, ref.timesteps.tolist(), strict=True):
        assert call["x"].shape[0] == 3 and torch.equal(call["context"], context) and torch.equal(call["mono"], mono)
        assert (call["t"] == t).all()
        x = ref.step(Recorder.predict(x, call["t"], mono, context), t, x)
    torch.testing.assert_close(out, x)


def test_sampler_with_guidance_doubles_the_batch_with_zero_context():
    model = Recorder()
    mono, context, noise = sampler_inputs()
    cfg = SamplingConfig(steps=4, guidance_scale=3.0)
    out = sample_windows(model, ours(), mono, context, noise, cfg)
    assert len(model.calls) == 4
    ref = ours()
    ref.set_timesteps(4)
    x = noise
    for call, t in zip(model.calls, ref.timesteps.tolist(), strict=True):
        assert call["x"].shape[0] == 6
        torch.testing.assert_close(call["x"][:3], x)
        assert torch.equal(call["x"][3:], call["x"][:3]) and torch.equal(call["mono"], torch.cat((mono, mono)))
        assert torch.equal(call["context"][:3], context) and not call["context"][3:].any()
        steps = torch.full((3,), t)
        cond = Recorder.predict(x, steps, mono, context)
        uncond = Recorder.predict(x, steps, mono, torch.zeros_like(context))
        assert (cond - uncond).abs().min() > 0.1  # the guidance is not a no-op here
        x = ref.step(uncond + 3.0 * (cond - uncond), t, x)
    torch.testing.assert_close(out, x)


# --- the UNet --------------------------------------------------------------------------------------------

TINY = {
    "dim": 8,
    "dim_mults": [1, 2],
    "heads": 1,
    "dim_head": 8,
    "context_dim": 16,
    "visual": {"base_channels": 4},
    "token_grid": [2, 2],
}


@pytest.fixture(scope="module")
def tiny() -> DiffBinaural:
    torch.manual_seed(0)
    return DiffBinaural(parse(DiffBinauralConfig, TINY, "m")).eval()


def unet_inputs(b: int = 3, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 2, 16, 24, generator=gen)
    mono = torch.randn(b, 1, 16, 24, generator=gen)
    context = torch.randn(b, 4, 16, generator=gen)
    t = torch.randint(0, 1000, (b,), generator=gen)
    return x, t, mono, context


def test_parse_builds_the_tiny_config():
    cfg = parse(DiffBinauralConfig, TINY, "m")
    assert cfg.dim_mults == (1, 2) and cfg.token_grid == (2, 2) and cfg.visual.base_channels == 4
    assert cfg.size_multiple == 2


@torch.no_grad()
def test_output_shape_and_size_check(tiny):
    x, t, mono, context = unet_inputs()
    out = tiny(x, t, mono, context)
    assert out.shape == x.shape == (3, 2, 16, 24) and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="multiples of 2"):
        tiny(x[..., :15, :], t, mono[..., :15, :], context)
    with pytest.raises(ValueError, match="multiples of 2"):
        tiny(x[..., :23], t, mono[..., :23], context)


def test_validate_rejects_bad_groups_and_context_dim():
    with pytest.raises(ParamError, match=r"m\.groups"):
        parse(DiffBinauralConfig, {**TINY, "groups": 3}, "m")
    with pytest.raises(ParamError, match=r"m\.context_dim"):
        parse(DiffBinauralConfig, {**TINY, "context_dim": 18}, "m")
    parse(DiffBinauralConfig, {**TINY, "groups": 4, "context_dim": 20}, "m")  # both fine


@torch.no_grad()
def test_encode_positions(tiny):
    gen = torch.Generator().manual_seed(4)
    image = torch.randn(2, 3, 64, 64, generator=gen)
    plain = tiny.encode(image, None)
    assert plain.shape == (2, 4, 16)
    absent = torch.tensor([[[0.2, 0.5, 0.0], [0.8, 0.3, 0.0]]] * 2)
    torch.testing.assert_close(tiny.encode(image, absent), plain, atol=0, rtol=0)
    left = torch.tensor([[[0.2, 0.5, 1.0], [0.8, 0.3, 0.0]]] * 2)
    right = torch.tensor([[[0.7, 0.5, 1.0], [0.8, 0.3, 0.0]]] * 2)
    tok_left, tok_right = tiny.encode(image, left), tiny.encode(image, right)
    assert (tok_left - tok_right).abs().max() > 0.1
    # the encoding is added to every token alike, and depends on the position only (not on the image)
    shift = tok_left - plain
    torch.testing.assert_close(shift, shift[:1, :1].expand_as(shift), atol=1e-5, rtol=0)


@torch.no_grad()
def test_summary_token_reads_the_first_sources_in_order():
    torch.manual_seed(0)
    model = DiffBinaural(parse(DiffBinauralConfig, {**TINY, "global_condition": True, "max_sources": 2}, "m")).eval()
    image = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(4))
    a, b, c = [0.2, 0.5, 1.0], [0.8, 0.3, 1.0], [0.5, 0.9, 1.0]
    one = model.encode(image, torch.tensor([[a, b]]))
    assert one.shape == (1, 5, 16), "four visual tokens and the summary token"
    plain = DiffBinaural(parse(DiffBinauralConfig, TINY, "m"))
    plain.load_state_dict(model.state_dict(), strict=False)
    torch.testing.assert_close(one[:, :4], plain.eval().encode(image, torch.tensor([[a, b]])), atol=0, rtol=0)
    # the listed order matters (the main source first); a third source beyond max_sources is not read
    swapped = model.encode(image, torch.tensor([[b, a]]))
    assert (swapped[:, 4] - one[:, 4]).abs().max() > 1e-3
    torch.testing.assert_close(swapped[:, :4], one[:, :4], atol=1e-6, rtol=0)  # the summed encodings commute
    three = model.encode(image, torch.tensor([[a, b, c]]))
    shift = three[:, :4] - one[:, :4]
    assert shift.abs().max() > 1e-3, "the summed encodings see every present source"
    # ... but the position MLP does not: the summary moves only by the tokens' mean shift
    torch.testing.assert_close(three[:, 4] - one[:, 4], shift.mean(1), atol=1e-5, rtol=0)
    # padding: one source listed equals the same source with an absent second one
    single = model.encode(image, torch.tensor([[a]]))
    padded = model.encode(image, torch.tensor([[a, [0.0, 0.0, 0.0]]]))
    torch.testing.assert_close(single, padded, atol=1e-6, rtol=0)


@torch.no_grad()
def test_context_conditions_the_output(tiny):
    x, t, mono, context = unet_inputs()
    base = tiny(x, t, mono, context)
    other = tiny(x, t, mono, context.flip(1) + 1.0)
    assert (base - other).abs().max() > 1e-3
    assert (base - tiny(x, t, mono, torch.zeros_like(context))).abs().max() > 1e-3
    # every cross-attention (2 per level down and up, 1 in the bottleneck) sees the visual tokens once
    seen = []
    attns = [m for m in tiny.modules() if isinstance(m, CrossAttention)]
    hooks = [m.register_forward_hook(lambda m, args, out: seen.append((m, args[1]))) for m in attns]
    try:
        tiny(x, t, mono, context)
    finally:
        for h in hooks:
            h.remove()
    assert len(attns) == 5 and sorted(map(id, (m for m, _ in seen))) == sorted(map(id, attns))
    assert all(c is context for _, c in seen)


@torch.no_grad()
def test_batch_rows_are_independent(tiny):
    x, t, mono, context = unet_inputs(b=3)
    full = tiny(x, t, mono, context)
    for i in range(3):
        alone = tiny(x[i : i + 1], t[i : i + 1], mono[i : i + 1], context[i : i + 1])
        torch.testing.assert_close(alone, full[i : i + 1], atol=1e-5, rtol=1e-5)
    x2, t2, mono2, context2 = unet_inputs(b=3, seed=9)
    mixed = tiny(
        torch.cat((x[:1], x2[1:])),
        torch.cat((t[:1], t2[1:])),
        torch.cat((mono[:1], mono2[1:])),
        torch.cat((context[:1], context2[1:])),
    )
    torch.testing.assert_close(mixed[:1], full[:1], atol=1e-5, rtol=1e-5)


# --- the visual encoder vs torchvision -------------------------------------------------------------------


def test_resnet18_matches_torchvision(tmp_path):
    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None)
    with torch.no_grad():  # non-trivial affine BatchNorm parameters ...
        for m in ref.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
        ref.train()  # ... and running statistics
        for _ in range(2):
            ref(torch.randn(2, 3, 64, 64) * 2 + 0.5)
    ref.eval()
    assert ref.bn1.running_mean.abs().max() > 1e-2 and (ref.bn1.running_var - 1).abs().max() > 1e-2
    path = tmp_path / "resnet18.pt"
    torch.save(ref.state_dict(), path)
    mine = ResNet18Encoder(VisualConfig(base_channels=64, weights=str(path))).eval()
    image = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        h = ref.maxpool(ref.relu(ref.bn1(ref.conv1(image))))
        expected = ref.layer4(ref.layer3(ref.layer2(ref.layer1(h))))
        got = mine(image)
    assert got.shape == expected.shape == (2, 512, 2, 2)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mine.layer3[0].bn2.running_var, ref.layer3[0].bn2.running_var, atol=0, rtol=0)
