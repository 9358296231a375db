"""The binaural-generation family: sliding windows, the oracle round trip to waveforms, loudness
invariance, the difference loss, modality variants, two-convention comparison tables, crop checks and
bit-identical resume of a binauralizer's training."""

import copy
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from binaural_lab.audio.stft import stft_features
from binaural_lab.binaural import (
    COMPARISON,
    REGISTRY,
    BinauralizeConfig,
    BinauralizeError,
    BinauralTask,
    StftSetup,
    rms_scale,
    sliding_prediction,
    stitch,
    train_binauralizer,
    window_starts,
)
from binaural_lab.config import ParamError, parse
from binaural_lab.data.shards import ArraySpec, write_split
from binaural_lab.family import write_comparison, write_metrics
from binaural_lab.losses.binaural import DifferenceLoss, DifferenceLossConfig

WINDOW, HOP = 64, 5
SR = 16000
TINY_M2B = {"ngf": 4, "visual": {"base_channels": 4}, "visual_grid": [1, 1]}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is fastest on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def setup(n_samples: int) -> StftSetup:
    return StftSetup(sample_rate=SR, n_fft=512, hop=160, win=400, audio_rate=SR, clip_samples=n_samples)


def task_for(n_samples: int, crop: int = WINDOW, hop: int = HOP) -> BinauralTask:
    return BinauralTask(loss_fn=None, stft=setup(n_samples), crop_frames=crop, hop_frames=hop, depth_scale=10.0)


# --- sliding windows ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n_frames", [150, 64, 67, 30, 69])
def test_window_starts_cover_every_frame_and_the_last_ends_at_the_clip_end(n_frames):
    starts = window_starts(n_frames, WINDOW, HOP)
    assert starts[0] == 0
    covered = set()
    for s in starts:
        covered |= set(range(s, s + WINDOW))
    assert set(range(n_frames)) <= covered
    if n_frames <= WINDOW:
        assert starts == [0]
        return
    assert starts[-1] + WINDOW == n_frames  # no window runs past the clip
    assert all(b - a == HOP for a, b in zip(starts[:-2], starts[1:-1], strict=True))
    assert 0 < starts[-1] - starts[-2] <= HOP
    assert len(starts) == len(set(starts))


def test_window_starts_known_values():
    assert window_starts(150, 64, 5) == [*range(0, 86, 5), 86]
    assert window_starts(67, 64, 5) == [0, 3]
    assert window_starts(69, 64, 5) == [0, 5]  # 69 - 64 is a multiple of the hop: no extra window
    assert window_starts(64, 64, 5) == [0]
    assert window_starts(30, 64, 5) == [0]


@pytest.mark.parametrize("n_frames", [150, 64, 67, 30])
def test_a_predictor_returning_the_ground_truth_reproduces_the_clip(n_frames):
    gen = torch.Generator().manual_seed(n_frames)
    mix = torch.randn(2, 3, n_frames, generator=gen, dtype=torch.float64)
    gt = torch.randn(2, 3, n_frames, generator=gen, dtype=torch.float64)
    padded = torch.nn.functional.pad(gt, (0, max(0, WINDOW - n_frames)))
    seen = []

    def predict(windows, starts):
        seen.append(list(starts))
        assert windows.shape == (len(starts), 2, 3, WINDOW)
        for w, s in zip(windows, starts, strict=True):  # each window is the mix at its start
            n = min(WINDOW, n_frames - s)
            assert torch.equal(w[..., :n], mix[..., s : s + n])
            assert not w[..., n:].any()  # zero padding past the clip's end
        return torch.stack([padded[..., s : s + WINDOW] for s in starts])

    out = sliding_prediction(predict, mix, WINDOW, HOP)
    assert seen == [window_starts(n_frames, WINDOW, HOP)]
    assert out.shape == gt.shape
    torch.testing.assert_close(out, gt, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("n_frames", [150, 67])
def test_overlapping_window_predictions_are_averaged(n_frames):
    def predict(windows, starts):  # every frame of a window predicted as the window's start
        return torch.stack(
            [torch.full(w.shape, float(s), dtype=torch.float64) for w, s in zip(windows, starts, strict=True)]
        )

    out = sliding_prediction(predict, torch.zeros(1, n_frames, dtype=torch.float64), WINDOW, HOP)[0]
    starts = window_starts(n_frames, WINDOW, HOP)
    for t in range(n_frames):
        covering = [s for s in starts if s <= t < s + WINDOW]
        assert out[t].item() == pytest.approx(sum(covering) / len(covering)), t
    assert out[0].item() == 0.0  # only the window at 0
    if n_frames == 150:
        assert out[5].item() == pytest.approx(2.5)  # windows at 0 and 5
        assert out[9].item() == pytest.approx(2.5)
        assert out[10].item() == pytest.approx(5.0)  # 0, 5, 10
        assert out[149].item() == 86.0  # only the last window, which ends at the clip's end
        assert out[85].item() == pytest.approx(55.0)  # 25, 30, ..., 85
    else:
        assert out[2].item() == 0.0 and out[3].item() == pytest.approx(1.5) and out[66].item() == 3.0


def test_a_clip_shorter_than_the_window_is_padded_and_cut_back():
    mix = torch.arange(1.0, 31.0).reshape(1, 30)
    widths = []

    def predict(windows, starts):
        widths.append(windows.shape[-1])
        assert list(starts) == [0]
        return 2 * windows + 1

    out = sliding_prediction(predict, mix, WINDOW, HOP)
    assert widths == [WINDOW]
    assert out.shape == (1, 30)
    torch.testing.assert_close(out, 2 * mix + 1)


def test_stitch_counts_each_frame_once_per_covering_window():
    windows = torch.ones(3, 4)  # three windows of 4 frames at 0, 2 and 6 over 10 frames
    out = stitch(windows * torch.tensor([[1.0], [3.0], [5.0]]), [0, 2, 6], 10)
    expected = torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 5.0, 5.0, 5.0, 5.0])
    torch.testing.assert_close(out, expected)


# --- the oracle round trip: STFT windows -> stitched difference -> left / right waveforms -----------


def band_limited_stereo(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Left and right of a few tones and low-passed noise below 6 kHz; right is a delayed, quieter left."""
    rng = np.random.default_rng(seed)
    t = np.arange(n + 40) / SR
    tones = sum(a * np.sin(2 * np.pi * f * t + p) for a, f, p in [(0.3, 220, 0.1), (0.2, 1375, 1.0), (0.1, 5400, 2)])
    spectrum = np.fft.rfft(rng.standard_normal(n + 40))
    spectrum[np.fft.rfftfreq(n + 40, 1 / SR) >= 6000] = 0
    noise = np.fft.irfft(spectrum, n + 40)
    source = tones + 0.1 * noise / noise.std()
    left = source[40:] * np.linspace(0.5, 1.0, n)  # a level change over the clip
    right = 0.6 * source[13 : 13 + n] + 0.05 * np.sin(2 * np.pi * 700 * t[:n])
    return torch.tensor(left, dtype=torch.float32), torch.tensor(right, dtype=torch.float32)


class Oracle(nn.Module):
    """Finds each (RMS-normalised) mix window it is given in the whole clip and returns the true
    difference of that window at the same normalisation."""

    def __init__(self, mix: torch.Tensor, diff: torch.Tensor, window: int):
        super().__init__()
        self.mix, self.diff, self.window = mix.double(), diff.double(), window
        self.dummy = nn.Parameter(torch.zeros(1))
        self.starts: list[int] = []
        self.rms: list[float] = []

    def encode(self, image, depth):
        assert image.shape == (1, 3, 8, 8) and depth.shape == (1, 1, 8, 8)  # once per clip
        return {"image": image, "depth": depth}

    def forward(self, mono, visual):
        assert visual["image"].shape == (len(mono), 3, 8, 8) and visual["depth"].shape == (len(mono), 1, 8, 8)
        out = []
        n_frames = self.mix.shape[-1]
        for x in mono.double():
            self.rms.append(x.pow(2).sum(0).mean().sqrt().item())
            best, best_cos = None, -2.0
            for s in range(max(1, n_frames - self.window + 1)):
                ref = self.mix[..., s : s + self.window]
                cos = (x * ref).sum() / (x.norm() * ref.norm())
                if cos > best_cos:
                    best, best_cos = s, cos.item()
            assert best_cos > 1 - 1e-9, best_cos
            self.starts.append(best)
            ref = self.mix[..., best : best + self.window]
            out.append(self.diff[..., best : best + self.window] * (x.norm() / ref.norm()))
        return {"diff": torch.stack(out).float()}


def test_an_oracle_difference_rebuilds_the_original_left_and_right():
    n = 19200  # 1.2 s: 121 frames, windows at 0, 5, ..., 55 and 57
    left, right = band_limited_stereo(n)
    mono, diff = (left + right) / 2, left - right
    feats = stft_features(torch.stack((mono, diff)), 512, 160, 400)  # [2 (mono, L - R), 2, 257, 121]
    assert feats.shape == (2, 2, 257, 121)
    task = task_for(n)
    oracle = Oracle(2 * feats[0], feats[1], WINDOW)
    frame = torch.randint(0, 256, (1, 3, 8, 8), dtype=torch.uint8)
    depth = torch.rand(1, 8, 8) * 5
    pred = task.predict_difference(oracle, feats[None], frame, depth)
    assert oracle.starts == [*range(0, 56, 5), 57]
    assert oracle.rms == pytest.approx([1.0] * len(oracle.starts), rel=1e-6)  # the network sees unit RMS
    assert pred.shape == (1, 2, 257, 121)
    torch.testing.assert_close(pred[0], feats[1], rtol=1e-4, atol=1e-4 * feats[1].abs().max().item())

    wave = task.waveforms(feats[None, 0], pred)
    assert wave.shape == (1, 2, n)
    torch.testing.assert_close(wave[0], torch.stack((left, right)), rtol=0, atol=1e-4)
    mono_copy = task.waveforms(feats[None, 0], torch.zeros_like(pred))  # the baseline is far from it
    assert (mono_copy[0] - torch.stack((left, right))).abs().max() > 0.1


def test_an_oracle_on_a_clip_shorter_than_the_window():
    n = 4000  # 26 frames, one zero-padded window
    left, right = band_limited_stereo(n, seed=1)
    feats = stft_features(torch.stack(((left + right) / 2, left - right)), 512, 160, 400)
    task = task_for(n)
    padded = torch.nn.functional.pad(feats, (0, WINDOW - feats.shape[-1]))
    oracle = Oracle(2 * padded[0], padded[1], WINDOW)
    pred = task.predict_difference(oracle, feats[None], torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.ones(1, 8, 8))
    assert oracle.starts == [0] and pred.shape == (1, 2, 257, 26)
    wave = task.waveforms(feats[None, 0], pred)
    torch.testing.assert_close(wave[0], torch.stack((left, right)), rtol=0, atol=1e-4)


# --- RMS normalisation --------------------------------------------------------------------------------


def test_rms_scale_known_values_and_silence():
    mix = torch.zeros(3, 2, 5, 4)
    mix[0, 0], mix[0, 1] = 3.0, 4.0  # |z| = 5 everywhere
    mix[1, 0, :, :2] = 2.0  # |z| = 2 on half the bins: mean |z|^2 = 2
    scale = rms_scale(mix)
    assert scale.shape == (3, 1, 1, 1)
    torch.testing.assert_close(scale.flatten(), torch.tensor([0.2, 1 / math.sqrt(2), 1.0]))
    assert torch.isfinite(rms_scale(torch.zeros(2, 2, 257, 64))).all()
    assert torch.equal(rms_scale(torch.zeros(2, 2, 257, 64)), torch.ones(2, 1, 1, 1))


def test_mask_model_predictions_do_not_depend_on_the_input_loudness():
    torch.manual_seed(0)
    model = REGISTRY.build_model("mono2binaural", TINY_M2B).eval()
    task = task_for(12640, crop=26)
    mix = torch.randn(3, 2, 257, 26)
    cond = task.conditions(torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8), torch.rand(3, 32, 32) * 8)
    with torch.no_grad():
        ref = task.predict_windows(model, mix, **cond)
        assert ref.abs().max() > 0
        for k in (1e-3, 7.5, 1e3):
            scaled = task.predict_windows(model, k * mix, **cond)
            torch.testing.assert_close(scaled / k, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
        silent = task.predict_windows(model, torch.zeros_like(mix), **cond)
    assert torch.isfinite(silent).all() and not silent.any()


# --- the difference loss ------------------------------------------------------------------------------


def test_difference_loss_terms_and_the_two_channel_identity():
    gen = torch.Generator().manual_seed(0)
    gt = torch.randn(2, 2, 17, 9, generator=gen)
    pred = gt + 0.3 * torch.randn(2, 2, 17, 9, generator=gen)
    mix = torch.randn(2, 2, 17, 9, generator=gen)
    loss = DifferenceLoss(DifferenceLossConfig(l_diff=1.0, l_2ch=1.0))
    total, parts = loss(pred, gt, mix, epoch=0)
    assert parts["diff"] == pytest.approx((pred - gt).pow(2).mean().item(), rel=1e-6)
    assert parts["2ch"] == pytest.approx(parts["diff"] / 4, rel=1e-5)  # the docstring's identity
    assert total.item() == pytest.approx(1.25 * parts["diff"], rel=1e-5)

    offset = gt + 2.0  # every entry off by 2: diff 4, left and right each 1
    total, parts = DifferenceLoss(DifferenceLossConfig(l_diff=0.5, l_2ch=3.0))(offset, gt, mix, 0)
    assert parts == pytest.approx({"diff": 4.0, "2ch": 1.0})
    assert total.item() == pytest.approx(0.5 * 4 + 3.0 * 1)
    assert total.requires_grad is False and total.dtype == torch.float32

    half = DifferenceLoss(DifferenceLossConfig())(offset.bfloat16(), gt.bfloat16(), mix.bfloat16(), 0)[0]
    assert half.dtype == torch.float32  # computed in float32 under bf16 inputs


def test_difference_loss_weights_and_bad_settings():
    loss = DifferenceLoss(DifferenceLossConfig(l_diff=0.7, l_2ch=0.2), epochs=10)
    assert loss.weights(0) == loss.weights(9) == {"l_diff": 0.7, "l_2ch": 0.2}
    assert parse(DifferenceLossConfig, {"l_2ch": 1.0}, "x") == DifferenceLossConfig(l_diff=1.0, l_2ch=1.0)
    with pytest.raises(ParamError, match=r"^x: l_diff and l_2ch are both 0"):
        parse(DifferenceLossConfig, {"l_diff": 0, "l_2ch": 0}, "x")
    with pytest.raises(ParamError, match=r"x\.l_2ch"):
        parse(DifferenceLossConfig, {"l_2ch": -1}, "x")
    a = torch.zeros(1, 2, 5, 4)
    with pytest.raises(ValueError, match="same shape"):
        loss(a, torch.zeros(1, 2, 5, 3), a, 0)
    with pytest.raises(ValueError, match="same shape"):
        loss(a, a, torch.zeros(1, 2, 4, 4), 0)


# --- modality variants ----------------------------------------------------------------------------------


def test_variant_flags_name_the_run_and_set_the_modalities():
    block = {"model": {"ngf": 4, "use_image": True, "use_depth": True}, "train": {"epochs": 3}}
    before = copy.deepcopy(block)
    run, out = REGISTRY.variant("depth_infused", ["image", "no_depth"], block)
    assert run == "depth_infused-image-no_depth"
    assert out == {"model": {"ngf": 4, "use_image": True, "use_depth": False}, "train": {"epochs": 3}}
    assert block == before  # the input block is untouched
    p = REGISTRY.params("depth_infused", out)
    cfg = REGISTRY.model_config("depth_infused", p.model)
    assert cfg.use_image is True and cfg.use_depth is False
    assert REGISTRY.variant("depth_infused", [], block) == ("depth_infused", before)
    run, out = REGISTRY.variant("depth_infused", ["no_image", "no_depth"], block)
    assert run == "depth_infused-no_image-no_depth" and out["model"]["use_image"] is False


def test_bad_variant_flags_name_the_params_block():
    block = {"model": {"ngf": 4}}
    with pytest.raises(ParamError, match=r"^binaural_models\.depth_infused: variant 'mono' is not one of"):
        REGISTRY.variant("depth_infused", ["mono"], block)
    with pytest.raises(ParamError, match=r"^binaural_models\.depth_infused: .*more than once") as err:
        REGISTRY.variant("depth_infused", ["image", "no_image"], block)
    assert "model.use_image" in str(err.value)
    with pytest.raises(ParamError, match=r"binaural_models\.depth_infused: .*more than once"):
        REGISTRY.variant("depth_infused", ["depth", "depth"], block)
    for flag in ("image", "no_depth"):
        with pytest.raises(ParamError, match=r"^binaural_models\.mono2binaural: variant"):
            REGISTRY.variant("mono2binaural", [flag], {"model": dict(TINY_M2B)})
    assert REGISTRY.variant("mono2binaural", [], {"model": {}})[0] == "mono2binaural"
    with pytest.raises(ParamError, match=r"binaural_models: 'nope' is not one of"):
        REGISTRY.variant("nope", [], {})


# --- the comparison table in two conventions --------------------------------------------------------------

GAO_KEYS = ("stft", "env", "mag", "phase", "snr")
DB_KEYS = ("stft", "mag", "phase", "env", "snr", "mel_rmse", "iacc", "ild", "itd")


def write_reports(root, stft: dict[str, dict[str, float]]):
    """metrics_gao.json and metrics_diffbinaural.json per model; ``stft[conv][model]`` its stft value."""
    for conv, keys in (("gao", GAO_KEYS), ("diffbinaural", DB_KEYS)):
        for i, (model, value) in enumerate(stft[conv].items()):
            metrics = {k: 0.1 * (i + 1) for k in keys} | {"stft": value}
            description = "Gao & Grauman convention" if conv == "gao" else "diffbinaural"
            write_metrics(
                root / model,
                model,
                metrics,
                split="test",
                convention=conv,
                convention_description=description,
                n_parameters=1000 * i,
                train_seconds=12.0 * i,
                filename=f"metrics_{conv}.json",
            )


def section_of(md: str, heading: str) -> list[str]:
    lines = md.split("## ")
    (body,) = [s for s in lines if s.startswith(heading + "\n")]
    return body.splitlines()


def test_comparison_in_two_conventions(tmp_path):
    stft = {"gao": {"mono": 1.0, "a": 0.5, "b": 0.8}, "diffbinaural": {"mono": 2.0, "a": 3.0, "b": 1.0}}
    write_reports(tmp_path, stft)
    rows = write_comparison(tmp_path, COMPARISON)
    by_conv = {c: [r for r in rows if r["convention"] == c] for c in ("gao", "diffbinaural")}
    assert len(rows) == 6
    assert [r["model"] for r in by_conv["gao"]] == ["mono", "a", "b"]
    assert [r["model"] for r in by_conv["diffbinaural"]] == ["mono", "b", "a"]
    assert [r["stft_vs_mono_pct"] for r in by_conv["gao"]] == [0.0, -50.0, -20.0]
    assert [r["stft_vs_mono_pct"] for r in by_conv["diffbinaural"]] == [0.0, -50.0, 50.0]
    assert all("mel_rmse" not in r for r in by_conv["gao"])
    assert {r["model"]: r["mel_rmse"] for r in by_conv["diffbinaural"]} == pytest.approx(
        {"mono": 0.1, "a": 0.2, "b": 0.3}
    )

    md = (tmp_path / "compare.md").read_text()
    assert md.startswith("# Binaural generation: test split\n")
    assert "Metric convention:" not in md
    gao, db = section_of(md, "gao"), section_of(md, "diffbinaural")
    assert "Gao & Grauman convention." in gao
    gao_header = [line for line in gao if line.startswith("| model")]
    db_header = [line for line in db if line.startswith("| model")]
    assert gao_header == ["| model | stft | env | mag | phase | snr | stft vs mono | parameters | train s |"]
    assert db_header == [
        "| model | stft | env | mag | phase | snr | mel_rmse | iacc | ild | itd | stft vs mono | parameters | train s |"
    ]
    gao_rows = [line for line in gao if line.startswith("| ") and not line.startswith("| model")]
    assert [r.split(" | ")[0] for r in gao_rows] == ["| mono", "| a", "| b"]
    assert gao_rows[1].startswith("| a | 0.5000 |") and "| -50.0 % |" in gao_rows[1]
    db_rows = [line for line in db if line.startswith("| ") and not line.startswith("| model")]
    assert "| +50.0 % |" in db_rows[2] and db_rows[2].startswith("| a | 3.0000 |")
    assert "mel_rmse" not in "\n".join(gao)

    saved = json.loads((tmp_path / "compare.json").read_text())
    assert set(saved["conventions"]) == {"gao", "diffbinaural"} and len(saved["rows"]) == 6


def test_comparison_refuses_a_model_missing_in_one_convention(tmp_path):
    write_reports(tmp_path, {"gao": {"mono": 1.0, "a": 0.5, "b": 0.8}, "diffbinaural": {"mono": 2.0, "a": 3.0}})
    with pytest.raises(ValueError, match="different conventions"):
        write_comparison(tmp_path, COMPARISON)
    assert not (tmp_path / "compare.md").exists()


# --- training: crop checks and resume --------------------------------------------------------------------


def make_features(root, n_frames: int, n_train: int = 4, n_val: int = 2):
    """Tiny binaural feature shards as compute_binaural_features writes them (stft, frame, depth)."""
    clip_samples = (n_frames - 1) * 160  # 1 + n // hop frames at 16 kHz
    config = {
        "stft_sample_rate": SR,
        "stft_n_fft": 512,
        "stft_hop": 160,
        "stft_win": 400,
        "mel": {"sample_rate": SR},
        "clip_samples": clip_samples,
    }
    arrays = {
        "stft": ArraySpec((2, 2, 257, n_frames), "float32"),
        "frame": ArraySpec((3, 32, 32), "uint8"),
        "depth": ArraySpec((32, 32), "float32"),
    }
    rng = np.random.default_rng(n_frames)
    for split, n in (("train", n_train), ("val", n_val)):
        index = pd.DataFrame({"sample_id": [f"{split}{i}" for i in range(n)]})
        with write_split(root / split, arrays, index, config, "test shards") as writer:
            writer.append(
                {
                    "stft": (0.1 * rng.standard_normal((n, 2, 2, 257, n_frames))).astype(np.float32),
                    "frame": rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
                    "depth": rng.uniform(0, 8, (n, 32, 32)).astype(np.float32),
                }
            )
    return root


def tiny_params(epochs: int = 2):
    block = {
        "model": TINY_M2B,
        "train": {"epochs": epochs, "batch_size": 2, "checkpoint_every": 1, "device": "cpu", "seed": 3},
    }
    return REGISTRY.params("mono2binaural", block)


def test_crops_longer_than_the_clips_are_refused(tmp_path):
    features = make_features(tmp_path / "features", n_frames=20)
    with pytest.raises(BinauralizeError, match=r"^binauralize\.crop_seconds: 0\.63 s .*64 STFT frames") as err:
        train_binauralizer("mono2binaural", tiny_params(), features, BinauralizeConfig(), tmp_path / "ckpt")
    assert "have 20" in str(err.value)
    assert not (tmp_path / "ckpt").exists()  # refused before anything was trained


class Interrupted(RuntimeError):
    pass


def test_an_interrupted_binauralizer_resumes_to_identical_weights(tmp_path):
    features = make_features(tmp_path / "features", n_frames=80)
    cfg = BinauralizeConfig(crop_seconds=0.25)
    assert setup(0).frames(cfg.crop_seconds) == 26

    straight, card = train_binauralizer("mono2binaural", tiny_params(), features, cfg, tmp_path / "straight")
    assert straight.resumed_from_step == 0 and len(straight.history) == 2
    assert card["n_parameters"] > 0 and card["stft"]["clip_samples"] == 79 * 160
    assert {"val_stft", "val_snr", "train_loss", "train_diff"} <= set(straight.history[-1])

    def stop(epoch, train_m, val_m, model):  # after the first epoch's validation, before its checkpoint
        assert train_m["loss_weight/l_diff"] == 1.0
        raise Interrupted

    with pytest.raises(Interrupted):
        train_binauralizer("mono2binaural", tiny_params(), features, cfg, tmp_path / "resumed", on_epoch_end=stop)
    state = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert (state["epoch"], state["batch"], state["step"]) == (0, 1, 1)  # in the middle of the first epoch

    torch.manual_seed(3)  # the training seed: the initial weights, which training must have changed
    initial = REGISTRY.build_model("mono2binaural", TINY_M2B).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in straight.model.state_dict().items())

    resumed, _ = train_binauralizer("mono2binaural", tiny_params(), features, cfg, tmp_path / "resumed")
    assert resumed.resumed_from_step == 1
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.history == straight.history


def test_a_shared_visual_encoding_gives_the_same_prediction_as_the_raw_inputs():
    torch.manual_seed(0)
    blocks = {
        "mono2binaural": {"ngf": 4, "visual": {"base_channels": 4}, "visual_grid": [2, 2]},
        "depth_infused": {"ngf": 4, "image_encoder": {"base_channels": 4}, "depth_encoder": {"base_channels": 4}},
    }
    mono, image, depth = torch.randn(3, 2, 257, 32), torch.randn(1, 3, 32, 32), torch.rand(1, 1, 32, 32)
    for name, cfg in blocks.items():
        model = REGISTRY.build_model(name, cfg).eval()
        with torch.no_grad():
            direct = model(mono, image=image.expand(3, -1, -1, -1), depth=depth.expand(3, -1, -1, -1))["diff"]
            encoded = model.encode(image=image, depth=depth)
            if torch.is_tensor(encoded):
                shared = encoded.expand(3, -1)
            else:
                shared = {k: v.expand(3, -1, -1, -1) for k, v in encoded.items()}
            reused = model(mono, visual=shared)["diff"]
        torch.testing.assert_close(reused, direct, rtol=1e-5, atol=1e-6, msg=name)
