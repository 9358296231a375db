"""Binaural networks: ResNet-18 encoder and its checkpoints, Mono2Binaural, depth-infused attention."""

import pytest
import torch

from binaural_lab.config import ParamError, parse
from binaural_lab.family import count_parameters
from binaural_lab.models.binaural_attention import AttentionMemoryError
from binaural_lab.models.depth_infused import (
    DepthInfusedBinaural,
    DepthInfusedConfig,
    attention_memory_mb,
    check_attention_memory,
    cosine_attention,
)
from binaural_lab.models.mono2binaural import Mono2Binaural, Mono2BinauralConfig
from binaural_lab.models.visual import ResNet18Encoder, VisualConfig, WeightsError, feature_size, pool_features

TINY_VISUAL = {"base_channels": 4}
TINY_M2B = {"ngf": 4, "visual": TINY_VISUAL, "visual_channels": 2, "visual_grid": [1, 2]}
TINY_DI = {"ngf": 4, "image_encoder": TINY_VISUAL, "depth_encoder": TINY_VISUAL}
ABLATION = [(False, False), (True, False), (False, True), (True, True)]  # the paper's Table 1 rows


def m2b(**over) -> Mono2Binaural:
    return Mono2Binaural(parse(Mono2BinauralConfig, {**TINY_M2B, **over}, "m2b"))


def depth_infused(**over) -> DepthInfusedBinaural:
    return DepthInfusedBinaural(parse(DepthInfusedConfig, {**TINY_DI, **over}, "di"))


def inputs(f: int = 257, t: int = 19, batch: int = 2) -> dict[str, torch.Tensor]:
    return {
        "mono": torch.randn(batch, 2, f, t),
        "image": torch.randn(batch, 3, 40, 72),
        "depth": torch.rand(batch, 1, 40, 72),
    }


def torchvision_resnet18_keys() -> set[str]:
    """State-dict keys of ``torchvision.models.resnet18()`` without its ``fc`` classifier."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    keys = {"conv1.weight", *(f"bn1.{s}" for s in bn)}
    for layer in range(1, 5):
        for block in range(2):
            p = f"layer{layer}.{block}."
            keys |= {f"{p}conv1.weight", f"{p}conv2.weight", *(f"{p}bn{i}.{s}" for i in (1, 2) for s in bn)}
            if layer > 1 and block == 0:
                keys |= {f"{p}downsample.0.weight", *(f"{p}downsample.1.{s}" for s in bn)}
    return keys


# --- ResNet-18 encoder --------------------------------------------------------------------------


def test_resnet18_has_torchvision_names_shapes_and_size():
    with torch.device("meta"):
        enc = ResNet18Encoder(VisualConfig())
    state = enc.state_dict()
    assert set(state) == torchvision_resnet18_keys() and len(state) == 120
    assert state["conv1.weight"].shape == (64, 3, 7, 7)
    assert state["layer2.0.downsample.0.weight"].shape == (128, 64, 1, 1)
    assert state["layer4.1.conv2.weight"].shape == (512, 512, 3, 3)
    # torchvision resnet18: 11,689,512 parameters, of which fc holds 512 * 1000 + 1000
    assert count_parameters(enc) == 11_689_512 - 513_000


@pytest.mark.parametrize("size", [(40, 72), (33, 17), (224, 448)])
def test_feature_map_size_and_pooling(size):
    enc = ResNet18Encoder(VisualConfig(base_channels=2))
    feat = enc(torch.randn(1, 3, *size))
    assert feat.shape == (1, 16, feature_size(size[0]), feature_size(size[1]))
    assert pool_features(feat).shape == (1, 16)
    torch.testing.assert_close(pool_features(feat), feat.mean((2, 3)))
    assert pool_features(feat, (2, 3)).shape == (1, 16 * 6)


def test_loads_a_local_checkpoint_in_torchvision_format(tmp_path):
    torch.manual_seed(0)
    source = ResNet18Encoder(VisualConfig(**TINY_VISUAL)).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that loading them shows
        for m in source.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
    # as torchvision's own files: a classifier, and no num_batches_tracked (saved before PyTorch 0.4.1)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("num_batches_tracked")}
    state |= {"fc.weight": torch.randn(1000, 32), "fc.bias": torch.randn(1000)}
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    loaded = ResNet18Encoder(VisualConfig(**TINY_VISUAL, weights=str(path))).eval()
    x = torch.randn(2, 3, 40, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), source(x))
    assert torch.equal(loaded.layer3[0].downsample[1].running_var, source.layer3[0].downsample[1].running_var)


def _bad_checkpoint(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    state = ResNet18Encoder(VisualConfig(**TINY_VISUAL)).state_dict()
    if kind == "absent":
        return path, "no such checkpoint"
    if kind == "garbage":
        path.write_bytes(b"not a checkpoint")
        return path, "not a readable"
    if kind == "missing_key":
        del state["layer2.1.bn2.weight"]
        expect = "layer2.1.bn2.weight"
    elif kind == "wrong_shape":
        state["conv1.weight"] = torch.zeros(4, 1, 7, 7)
        expect = "conv1.weight"
    else:
        state["layer5.0.conv1.weight"] = torch.zeros(1)
        expect = "layer5.0.conv1.weight"
    torch.save(state, path)
    return path, expect


@pytest.mark.parametrize("kind", ["absent", "garbage", "missing_key", "wrong_shape", "extra_key"])
def test_bad_checkpoint_fails_naming_path_and_key(tmp_path, kind):
    path, expect = _bad_checkpoint(tmp_path, kind)
    with pytest.raises(WeightsError) as err:
        ResNet18Encoder(VisualConfig(**TINY_VISUAL, weights=str(path)), where="image_encoder")
    assert str(path) in str(err.value) and expect in str(err.value)
    assert str(err.value).startswith("image_encoder.weights: ")


# --- Mono2Binaural ------------------------------------------------------------------------------


@pytest.mark.parametrize("f,t", [(257, 64), (257, 63), (129, 1), (31, 45)])
def test_mono2binaural_shapes_and_mask_range(f, t):
    torch.manual_seed(0)
    x = inputs(f, t)
    out = m2b()(x["mono"], x["image"])
    assert out["mask"].shape == out["diff"].shape == (2, 2, f, t)
    assert out["mask"].abs().max() <= 1


@pytest.mark.parametrize("name", ["mono2binaural", "depth_infused"])
def test_diff_is_the_complex_product_of_mask_and_mono(name):
    torch.manual_seed(0)
    x = inputs(129, 21)
    model = m2b() if name == "mono2binaural" else depth_infused()
    out = model(x["mono"], x["image"]) if name == "mono2binaural" else model(**x)
    mask = torch.complex(out["mask"][:, 0], out["mask"][:, 1])
    mono = torch.complex(x["mono"][:, 0], x["mono"][:, 1])
    expected = mask * mono
    torch.testing.assert_close(out["diff"], torch.stack((expected.real, expected.imag), dim=1))


def test_mono2binaural_gradients_reach_the_visual_encoder_and_image_matters():
    torch.manual_seed(0)
    model = m2b()
    x = inputs(33, 16)
    model(x["mono"], x["image"])["diff"].square().mean().backward()
    for name in ("visual.conv1.weight", "visual.layer4.1.conv2.weight", "reduce.0.weight", "encoder.blocks.0.0.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name
    model.eval()
    with torch.no_grad():
        a = model(x["mono"], x["image"])["mask"]
        b = model(x["mono"], torch.randn_like(x["image"]))["mask"]
    assert not torch.allclose(a, b)


def test_mono2binaural_parameter_count_matches_the_original():
    """The original's layers (2.5D-Visual-Sound ``AudioNet`` + ``VisualNet``), counted by hand.

    Down convs 2-64-128-256-512-512 (4x4, bias, BatchNorm), up convs 1296-512, 1024-256, 512-128,
    256-64 (4x4, bias, BatchNorm) and 128-2 (4x4, bias), 1x1 conv 512-8 (bias, BatchNorm), and
    ResNet-18 without fc (11,176,512). Ours drops the 2,440 biases that precede a BatchNorm.
    """

    def conv(c_in, c_out, bn=True):
        return c_in * c_out * 16 + c_out + (2 * c_out if bn else 0)

    down = sum(conv(i, o) for i, o in [(2, 64), (64, 128), (128, 256), (256, 512), (512, 512)])
    up = sum(conv(i, o) for i, o in [(1296, 512), (1024, 256), (512, 128), (256, 64)]) + conv(128, 2, bn=False)
    original = down + up + (512 * 8 + 8 + 16) + 11_176_512
    assert original == 34_262_746
    with torch.device("meta"):
        ours = count_parameters(Mono2Binaural(Mono2BinauralConfig()))
    assert ours == original - 2_440  # measured: 34,260,306


def test_visual_grid_is_validated():
    with pytest.raises(ParamError, match=r"m2b\.visual_grid"):
        parse(Mono2BinauralConfig, {"visual_grid": [7]}, "m2b")
    with pytest.raises(ParamError, match=r"m2b\.visual\.base_channels"):
        parse(Mono2BinauralConfig, {"visual": {"base_channels": 0}}, "m2b")


# --- depth-infused cross-modal attention --------------------------------------------------------


@pytest.mark.parametrize("use_image,use_depth", ABLATION)
def test_depth_infused_shapes_range_and_modalities(use_image, use_depth):
    torch.manual_seed(0)
    model = depth_infused(use_image=use_image, use_depth=use_depth)
    assert sorted(model.visual) == sorted(m for m, on in (("image", use_image), ("depth", use_depth)) if on)
    x = inputs(129, 37)
    out = model(**x)
    assert out["mask"].shape == out["diff"].shape == (2, 2, 129, 37)
    assert out["mask"].abs().max() <= 1
    assert "attention" not in out


def test_modality_flags_remove_a_modality():
    torch.manual_seed(0)
    x = inputs(65, 16)
    for m in ("image", "depth"):
        changed = {**x, m: torch.rand_like(x[m])}
        for used in (False, True):
            model = depth_infused(**{f"use_{m}": used}).eval()
            with torch.no_grad():
                same = torch.equal(model(**x)["mask"], model(**changed)["mask"])
            assert same != used, (m, used)
    off = depth_infused(use_image=False, use_depth=False)
    assert not any(n.startswith(("visual.", "attention.")) for n, _ in off.named_parameters())
    off(x["mono"])  # audio only: no visual input needed
    with pytest.raises(ValueError, match="use_depth"):
        depth_infused(use_image=False)(x["mono"], image=x["image"])


def test_depth_infused_gradients_reach_both_encoders_and_every_level():
    torch.manual_seed(0)
    model = depth_infused()
    model(**inputs(33, 16))["diff"].square().mean().backward()
    for m in ("image", "depth"):
        for name in (f"visual.{m}.conv1.weight", f"visual.{m}.layer4.1.conv2.weight"):
            assert model.get_parameter(name).grad.abs().sum() > 0, name
        for level in range(5):
            assert model.attention[m][level].align[0].weight.grad.abs().sum() > 0, (m, level)


def test_cosine_attention_rows_sum_to_one_and_ignore_scale():
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 30, 8), torch.randn(2, 7, 8), torch.randn(2, 7, 8)
    out, attn = cosine_attention(q, k, v, 0.1, return_attention=True)
    assert attn.shape == (2, 30, 7)
    torch.testing.assert_close(attn.sum(-1), torch.ones(2, 30))
    scale = torch.rand(2, 7, 1) * 10 + 0.1  # a different positive scale per key
    out_scaled, attn_scaled = cosine_attention(q * 3.0, k * scale, v, 0.1, return_attention=True)
    torch.testing.assert_close(attn_scaled, attn)
    torch.testing.assert_close(out_scaled, out)
    fused, none = cosine_attention(q, k, v, 0.1)
    assert none is None
    torch.testing.assert_close(fused, out, atol=1e-5, rtol=1e-4)
    sharp = cosine_attention(q, k, v, 0.01, return_attention=True)[1]
    assert sharp.max(-1).values.mean() > attn.max(-1).values.mean()  # a lower temperature is sharper


def test_depth_infused_attention_maps_match_the_fused_path():
    torch.manual_seed(0)
    model = depth_infused().eval()
    x = inputs(257, 40, batch=1)
    with torch.no_grad():
        plain, with_maps = model(**x), model(**x, return_attention=True)
    torch.testing.assert_close(plain["mask"], with_maps["mask"], atol=1e-5, rtol=1e-4)
    maps = with_maps["attention"]
    grid = (feature_size(40), feature_size(72))
    for m in ("image", "depth"):
        assert sorted(maps[m]) == [1, 2, 3, 4, 5]
        assert maps[m][1].shape == (1, 288 // 32, 64 // 32, *grid)  # padded 257 x 40 -> 288 x 64
        assert maps[m][5].shape == (1, 288 // 2, 64 // 2, *grid)
        torch.testing.assert_close(maps[m][3].flatten(-2).sum(-1), torch.ones(1, 288 // 8, 64 // 8))


def test_attention_memory_check_names_the_key():
    cfg = DepthInfusedConfig(attention_memory_budget_mb=100.0)
    per_level = attention_memory_mb(cfg, 32, 257, 64, (224, 448))
    # level 5: 144 x 32 audio positions x 7 x 14 image positions x 32 samples x 4 bytes
    assert per_level["image"][5] == pytest.approx(144 * 32 * 98 * 32 * 4 / 2**20)
    assert set(per_level) == {"image", "depth"}
    check_attention_memory(cfg, 8, 257, 64, (224, 448))
    with pytest.raises(AttentionMemoryError, match=r"di\.model\.attention_memory_budget_mb: .*level 5") as err:
        check_attention_memory(cfg, 32, 257, 64, (224, 448), where="di.model")
    assert isinstance(err.value, ParamError)
    audio_only = DepthInfusedConfig(use_image=False, use_depth=False, attention_memory_budget_mb=1e-9)
    check_attention_memory(audio_only, 1024, 257, 6400, (1024, 1024))
    with pytest.raises(AttentionMemoryError):  # the forward pass checks before computing anything
        depth_infused(attention_memory_budget_mb=0.01)(**inputs(257, 64))


@pytest.mark.parametrize("name", ["mono2binaural", "depth_infused"])
def test_outputs_stay_float32_under_bf16_autocast(name):
    model = m2b() if name == "mono2binaural" else depth_infused()
    x = inputs(33, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x["mono"], x["image"]) if name == "mono2binaural" else model(**x)
    assert out["mask"].dtype == out["diff"].dtype == torch.float32


def test_paper_size_parameter_counts():
    """Measured at the default (paper) size; reported, not compared with a published number."""
    counts = {}
    for use_image, use_depth in ABLATION:
        with torch.device("meta"):
            model = DepthInfusedBinaural(DepthInfusedConfig(use_image=use_image, use_depth=use_depth))
        counts[use_image, use_depth] = count_parameters(model)
    # audio only is the Mono2Binaural audio UNet without the tiled visual vector (784 input channels)
    assert counts[False, False] == 34_260_306 - 11_176_512 - 8 * 512 - 16 - 784 * 512 * 16
    assert counts[False, False] < counts[True, False] < counts[True, True]
