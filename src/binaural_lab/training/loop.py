"""The one training loop: every model of the project trains through :class:`Trainer`.

It selects the device, autocasts to bf16 on CUDA, clips gradients, keeps an optional EMA of the
weights, seeds everything, and writes an atomic checkpoint every N steps. A run that is killed and
started again resumes from its last checkpoint, at the same batch of the same epoch, with the same
random state, so an interrupted run ends with the same weights as an uninterrupted one. Under
``torchrun`` it wraps the model in DistributedDataParallel (gloo on CPU, NCCL on CUDA); rank 0 alone
evaluates, logs and writes.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from binaural_lab.config import ParamError, param, to_dict
from binaural_lab.paths import atomic_path, hash_files


@dataclass
class TrainConfig:
    """Optimisation settings shared by every model (one ``train`` block per stage in params.yaml)."""

    epochs: int = param(10, ge=1)
    batch_size: int = param(16, ge=1)
    lr: float = param(1e-3, gt=0, le=1)
    weight_decay: float = param(0.0, ge=0)
    betas: list[float] = param([0.9, 0.999], ge=0, lt=1)
    lr_schedule: str = param("constant", choices=("constant", "cosine"))
    warmup_steps: int = param(0, ge=0)
    grad_clip: float = param(1.0, ge=0, doc="max gradient norm; 0 disables clipping")
    ema_decay: float = param(0.0, ge=0, lt=1, doc="0 disables the EMA of the weights")
    checkpoint_every: int = param(50, ge=1, doc="steps between checkpoints")
    seed: int = param(0, ge=0)
    num_workers: int = param(0, ge=0)
    device: str = param("auto", choices=("auto", "cpu", "cuda"))
    bf16: bool = param(True, doc="bf16 autocast on CUDA (ignored on the CPU)")

    def validate(self, where: str) -> None:
        if len(self.betas) != 2:
            raise ParamError(f"{where}.betas: expected two values, got {self.betas}")


class TrainTask(Protocol):
    """What a model family plugs into the loop."""

    def training_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], epoch: int
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def evaluate(self, model: nn.Module, loader: DataLoader, epoch: int) -> dict[str, float]: ...


# on_epoch_end(epoch, train metrics, val metrics, model being evaluated): log, prune, draw figures
EpochCallback = Callable[[int, dict[str, float], dict[str, float], nn.Module], None]


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from_step: int = 0
    seconds: float = 0.0
    is_main: bool = True  # False on torchrun ranks other than 0, which write nothing


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is 'cuda' but no CUDA device is available; use 'auto' or 'cpu'")
    if name == "cuda" and dist.is_available() and dist.is_initialized():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device(name)


def _distributed() -> tuple[int, int]:
    """(rank, world size); initialises the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend=backend)
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class _EMA:
    """Exponential moving average of parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for s, p in zip(self.shadow.parameters(), model.parameters(), strict=True):
            s.lerp_(p.detach(), 1 - self.decay)
        for s, b in zip(self.shadow.buffers(), model.buffers(), strict=True):
            s.copy_(b)


class Trainer:
    """Fits ``model`` on ``train_set`` with ``task``'s loss; checkpoints under ``ckpt_dir``."""

    def __init__(self, cfg: TrainConfig, ckpt_dir: Path, fingerprint: Mapping[str, Any] | None = None):
        self.cfg = cfg
        self.ckpt_dir = Path(ckpt_dir)
        self.rank, self.world = _distributed()
        self.device = pick_device(cfg.device)
        # a checkpoint is resumed only when it was written for the same settings, data and code: a run
        # that DVC starts again because the code changed must not pick up a stale finished checkpoint
        code = hash_files([Path(__file__).resolve().parents[1]], "*.py")
        blob = json.dumps({"train": to_dict(cfg), "code": code, **(fingerprint or {})}, sort_keys=True, default=str)
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_path(self) -> Path:
        return self.ckpt_dir / "last.pt"

    def _epoch_batches(self, n: int, epoch: int) -> list[list[int]]:
        """The epoch's shuffled index batches for this rank (the same on every run of the seed)."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
        per_rank = len(order) // self.world
        mine = order[self.rank * per_rank : (self.rank + 1) * per_rank]
        bs = self.cfg.batch_size
        batches = [mine[i : i + bs] for i in range(0, len(mine), bs)]
        return [b for b in batches if len(b) == bs] or batches[:1]

    def _lr_factor(self, step: int, total: int) -> float:
        if self.cfg.warmup_steps and step < self.cfg.warmup_steps:
            return (step + 1) / self.cfg.warmup_steps
        if self.cfg.lr_schedule == "cosine":
            progress = (step - self.cfg.warmup_steps) / max(1, total - self.cfg.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
        return 1.0

    def _save(self, state: dict[str, Any]) -> None:
        if not self.is_main:
            return
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def _load(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.is_file():
            return None
        state = torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            if self.is_main:
                tqdm.write(f"{self.checkpoint_path}: written for other settings or data; starting over")
            return None
        return state

    def fit(
        self,
        model: nn.Module,
        train_set: Dataset,
        val_set: Dataset | None,
        task: TrainTask,
        on_epoch_end: EpochCallback | None = None,
    ) -> TrainResult:
        cfg = self.cfg
        seed_everything(cfg.seed)
        model.to(self.device)
        optimizer = torch.optim.AdamW(
            model.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay
        )
        ema = _EMA(model, cfg.ema_decay) if cfg.ema_decay > 0 else None
        n = len(train_set)  # type: ignore[arg-type]
        steps_per_epoch = len(self._epoch_batches(n, 0))
        total_steps = steps_per_epoch * cfg.epochs
        history: list[dict[str, float]] = []
        start_epoch, start_batch, step, elapsed = 0, 0, 0, 0.0

        state = self._load()
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            if ema is not None and state.get("ema") is not None:
                ema.shadow.load_state_dict(state["ema"])
            start_epoch, start_batch, step = state["epoch"], state["batch"], state["step"]
            history, elapsed = state["history"], state.get("seconds", 0.0)
            torch.set_rng_state(state["rng"]["torch"])
            np.random.set_state(state["rng"]["numpy"])
            random.setstate(state["rng"]["python"])
            if self.is_main:
                tqdm.write(f"resuming {self.checkpoint_path} at epoch {start_epoch + 1}, step {step}")
        resumed_from = step

        net: nn.Module = model
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.device.type == "cuda" and cfg.bf16)

        t0 = time.perf_counter()

        def snapshot(epoch: int, batch: int) -> dict[str, Any]:
            return {
                "fingerprint": self.fingerprint,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "ema": ema.shadow.state_dict() if ema is not None else None,
                "epoch": epoch,
                "batch": batch,
                "step": step,
                "history": history,
                "seconds": elapsed + time.perf_counter() - t0,
                "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()},
            }

        for epoch in range(start_epoch, cfg.epochs):
            batches = self._epoch_batches(n, epoch)
            loader = DataLoader(
                train_set,
                batch_sampler=batches[start_batch:],
                num_workers=cfg.num_workers,
                # its own generator: creating the iterator must not draw from the global RNG, or a
                # resumed epoch would see other dropout masks than an uninterrupted one
                generator=torch.Generator().manual_seed(cfg.seed + epoch),
            )
            net.train()
            sums: dict[str, float] = {}
            bar = tqdm(
                loader,
                total=len(batches) - start_batch,
                desc=f"epoch {epoch + 1}/{cfg.epochs}",
                disable=not self.is_main,
                leave=False,
            )
            for i, batch in enumerate(bar, start=start_batch):
                for group in optimizer.param_groups:
                    group["lr"] = cfg.lr * self._lr_factor(step, total_steps)
                with autocast:
                    loss, parts = task.training_loss(net, _to_device(batch, self.device), epoch)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"training loss became {loss.item()} at epoch {epoch + 1}, step {step}")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip > 0:
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                if ema is not None:
                    ema.update(model)
                step += 1
                for k, v in {"loss": loss.item(), **parts}.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if step % cfg.checkpoint_every == 0 and i + 1 < len(batches):
                    self._save(snapshot(epoch, i + 1))
            seen = max(1, len(batches) - start_batch)
            train_metrics = {f"train_{k}": v / seen for k, v in sums.items()}
            start_batch = 0
            val_metrics: dict[str, float] = {}
            eval_model = ema.shadow if ema is not None else model
            if self.is_main and val_set is not None:
                eval_model.eval()
                val_loader = DataLoader(val_set, batch_size=cfg.batch_size, shuffle=False)
                with torch.no_grad(), autocast:
                    val_metrics = {f"val_{k}": v for k, v in task.evaluate(eval_model, val_loader, epoch).items()}
            history.append({"epoch": epoch + 1, "step": step, **train_metrics, **val_metrics})
            if self.is_main:
                tqdm.write(
                    f"epoch {epoch + 1}/{cfg.epochs} "
                    + " ".join(f"{k}={v:.4g}" for k, v in {**train_metrics, **val_metrics}.items())
                )
                if on_epoch_end is not None:
                    on_epoch_end(epoch, train_metrics, val_metrics, eval_model)
            self._save(snapshot(epoch + 1, 0))
            if self.world > 1:
                dist.barrier()

        final = ema.shadow if ema is not None else model
        final.eval()
        return TrainResult(
            model=final,
            history=history,
            resumed_from_step=resumed_from,
            seconds=elapsed + time.perf_counter() - t0,
            is_main=self.is_main,
        )
