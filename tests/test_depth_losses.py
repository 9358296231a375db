"""Depth losses: each term on hand-made maps, masking, curricula, low-pass and frequency split."""

import pytest
import torch

from binaural_lab.config import ParamError
from binaural_lab.depth import REGISTRY
from binaural_lab.losses.depth import (
    edge_term,
    frequency_split,
    masked_lowpass,
    smoothness_term,
)

MAX_DEPTH = 10.0


def build_depth_loss(name: str, cfg: dict, max_depth: float, epochs: int = 100):
    return REGISTRY.build_loss(name, cfg, epochs, max_depth=max_depth)


def _target(seed: int = 0) -> torch.Tensor:
    """Random depth in metres with an invalid (zero) band and a few invalid specks."""
    g = torch.Generator().manual_seed(seed)
    gt = 1 + 8 * torch.rand(2, 1, 16, 16, generator=g)
    gt[:, :, :3] = 0
    gt[0, 0, 8, 8] = 0
    gt[1, 0, 12, 3] = 0
    return gt


def _outputs(name: str, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    base = MAX_DEPTH * torch.rand(2, 1, 16, 16, generator=g)
    residual = torch.rand(2, 1, 16, 16, generator=g) - 0.5
    depth = (base + residual).clamp(0, MAX_DEPTH)
    return {"depth": depth, "base": base, "residual": residual} if name == "base_residual" else {"depth": depth}


def test_l1_loss_by_hand():
    gt = torch.tensor([[[[2.0, 0.0], [4.0, 5.0]]]])
    pred = torch.tensor([[[[3.0, 9.0], [4.0, 3.0]]]])
    raw = build_depth_loss("unet", {"normalize_depth": False}, MAX_DEPTH)
    total, parts = raw({"depth": pred}, gt, 0)
    assert total.item() == pytest.approx((1 + 0 + 2) / 3)
    normalised = build_depth_loss("unet", {}, MAX_DEPTH)
    assert normalised({"depth": pred}, gt, 0)[0].item() == pytest.approx(1 / MAX_DEPTH)
    assert parts == {"l1": pytest.approx(1.0)}


CONFIGS = [
    ("unet", {}),
    ("base_residual", {}),
    ("base_residual", {"frequency_aware": True}),
    ("base_residual", {"curriculum": "adaptive"}),
    ("binaural_attention", {}),
]


@pytest.mark.parametrize(("name", "cfg"), CONFIGS)
def test_invalid_pixels_change_nothing(name, cfg):
    loss = build_depth_loss(name, cfg, MAX_DEPTH)
    gt, outputs = _target(), _outputs(name)
    total, parts = loss(outputs, gt, 3)
    changed = {k: torch.where(gt > 0, v, v + 100 * torch.randn_like(v)) for k, v in outputs.items()}
    total2, parts2 = loss(changed, gt, 3)
    assert total2.item() == pytest.approx(total.item(), rel=1e-6)
    assert parts2 == pytest.approx(parts, rel=1e-6)


@pytest.mark.parametrize(("name", "cfg"), CONFIGS)
def test_gradients_reach_only_valid_pixels(name, cfg):
    loss = build_depth_loss(name, cfg, MAX_DEPTH)
    gt = _target()
    outputs = {k: v.requires_grad_() for k, v in _outputs(name).items()}
    loss(outputs, gt, 100)[0].backward()
    for v in outputs.values():
        assert torch.isfinite(v.grad).all()
        assert (v.grad[gt == 0] == 0).all()


def test_constant_prediction_has_zero_edge_and_smoothness():
    pred = torch.full((2, 1, 12, 12), 3.0)
    gt = torch.full((2, 1, 12, 12), 5.0)
    mask = gt > 0
    assert edge_term(pred, gt, mask).item() == pytest.approx(0.0, abs=1e-6)
    ramp_gt = torch.linspace(1, 9, 12).expand(2, 1, 12, 12)
    assert smoothness_term(pred, ramp_gt, mask).item() == 0.0
    loss = build_depth_loss("binaural_attention", {}, MAX_DEPTH)
    _, parts = loss({"depth": pred}, gt, 0)
    assert parts["l1"] == pytest.approx(0.2) and parts["edge"] == pytest.approx(0, abs=1e-6) and parts["smooth"] == 0


def test_edge_and_smoothness_by_hand():
    # a vertical step of height 1 between columns 2 and 3: Sobel x gives 4 next to it, 0 elsewhere
    gt = torch.ones(1, 1, 5, 6)
    gt[..., 3:] = 2.0
    flat = torch.ones_like(gt)
    mask = gt > 0
    # interior is 3 x 4 pixels; the 6 in columns 2 and 3 of the full map see the step
    assert edge_term(flat, gt, mask).item() == pytest.approx(4 * 6 / 12, rel=1e-5)
    assert edge_term(gt, gt, mask).item() == pytest.approx(0, abs=1e-5)
    # the prediction has the step where gt is flat: 5 of the 25 x-pairs differ by 1, weight exp(0)
    assert smoothness_term(gt, flat, mask).item() == pytest.approx(5 / 25)
    # where gt has the same step the weight is exp(-1)
    assert smoothness_term(gt, gt, mask).item() == pytest.approx(5 / 25 * torch.exp(torch.tensor(-1.0)).item())


@pytest.mark.parametrize("kernel", [1, 3, 8])
def test_lowpass_of_constant_is_itself_up_to_borders(kernel):
    gt = torch.full((1, 1, 10, 10), 4.0)
    mask = torch.ones_like(gt, dtype=torch.bool)
    mask[..., 0:4, 0:4] = False  # invalid corner: its zeros must not pull the mean down
    low = masked_lowpass(torch.where(mask, gt, 0.0), mask, kernel)
    assert low.shape == gt.shape
    near_four = torch.isclose(low, torch.tensor(4.0))
    assert near_four[mask].all()  # every valid pixel, borders included
    assert (near_four | (low == 0.0)).all()  # 0 only in windows without any valid pixel


def test_lowpass_averages_valid_pixels_only():
    x = torch.tensor([[[[1.0, 2.0, 3.0, 4.0]]]])
    mask = torch.tensor([[[[True, True, False, True]]]])
    # kernel 2 pads 0 before and 1 after: windows [1, 2], [2, 3], [3, 4], [4, pad]
    low = masked_lowpass(torch.where(mask, x, 0.0), mask, 2)
    torch.testing.assert_close(low, torch.tensor([[[[1.5, 2.0, 4.0, 4.0]]]]))


def test_frequency_split_sums_back_and_separates_bands():
    x = torch.randn(2, 1, 16, 12)
    low, high = frequency_split(x, 0.3)
    torch.testing.assert_close(low + high, x, atol=1e-5, rtol=1e-5)
    i = torch.arange(16, dtype=torch.float32)[:, None]
    slow = torch.cos(2 * torch.pi * i / 16).expand(16, 12)  # 1/16 cycle per pixel = 0.125 Nyquist
    fast = torch.cos(torch.pi * i).expand(16, 12)  # Nyquist
    low, high = frequency_split(slow + fast, 0.3)
    torch.testing.assert_close(low, slow, atol=1e-5, rtol=0)
    torch.testing.assert_close(high, fast, atol=1e-5, rtol=0)


def test_base_residual_terms_by_hand():
    gt = torch.full((1, 1, 8, 8), 6.0)
    gt[..., 0, 0] = 0
    outputs = {"base": torch.full_like(gt, 5.0), "residual": torch.full_like(gt, 0.5)}
    outputs["depth"] = outputs["base"] + outputs["residual"]
    loss = build_depth_loss("base_residual", {"normalize_depth": False}, MAX_DEPTH)
    total, parts = loss(outputs, gt, 0)
    assert parts["recon"] == pytest.approx(0.5) and parts["base"] == pytest.approx(1.0)
    assert parts["residual"] == pytest.approx(0.5)
    assert total.item() == pytest.approx(1.0 * 0.5 + 0.5 * 1.0 + 0.1 * 0.5)


def test_base_residual_adaptive_curriculum_weights_scale_with_the_run():
    for epochs in (25, 6):  # warm-up over 40 % of the run: 10 epochs of 25, 2 of 6 (rounded)
        loss = build_depth_loss("base_residual", {"curriculum": "adaptive", "warmup_fraction": 0.4}, MAX_DEPTH, epochs)
        warmup = round(0.4 * epochs)
        assert loss.weights(0) == {"l_recon": 0.5, "l_base": 1.0, "l_sparse": 0.1}
        assert loss.weights(warmup / 2) == pytest.approx({"l_recon": 0.75, "l_base": 0.75, "l_sparse": 0.1})
        assert loss.weights(warmup) == loss.weights(epochs - 1) == {"l_recon": 1.0, "l_base": 0.5, "l_sparse": 0.1}
    fixed = build_depth_loss("base_residual", {}, MAX_DEPTH)
    assert fixed.weights(0) == fixed.weights(50) == {"l_recon": 1.0, "l_base": 0.5, "l_sparse": 0.1}
    with pytest.raises(ParamError, match="depth_models.base_residual.loss.l_base"):
        build_depth_loss("base_residual", {"curriculum": "adaptive", "l_base": 2.0}, MAX_DEPTH)


@pytest.mark.parametrize("epochs", [80, 20, 6])
def test_attention_curriculum_phases_are_fractions_of_the_run(epochs):
    loss = build_depth_loss(
        "binaural_attention", {"curriculum": "adaptive", "edge_from": 0.25, "smooth_from": 0.5}, MAX_DEPTH, epochs
    )
    weights = [loss.weights(e) for e in range(epochs)]
    edge_on = [w["l_edge"] > 0 for w in weights]
    smooth_on = [w["l_smooth"] > 0 for w in weights]
    # each phase starts at the same fraction of the run, whatever its length; once on, a term stays on
    assert edge_on.index(True) == int(0.25 * epochs) and all(edge_on[edge_on.index(True) :])
    assert smooth_on.index(True) == int(0.5 * epochs) and all(smooth_on[smooth_on.index(True) :])
    assert sum(smooth_on) >= epochs / 2
    assert weights[-1] == {"l1": 1.0, "l_edge": 0.2, "l_smooth": 0.1}
    fixed = build_depth_loss("binaural_attention", {}, MAX_DEPTH, epochs)
    assert fixed.weights(0) == {"l1": 1.0, "l_edge": 0.2, "l_smooth": 0.1}
    gt, outputs = _target(), _outputs("binaural_attention")
    total, parts = loss(outputs, gt, 0)
    assert total.item() == pytest.approx(parts["l1"])
    total, parts = loss(outputs, gt, epochs - 1)
    assert total.item() == pytest.approx(parts["l1"] + 0.2 * parts["edge"] + 0.1 * parts["smooth"], rel=1e-5)
    with pytest.raises(ParamError, match="smooth_from"):
        build_depth_loss("binaural_attention", {"edge_from": 0.6, "smooth_from": 0.3}, MAX_DEPTH)


def test_registry_errors():
    assert sorted(REGISTRY.names) == ["base_residual", "binaural_attention", "unet"]
    with pytest.raises(ParamError, match="unet"):
        build_depth_loss("l2", {}, MAX_DEPTH)
    with pytest.raises(ParamError, match=r"depth_models.binaural_attention.loss: unknown key"):
        build_depth_loss("binaural_attention", {"l_sparse": 1.0}, MAX_DEPTH)
