"""Depth networks: shapes, ranges, gradients, parameter counts, attention symmetry and memory guard."""

import pytest
import torch

from binaural_lab.config import ParamError, parse
from binaural_lab.depth import REGISTRY
from binaural_lab.family import count_parameters
from binaural_lab.models.binaural_attention import (
    AttentionMemoryError,
    BinauralAttentionConfig,
    CrossEarAttention,
    check_attention_memory,
)

MAX_DEPTH = 12.0
DEPTH_MODELS = REGISTRY.names


def build_depth_model(name: str, cfg: dict, input_size: int, max_depth: float):
    return REGISTRY.build_model(name, cfg, input_size=input_size, max_depth=max_depth)


TINY = {"unet": {"ngf": 4}, "base_residual": {"ngf": 4}, "binaural_attention": {"base_channels": 4}}


@pytest.mark.parametrize("name", sorted(DEPTH_MODELS))
def test_forward_backward_shape_and_range(name):
    torch.manual_seed(0)
    model = build_depth_model(name, TINY[name], input_size=32, max_depth=MAX_DEPTH)
    x = torch.randn(2, 2, 32, 32)
    out = model(x)
    depth = out["depth"]
    assert depth.shape == (2, 1, 32, 32)
    assert depth.min() >= 0 and depth.max() <= MAX_DEPTH
    depth.mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("name", sorted(DEPTH_MODELS))
def test_depth_stays_float32_under_bf16_autocast(name):
    model = build_depth_model(name, TINY[name], input_size=32, max_depth=MAX_DEPTH)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 2, 32, 32))
    assert all(v.dtype == torch.float32 for v in out.values())


def test_base_residual_outputs_add_up():
    model = build_depth_model("base_residual", {"ngf": 4, "residual_scale": 0.1}, 32, MAX_DEPTH).eval()
    out = model(torch.randn(2, 2, 32, 32))
    assert out["base"].min() >= 0 and out["base"].max() <= MAX_DEPTH
    assert out["residual"].abs().max() <= 0.1 * MAX_DEPTH + 1e-5
    torch.testing.assert_close(out["depth"], (out["base"] + out["residual"]).clamp(0, MAX_DEPTH))


def test_attention_maps_returned_and_equal_to_fused_path():
    torch.manual_seed(0)
    model = build_depth_model("binaural_attention", {"base_channels": 8}, 32, MAX_DEPTH).eval()
    for block in model.attention.values():
        torch.nn.init.constant_(block.gamma, 0.5)
    x = torch.randn(1, 2, 32, 32)
    with torch.no_grad():
        plain, with_maps = model(x), model(x, return_attention=True)
    torch.testing.assert_close(plain["depth"], with_maps["depth"], atol=1e-5, rtol=1e-4)
    maps = with_maps["attention"]
    assert sorted(maps) == [2, 3, 4, 5]
    assert maps[2].shape == (1, 16 * 16, 16 * 16)  # level 2 runs at S / 2
    torch.testing.assert_close(maps[3].sum(-1), torch.ones(1, 64))


def test_cross_attention_identity_at_init_and_symmetric():
    torch.manual_seed(0)
    block = CrossEarAttention(16)
    left, right = torch.randn(2, 16, 6, 5), torch.randn(2, 16, 6, 5)
    out_l, out_r, _ = block(left, right)
    assert torch.equal(out_l, left) and torch.equal(out_r, right)
    with torch.no_grad():
        block.gamma.fill_(0.7)
    out_l, out_r, _ = block(left, right)
    swap_l, swap_r, _ = block(right, left)
    assert not torch.allclose(out_l, left)
    torch.testing.assert_close(swap_l, out_r)
    torch.testing.assert_close(swap_r, out_l)


@pytest.mark.parametrize(
    ("name", "cfg", "low", "high"),
    [
        ("unet", {"ngf": 64}, 50e6, 60e6),  # pix2pix unet_256: 54.4 M
        ("base_residual", {"ngf": 64}, 80e6, 100e6),
        ("binaural_attention", {"base_channels": 32}, 7e6, 13e6),
        ("binaural_attention", {"base_channels": 64}, 30e6, 50e6),
        ("binaural_attention", {"base_channels": 96}, 70e6, 110e6),
    ],
)
def test_parameter_counts_at_paper_size(name, cfg, low, high):
    with torch.device("meta"):  # counts shapes only: no memory, no 256 x 256 forward
        model = build_depth_model(name, cfg, 256, MAX_DEPTH)
    assert low < count_parameters(model) < high


def test_memory_guard_names_level_size_and_budget():
    cfg = parse(BinauralAttentionConfig, {"attention_memory_budget_mb": 1000}, "models.binaural_attention")
    check_attention_memory(cfg, 64, batch_size=8)  # 32 x 32 at level 2: 64 MiB
    with pytest.raises(AttentionMemoryError) as err:
        check_attention_memory(cfg, 256, batch_size=1)  # 128 x 128 at level 2: 2 GiB
    msg = str(err.value)
    assert "attention_levels" in msg and "level 2" in msg and "128x128" in msg and "1000" in msg
    assert isinstance(err.value, ParamError)
    with pytest.raises(AttentionMemoryError, match="level 2"):
        build_depth_model("binaural_attention", {"attention_memory_budget_mb": 1000}, 256, MAX_DEPTH)
    model = build_depth_model("binaural_attention", {"base_channels": 4, "attention_memory_budget_mb": 10}, 32, 1.0)
    with pytest.raises(AttentionMemoryError, match="batch of 1000"):
        model(torch.zeros(1000, 2, 32, 32))


def test_config_errors_name_the_key():
    with pytest.raises(ParamError, match="binaural_attention"):
        build_depth_model("transformer", {}, 64, MAX_DEPTH)
    with pytest.raises(ParamError, match=r"depth_models.unet.model.min_size"):
        build_depth_model("unet", {"min_size": 3}, 64, MAX_DEPTH)
    with pytest.raises(ParamError, match=r"depth_models.binaural_attention.model.attention_levels\[0\]"):
        build_depth_model("binaural_attention", {"attention_levels": [6]}, 64, MAX_DEPTH)
    with pytest.raises(ParamError, match="input_size"):
        build_depth_model("unet", {}, 48, MAX_DEPTH)


def test_memory_check_through_the_registry_names_the_params_key():
    with pytest.raises(AttentionMemoryError, match=r"depth_models\.binaural_attention\.model\.attention_levels"):
        REGISTRY.check_memory("binaural_attention", {"attention_memory_budget_mb": 1.0}, 8, input_size=64)
    REGISTRY.check_memory("unet", {"ngf": 4}, 64, input_size=256)  # no attention: no limit
