"""The BigVGAN generator against NVIDIA's own code, the ``bigvgan==2.4.1`` package (a dev-only dependency,
built here with random weights: no checkpoint is ever fetched): the same state-dict keys, parameter counts
and waves, its checkpoints, and its config checks."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import warnings

import pytest
import torch

import binaural_lab.models.bigvgan as bv
from binaural_lab.config import ParamError, parse
from binaural_lab.family import count_parameters
from binaural_lab.models.bigvgan import (
    NAMED_CONFIGS,
    Activation1d,
    BigVGAN,
    BigVGANConfig,
    CheckpointError,
    DownSample1d,
    Snake,
    SnakeBeta,
    UpSample1d,
    config_from_nvidia,
    load_checkpoint,
    named_config,
)

# NVIDIA's configs/bigvgan_v2_22khz_80band_256x.json and bigvgan_base_22khz_80band.json, generator keys
# and a few of the training keys that config_from_nvidia must ignore
NVIDIA_V2_22KHZ = {
    "resblock": "1",
    "learning_rate": 0.0001,
    "upsample_rates": [4, 4, 2, 2, 2, 2],
    "upsample_kernel_sizes": [8, 8, 4, 4, 4, 4],
    "upsample_initial_channel": 1536,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "use_tanh_at_final": False,
    "use_bias_at_final": False,
    "activation": "snakebeta",
    "snake_logscale": True,
    "use_cqtd_instead_of_mrd": True,
    "num_mels": 80,
    "hop_size": 256,
    "sampling_rate": 22050,
}
NVIDIA_BASE_22KHZ = {
    "resblock": "1",
    "upsample_rates": [8, 8, 2, 2],
    "upsample_kernel_sizes": [16, 16, 4, 4],
    "upsample_initial_channel": 512,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "activation": "snakebeta",
    "snake_logscale": True,
    "num_mels": 80,
    "fmax": 8000,
}


@pytest.fixture(scope="module")
def nvidia():
    return pytest.importorskip("bigvgan")


def nvidia_generator(nvidia, cfg: BigVGANConfig, seed: int = 0) -> torch.nn.Module:
    """NVIDIA's generator for ``cfg`` with random weights: PyTorch's initialisation of the convolutions
    (random biases too) and, so that every channel differs, random snake parameters."""
    torch.manual_seed(seed)
    h = nvidia.AttrDict({**dataclasses.asdict(cfg), "resblock": "1"})
    with warnings.catch_warnings():  # their torch.nn.utils.weight_norm calls warn that it is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        model = nvidia.BigVGAN(h, use_cuda_kernel=False)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".alpha", ".beta")):
                p.copy_(torch.randn_like(p) * 0.5 if cfg.snake_logscale else torch.rand_like(p) + 0.5)
    return model.eval()


def ours_from(reference: torch.nn.Module, cfg: BigVGANConfig) -> BigVGAN:
    model = BigVGAN(cfg).eval()
    result = model.load_state_dict(reference.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    return model


def max_error(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


# --- against NVIDIA's code --------------------------------------------------------------------------


def test_official_package_imports_and_builds_without_network():
    code = (
        "import socket\n"
        "def refuse(*args, **kwargs):\n"
        "    raise OSError('network access attempted')\n"
        "socket.socket.connect = socket.create_connection = socket.getaddrinfo = refuse\n"
        "import warnings; warnings.simplefilter('ignore')\n"
        "import bigvgan\n"
        "h = bigvgan.AttrDict(resblock='1', num_mels=80, upsample_rates=[8, 8, 4], upsample_kernel_sizes=[16, 16, 8],\n"
        "    upsample_initial_channel=32, resblock_kernel_sizes=[3], resblock_dilation_sizes=[[1]],\n"
        "    activation='snakebeta', snake_logscale=True)\n"
        "bigvgan.BigVGAN(h, use_cuda_kernel=False)\n"
        "print('built')\n"
    )
    pytest.importorskip("bigvgan")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=dict(os.environ))
    assert proc.returncode == 0 and "built" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(NAMED_CONFIGS))
def test_named_configs_have_nvidia_keys_shapes_and_parameter_counts(nvidia, name):
    cfg = named_config(name)
    with torch.device("meta"), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        ours = BigVGAN(cfg)
        theirs = nvidia.BigVGAN(nvidia.AttrDict({**dataclasses.asdict(cfg), "resblock": "1"}))
    counts = []
    for _ in ("weight norm", "removed"):
        state, reference = ours.state_dict(), theirs.state_dict()
        assert set(state) == set(reference)
        assert all(state[k].shape == reference[k].shape for k in state)
        assert count_parameters(ours) == count_parameters(theirs)
        counts.append(count_parameters(ours))
        ours.remove_weight_norm()
        theirs.remove_weight_norm()
    assert cfg.hop_length == ours.hop_length == 256
    with_norm, without = counts
    # one gain per slice of dim 0: per output channel of a convolution, per input channel of a transposed one
    convolutions = [m for m in ours.modules() if isinstance(m, torch.nn.Conv1d | torch.nn.ConvTranspose1d)]
    assert with_norm - without == sum(m.weight.shape[0] for m in convolutions)
    expected = {"22khz_80band_256x": (110e6, 115e6), "base_22khz_80band": (13.5e6, 14.5e6), "small": (1e5, 1e6)}
    low, high = expected[name]
    assert low < with_norm < high, f"{name}: {with_norm:,} parameters with weight norm, {without:,} without"


def test_filters_and_resamplers_match_nvidia(nvidia):
    from bigvgan.alias_free_activation.torch.resample import DownSample1d as TheirDown
    from bigvgan.alias_free_activation.torch.resample import UpSample1d as TheirUp

    torch.manual_seed(0)
    for taps in (8, 10, 12):
        up, their_up = UpSample1d(taps).double(), TheirUp(2, taps).double()
        down, their_down = DownSample1d(taps).double(), TheirDown(2, taps).double()
        assert torch.equal(up.filter, their_up.filter)
        assert torch.equal(down.lowpass.filter, their_down.lowpass.filter)
        for length in (1, 2, 7, 64):
            x = torch.randn(2, 3, length, dtype=torch.float64)
            assert max_error(up(x), their_up(x)) < 1e-12
            assert max_error(down(x), their_down(x)) < 1e-12


@pytest.mark.parametrize("snake", ["snakebeta", "snake"])
@pytest.mark.parametrize("logscale", [True, False])
def test_activation_matches_nvidia_in_both_forms_and_any_chunking(nvidia, monkeypatch, snake, logscale):
    from bigvgan import activations
    from bigvgan.alias_free_activation.torch.act import Activation1d as TheirActivation

    torch.manual_seed(0)
    channels = 3
    their_act = (activations.SnakeBeta if snake == "snakebeta" else activations.Snake)(
        channels, alpha_logscale=logscale
    )
    theirs = TheirActivation(their_act).double()
    ours = Activation1d((SnakeBeta if snake == "snakebeta" else Snake)(channels, logscale=logscale)).double()
    with torch.no_grad():
        for p in theirs.act.parameters():
            p.copy_(torch.randn_like(p) * 0.5 if logscale else torch.rand_like(p) + 0.5)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    for min_chunk, elements in ((bv.MIN_CHUNK, bv.CPU_CHUNK_ELEMENTS), (1, 1), (2, 1), (64, 1)):
        monkeypatch.setattr(bv, "MIN_CHUNK", min_chunk)  # chunks shorter than, as long as and longer than the halo
        monkeypatch.setattr(bv, "CPU_CHUNK_ELEMENTS", elements)
        for length in (1, 2, 5, 130):
            x = 3 * torch.randn(2, channels, length, dtype=torch.float64)
            expected = theirs(x)
            assert max_error(ours.forward_chunked(x), expected) < 1e-12, (min_chunk, length)
            assert max_error(ours.forward_grouped(x), expected) < 1e-12, length


VARIANTS = {
    "v2": {},
    "snake-linear-v1-ends": {"activation": "snake", "snake_logscale": False, "use_tanh_at_final": True},
    "bias-at-final": {
        "use_bias_at_final": True,
        "resblock_kernel_sizes": [3, 5],
        "resblock_dilation_sizes": [[1, 2], [3]],
    },
}


@pytest.mark.parametrize(
    ("variant", "form"), [*((v, "chunked") for v in sorted(VARIANTS)), ("v2", "small-chunks"), ("v2", "grouped")]
)
def test_small_generator_matches_nvidia_with_and_without_weight_norm(nvidia, monkeypatch, variant, form):
    if form == "small-chunks":  # chunks of 300 samples in the longer stages, with a shorter last one
        monkeypatch.setattr(bv, "MIN_CHUNK", 300)
        monkeypatch.setattr(bv, "CPU_CHUNK_ELEMENTS", 1)
    if form == "grouped":  # the CUDA form, run on the CPU
        monkeypatch.setattr(Activation1d, "forward", Activation1d.forward_grouped)
    cfg = named_config("small", **VARIANTS[variant])
    theirs = nvidia_generator(nvidia, cfg)
    ours = ours_from(theirs, cfg)
    torch.manual_seed(1)
    mel = torch.randn(2, cfg.num_mels, 13) - 4  # about the log-mel range
    with torch.no_grad():
        expected = theirs(mel)
        assert expected.shape == (2, 1, 13 * 256)
        assert expected.std() > 1e-3  # a wave, not zeros or a clamped constant
        assert max_error(ours(mel), expected) < 1e-4
        theirs.remove_weight_norm()
        ours.remove_weight_norm()
        assert max_error(ours(mel), theirs(mel)) < 1e-4


def test_gradients_match_nvidia(nvidia):
    cfg = named_config("small", upsample_initial_channel=32)
    theirs = nvidia_generator(nvidia, cfg).double().train()
    ours = ours_from(theirs, cfg).double().train()
    torch.manual_seed(2)
    mel = torch.randn(1, cfg.num_mels, 5, dtype=torch.float64) - 4
    target = torch.randn(1, 1, 5 * 256, dtype=torch.float64)
    inputs = []
    for model in (theirs, ours):
        x = mel.clone().requires_grad_(True)
        (model(x) * target).sum().backward()
        inputs.append(x.grad)
    assert max_error(*inputs) < 1e-9 * inputs[0].abs().max().item()
    theirs_grads = dict(theirs.named_parameters())
    for name, p in ours.named_parameters():
        reference = theirs_grads[name].grad
        assert p.grad is not None and max_error(p.grad, reference) <= 1e-9 * max(reference.abs().max().item(), 1), name


def test_base_config_matches_nvidia(nvidia):
    cfg = named_config("base_22khz_80band")
    theirs = nvidia_generator(nvidia, cfg)
    ours = ours_from(theirs, cfg)
    theirs.remove_weight_norm()
    ours.remove_weight_norm()
    torch.manual_seed(3)
    mel = torch.randn(1, cfg.num_mels, 6) - 4
    with torch.no_grad():
        expected = theirs(mel)
        assert expected.shape == (1, 1, 6 * 256) and expected.std() > 1e-3
        assert max_error(ours(mel), expected) < 1e-4


# --- checkpoints ------------------------------------------------------------------------------------


def test_checkpoint_round_trips_in_nvidia_format(nvidia, tmp_path):
    cfg = named_config("small")
    theirs = nvidia_generator(nvidia, cfg)
    path = tmp_path / "bigvgan_generator.pt"
    torch.save({"generator": theirs.state_dict()}, path)
    ours = load_checkpoint(BigVGAN(cfg).eval(), path)
    mel = torch.randn(1, cfg.num_mels, 4) - 4
    with torch.no_grad():
        expected = theirs(mel)
        assert max_error(ours(mel), expected) < 1e-4
        # and back: NVIDIA's code reads this model's state dict as it is
        back = nvidia_generator(nvidia, cfg, seed=5)
        back.load_state_dict(ours.state_dict(), strict=True)
        assert max_error(back(mel), expected) < 1e-6
        # a checkpoint saved without weight norm loads into a model with it (which then loses it)
        torch.save({"generator": BigVGAN(cfg).remove_weight_norm().state_dict()}, path)
        plain = torch.load(path, weights_only=True)["generator"]
        model = load_checkpoint(BigVGAN(cfg), path)
        assert not any(k.endswith("weight_g") for k in model.state_dict())
        assert all(torch.equal(v, plain[k]) for k, v in model.state_dict().items())


def test_checkpoint_errors_name_the_file_and_what_was_expected(tmp_path):
    small = named_config("small")
    path = tmp_path / "bigvgan_generator.pt"
    with pytest.raises(CheckpointError, match="no such file"):
        load_checkpoint(BigVGAN(small), path)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"bigvgan_generator\.pt: not a PyTorch checkpoint"):
        load_checkpoint(BigVGAN(small), path)
    torch.save(BigVGAN(small).state_dict(), path)  # a bare state dict, not {"generator": ...}
    with pytest.raises(CheckpointError, match=r"expected \{'generator': state_dict\} .*, got keys conv_pre\.bias, "):
        load_checkpoint(BigVGAN(small), path)
    torch.save({"generator": BigVGAN(small).state_dict()}, path)
    with pytest.raises(CheckpointError, match=r"has weight norm \(weight_g, weight_v\) and the model not"):
        load_checkpoint(BigVGAN(small).remove_weight_norm(), path)
    narrower = named_config("small", upsample_initial_channel=32)
    with pytest.raises(CheckpointError, match=r"bigvgan_generator\.pt: a checkpoint of another config.*expected \["):
        load_checkpoint(BigVGAN(narrower), path)
    deeper = named_config("small", upsample_rates=[8, 4, 4, 2], upsample_kernel_sizes=[16, 8, 8, 4])
    with pytest.raises(CheckpointError, match=r"another config \(missing keys ups\.3\.0\.bias"):
        load_checkpoint(BigVGAN(deeper), path)


# --- config and shapes ------------------------------------------------------------------------------


def test_config_from_nvidia_json():
    assert config_from_nvidia(NVIDIA_V2_22KHZ) == named_config("22khz_80band_256x") == BigVGANConfig()
    assert config_from_nvidia(NVIDIA_BASE_22KHZ) == named_config("base_22khz_80band")
    assert config_from_nvidia(NVIDIA_BASE_22KHZ).use_tanh_at_final  # v1 files: NVIDIA's code defaults to true
    with pytest.raises(ParamError, match=r"config\.json\.resblock: '2' is not supported"):
        config_from_nvidia({**NVIDIA_V2_22KHZ, "resblock": "2"})
    with pytest.raises(ParamError, match="unknown config 'large'"):
        named_config("large")


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"upsample_kernel_sizes": [8, 8, 4]}, r"vocoder\.upsample_kernel_sizes: 3 kernels for 6 upsample_rates"),
        ({"upsample_kernel_sizes": [8, 8, 4, 4, 4, 1]}, r"vocoder\.upsample_kernel_sizes\[5\]: 1 must be >= the rate"),
        ({"upsample_kernel_sizes": [8, 8, 4, 4, 4, 5]}, r"vocoder\.upsample_kernel_sizes\[5\]: .* an even number"),
        ({"upsample_rates": [4, 0, 2, 2, 2, 2]}, r"vocoder\.upsample_rates\[1\]: 0 is out of range"),
        ({"upsample_rates": [], "upsample_kernel_sizes": []}, r"vocoder\.upsample_rates: expected at least one"),
        ({"upsample_initial_channel": 32}, r"vocoder\.upsample_initial_channel: 32 leaves no channel"),
        ({"resblock_kernel_sizes": [3, 8, 11]}, r"vocoder\.resblock_kernel_sizes\[1\]: 8 must be odd"),
        ({"resblock_dilation_sizes": [[1, 3, 5]]}, r"vocoder\.resblock_dilation_sizes: 1 lists for 3"),
        ({"resblock_dilation_sizes": [[1, 3], [], [1]]}, r"vocoder\.resblock_dilation_sizes\[1\]: expected dilations"),
        ({"activation": "relu"}, r"vocoder\.activation: 'relu' is not one of"),
        ({"num_mels": 0}, r"vocoder\.num_mels: 0 is out of range"),
        ({"hop_length": 256}, r"vocoder: unknown key\(s\) \['hop_length'\]"),
    ],
)
def test_bad_config_values_name_the_key(values, message):
    with pytest.raises(ParamError, match=message):
        parse(BigVGANConfig, values, "vocoder")


def test_bad_config_fails_when_built_directly():
    with pytest.raises(ParamError, match=r"BigVGANConfig\.upsample_kernel_sizes\[0\]"):
        BigVGAN(BigVGANConfig(upsample_rates=[8, 8, 4], upsample_kernel_sizes=[4, 16, 8]))


def test_output_is_hop_samples_per_frame_in_range():
    cfg = named_config("small")
    model = BigVGAN(cfg).eval()
    for frames in (1, 2, 7, 33):
        with torch.no_grad():
            wave = model(torch.randn(3, cfg.num_mels, frames) * 10)
        assert wave.shape == (3, 1, frames * cfg.hop_length)
        assert wave.abs().max() <= 1.0 and torch.isfinite(wave).all()


def test_forward_rejects_a_mel_of_another_size():
    model = BigVGAN(named_config("small"))
    with pytest.raises(ValueError, match=r"expected a mel \[B, 80, T\], got shape \[2, 100, 5\]"):
        model(torch.zeros(2, 100, 5))


def test_remove_weight_norm_keeps_the_function_and_is_idempotent():
    model = BigVGAN(named_config("small")).eval()
    mel = torch.randn(1, 80, 4)
    with torch.no_grad():
        before = model(mel)
        model.remove_weight_norm().remove_weight_norm()
        assert max_error(model(mel), before) < 1e-6
    assert not any(k.endswith(("weight_g", "weight_v")) for k in model.state_dict())
