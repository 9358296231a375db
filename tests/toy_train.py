"""Toy problems trained through the real Trainer; the resume and DDP tests run this file as a script.

- ``regression``: a linear target learnt by a small MLP with dropout (the default ``training_loss`` step);
- ``gan``: a generator and a discriminator on 1-D Gaussian data, each with its own AdamW, through
  ``training_step``, with an exponential learning-rate decay per step and an EMA of the generator;
- ``denoise``: a diffusion-like objective, predicting the noise added at a random level to points on a
  line in 8-D, with warm-up, a cosine schedule and an EMA.

usage: python toy_train.py KIND CKPT_DIR OUT_JSON [--kill-at-step N] [--prune]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import signal
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from binaural_lab.training import StepContext, TrainConfig, Trainer

DATA_MEAN, DATA_STD = 3.0, 0.5  # the GAN's target distribution
NOISE_DIM = 2


class Toy(Dataset):
    """Regression pairs x -> w.x + 0.1."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, 4, generator=g)
        self.y = self.x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.1

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i], "y": self.y[i]}


class ToyTask:
    """MSE regression; records each epoch's batch losses and the random seeds seen by its first step."""

    def __init__(self) -> None:
        self.losses: dict[int, list[float]] = {}
        self.seeds: list[int] = []

    def training_loss(self, model, batch, epoch):
        if not self.seeds:  # read, never drawn: the random stream stays that of the loop
            self.seeds = [torch.initial_seed(), int(np.random.get_state()[1].sum()), sum(random.getstate()[1])]
        loss = nn.functional.mse_loss(model(batch["x"]).squeeze(-1), batch["y"])
        self.losses.setdefault(epoch, []).append(loss.item())
        return loss, {"mse": loss.item()}

    def evaluate(self, model, loader, epoch):
        errs = [nn.functional.mse_loss(model(b["x"]).squeeze(-1), b["y"]).item() for b in loader]
        return {"mse": sum(errs) / len(errs)}


class Gaussian(Dataset):
    """Samples of N(DATA_MEAN, DATA_STD^2), shape [1]."""

    def __init__(self, n: int, seed: int = 0):
        self.x = DATA_MEAN + DATA_STD * torch.randn(n, 1, generator=torch.Generator().manual_seed(seed))

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i]}


def gan_models() -> dict[str, nn.Module]:
    return {
        "generator": nn.Sequential(nn.Linear(NOISE_DIM, 16), nn.ReLU(), nn.Linear(16, 1)),
        "discriminator": nn.Sequential(nn.Linear(1, 32), nn.LeakyReLU(0.2), nn.Linear(32, 1)),
    }


class GanTask:
    """Non-saturating GAN: a discriminator step, then a generator step, each with its own optimizer."""

    def configure_optimizers(self, models, cfg):
        return {
            "generator": torch.optim.AdamW(models["generator"].parameters(), lr=cfg.lr, betas=(0.5, 0.9)),
            "discriminator": torch.optim.AdamW(models["discriminator"].parameters(), lr=2 * cfg.lr, betas=(0.5, 0.99)),
        }

    def training_step(self, ctx: StepContext) -> dict[str, float]:
        gen, disc = ctx.models["generator"], ctx.models["discriminator"]
        real = ctx.batch["x"]
        fake = gen(torch.randn(len(real), NOISE_DIM, device=real.device))
        softplus = nn.functional.softplus
        loss_d = softplus(-disc(real)).mean() + softplus(disc(fake.detach())).mean()
        ctx.optimize("discriminator", loss_d, grad_clip=10.0)
        loss_g = softplus(-disc(fake)).mean()
        ctx.optimize("generator", loss_g)
        return {"loss_d": loss_d.item(), "loss_g": loss_g.item()}

    def evaluate(self, model, loader, epoch):
        samples = model(torch.randn(2048, NOISE_DIM, generator=torch.Generator().manual_seed(0)))
        return {"mean": samples.mean().item(), "std": samples.std().item()}


class Line(Dataset):
    """Points s * u on a fixed line in 8-D (s ~ N(0, 4)): most of the added noise can be told apart."""

    def __init__(self, n: int, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        direction = nn.functional.normalize(torch.randn(8, generator=torch.Generator().manual_seed(42)), dim=0)
        self.x = 2 * torch.randn(n, 1, generator=g) * direction

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[i]}


def denoiser() -> nn.Module:
    return nn.Sequential(nn.Linear(9, 64), nn.SiLU(), nn.Linear(64, 64), nn.SiLU(), nn.Linear(64, 8))


class DenoiseTask:
    """Predict the noise eps in sqrt(a) x + sqrt(1 - a) eps, a = cos^2(pi t / 2), t ~ U(0.02, 0.98)."""

    @staticmethod
    def loss(model, x, generator=None):
        t = 0.02 + 0.96 * torch.rand(len(x), 1, generator=generator)
        eps = torch.randn(x.shape, generator=generator)
        a = torch.cos(0.5 * math.pi * t) ** 2
        noisy = a.sqrt() * x + (1 - a).sqrt() * eps
        return nn.functional.mse_loss(model(torch.cat([noisy, t], dim=1)), eps)

    def training_loss(self, model, batch, epoch):
        loss = self.loss(model, batch["x"])
        return loss, {}

    def evaluate(self, model, loader, epoch):
        g = torch.Generator().manual_seed(0)  # the same noise at every evaluation
        losses = [self.loss(model, b["x"], g).item() for b in loader]
        return {"loss": sum(losses) / len(losses)}


class KillAfter(Dataset):
    """``dataset``, but the process SIGKILLs itself when asked for item number ``limit``."""

    def __init__(self, dataset: Dataset, limit: int):
        self.dataset, self.limit, self.served = dataset, limit, 0

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        if self.served == self.limit:
            os.kill(os.getpid(), signal.SIGKILL)
        self.served += 1
        return self.dataset[i]


class Seen(Dataset):
    """``dataset``, recording the indices it serves in order."""

    def __init__(self, dataset: Dataset):
        self.dataset, self.seen = dataset, []

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int):
        self.seen.append(i)
        return self.dataset[i]


def setup(kind: str):
    """(config, models, train set, val set, task) of a toy; the models' initial weights depend on the seed."""
    torch.manual_seed(0)
    if kind == "regression":
        cfg = TrainConfig(
            epochs=4, batch_size=4, lr=0.05, checkpoint_every=2, seed=3, ema_decay=0.5, eval_every_steps=5
        )  # fmt: skip
        model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(0.1), nn.Linear(8, 1))
        return cfg, model, Toy(64), Toy(16, seed=1), ToyTask()
    if kind == "gan":
        cfg = TrainConfig(
            epochs=6, batch_size=32, lr=0.01, lr_schedule="exponential", lr_decay=0.998, checkpoint_every=10,
            ema_decay=0.99, seed=5,
        )  # fmt: skip
        return cfg, gan_models(), Gaussian(1024), Gaussian(64, seed=1), GanTask()
    if kind == "denoise":
        cfg = TrainConfig(
            epochs=6, batch_size=32, lr=0.005, lr_schedule="cosine", warmup_steps=10, checkpoint_every=10,
            ema_decay=0.9, seed=7,
        )  # fmt: skip
        return cfg, denoiser(), Line(1024), Line(256, seed=1), DenoiseTask()
    raise ValueError(f"unknown toy {kind!r}")


def flat_weights(model: nn.Module) -> list[float]:
    return torch.cat([t.detach().flatten().double() for t in model.state_dict().values()]).tolist()


def wait_for(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("regression", "gan", "denoise"))
    parser.add_argument("ckpt_dir", type=Path)
    parser.add_argument("out_json")
    parser.add_argument("--kill-at-step", type=int, default=0, help="SIGKILL itself when this step starts")
    parser.add_argument("--prune", action="store_true", help="rank 0's epoch callback raises TrialPruned")
    args = parser.parse_args()

    cfg, models, train, val, task = setup(args.kind)
    trainer = Trainer(cfg, args.ckpt_dir, fingerprint={"toy": args.kind})
    seen = Seen(train)
    data = KillAfter(seen, args.kill_at_step * cfg.batch_size) if args.kill_at_step else seen
    record = {"rank": trainer.rank, "world": trainer.world}
    out = Path(f"{args.out_json}.rank{trainer.rank}")

    def prune(epoch, train_metrics, val_metrics, model):
        import optuna

        raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}")

    try:
        result = trainer.fit(models, data, val, task, prune if args.prune else None)
    except BaseException as exc:
        out.write_text(json.dumps({**record, "error": type(exc).__name__}))
        if args.prune and trainer.is_main:  # like optuna, rank 0 goes on (to its next trial): it does not exit
            wait_for(Path(f"{args.out_json}.rank1"), timeout=60)
        raise
    record |= {
        "seen": seen.seen,
        "resumed_from_step": result.resumed_from_step,
        "weights": {"eval": flat_weights(result.model), **{k: flat_weights(m) for k, m in result.models.items()}},
        "history": result.history,
        "validations": result.validations,
        "losses": getattr(task, "losses", {}),
        "seeds": getattr(task, "seeds", []),
    }
    out.write_text(json.dumps(record))
    if trainer.is_main:
        Path(args.out_json).write_text(json.dumps(record))
    if os.environ.get("WORLD_SIZE"):
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
