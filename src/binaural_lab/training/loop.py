"""The one training loop: every model of the project trains through :class:`Trainer`.

``Trainer(cfg, ckpt_dir, fingerprint).fit(models, train_set, val_set, task, on_epoch_end, on_eval)``
trains one network (``models`` is a module) or several (a dict of names to modules, e.g. a generator
and its discriminators). The first model is the primary one: its EMA is kept, it is evaluated and it
is returned as ``TrainResult.model``.

The task provides:

- ``evaluate(model, loader, epoch) -> metrics`` of the primary model (its EMA if any), on rank 0;
- either ``training_loss(model, batch, epoch) -> (loss, parts)``: the loop then takes one step of the
  one optimizer; or ``training_step(ctx) -> parts``, which optimises itself through
  ``ctx.optimize(name, loss)`` (see :class:`StepContext`), with as many models and optimizers as it
  needs;
- optionally ``configure_optimizers(models, cfg) -> {name: optimizer}``; by default one AdamW per
  model, named like the model, with the config's lr, betas and weight decay.

The loop picks the device, runs each step's forward passes under bf16 autocast on CUDA (backward runs
outside it), sets every optimizer's learning rate at every step from the schedule (relative to the lr
each parameter group was created with), clips gradients, keeps an EMA with warm-up, validates every
epoch and every ``eval_every_steps`` steps, and writes an atomic checkpoint every ``checkpoint_every``
steps and every epoch: every model and optimizer, the EMA, each rank's random state and running sums
of the epoch's training metrics, all loadable with ``torch.load(weights_only=True)``. A run that is
killed and started again resumes at the same batch with the same random state and ends with the same
weights as an uninterrupted run. A checkpoint is resumed only when it was written for the same
fingerprint (train config, the caller's mapping, :func:`code_fingerprint`); otherwise it is moved
aside, never deleted.

Under ``torchrun`` each model with trainable parameters is wrapped in DistributedDataParallel (gloo on
CPU, NCCL on CUDA); every epoch's seeded permutation is shared and split across ranks, each rank seeds
its own random numbers with ``seed + rank``, training metrics are averaged over ranks, and BatchNorm
becomes SyncBatchNorm when ``sync_batchnorm`` is set. Rank 0 alone validates, calls back and writes;
it then tells the others whether that raised, and if it did they raise :class:`StoppedByRank0`
instead of waiting for it. Ranks are the job's global ranks (RANK, not LOCAL_RANK): with
``torchrun --nnodes N`` rank 0 is one process of one node (with the c10d rendezvous, the node whose
address sorts first; it ignores ``--node-rank``). Rank 0 also reads the checkpoint and sends it to
every rank, so the nodes of a multi-node job resume alike without a shared file system.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import pickle
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
from binaural_lab.paths import atomic_path
from binaural_lab.training.fingerprint import code_fingerprint


@dataclass
class TrainConfig:
    """Optimisation settings shared by every model (one ``train`` block per stage in params.yaml)."""

    epochs: int = param(10, ge=1)
    batch_size: int = param(16, ge=1)
    lr: float = param(1e-3, gt=0, le=1)
    weight_decay: float = param(0.0, ge=0)
    betas: list[float] = param([0.9, 0.999], ge=0, lt=1)
    lr_schedule: str = param("constant", choices=("constant", "cosine", "exponential"))
    lr_decay: float = param(0.9999996, gt=0, le=1, doc="per-step lr factor of the exponential schedule")
    warmup_steps: int = param(0, ge=0)
    grad_clip: float = param(1.0, ge=0, doc="max gradient norm; 0 disables clipping")
    ema_decay: float = param(0.0, ge=0, lt=1, doc="0 disables the EMA of the weights")
    eval_every_steps: int = param(0, ge=0, doc="steps between validations besides each epoch's; 0 = none")
    checkpoint_every: int = param(50, ge=1, doc="steps between checkpoints (one is also written every epoch)")
    seed: int = param(0, ge=0)
    num_workers: int = param(0, ge=0)
    device: str = param("auto", choices=("auto", "cpu", "cuda"))
    bf16: bool = param(True, doc="bf16 autocast on CUDA (ignored on the CPU)")
    sync_batchnorm: bool = param(False, doc="BatchNorm becomes SyncBatchNorm under torchrun (CUDA only)")

    def validate(self, where: str) -> None:
        if len(self.betas) != 2:
            raise ParamError(f"{where}.betas: expected two values, got {self.betas}")


@dataclass
class StepContext:
    """What ``task.training_step`` works with for one batch."""

    models: dict[str, nn.Module]  # as trained: DDP-wrapped under torchrun, so call them, do not save them
    optimizers: dict[str, torch.optim.Optimizer]
    batch: dict[str, Any]  # on the device
    epoch: int
    step: int  # optimisation steps taken before this one
    grad_clip: float
    device_type: str

    def optimize(self, name: str, loss: torch.Tensor, grad_clip: float | None = None) -> None:
        """Zero optimizer ``name``'s gradients, backpropagate ``loss`` (outside autocast), clip the
        gradient norm of the optimizer's parameters (``grad_clip``, else ``train.grad_clip``; 0 = no
        clipping) and step it."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name} loss became {loss.item()} at epoch {self.epoch + 1}, step {self.step}")
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device_type, enabled=False):
            loss.backward()
        clip = self.grad_clip if grad_clip is None else grad_clip
        if clip > 0:
            nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip)
        optimizer.step()


class TrainTask(Protocol):
    """A task trained by the default step: one model, one optimizer."""

    def training_loss(
        self, model: nn.Module, batch: dict[str, torch.Tensor], epoch: int
    ) -> tuple[torch.Tensor, dict[str, float]]: ...

    def evaluate(self, model: nn.Module, loader: DataLoader, epoch: int) -> dict[str, float]: ...


class StepTask(Protocol):
    """A task that optimises itself: any number of models and optimizers (GANs, diffusion).

    ``training_step`` returns the batch's training metrics (floats); every rank must return the same
    names.
    """

    def training_step(self, ctx: StepContext) -> dict[str, float]: ...

    def evaluate(self, model: nn.Module, loader: DataLoader, epoch: int) -> dict[str, float]: ...


# on_epoch_end(epoch, train metrics, val metrics, model being evaluated): log, prune, draw figures
EpochCallback = Callable[[int, dict[str, float], dict[str, float], nn.Module], None]
# on_eval(step, train metrics of the epoch so far, val metrics, model being evaluated), every
# eval_every_steps steps
EvalCallback = Callable[[int, dict[str, float], dict[str, float], nn.Module], None]


@dataclass
class TrainResult:
    model: nn.Module  # the primary model as evaluated: its EMA when ema_decay > 0
    history: list[dict[str, float]] = field(default_factory=list)
    validations: list[dict[str, float]] = field(default_factory=list)  # every validation: epoch, step, val_*
    resumed_from_step: int = 0
    seconds: float = 0.0
    is_main: bool = True  # False on torchrun ranks other than 0, which write nothing
    models: dict[str, nn.Module] = field(default_factory=dict)  # every trained model by name (no EMA)


class StoppedByRank0(RuntimeError):
    """Raised on the other ranks when rank 0's validation or callback raised (e.g. a pruned trial)."""


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


def lr_factor(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The learning-rate multiplier at ``step`` (0-based) of ``total_steps``: a linear warm-up over
    ``warmup_steps``, then constant, a cosine down to 0 at the end, or ``lr_decay ** steps_since_warmup``."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    after = step - cfg.warmup_steps
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * min(1.0, after / max(1, total_steps - cfg.warmup_steps))))
    if cfg.lr_schedule == "exponential":
        return cfg.lr_decay**after
    return 1.0


class EMA:
    """Exponential moving average of a model's parameters (buffers are copied).

    The decay at update t is ``min(decay, (1 + t) / (10 + t))``: early updates follow the model closely,
    so the average does not keep the initial weights for thousands of steps.
    """

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.updates = 0
        self.shadow = copy.deepcopy(model).eval()
        for p in self.shadow.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for s, p in zip(self.shadow.parameters(), model.parameters(), strict=True):
            s.lerp_(p.detach(), 1 - decay)
        for s, b in zip(self.shadow.buffers(), model.buffers(), strict=True):
            s.copy_(b)
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        return {"shadow": self.shadow.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.shadow.load_state_dict(state["shadow"])
        self.updates = state["updates"]


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


def _rng_state(cuda: bool) -> dict[str, Any]:
    """This process's random state as tensors and lists, so that ``weights_only`` loading accepts it."""
    _, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [keys.tolist(), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }
    if cuda:
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state(("MT19937", np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


def _unused_path(path: Path) -> Path:
    """``path``, or ``path`` with a counter before its suffix when that exists already."""
    candidate, i = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}.{i}{path.suffix}")
        i += 1
    return candidate


def _default_optimizers(models: Mapping[str, nn.Module], cfg: TrainConfig) -> dict[str, torch.optim.Optimizer]:
    return {
        name: torch.optim.AdamW(m.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        for name, m in models.items()
        if any(p.requires_grad for p in m.parameters())
    }


def _loss_step(task: TrainTask) -> Callable[[StepContext], dict[str, float]]:
    """The default step: ``task.training_loss`` of the one model, then a step of the one optimizer."""

    def step(ctx: StepContext) -> dict[str, float]:
        (model,) = ctx.models.values()
        (name,) = ctx.optimizers
        loss, parts = task.training_loss(model, ctx.batch, ctx.epoch)
        ctx.optimize(name, loss)
        return {"loss": loss.item(), **parts}

    return step


@dataclass
class _Progress:
    """Where training stands: what a checkpoint restores besides the weights and random state."""

    epoch: int = 0
    batch: int = 0  # batches of ``epoch`` already trained
    step: int = 0
    sums: dict[str, float] = field(default_factory=dict)  # this rank's sums of the epoch's training metrics
    count: int = 0  # this rank's batches in ``sums``
    history: list[dict[str, float]] = field(default_factory=list)
    validations: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


class Trainer:
    """Fits models on ``train_set`` with a task; checkpoints under ``ckpt_dir``.

    ``fingerprint`` is the caller's part of what a checkpoint must match to be resumed: model params,
    a :func:`content_hash` of the data, ...
    """

    def __init__(self, cfg: TrainConfig, ckpt_dir: Path, fingerprint: Mapping[str, Any] | None = None):
        self.cfg = cfg
        self.ckpt_dir = Path(ckpt_dir)
        self.rank, self.world = _distributed()
        self.device = pick_device(cfg.device)
        if cfg.sync_batchnorm and self.world > 1 and self.device.type != "cuda":
            raise ParamError("train.sync_batchnorm: SyncBatchNorm runs on CUDA only; set it to false on the CPU")
        blob = json.dumps(
            {"train": to_dict(cfg), "code": code_fingerprint(), "caller": dict(fingerprint or {})},
            sort_keys=True,
            default=str,
        )
        self.fingerprint = hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def checkpoint_path(self) -> Path:
        return self.ckpt_dir / "last.pt"

    def fit(
        self,
        models: nn.Module | Mapping[str, nn.Module],
        train_set: Dataset,
        val_set: Dataset | None,
        task: TrainTask | StepTask,
        on_epoch_end: EpochCallback | None = None,
        on_eval: EvalCallback | None = None,
    ) -> TrainResult:
        cfg = self.cfg
        seed_everything(cfg.seed + self.rank)  # own dropout and noise on each rank; the data order is shared
        if isinstance(models, nn.Module):
            models = {"model": models}
        if cfg.sync_batchnorm and self.world > 1:
            models = {k: nn.SyncBatchNorm.convert_sync_batchnorm(m) for k, m in models.items()}
        models = {k: m.to(self.device) for k, m in models.items()}
        configure = getattr(task, "configure_optimizers", _default_optimizers)
        optimizers = configure(models, cfg)
        if hasattr(task, "training_step"):
            step_fn = task.training_step
        elif len(models) == 1 and len(optimizers) == 1:
            step_fn = _loss_step(task)
        else:
            raise TypeError(
                f"a task without training_step trains one model with one optimizer, "
                f"got models {list(models)} and optimizers {list(optimizers)}"
            )
        base_lrs = {k: [g["lr"] for g in opt.param_groups] for k, opt in optimizers.items()}
        primary = models[next(iter(models))]
        ema = EMA(primary, cfg.ema_decay) if cfg.ema_decay > 0 else None
        eval_model = ema.shadow if ema is not None else primary
        n = len(train_set)  # type: ignore[arg-type]
        total_steps = len(self._epoch_batches(n, 0)) * cfg.epochs

        run = self._resume(models, optimizers, ema)
        resumed_from = run.step
        nets = {k: self._wrap(m) for k, m in models.items()}
        t0 = time.perf_counter() - run.seconds

        while run.epoch < cfg.epochs:
            batches = self._epoch_batches(n, run.epoch)
            # the loader's own generator (worker seeds): creating the iterator must not draw from the
            # global RNG, or a resumed epoch would see other dropout masks than an uninterrupted one
            worker_seed = np.random.SeedSequence([cfg.seed, self.rank, run.epoch]).generate_state(1)[0]
            loader = DataLoader(
                train_set,
                batch_sampler=batches[run.batch :],
                num_workers=cfg.num_workers,
                generator=torch.Generator().manual_seed(int(worker_seed)),
            )
            for net in nets.values():
                net.train()
            label = f"epoch {run.epoch + 1}/{cfg.epochs}"
            bar = tqdm(loader, total=len(batches) - run.batch, desc=label, disable=not self.is_main, leave=False)
            for batch in bar:
                factor = lr_factor(cfg, run.step, total_steps)
                for k, opt in optimizers.items():
                    for group, base in zip(opt.param_groups, base_lrs[k], strict=True):
                        group["lr"] = base * factor
                batch = _to_device(batch, self.device)
                ctx = StepContext(nets, optimizers, batch, run.epoch, run.step, cfg.grad_clip, self.device.type)
                with self._autocast():
                    parts = step_fn(ctx)
                if ema is not None:
                    ema.update(primary)
                run.step, run.batch, run.count = run.step + 1, run.batch + 1, run.count + 1
                for k, v in parts.items():
                    run.sums[k] = run.sums.get(k, 0.0) + float(v)
                bar.set_postfix({k: f"{float(v):.4g}" for k, v in parts.items()})
                mid_epoch = run.batch < len(batches)  # the epoch's end validates and checkpoints below
                if mid_epoch and self._eval_due(run.step):
                    train_metrics = self._epoch_means(run)
                    self._report(f"step {run.step}", task, eval_model, val_set, run, train_metrics, None, on_eval)
                if mid_epoch and run.step % cfg.checkpoint_every == 0:
                    run.seconds = time.perf_counter() - t0
                    self._save(run, models, optimizers, ema)

            train_metrics = self._epoch_means(run)
            run.history.append({"epoch": run.epoch + 1, "step": run.step, **train_metrics})
            on_step_eval = on_eval if self._eval_due(run.step) else None
            val_metrics = self._report(label, task, eval_model, val_set, run, train_metrics, on_epoch_end, on_step_eval)
            run.history[-1].update(val_metrics)
            run.epoch, run.batch, run.sums, run.count = run.epoch + 1, 0, {}, 0
            run.seconds = time.perf_counter() - t0
            self._save(run, models, optimizers, ema)

        eval_model.eval()
        return TrainResult(
            model=eval_model,
            history=run.history,
            validations=run.validations,
            resumed_from_step=resumed_from,
            seconds=time.perf_counter() - t0,
            is_main=self.is_main,
            models=models,
        )

    def _epoch_batches(self, n: int, epoch: int) -> list[list[int]]:
        """The epoch's shuffled index batches for this rank (the same on every run of the seed)."""
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        order = torch.randperm(n, generator=g).tolist()
        per_rank = len(order) // self.world
        mine = order[self.rank * per_rank : (self.rank + 1) * per_rank]
        bs = self.cfg.batch_size
        batches = [mine[i : i + bs] for i in range(0, len(mine), bs)]
        return [b for b in batches if len(b) == bs] or batches[:1]

    def _autocast(self) -> torch.autocast:
        on_cuda = self.device.type == "cuda"
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=on_cuda and self.cfg.bf16)

    def _wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1 or not any(p.requires_grad for p in model.parameters()):
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def _eval_due(self, step: int) -> bool:
        return self.cfg.eval_every_steps > 0 and step % self.cfg.eval_every_steps == 0

    def _epoch_means(self, run: _Progress) -> dict[str, float]:
        """Mean training metrics of the epoch so far, over the batches of every rank."""
        keys = sorted(run.sums)
        totals = torch.tensor([*(run.sums[k] for k in keys), run.count], dtype=torch.float64)
        if self.world > 1:
            totals = totals.to(self.device)
            dist.all_reduce(totals)
        *sums, count = totals.tolist()
        return {f"train_{k}": s / max(count, 1) for k, s in zip(keys, sums, strict=True)}

    def _validate(self, task: Any, model: nn.Module, val_set: Dataset | None, epoch: int) -> dict[str, float]:
        if val_set is None:
            return {}
        loader = DataLoader(val_set, batch_size=self.cfg.batch_size, shuffle=False)
        with torch.no_grad(), self._autocast():
            metrics = task.evaluate(model, loader, epoch)
        return {f"val_{k}": v for k, v in metrics.items()}

    def _report(
        self,
        label: str,
        task: Any,
        eval_model: nn.Module,
        val_set: Dataset | None,
        run: _Progress,
        train_metrics: dict[str, float],
        on_epoch_end: EpochCallback | None,
        on_eval: EvalCallback | None,
    ) -> dict[str, float]:
        """Rank 0 validates, prints and calls back, with ``eval_model`` in eval mode; then every rank
        learns whether that raised.

        If it did, rank 0 re-raises and the other ranks raise :class:`StoppedByRank0`, so that none waits
        for a rank 0 that has stopped. Returns the validation metrics (empty on other ranks).
        """
        val_metrics: dict[str, float] = {}
        error: BaseException | None = None
        if self.is_main:
            was_training = eval_model.training
            eval_model.eval()
            try:
                val_metrics = self._validate(task, eval_model, val_set, run.epoch)
                if val_metrics:
                    run.validations.append({"epoch": run.epoch + 1, "step": run.step, **val_metrics})
                tqdm.write(f"{label} " + " ".join(f"{k}={v:.4g}" for k, v in {**train_metrics, **val_metrics}.items()))
                if on_epoch_end is not None:
                    on_epoch_end(run.epoch, train_metrics, val_metrics, eval_model)
                if on_eval is not None:
                    on_eval(run.step, train_metrics, val_metrics, eval_model)
            except BaseException as exc:  # also optuna.TrialPruned and KeyboardInterrupt: the others must stop
                error = exc
            eval_model.train(was_training)
        if self.world > 1:
            failed = torch.tensor([error is not None], dtype=torch.int32, device=self.device)
            dist.broadcast(failed, src=0)
            if failed.item() and not self.is_main:
                raise StoppedByRank0(f"rank 0 stopped at {label} (its validation or callback raised)")
        if error is not None:
            raise error
        return val_metrics

    def _save(
        self,
        run: _Progress,
        models: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        ema: EMA | None,
    ) -> None:
        """Checkpoint atomically: rank 0 writes, with the random state and epoch sums of every rank."""
        mine = {"rng": _rng_state(self.device.type == "cuda"), "sums": dict(run.sums), "count": run.count}
        ranks: list[Any] = [mine]
        if self.world > 1:
            ranks = [None] * self.world
            dist.all_gather_object(ranks, mine)
        if not self.is_main:
            return
        state = {
            "fingerprint": self.fingerprint,
            "models": {k: m.state_dict() for k, m in models.items()},
            "optimizers": {k: opt.state_dict() for k, opt in optimizers.items()},
            "ema": ema.state_dict() if ema is not None else None,
            "epoch": run.epoch,
            "batch": run.batch,
            "step": run.step,
            "history": run.history,
            "validations": run.validations,
            "seconds": run.seconds,
            "ranks": ranks,
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)

    def _read_checkpoint(self) -> dict[str, Any] | None:
        """The checkpoint to resume, if it was written for this fingerprint; a stale one is moved aside.

        Rank 0 reads it (it alone writes it) and sends it to every other rank, so that all resume the
        same state even when the nodes of a multi-node job share no file system.
        """
        state = self._read_own_checkpoint() if self.is_main else None
        if self.world > 1:
            box = [state]
            dist.broadcast_object_list(box, src=0, device=self.device if self.device.type == "cuda" else None)
            state = box[0]
        return state

    def _read_own_checkpoint(self) -> dict[str, Any] | None:
        path = self.checkpoint_path
        if not path.is_file():
            return None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:  # written by an older loop, with arbitrary pickled objects
            state = {"fingerprint": "unreadable"}
        if state["fingerprint"] == self.fingerprint:
            return state
        aside = _unused_path(path.with_name(f"last.{state['fingerprint']}.pt"))
        path.rename(aside)
        tqdm.write(
            f"{path} was written for other settings, data or code (fingerprint {state['fingerprint']}, "
            f"now {self.fingerprint}): moved it to {aside} and training from scratch"
        )
        return None

    def _resume(
        self,
        models: Mapping[str, nn.Module],
        optimizers: Mapping[str, torch.optim.Optimizer],
        ema: EMA | None,
    ) -> _Progress:
        state = self._read_checkpoint()
        if state is None:
            return _Progress()
        for k, m in models.items():
            m.load_state_dict(state["models"][k])
        for k, opt in optimizers.items():
            opt.load_state_dict(state["optimizers"][k])
        if ema is not None:
            ema.load_state_dict(state["ema"])
        run = _Progress(
            epoch=state["epoch"],
            batch=state["batch"],
            step=state["step"],
            history=state["history"],
            validations=state["validations"],
            seconds=state["seconds"],
        )
        ranks = state["ranks"]
        if len(ranks) == self.world:
            _set_rng_state(ranks[self.rank]["rng"])
            run.sums, run.count = ranks[self.rank]["sums"], ranks[self.rank]["count"]
        elif self.is_main:
            tqdm.write(
                f"{self.checkpoint_path} was written by {len(ranks)} processes, this run has {self.world}: "
                "random states start afresh and this epoch's training metrics count only the batches from here"
            )
        if self.is_main and run.epoch == self.cfg.epochs:
            tqdm.write(f"{self.checkpoint_path}: training finished at step {run.step}; nothing left to train")
        elif self.is_main:
            tqdm.write(f"resuming {self.checkpoint_path} at epoch {run.epoch + 1}, step {run.step}")
        return run
