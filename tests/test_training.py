"""The one training loop: learning (regression, GAN, denoising), schedules, EMA, validation every N
steps, checkpoints and their fingerprint, bit-identical resume after a kill, and DDP with two processes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import toy_train as toy
from torch import nn
from torch.utils.data import DataLoader

from binaural_lab.config import ParamError, parse
from binaural_lab.training import EMA, TrainConfig, Trainer, code_fingerprint, content_hash, lr_factor
from binaural_lab.training import fingerprint as fingerprint_module
from binaural_lab.training import loop as loop_module

TOY = Path(toy.__file__)
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # toy models: one thread is fastest, and 2 cores are shared


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_toy(kind: str, ckpt: Path, out: Path, *flags: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(TOY), kind, str(ckpt), str(out), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
    )


def torchrun(ckpt: Path, out: Path, *flags: str) -> subprocess.Popen:
    """The regression toy in two processes (gloo on the CPU)."""
    exe = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    cmd = [exe, "--standalone", "--nproc_per_node", "2", str(TOY), "regression", str(ckpt), str(out), *flags]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)


def fit_toy(kind: str, ckpt: Path):
    cfg, models, train, val, task = toy.setup(kind)
    return Trainer(cfg, ckpt, fingerprint={"toy": kind}).fit(models, train, val, task)


def test_toy_regression_learns(tmp_path):
    result = fit_toy("regression", tmp_path)
    history = result.history
    assert len(history) == 4
    assert history[-1]["train_loss"] < 0.25 * history[0]["train_loss"]
    assert (tmp_path / "last.pt").is_file()


def test_toy_gan_learns_with_two_optimizers_and_an_exponential_lr(tmp_path):
    cfg, models, *_ = toy.setup("gan")
    z = torch.randn(2048, toy.NOISE_DIM, generator=torch.Generator().manual_seed(0))
    start = models["generator"](z).mean().item()
    result = fit_toy("gan", tmp_path)
    assert list(result.models) == ["generator", "discriminator"]
    end = result.history[-1]["val_mean"]  # of the generator's EMA, on fixed noise
    assert abs(end - toy.DATA_MEAN) < 0.1 * abs(start - toy.DATA_MEAN), (start, end)

    # each optimizer keeps its own betas and base lr, and the lr decays every step
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    steps = result.history[-1]["step"]
    groups = {k: opt["param_groups"][0] for k, opt in state["optimizers"].items()}
    assert groups["discriminator"]["betas"] == (0.5, 0.99) and groups["generator"]["betas"] == (0.5, 0.9)
    assert groups["generator"]["lr"] == pytest.approx(cfg.lr * cfg.lr_decay ** (steps - 1))
    assert groups["discriminator"]["lr"] == pytest.approx(2 * cfg.lr * cfg.lr_decay ** (steps - 1))


def test_toy_denoising_learns(tmp_path):
    _, model, _, val, task = toy.setup("denoise")
    before = task.evaluate(model, DataLoader(val, batch_size=32), 0)["loss"]
    result = fit_toy("denoise", tmp_path)
    after = result.history[-1]["val_loss"]
    assert before > 0.9  # predicting noise from noise: about its variance, 1
    assert after < 0.35 * before, (before, after)


def test_lr_schedules():
    total = 100
    constant = TrainConfig()
    assert [lr_factor(constant, s, total) for s in (0, 50, 99)] == [1.0, 1.0, 1.0]
    warm = TrainConfig(warmup_steps=4, lr_schedule="cosine")
    assert [lr_factor(warm, s, total) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(warm, 4 + 48, total) == pytest.approx(0.5)
    assert lr_factor(warm, total, total) == pytest.approx(0.0)
    exponential = parse(TrainConfig, {"lr_schedule": "exponential", "lr_decay": 0.9999996}, "train")
    assert lr_factor(exponential, 1_000_000, total) == pytest.approx(0.9999996**1_000_000)
    with pytest.raises(ParamError, match="train.lr_decay"):
        parse(TrainConfig, {"lr_decay": 1.5}, "train")


def test_ema_warm_up_forgets_the_initial_weights():
    model = nn.Linear(1, 1, bias=False)
    nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.999)
    nn.init.ones_(model.weight)
    ema.update(model)
    assert ema.shadow.weight.item() == pytest.approx(0.9)  # decay (1 + 0) / (10 + 0) at the first update
    for _ in range(699):
        ema.update(model)
    # with a constant decay 0.999, 0.999 ** 700 = 50 % of the average would still be the initial weights
    assert 1 - ema.shadow.weight.item() < 1e-6
    assert ema.state_dict()["updates"] == 700


def test_validation_every_n_steps_as_well_as_every_epoch(tmp_path):
    evals, epochs = [], []
    cfg = TrainConfig(epochs=2, batch_size=4, eval_every_steps=3, checkpoint_every=100)
    trainer = Trainer(cfg, tmp_path, fingerprint={"toy": 1})
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))

    def on_eval(step, train_metrics, val_metrics, eval_model):
        assert not eval_model.training
        evals.append((step, sorted(train_metrics), sorted(val_metrics)))

    def on_epoch_end(epoch, train_metrics, val_metrics, eval_model):
        epochs.append(epoch)

    class Task(toy.ToyTask):
        def training_loss(self, model, batch, epoch):
            modes.append(model.training)
            return super().training_loss(model, batch, epoch)

    modes = []
    trainer.fit(model, toy.Toy(24), toy.Toy(8, seed=1), Task(), on_epoch_end, on_eval)
    # 6 steps an epoch: validations at steps 3, 9 (mid-epoch) and 6, 12 (an epoch's end, validated once)
    assert [e[0] for e in evals] == [3, 6, 9, 12]
    result = Trainer(cfg, tmp_path, fingerprint={"toy": 1}).fit(model, toy.Toy(24), toy.Toy(8, seed=1), toy.ToyTask())
    assert result.resumed_from_step == 12  # the finished run: its validations come back from the checkpoint
    assert [(v["epoch"], v["step"]) for v in result.validations] == [(1, 3), (1, 6), (2, 9), (2, 12)]
    assert [v["val_mse"] for v in result.validations if v["step"] % 6 == 0] == [h["val_mse"] for h in result.history]
    assert all(e[1:] == (["train_loss", "train_mse"], ["val_mse"]) for e in evals)
    assert epochs == [0, 1]
    assert len(modes) == 12 and all(modes)  # a mid-epoch validation puts the model back in training mode


def test_checkpoint_is_plain_data_and_one_of_other_settings_is_moved_aside(tmp_path, capsys):
    """A finished checkpoint is reused only for the same settings: a changed lr trains from scratch."""

    def fit(lr: float):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        trainer = Trainer(TrainConfig(epochs=1, batch_size=8, lr=lr), tmp_path, fingerprint={"toy": 1})
        return trainer, trainer.fit(model, toy.Toy(32), None, toy.ToyTask())

    trainer, first = fit(0.01)
    assert first.resumed_from_step == 0 and len(first.history) == 1
    state = torch.load(tmp_path / "last.pt", weights_only=True)  # no pickled objects, numpy arrays included
    rng = state["ranks"][0]["rng"]
    assert isinstance(rng["torch"], torch.Tensor) and rng["torch"].dtype == torch.uint8
    assert len(rng["numpy"][0]) == 624 and all(isinstance(k, int) for k in rng["numpy"][0])
    assert isinstance(rng["python"][1], list)

    _, again = fit(0.01)  # finished run, same settings: nothing left to train
    assert again.resumed_from_step == 4 and len(again.history) == 1
    _, other = fit(0.02)
    assert other.resumed_from_step == 0
    aside = tmp_path / f"last.{trainer.fingerprint}.pt"
    assert torch.load(aside, weights_only=True)["fingerprint"] == trainer.fingerprint
    out = capsys.readouterr().out
    assert f"moved it to {aside}" in out and "training from scratch" in out


def fake_package(root: Path) -> Path:
    for rel in ("cli.py", "depth.py", "models/net.py", "losses/loss.py", "training/loop.py", "models/sub/block.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(f"# {rel}\n")
    return root


def test_code_fingerprint_covers_models_losses_and_training_only(tmp_path):
    root = fake_package(tmp_path / "pkg")
    before = code_fingerprint(root)
    (root / "cli.py").write_text('"""A docstring edit."""\n')
    (root / "depth.py").write_text("x = 1\n")
    (root / "models" / "README.md").write_text("not code\n")
    assert code_fingerprint(root) == before
    for rel in ("models/sub/block.py", "losses/loss.py", "training/loop.py"):
        (root / rel).write_text("changed = True\n")
        assert code_fingerprint(root) != before, rel
        before = code_fingerprint(root)


def test_an_edit_in_models_moves_the_stale_checkpoint_aside(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(fingerprint_module, "PACKAGE_ROOT", fake_package(tmp_path / "pkg"))
    ckpt = tmp_path / "ckpt"

    def fit():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 1))
        trainer = Trainer(TrainConfig(epochs=1, batch_size=8), ckpt, fingerprint={"toy": 1})
        return trainer, trainer.fit(model, toy.Toy(16), None, toy.ToyTask())

    old, _ = fit()
    (tmp_path / "pkg" / "cli.py").write_text("# edited outside models/losses/training\n")
    _, same = fit()
    assert same.resumed_from_step == 2
    (tmp_path / "pkg" / "models" / "net.py").write_text("# edited\n")
    new, fresh = fit()
    assert fresh.resumed_from_step == 0 and new.fingerprint != old.fingerprint
    assert {p.name for p in ckpt.iterdir()} == {"last.pt", f"last.{old.fingerprint}.pt"}
    assert f"moved it to {ckpt / f'last.{old.fingerprint}.pt'}" in capsys.readouterr().out


def test_content_hash_reads_files_and_shard_directories(tmp_path):
    shards = tmp_path / "features"
    (shards / "train").mkdir(parents=True)
    big = bytearray(3 * 2**20)  # spans several read chunks
    (shards / "train" / "spec.npy").write_bytes(big)
    (shards / "train" / "meta.json").write_text("{}")
    first = content_hash([shards])
    assert content_hash([str(shards)]) == first and len(first) == 16
    big[-1] = 1  # a byte in the last chunk
    (shards / "train" / "spec.npy").write_bytes(big)
    assert content_hash([shards]) != first
    with pytest.raises(FileNotFoundError, match="missing"):
        content_hash([shards, tmp_path / "nowhere"])


def test_sync_batchnorm_under_ddp_on_the_cpu_is_a_param_error(tmp_path, monkeypatch):
    monkeypatch.setattr(loop_module, "_distributed", lambda: (0, 2))
    with pytest.raises(ParamError, match="train.sync_batchnorm"):
        Trainer(TrainConfig(device="cpu", sync_batchnorm=True), tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "kill_at_step"),
    # the last checkpoints before the kill are mid-epoch: regression at step 36 (16 steps an epoch,
    # every 2), GAN and denoising at step 70 (32 steps an epoch, every 10)
    [("regression", 37), ("gan", 75), ("denoise", 75)],
)
def test_killed_run_resumes_to_bit_identical_weights(tmp_path, kind, kill_at_step):
    ckpt = tmp_path / "ckpt"
    reference = run_toy(kind, tmp_path / "ref", tmp_path / "ref.json")
    killed = run_toy(kind, ckpt, tmp_path / "out.json", "--kill-at-step", str(kill_at_step))
    output, _ = reference.communicate(timeout=120)  # communicate, not wait: a full pipe would block
    assert reference.returncode == 0, output
    output, _ = killed.communicate(timeout=120)
    assert killed.returncode == -signal.SIGKILL, output
    assert not (tmp_path / "out.json").exists()
    state = torch.load(ckpt / "last.pt", weights_only=True)
    assert state["batch"] > 0 and state["step"] < kill_at_step  # killed in the middle of an epoch

    again = run_toy(kind, ckpt, tmp_path / "out.json")
    output, _ = again.communicate(timeout=120)
    assert again.returncode == 0, output
    assert "resuming" in output
    resumed = json.loads((tmp_path / "out.json").read_text())
    expected = json.loads((tmp_path / "ref.json").read_text())
    assert resumed["resumed_from_step"] == state["step"]
    assert resumed["weights"] == expected["weights"]  # every model and the EMA, bit for bit
    # the resumed epoch's training metrics average all its batches, those before the kill included
    assert resumed["history"] == expected["history"]
    # every validation, those before the kill included (mid-epoch ones too in the regression toy)
    assert resumed["validations"] == expected["validations"] and expected["validations"]
    assert [v["step"] for v in expected["validations"]] == sorted({v["step"] for v in expected["validations"]})


@pytest.mark.slow
def test_ddp_two_cpu_processes_split_the_data_average_the_metrics_and_resume(tmp_path):
    out = tmp_path / "out.json"
    reference = torchrun(tmp_path / "ckpt", out)
    killed = torchrun(tmp_path / "killed", tmp_path / "killed.json", "--kill-at-step", "13")
    output, _ = reference.communicate(timeout=120)
    assert reference.returncode == 0, output[-3000:]
    ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    assert ranks[0]["weights"] == ranks[1]["weights"]  # DDP keeps the replicas identical

    epochs, n = 4, 64
    per_epoch = n // 2
    assert all(len(r["seen"]) == epochs * per_epoch for r in ranks)
    for e in range(epochs):
        mine, theirs = (set(r["seen"][e * per_epoch : (e + 1) * per_epoch]) for r in ranks)
        assert not mine & theirs and mine | theirs == set(range(n)), f"epoch {e}"
    assert [r["seen"][:per_epoch] for r in ranks] != [r["seen"][per_epoch : 2 * per_epoch] for r in ranks]

    # torch, numpy and python random states: seed + rank
    assert ranks[0]["seeds"][0] == 3 and ranks[1]["seeds"][0] == 4
    assert all(a != b for a, b in zip(ranks[0]["seeds"], ranks[1]["seeds"], strict=True))

    for e, (h0, h1) in enumerate(zip(ranks[0]["history"], ranks[1]["history"], strict=True)):
        both = ranks[0]["losses"][str(e)] + ranks[1]["losses"][str(e)]
        assert h0["train_loss"] == h1["train_loss"] == pytest.approx(sum(both) / len(both))
        assert "val_mse" in h0 and "val_mse" not in h1  # rank 0 alone validates
    assert json.loads(out.read_text())["rank"] == 0
    assert (tmp_path / "ckpt" / "last.pt").is_file()

    # killed in the middle of the second epoch (8 steps an epoch on each rank, a checkpoint every 2)
    output, _ = killed.communicate(timeout=120)
    assert killed.returncode != 0 and "SIGKILL" in output, output[-3000:]
    state = torch.load(tmp_path / "killed" / "last.pt", weights_only=True)
    assert (state["epoch"], state["batch"]) == (1, 4) and [r["count"] for r in state["ranks"]] == [4, 4]
    again = torchrun(tmp_path / "killed", tmp_path / "killed.json")
    output, _ = again.communicate(timeout=120)
    assert again.returncode == 0, output[-3000:]
    resumed = [json.loads(Path(f"{tmp_path / 'killed.json'}.rank{r}").read_text()) for r in (0, 1)]
    assert [r["resumed_from_step"] for r in resumed] == [12, 12]
    assert resumed[0]["weights"] == resumed[1]["weights"] == ranks[0]["weights"]
    assert resumed[0]["history"] == ranks[0]["history"]


@pytest.mark.slow
def test_ddp_a_raise_in_rank0_callback_stops_every_rank(tmp_path):
    """Rank 0's epoch callback prunes the trial; rank 0 goes on (as optuna would), rank 1 must not wait."""
    out = tmp_path / "out.json"
    start = time.monotonic()
    proc = torchrun(tmp_path / "ckpt", out, "--prune")
    output, _ = proc.communicate(timeout=120)
    took = time.monotonic() - start
    assert proc.returncode != 0
    errors = [json.loads(Path(f"{out}.rank{r}").read_text()).get("error") for r in (0, 1)]
    assert errors == ["TrialPruned", "StoppedByRank0"], output[-3000:]
    assert took < 50  # rank 0 waits up to 60 s for rank 1 to stop
