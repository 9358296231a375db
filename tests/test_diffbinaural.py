"""DiffBinaural stage 1: whole-clip generation by cropped sliding windows (exact with an oracle network),
the generated-mels contract and its resume, exact resume of training, bad inputs, and the mel metrics."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from binaural_lab import diffbinaural as db
from binaural_lab.binaural import stitch
from binaural_lab.data.shards import ArraySpec, ShardError, write_split
from binaural_lab.diffbinaural import (
    CROP,
    MEL_MAX,
    MEL_MIN,
    REGISTRY,
    WINDOW,
    DiffusionInputError,
    GeneratedMels,
    SamplingConfig,
    generate_clips,
    generate_split,
    load_model,
    mel_metrics,
    mel_windows,
    normalize_mel,
    score_generated,
    summarize,
    to_target,
    train_diffusion,
)
from binaural_lab.family import save_model

N_MELS, N_FRAMES, FRAME = 16, 150, 32
HOP_FRAMES = 256
TINY_MODEL = {
    "dim": 8,
    "dim_mults": [1, 2],
    "heads": 1,
    "dim_head": 8,
    "context_dim": 16,
    "visual": {"base_channels": 4},
    "token_grid": [2, 2],
    "n_mels": N_MELS,
}
TINY_LOSS = {"timesteps": 50, "target": "residual"}
SPLIT_SIZES = (("train", 6), ("val", 3), ("test", 5))
AZIMUTHS = [-35.0, 5.0, 20.0, 21.0, -20.5, 0.0]
pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_params(epochs: int = 1, batch_size: int = 4, figure_every: int = 0):
    block = {
        "model": TINY_MODEL,
        "loss": TINY_LOSS,
        "train": {"epochs": epochs, "batch_size": batch_size, "checkpoint_every": 1, "device": "cpu", "seed": 3},
        "figure_every": figure_every,
    }
    return REGISTRY.params("diffbinaural", block)


def clip_mels(rng: np.random.Generator, n: int, n_mels: int, n_frames: int) -> np.ndarray:
    """[n, 3 (mono, L, R), n_mels, n_frames] natural-log mels: L louder and R quieter than mono by up to
    1.5 (so that the scaled residual stays inside [-1, 1]), a few values outside the clamp range."""
    mono = rng.uniform(-10.5, 1.0, (n, 1, n_mels, n_frames))
    mono[:, 0, 0, :3] = 2.0  # near the top: L above MEL_MAX there
    mono[:, 0, 1, :3] = -11.0  # near the bottom: R below MEL_MIN there
    ears = mono + np.concatenate(
        [rng.uniform(0.0, 1.5, (n, 1, n_mels, n_frames)), rng.uniform(-1.5, 0.0, (n, 1, n_mels, n_frames))], axis=1
    )
    mel = np.concatenate([mono, ears], axis=1)
    mel[:, 1, 0, :3] = 3.2
    mel[:, 2, 1, :3] = -12.4
    return mel.astype(np.float32)


def write_mel_split(
    split_dir,
    n: int,
    n_frames: int = N_FRAMES,
    n_mels: int = N_MELS,
    seed: int = 0,
    frame: bool = True,
    hop: int = HOP_FRAMES,
):
    """A split as compute_binaural_features writes it, with the arrays the diffusion model reads."""
    rng = np.random.default_rng(seed)
    arrays = {"mel": ArraySpec((3, n_mels, n_frames), "float32"), "positions": ArraySpec((4, 3), "float32")}
    values = {"mel": clip_mels(rng, n, n_mels, n_frames)}
    positions = np.zeros((n, 4, 3), np.float32)
    positions[:, 0] = np.c_[rng.uniform(0, 1, (n, 2)), np.ones(n)]
    values["positions"] = positions
    if frame:
        arrays["frame"] = ArraySpec((3, FRAME, FRAME), "uint8")
        values["frame"] = rng.integers(0, 256, (n, 3, FRAME, FRAME), dtype=np.uint8)
    index = pd.DataFrame(
        {
            "sample_id": [f"{split_dir.name}{i:02d}" for i in range(n)],
            "room_id": [f"room{i % 2}" for i in range(n)],
            "azimuth_deg": [AZIMUTHS[i % len(AZIMUTHS)] for i in range(n)],
        }
    )
    config = {
        "mel": {"sample_rate": 22050, "n_fft": 1024, "hop": hop, "win": 1024, "n_mels": n_mels},
        "clip_samples": n_frames * hop,
    }
    with write_split(split_dir, arrays, index, config, "test shards") as writer:
        writer.append(values)
    return split_dir


def make_features(root, n_frames: int = N_FRAMES, n_mels: int = N_MELS, frame: bool = True, hop: int = HOP_FRAMES):
    for k, (split, n) in enumerate(SPLIT_SIZES):
        write_mel_split(root / split, n, n_frames, n_mels, seed=k, frame=frame, hop=hop)
    return root


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Tiny features, and a tiny model trained one epoch on them, saved as the train stage saves it."""
    root = tmp_path_factory.mktemp("diffusion")
    features = make_features(root / "features")
    result, card = train_diffusion("diffbinaural", tiny_params(), features, root / "ckpt")
    model_file = root / "model.pt"
    save_model(model_file, result.model, card, result.history)
    return {"root": root, "features": features, "model_file": model_file, "card": card, "result": result}


def loaded(trained):
    return load_model(trained["model_file"], trained["features"] / "train")


# --- stitching: an oracle network gives back the clip exactly ------------------------------------------


class Oracle(nn.Module):
    """Stands in for the network: finds the window it is given among all windows of the known clips by
    its mono input and returns the exact noise of that window's true target."""

    def __init__(self, scheduler, mel: torch.Tensor, clip_tags: torch.Tensor, guided: bool = False):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.scheduler, self.clip_tags, self.guided = scheduler, clip_tags, guided
        n_frames = mel.shape[-1]
        padded = max(n_frames, WINDOW)
        norm = normalize_mel(mel.float())
        norm = torch.nn.functional.pad(norm, (0, padded - n_frames), value=-1.0)  # silence, as generate_clips
        self.starts = mel_windows(padded)
        self.keys = [(c, s) for c in range(len(mel)) for s in self.starts]
        windows = torch.stack([norm[c, ..., s : s + WINDOW] for c, s in self.keys])
        self.monos = windows[:, :1]
        # standardisation statistics as a trained model holds them (used by the residual target)
        self.register_buffer("target_mean", torch.linspace(-0.1, 0.1, 2 * mel.shape[-2]).view(2, -1, 1))
        self.register_buffer("target_std", torch.linspace(0.5, 1.5, 2 * mel.shape[-2]).view(2, -1, 1))
        self.targets = to_target(windows, self, scheduler.cfg).double()
        self.seen: list[tuple[int, int]] = []

    def encode(self, image, positions):
        assert image.dtype == torch.float32 and image.shape[1:] == (3, FRAME, FRAME)
        return positions[:, :1, :1].expand(-1, 3, 5).clone()  # the clip's tag, x of its first source

    def forward(self, x, t, mono, context):
        assert x.shape[1:] == (2, mono.shape[-2], WINDOW) and mono.shape[1] == 1 and len(t) == len(x)
        dist = (mono[:, None] - self.monos[None]).abs().flatten(2).amax(-1)  # [B, all windows]
        best = dist.argmin(1)
        assert (dist.min(1).values == 0).all()  # the exact normalised mono of a known window
        half = len(x) // 2 if self.guided else len(x)
        for i, k in enumerate(best.tolist()):
            clip = self.keys[k][0]
            if i < half:
                assert context[i].eq(self.clip_tags[clip]).all()  # the tokens of the window's own clip
                self.seen.append(self.keys[k])
            else:
                assert not context[i].any()  # the unconditional half of guidance
        ab = self.scheduler.alphas_cumprod[t].double().view(-1, 1, 1, 1)
        return ((x.double() - ab.sqrt() * self.targets[best]) / (1 - ab).sqrt()).float()


@pytest.mark.parametrize("target", ["binaural", "residual", "mid_side"])
@pytest.mark.parametrize("n_frames", [150, 213, 80, 50])
def test_an_oracle_network_reproduces_every_frame_of_the_clips(target, n_frames):
    scheduler = REGISTRY.build_loss("diffbinaural", {"timesteps": 100, "target": target}, epochs=1)
    gen = np.random.default_rng(n_frames)
    mel = torch.from_numpy(clip_mels(gen, 3, N_MELS, n_frames))
    frame = torch.from_numpy(gen.integers(0, 256, (3, 3, FRAME, FRAME), dtype=np.uint8))
    positions = torch.zeros(3, 4, 3)
    positions[:, 0, 0] = torch.tensor([0.25, 0.5, 0.75])
    ids = ["a", "b", "c"]
    expected = mel[:, 1:].clamp(MEL_MIN, MEL_MAX)
    assert (mel[:, 1:] != expected).any()  # the clamp range matters in this test
    starts = mel_windows(max(n_frames, WINDOW))
    if n_frames == 150:
        assert starts == [0, 64, 70]  # the clip is not a whole number of hops
    if n_frames <= WINDOW:
        assert starts == [0]
    cases = [(SamplingConfig(steps=7, window_batch=4), False)]
    if n_frames == 150:  # eta > 0 and guidance: the oracle's noise is still exact at every step
        cases += [(SamplingConfig(steps=7, eta=1.0, guidance_scale=2.0, window_batch=5), True)]
    for cfg, guided in cases:
        oracle = Oracle(scheduler, mel, positions[:, 0, 0], guided)
        out = generate_clips(oracle, scheduler, mel, frame, positions, ids, cfg)
        assert out.shape == (3, 2, N_MELS, n_frames) and out.dtype == torch.float32
        torch.testing.assert_close(out, expected, rtol=0, atol=1e-4)
        assert sorted(oracle.seen) == sorted(oracle.keys * cfg.steps)  # every window once per step
        assert oracle.training  # the model's mode is restored


def test_the_oracle_check_fails_for_a_wrong_target():
    """The oracle test can fail: a network that is right about the noise of other windows is not exact."""
    scheduler = REGISTRY.build_loss("diffbinaural", {"timesteps": 100, "target": "binaural"}, epochs=1)
    gen = np.random.default_rng(0)
    mel = torch.from_numpy(clip_mels(gen, 2, N_MELS, 150))
    oracle = Oracle(scheduler, mel, torch.zeros(2))
    oracle.targets = oracle.targets.roll(1, dims=0)  # every window gets its neighbour's target
    out = generate_clips(
        oracle,
        scheduler,
        mel,
        torch.zeros(2, 3, FRAME, FRAME, dtype=torch.uint8),
        torch.zeros(2, 4, 3),
        ["a", "b"],
        SamplingConfig(steps=5),
    )
    assert (out - mel[:, 1:].clamp(MEL_MIN, MEL_MAX)).abs().max() > 0.5


@pytest.mark.parametrize("n_frames", [150, 213, 144, 81, 80])
def test_cropped_stitching_reassembles_a_clip_and_ignores_the_cropped_frames(n_frames):
    gen = torch.Generator().manual_seed(n_frames)
    clip = torch.randn(2, N_MELS, n_frames, generator=gen)
    starts = mel_windows(n_frames)
    assert starts[0] == 0 and starts[-1] + WINDOW == n_frames
    windows = torch.stack([clip[..., s : s + WINDOW] for s in starts])
    torch.testing.assert_close(stitch(windows, starts, n_frames, crop=CROP), clip, rtol=0, atol=1e-6)

    garbage = windows.clone()
    for w, s in zip(garbage, starts, strict=True):
        if s > 0:
            w[..., :CROP] = 1e3 * torch.randn(w[..., :CROP].shape, generator=gen)
        if s + WINDOW < n_frames:
            w[..., -CROP:] = 1e3 * torch.randn(w[..., -CROP:].shape, generator=gen)
    torch.testing.assert_close(stitch(garbage, starts, n_frames, crop=CROP), clip, rtol=0, atol=1e-6)
    if len(starts) > 1:  # without the crop the garbage shows: the crop is what removes it
        assert (stitch(garbage, starts, n_frames) - clip).abs().max() > 1
    else:
        assert torch.equal(garbage, windows)  # one window: no inner end, nothing cropped

    # one bad frame just inside the kept part of a window does change the result
    if len(starts) > 1:
        bad = windows.clone()
        bad[0, ..., WINDOW - CROP - 1] += 100.0
        assert (stitch(bad, starts, n_frames, crop=CROP) - clip).abs().max() > 1


def test_stitch_with_crop_known_weights():
    # windows of 4 frames at 0, 2, 3, 4 over 8 frames, crop 1: the first keeps frames 0-2, the inner ones
    # their middle two, the last (ending at the clip's end) frames 5-7
    windows = torch.tensor([[1.0] * 4, [3.0] * 4, [7.0] * 4, [5.0] * 4])
    out = stitch(windows, [0, 2, 3, 4], 8, crop=1)
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0, 1.0, 3.0, 5.0, 6.0, 5.0, 5.0]))


# --- generation: outputs/mels/<dataset>/<split>/ ---------------------------------------------------------


def test_generated_mels_follow_the_output_contract(trained, tmp_path):
    model, scheduler, card = loaded(trained)
    assert card["name"] == "diffbinaural" and card["mel_shape"] == [3, N_MELS, N_FRAMES]
    assert not model.training
    split = trained["features"] / "test"
    truth = np.load(split / "mel.npy")
    ids = pd.read_parquet(split / "index.parquet")["sample_id"].tolist()
    cfg = SamplingConfig(steps=3, shard_size=2, window_batch=5)
    out = tmp_path / "mels" / "test"
    assert generate_split(model, scheduler, split, out, cfg, "fp1") == 5

    assert sorted(p.name for p in out.iterdir()) == [
        "index.parquet",
        "mel-00000.npy",
        "mel-00001.npy",
        "mel-00002.npy",
        "meta.json",
    ]  # no progress file, no temporaries
    shards = [np.load(out / f"mel-{k:05d}.npy") for k in range(3)]
    assert [s.shape for s in shards] == [(2, 2, N_MELS, N_FRAMES)] * 2 + [(1, 2, N_MELS, N_FRAMES)]
    assert all(s.dtype == np.float32 for s in shards)
    index = pd.read_parquet(out / "index.parquet")
    assert list(index.columns) == ["sample_id", "shard", "row", "n_frames"]
    assert index["sample_id"].tolist() == ids
    assert index["shard"].tolist() == [0, 0, 1, 1, 2] and index["row"].tolist() == [0, 1, 0, 1, 0]
    assert (index["n_frames"] == truth.shape[-1]).all()
    meta = json.loads((out / "meta.json").read_text())
    assert meta["fingerprint"] == "fp1" and meta["num_samples"] == 5 and meta["shape"] == [2, N_MELS, N_FRAMES]
    assert meta["shard_size"] == 2 and meta["channels"] == ["left", "right"]

    mels = GeneratedMels(out)
    everything = mels.all()
    assert everything.shape == (5, 2, N_MELS, N_FRAMES)
    for i, (sid, k, row) in enumerate(index[["sample_id", "shard", "row"]].itertuples(index=False)):
        assert np.array_equal(everything[i], shards[k][row]), sid
    assert np.isfinite(everything).all()
    assert everything.min() >= MEL_MIN and everything.max() <= MEL_MAX
    assert np.abs(everything[0] - everything[1]).max() > 1e-3  # clips differ

    again = tmp_path / "again"
    generate_split(model, scheduler, split, again, cfg, "fp1")
    for name in ("mel-00000.npy", "mel-00001.npy", "mel-00002.npy", "meta.json"):
        assert (out / name).read_bytes() == (again / name).read_bytes(), name
    pd.testing.assert_frame_equal(pd.read_parquet(again / "index.parquet"), index)

    one_shard = tmp_path / "one_shard"
    generate_split(model, scheduler, split, one_shard, SamplingConfig(steps=3, shard_size=5, window_batch=3), "fp1")
    assert sorted(p.name for p in one_shard.iterdir()) == ["index.parquet", "mel-00000.npy", "meta.json"]
    np.testing.assert_allclose(GeneratedMels(one_shard).all(), everything, rtol=0, atol=1e-5)

    other_seed = tmp_path / "other_seed"
    generate_split(model, scheduler, split, other_seed, SamplingConfig(steps=3, shard_size=2, seed=1), "fp1")
    assert np.abs(GeneratedMels(other_seed).all() - everything).max() > 1e-3

    # scoring: generated and mono copy per clip, in the split's order
    per_clip = score_generated(split, out)
    assert per_clip["sample_id"].tolist() == ids and len(per_clip) == 5
    assert per_clip["azimuth_deg"].tolist() == AZIMUTHS[:5]
    t = torch.from_numpy(truth[3])
    mono = mel_metrics(t[:1].expand(2, -1, -1), t[1:])
    assert per_clip.loc[3, "mono_mel_rmse"] == pytest.approx(mono["mel_rmse"])
    generated = mel_metrics(torch.from_numpy(everything[3]), t[1:])
    assert per_clip.loc[3, "generated_band_ild_error_db"] == pytest.approx(generated["band_ild_error_db"])
    assert (per_clip["mono_sign_agreement"] == 0).all()  # equal ears agree with no ILD
    assert summarize(per_clip)["n_off_centre"] == 3  # -35, 21 and -20.5 degrees

    index.assign(sample_id=ids[::-1]).to_parquet(out / "index.parquet", index=False)
    with pytest.raises(DiffusionInputError, match="not those of"):
        score_generated(split, out)


def test_generated_mels_missing_are_reported(tmp_path):
    with pytest.raises(DiffusionInputError, match="meta.json missing"):
        GeneratedMels(tmp_path)


class Killed(RuntimeError):
    pass


def counting(monkeypatch, fail_on: int | None = None) -> list[list[str]]:
    """Wrap generate_clips: record the clips of each call; raise on call number ``fail_on`` (1-based)."""
    calls: list[list[str]] = []
    real = generate_clips

    def wrapper(model, scheduler, mel, frame, positions, sample_ids, cfg):
        calls.append(list(sample_ids))
        if len(calls) == fail_on:
            raise Killed
        return real(model, scheduler, mel, frame, positions, sample_ids, cfg)

    monkeypatch.setattr(db, "generate_clips", wrapper)
    return calls


def snapshot(folder) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.name != "index.parquet"}


def test_a_killed_generation_resumes_at_the_first_missing_shard(trained, tmp_path, monkeypatch):
    model, scheduler, _ = loaded(trained)
    split = trained["features"] / "test"
    cfg = SamplingConfig(steps=2, shard_size=2)
    reference = tmp_path / "reference"
    generate_split(model, scheduler, split, reference, cfg, "fp1")

    out = tmp_path / "resumed"
    calls = counting(monkeypatch, fail_on=3)
    with pytest.raises(Killed):
        generate_split(model, scheduler, split, out, cfg, "fp1")
    assert sorted(p.name for p in out.iterdir()) == ["mel-00000.npy", "mel-00001.npy", "progress.json"]
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no temporary left behind
    with pytest.raises(DiffusionInputError):
        GeneratedMels(out)

    calls = counting(monkeypatch)
    generate_split(model, scheduler, split, out, cfg, "fp1")
    assert calls == [["test04"]]  # only the missing shard
    assert snapshot(out) == snapshot(reference)
    pd.testing.assert_frame_equal(pd.read_parquet(out / "index.parquet"), pd.read_parquet(reference / "index.parquet"))

    # a folder written for another fingerprint (finished or not) is cleared and generated again
    (out / "mel-00007.npy").write_bytes(b"stale")
    calls = counting(monkeypatch)
    generate_split(model, scheduler, split, out, cfg, "fp2")
    assert len(calls) == 3
    assert sorted(p.name for p in out.iterdir()) == sorted([*snapshot(reference), "index.parquet"])
    assert json.loads((out / "meta.json").read_text())["fingerprint"] == "fp2"
    assert (out / "mel-00002.npy").read_bytes() == (reference / "mel-00002.npy").read_bytes()

    calls = counting(monkeypatch, fail_on=2)
    with pytest.raises(Killed):
        generate_split(model, scheduler, split, out, cfg, "fp1")
    (out / "mel-00001.npy").write_bytes(b"stale")  # a shard of a run with another fingerprint
    calls = counting(monkeypatch)
    generate_split(model, scheduler, split, out, SamplingConfig(steps=2, shard_size=2, seed=5), "fp1")
    assert len(calls) == 3  # other sampling settings: the progress does not match, nothing is kept
    assert np.load(out / "mel-00001.npy").shape == (2, 2, N_MELS, N_FRAMES)  # the stale bytes are gone
    assert json.loads((out / "meta.json").read_text())["sampling"]["seed"] == 5


def test_a_finished_generation_is_not_generated_again(trained, tmp_path, monkeypatch):
    model, scheduler, _ = loaded(trained)
    split = trained["features"] / "val"
    cfg = SamplingConfig(steps=2, shard_size=2)
    out = tmp_path / "val"
    generate_split(model, scheduler, split, out, cfg, "fp1")
    before = snapshot(out)
    calls = counting(monkeypatch)
    assert generate_split(model, scheduler, split, out, cfg, "fp1") == 3
    assert snapshot(out) == before
    assert calls == []


# --- training ----------------------------------------------------------------------------------------------


class Interrupted(RuntimeError):
    pass


def test_an_interrupted_training_resumes_to_identical_weights(trained, tmp_path):
    features = trained["features"]
    p = tiny_params(epochs=2, batch_size=2, figure_every=1)  # three steps an epoch
    straight, card = train_diffusion("diffbinaural", p, features, tmp_path / "straight")
    assert straight.resumed_from_step == 0 and len(straight.history) == 2
    assert card["mel_shape"] == [3, N_MELS, N_FRAMES] and card["features"]["n_mels"] == N_MELS
    assert {"train_loss", "val_denoise_loss", "val_mel_rmse"} <= set(straight.history[-1])
    assert math.isfinite(straight.history[-1]["val_mel_rmse"])

    def stop(epoch, train_m, val_m, model):  # at the first epoch's end, before its checkpoint
        raise Interrupted

    with pytest.raises(Interrupted):
        train_diffusion("diffbinaural", p, features, tmp_path / "resumed", on_epoch_end=stop)
    state = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert (state["epoch"], state["batch"], state["step"]) == (0, 2, 2)  # in the middle of the first epoch

    torch.manual_seed(3)  # the training seed: the initial weights, which training must have changed
    initial = REGISTRY.build_model("diffbinaural", TINY_MODEL).state_dict()
    assert any(not torch.equal(initial[k], v) for k, v in straight.model.state_dict().items())

    resumed, card2 = train_diffusion("diffbinaural", p, features, tmp_path / "resumed")
    assert resumed.resumed_from_step == 2 and card2 == card
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed.history == straight.history

    # a checkpoint of other train settings (1 epoch, now 2) is not resumed: moved aside, trained afresh
    train_diffusion("diffbinaural", tiny_params(epochs=1, batch_size=2, figure_every=1), features, tmp_path / "more")
    again, _ = train_diffusion("diffbinaural", p, features, tmp_path / "more")
    assert again.resumed_from_step == 0 and len(list((tmp_path / "more").glob("last.*.pt"))) == 1
    assert all(torch.equal(a[k], v) for k, v in again.model.state_dict().items())


# --- bad inputs ------------------------------------------------------------------------------------------


def test_features_without_frames_are_refused_for_training(tmp_path):
    features = make_features(tmp_path / "features", frame=False)
    with pytest.raises(ShardError, match=r"no array\(s\) \['frame'\]"):
        train_diffusion("diffbinaural", tiny_params(), features, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_features_without_frames_are_refused_for_generation(trained, tmp_path):
    model, scheduler, _ = loaded(trained)
    split = write_mel_split(tmp_path / "test", 3, frame=False)
    out = tmp_path / "mels" / "test"
    with pytest.raises(ShardError, match="'frame'"):
        generate_split(model, scheduler, split, out, SamplingConfig(steps=2), "fp1")
    assert not (out / "index.parquet").exists() and not (out / "meta.json").exists()
    assert not out.exists() or not any(out.iterdir())


def test_clips_shorter_than_a_window_are_refused_for_training(tmp_path):
    features = make_features(tmp_path / "features", n_frames=50)
    with pytest.raises(DiffusionInputError, match="have 50 mel frames, fewer than one 80-frame window"):
        train_diffusion("diffbinaural", tiny_params(), features, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_mel_bins_that_the_levels_cannot_halve_are_refused(tmp_path):
    features = make_features(tmp_path / "features", n_mels=15)
    with pytest.raises(DiffusionInputError, match=r"15 mel bins; diffusion_models\.diffbinaural\.model\.dim_mults"):
        train_diffusion("diffbinaural", tiny_params(), features, tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_a_checkpoint_used_with_other_mels_is_refused(trained, tmp_path):
    wide = write_mel_split(tmp_path / "wide" / "train", 2, n_mels=32)
    with pytest.raises(DiffusionInputError, match=r"trained on mels \[3, 16\].*holds mels \[3, 32\]"):
        load_model(trained["model_file"], wide)
    other_hop = write_mel_split(tmp_path / "hop" / "train", 2, hop=128)
    with pytest.raises(DiffusionInputError, match="'hop': 256.*'hop': 128"):
        load_model(trained["model_file"], other_hop)
    load_model(trained["model_file"], trained["features"] / "test")  # the same mels: accepted


def test_a_checkpoint_of_another_model_is_refused(trained, tmp_path):
    path = tmp_path / "model.pt"
    save_model(path, nn.Linear(2, 2), {"name": "mono2binaural", "params": {}}, [])
    with pytest.raises(DiffusionInputError, match="a checkpoint of 'mono2binaural', not of a diffusion model"):
        load_model(path, trained["features"] / "train")

    card = json.loads(json.dumps(trained["card"]))
    card["params"]["model"]["dim"] = 16  # the card no longer describes the weights
    model, _, _ = load_model(trained["model_file"])
    save_model(path, model, card, [])
    with pytest.raises(DiffusionInputError, match="its weights do not fit the configuration in its card"):
        load_model(path)


# --- metrics -------------------------------------------------------------------------------------------------


def test_mel_metrics_known_values():
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(N_MELS, 120, generator=gen) - 4
    c = 0.7
    truth = torch.stack((base + c, base))  # L louder than R by c (natural-log units) everywhere
    ild_db = 20 * c / math.log(10)

    same = mel_metrics(truth.clone(), truth)
    assert same["mel_rmse"] == 0 and same["band_ild_error_db"] == pytest.approx(0, abs=1e-9)
    assert same["sign_agreement"] == 1.0
    assert same["truth_broadband_ild_db"] == pytest.approx(ild_db) and same["broadband_ild_db"] == pytest.approx(ild_db)

    mono = (base + c / 2).expand(2, -1, -1)  # the mono copy: equal ears
    m = mel_metrics(mono, truth)
    assert m["sign_agreement"] == 0.0 and m["broadband_ild_db"] == 0.0
    assert m["truth_broadband_ild_db"] == pytest.approx(ild_db)
    assert m["band_ild_error_db"] == pytest.approx(ild_db)
    assert m["mel_rmse"] == pytest.approx(c / 2)

    swapped = mel_metrics(truth.flip(0), truth)
    assert swapped["sign_agreement"] == 0.0 and swapped["broadband_ild_db"] == pytest.approx(-ild_db)
    assert swapped["band_ild_error_db"] == pytest.approx(2 * ild_db)
    assert mel_metrics(truth.flip(0), truth.flip(0))["sign_agreement"] == 1.0
    assert mel_metrics(mono, mono)["sign_agreement"] == 0.0  # a zero difference agrees with nothing, not even zero

    # the CROP frames at each end are not scored
    edges = truth.clone()
    edges[..., :CROP] += 5.0
    edges[..., -CROP:] -= 5.0
    assert mel_metrics(edges, truth)["mel_rmse"] == 0.0
    edges[..., CROP] += 1.0
    assert mel_metrics(edges, truth)["mel_rmse"] > 0


def test_summarize_counts_off_centre_clips():
    per_clip = pd.DataFrame(
        {
            "sample_id": list("abcdef"),
            "azimuth_deg": [-35.0, 5.0, 20.0, 21.0, -20.5, 0.0],
            "generated_mel_rmse": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            "generated_band_ild_error_db": [0.0] * 6,
            "generated_sign_agreement": [1.0, 0.0, 0.0, 0.0, 1.0, 1.0],
            "mono_mel_rmse": [2.0] * 6,
            "mono_band_ild_error_db": [1.0] * 6,
            "mono_sign_agreement": [0.0] * 6,
        }
    )
    s = summarize(per_clip)
    assert s["n_off_centre"] == 3  # -35, 21 and -20.5; exactly 20 is not off centre
    assert s["generated_sign_agreement_off_centre"] == pytest.approx(2 / 3)
    assert s["mono_sign_agreement_off_centre"] == 0.0
    assert s["generated_mel_rmse"] == pytest.approx(3.5) and s["generated_sign_agreement"] == pytest.approx(0.5)
    none_off = summarize(per_clip.assign(azimuth_deg=0.0))
    assert none_off["n_off_centre"] == 0 and math.isnan(none_off["generated_sign_agreement_off_centre"])
