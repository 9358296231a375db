"""The one training loop: learning, deterministic resume after a kill, and DDP with two processes."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

TOY = Path(__file__).with_name("toy_train.py")


def run_toy(ckpt: Path, out: Path, delay: float = 0.0) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(TOY), str(ckpt), str(out), str(delay)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_toy_regression_learns(tmp_path):
    proc = run_toy(tmp_path / "ckpt", tmp_path / "out.json")
    err, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    history = json.loads((tmp_path / "out.json").read_text())["history"]
    assert len(history) == 4
    assert history[-1]["train_loss"] < 0.25 * history[0]["train_loss"]
    assert (tmp_path / "ckpt" / "last.pt").is_file()


@pytest.mark.slow
def test_killed_run_resumes_from_checkpoint_and_matches_uninterrupted(tmp_path):
    ref = run_toy(tmp_path / "ref", tmp_path / "ref.json")
    assert ref.wait(timeout=120) == 0
    reference = json.loads((tmp_path / "ref.json").read_text())

    ckpt = tmp_path / "ckpt"
    proc = run_toy(ckpt, tmp_path / "out.json", delay=0.01)  # ~0.65 s per epoch: time to kill it
    deadline = time.time() + 120
    while not (ckpt / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.8)  # let it run past the first epoch's checkpoints
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out.json").exists(), "the run finished before it could be killed"

    again = run_toy(ckpt, tmp_path / "out.json")
    err, _ = again.communicate(timeout=120)
    assert again.returncode == 0, err
    resumed = json.loads((tmp_path / "out.json").read_text())
    assert "resuming" in err
    assert resumed["resumed_from_step"] > 0
    assert resumed["weights"] == pytest.approx(reference["weights"], abs=1e-6)


@pytest.mark.slow
def test_ddp_two_cpu_processes_split_the_data(tmp_path):
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node", "2", str(TOY), str(tmp_path / "ckpt"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(Path(f"{out}.rank{r}").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    # DDP keeps the replicas identical, and each rank trained on its own half of each epoch
    assert ranks[0]["weights"] == pytest.approx(ranks[1]["weights"], abs=1e-6)
    assert ranks[0]["history"] and not ranks[1]["history"][-1].get("val_mse")
    assert json.loads(out.read_text())["rank"] == 0
    assert (tmp_path / "ckpt" / "last.pt").is_file()


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path, capsys):
    """A finished checkpoint is reused only for the same settings: a changed lr trains from scratch."""
    import importlib.util

    import torch
    from torch import nn

    from binaural_lab.training import TrainConfig, Trainer

    spec = importlib.util.spec_from_file_location("toy_train", TOY)
    toy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(toy)

    def fit(lr: float):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
        trainer = Trainer(TrainConfig(epochs=1, batch_size=8, lr=lr), tmp_path, fingerprint={"toy": 1})
        return trainer.fit(model, toy.Toy(32), None, toy.ToyTask())

    first = fit(0.01)
    assert first.resumed_from_step == 0 and len(first.history) == 1
    again = fit(0.01)  # finished run, same settings: nothing left to train
    assert again.resumed_from_step == 4 and len(again.history) == 1
    other = fit(0.02)
    assert other.resumed_from_step == 0
    assert "written for other settings or data; starting over" in capsys.readouterr().out
