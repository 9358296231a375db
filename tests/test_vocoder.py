"""The vocoder family (DiffBinaural stage 2) on real tiny data: the `tiny` pipeline's binaural scenes,
features and stage-1 mels, made by the real stage scripts in a temporary project root."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from binaural_lab.audio.mel import MelConfig, mel_spectrogram
from binaural_lab.config import ParamError
from binaural_lab.data.datasets import dataset
from binaural_lab.models.bigvgan import BigVGAN, named_config
from binaural_lab.paths import model_dir
from binaural_lab.vocoder import (
    FINETUNED,
    PRETRAINED,
    REGISTRY,
    VocodeConfig,
    VocoderInputError,
    VocoderLoss,
    cut_segments,
    griffin_lim,
    load_clips,
    train_vocoder,
)

REPO = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]
DIFFBINAURAL_SCHEDULE = [[10, 0.0], [30, 0.5], [60, 0.9], [61, 1.0]]


class Interrupted(Exception):
    pass


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    """A project root with the tiny pipeline's params, binaural data, features and stage-1 mels."""
    root = tmp_path_factory.mktemp("vocoder")
    shutil.copy2(REPO / "pipelines" / "tiny.yaml", root / "params.yaml")
    env = {**os.environ, "BLAB_ROOT": str(root), "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    for cmd in (
        ["synthesize.py", "binaural"],
        ["prepare.py", "binaural"],
        ["featurize.py", "binaural"],
        ["train.py", "diffusion", "diffbinaural"],
        ["generate_mels.py"],
    ):
        proc = subprocess.run([sys.executable, str(REPO / "stages" / cmd[0]), *cmd[1:]], env=env, capture_output=True)
        assert proc.returncode == 0, proc.stderr.decode()[-3000:]
    return root


@pytest.fixture
def params(project, monkeypatch):
    monkeypatch.setenv("BLAB_ROOT", str(project))
    return yaml.safe_load((project / "params.yaml").read_text())


def block(params, name, **train):
    b = {**params["vocoder_models"][name]}
    b["train"] = {**b["train"], "device": "cpu", "checkpoint_every": 1, **train}
    return b


def test_the_schedule_gives_diffbinaural_probabilities_at_chosen_epochs():
    loss = VocoderLoss(feed_generated=DIFFBINAURAL_SCHEDULE)
    expected = {0: 0.0, 10: 0.0, 20: 0.25, 30: 0.5, 45: 0.7, 60: 0.9, 61: 1.0, 500: 1.0}
    assert {e: pytest.approx(loss.feed_probability(e)) for e in expected} == expected
    assert VocoderLoss().feed_probability(100) == 0.0  # no schedule: ground truth only


@pytest.mark.parametrize(
    "schedule", [[[30, 0.5], [10, 0.0]], [[0, 1.5]], [[0, 0.1, 2]], [[-1, 0.0]]], ids=["order", "p", "pair", "neg"]
)
def test_bad_schedules_are_refused_naming_the_key(schedule):
    with pytest.raises(ParamError, match=r"vocoder_models\.bigvgan_finetuned\.loss\.feed_generated"):
        REGISTRY.build_loss(FINETUNED, {"feed_generated": schedule}, epochs=1)


def test_a_mel_of_the_cut_audio_equals_the_cut_mel(params):
    data = dataset(params, "binaural")
    clips = load_clips(data, "train")
    mel_cfg = MelConfig()
    frames, offsets = 16, [0, 3, 17, clips["mel"].shape[-1] - 16]
    seg, audio = cut_segments(clips["mel"][:4], clips["audio"][:4], offsets, frames, mel_cfg.hop)
    assert audio.shape == (4, 1, frames * mel_cfg.hop) and seg.shape == (4, 80, frames)
    again = mel_spectrogram(audio[:, 0], mel_cfg)
    # frames 2 .. frames - 3 of a segment see no reflected padding: there the mels are the clip's. The
    # stored mels were written by featurize with the CPU pins (AVX2 kernels); this process runs the
    # CPU's own, which on an AVX-512 machine differ by up to 5.3e-4 in the bins near the floor (with
    # ATEN_CPU_CAPABILITY=avx2, by 1e-6): well below what a quarter hop's misalignment moves (> 0.05)
    inner = slice(2, frames - 2)
    assert torch.allclose(again[..., inner], seg[..., inner], atol=2e-3)
    shifted = torch.stack(
        [
            a[o * mel_cfg.hop + 64 : (o + frames) * mel_cfg.hop + 64]
            for a, o in zip(clips["audio"][:4], [3, 5, 17, 20], strict=True)
        ]
    )
    moved = mel_spectrogram(shifted, mel_cfg)
    wanted = torch.stack([m[:, o : o + frames] for m, o in zip(clips["mel"][:4], [3, 5, 17, 20], strict=True)])
    assert (moved[..., inner] - wanted[..., inner]).abs().max() > 0.05  # a quarter hop off is visible


def test_gan_training_resumes_after_an_interruption_to_identical_weights(params, tmp_path):
    p = REGISTRY.params(PRETRAINED, block(params, PRETRAINED, epochs=2))
    straight, card = train_vocoder(params, PRETRAINED, p, tmp_path / "straight")
    assert (tmp_path / "straight" / "discriminator.pt").is_file()
    history = straight.history
    assert {"train_d_loss", "train_g_loss", "train_mel", "train_fm", "train_adv", "val_mel_l1"} <= set(history[-1])
    assert all(h["train_feed_probability"] == 0.0 for h in history)

    def stop(epoch, train_m, val_m, model):
        raise Interrupted

    with pytest.raises(Interrupted):
        train_vocoder(params, PRETRAINED, p, tmp_path / "resumed", on_epoch_end=stop)
    state = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert state["epoch"] == 0 and state["step"] > 0
    resumed, card2 = train_vocoder(params, PRETRAINED, p, tmp_path / "resumed")
    assert resumed.resumed_from_step == state["step"] and card2 == card
    for name in ("generator", "discriminator"):
        a, b = straight.models[name].state_dict(), resumed.models[name].state_dict()
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    assert resumed.history == straight.history


@pytest.fixture
def pretrained(params, tmp_path, monkeypatch):
    """A pretrained vocoder saved where the fine-tune's init_from finds it (models/vocoder/bigvgan)."""
    from binaural_lab.family import save_model

    p = REGISTRY.params(PRETRAINED, block(params, PRETRAINED, epochs=1))
    out = model_dir("vocoder", PRETRAINED)
    result, card = train_vocoder(params, PRETRAINED, p, out)
    save_model(out / "model.pt", result.model, card, result.history)
    return out


def test_the_fine_tune_feeds_generated_mels_by_the_schedule_and_logs_it(params, pretrained, tmp_path):
    b = block(params, FINETUNED, epochs=2)
    b["loss"] = {"feed_generated": [[0, 0.0], [1, 1.0]]}
    result, card = train_vocoder(params, FINETUNED, REGISTRY.params(FINETUNED, b), tmp_path / "ft")
    assert [h["train_feed_probability"] for h in result.history] == [0.0, 1.0]
    assert [h["train_fed_generated"] for h in result.history] == [0.0, 1.0]
    assert "val_mel_l1_generated" in result.history[-1]
    # the architecture and the unset loss keys come from the pretrained model's card
    pre = torch.load(pretrained / "model.pt", weights_only=True)["card"]["params"]
    assert card["params"]["model"] == {**pre["model"], "init_from": PRETRAINED}
    assert card["params"]["loss"]["lambda_mel"] == pre["loss"]["lambda_mel"]


def test_a_fine_tune_without_generated_mels_fails_clearly_and_writes_nothing(params, pretrained, project, tmp_path):
    mels = project / "outputs" / "mels"
    moved = project / "mels-elsewhere"
    mels.rename(moved)
    try:
        with pytest.raises(VocoderInputError, match=r"outputs/mels/synthetic-binaural/train.*run generate_mels"):
            train_vocoder(params, FINETUNED, REGISTRY.params(FINETUNED, block(params, FINETUNED)), tmp_path / "ft")
    finally:
        moved.rename(mels)
    assert not (tmp_path / "ft").exists()


def test_mels_with_another_number_of_bands_are_refused(params, tmp_path):
    b = block(params, PRETRAINED)
    b["model"] = {**b["model"], "generator_overrides": {**b["model"]["generator_overrides"], "num_mels": 64}}
    with pytest.raises(VocoderInputError, match=r"mels of 80 bands, the generator takes 64"):
        train_vocoder(params, PRETRAINED, REGISTRY.params(PRETRAINED, b), tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()


def test_an_init_checkpoint_of_another_config_is_refused_naming_the_file(params, tmp_path):
    other = BigVGAN(named_config("small"))  # the tiny pipeline's generator is narrower
    path = tmp_path / "bigvgan_generator.pt"
    torch.save({"generator": other.state_dict()}, path)
    b = block(params, PRETRAINED)
    b["model"] = {**b["model"], "init_checkpoint": str(path)}
    with pytest.raises(Exception, match=str(path)):
        train_vocoder(params, PRETRAINED, REGISTRY.params(PRETRAINED, b), tmp_path / "ckpt")
    assert not (tmp_path / "ckpt" / "last.pt").exists()


def test_griffin_lim_recovers_a_tone_from_its_mel():
    cfg = MelConfig()
    t = torch.arange(64 * cfg.hop) / cfg.sample_rate
    tone = 0.5 * torch.sin(2 * torch.pi * 1000.0 * t)
    mel = mel_spectrogram(tone[None], cfg)
    wave = griffin_lim(mel, cfg, VocodeConfig(griffin_lim_iters=32))
    assert wave.shape == tone[None].shape
    spectrum = torch.fft.rfft(wave[0, 4096:-4096]).abs()
    peak = spectrum.argmax().item() * cfg.sample_rate / (len(wave[0]) - 8192)
    assert abs(peak - 1000.0) < 20.0
    again = mel_spectrogram(wave, cfg)[..., 4:-4]
    assert (again - mel[..., 4:-4]).abs().mean() < 0.5  # against ~5 for a silent output
    assert np.isfinite(wave.numpy()).all()
