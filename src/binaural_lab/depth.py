"""The depth-from-echoes family: its registry, task, evaluation, baseline and figures.

A depth model is a name of :data:`REGISTRY` plus a params block ``depth_models.<name>`` with
``model``, ``loss`` and ``train`` sections; it reads the dataset in ``datasets.echoes``. The generic
stages call :data:`FAMILY`: ``train`` fits a model with the one training loop, ``evaluate`` scores it
on the test split with the REFERENCE depth metrics, ``baseline`` scores the per-pixel training-mean
predictor that every model is compared with. Whole splits are read and scored in chunks, so memory
does not grow with the dataset.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from binaural_lab import plots
from binaural_lab.config import UserError, to_dict
from binaural_lab.data.datasets import dataset
from binaural_lab.data.shards import ShardDataset, open_split
from binaural_lab.family import (
    ComparisonSpec,
    ModelEntry,
    ModelParams,
    Registry,
    chunks,
    count_parameters,
    example_indices,
    load_model_file,
    loss_weight_metrics,
    score_in_chunks,
    write_metrics,
)
from binaural_lab.losses.depth import (
    AttentionDepthLoss,
    AttentionDepthLossConfig,
    BaseResidualLoss,
    BaseResidualLossConfig,
    L1DepthLoss,
    L1DepthLossConfig,
)
from binaural_lab.metrics.depth import DepthMetricAccumulator
from binaural_lab.models.base_residual import BaseResidualConfig, BaseResidualDepth
from binaural_lab.models.binaural_attention import (
    BinauralAttentionConfig,
    BinauralAttentionDepth,
    check_attention_memory,
)
from binaural_lab.models.depth_unet import UNetConfig, UNetDepth
from binaural_lab.stage import section
from binaural_lab.training import Trainer, TrainResult, content_hash
from binaural_lab.training.loop import EpochCallback, pick_device, seed_everything

REGISTRY = Registry(
    "depth",
    {
        "unet": ModelEntry(UNetConfig, UNetDepth, L1DepthLossConfig, L1DepthLoss),
        "base_residual": ModelEntry(BaseResidualConfig, BaseResidualDepth, BaseResidualLossConfig, BaseResidualLoss),
        "binaural_attention": ModelEntry(
            BinauralAttentionConfig,
            BinauralAttentionDepth,
            AttentionDepthLossConfig,
            AttentionDepthLoss,
            memory_check=check_attention_memory,
        ),
    },
)

METRIC_CONVENTION = (
    "Batvision / Beyond-Image-to-Depth: per image, metres, pixels with gt > 0 only, then mean over images"
)
HIGHER_IS_BETTER = frozenset({"delta1", "delta2", "delta3"})
COMPARISON = ComparisonSpec(
    title="Depth from binaural echoes: test split",
    metrics=("rmse", "abs_rel", "mae", "log10", "delta1", "delta2", "delta3"),
    key="rmse",
    baseline="mean",
    higher_is_better=HIGHER_IS_BETTER,
)


def convention(depth_kind: str, max_depth: float) -> str:
    """The metric convention of depth maps of ``depth_kind`` (planar or ray) up to ``max_depth`` metres."""
    return f"{METRIC_CONVENTION}; {depth_kind} depth (max {max_depth:g} m)"


class PredictionError(UserError, ValueError):
    """Outside predictions that cannot be scored (wrong shape, NaN)."""


@dataclass
class InputStats:
    """Scalar normalisation of the log-magnitude echo spectrograms, measured on the training split."""

    mean: float
    std: float

    @classmethod
    def measure(cls, split_dir: Path) -> InputStats:
        spec = open_split(split_dir)["spec"]
        total, sq, count = 0.0, 0.0, 0
        for rows in chunks(len(spec)):
            chunk = np.asarray(spec[rows], dtype=np.float64)
            total, sq, count = total + chunk.sum(), sq + (chunk**2).sum(), count + chunk.size
        mean = total / count
        return cls(mean=float(mean), std=float(max(np.sqrt(sq / count - mean**2), 1e-6)))


def depth_dataset(split_dir: Path) -> ShardDataset:
    return ShardDataset(split_dir, {"spec": "spec", "depth": "depth"})


class DepthTask:
    """Loss and validation for a depth network (its inputs normalised by ``stats``)."""

    def __init__(self, loss_fn: Any, stats: InputStats, max_depth: float):
        self.loss_fn = loss_fn
        self.stats = stats
        self.max_depth = max_depth

    def inputs(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return (batch["spec"].float() - self.stats.mean) / self.stats.std

    def training_loss(self, model: nn.Module, batch: dict[str, torch.Tensor], epoch: int):
        outputs = model(self.inputs(batch))
        outputs = {k: v.float() if torch.is_tensor(v) else v for k, v in outputs.items()}
        return self.loss_fn(outputs, batch["depth"].float().unsqueeze(1), epoch)

    def predict(self, model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        return model(self.inputs(batch))["depth"].float().squeeze(1)

    def evaluate(self, model: nn.Module, loader: DataLoader, epoch: int) -> dict[str, float]:
        device = next(model.parameters()).device
        acc = DepthMetricAccumulator()
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            acc.update(self.predict(model, batch).cpu(), batch["depth"].float().cpu())
        return acc.compute()


def build(name: str, p: ModelParams, input_size: int, max_depth: float) -> tuple[nn.Module, Any]:
    """The network and its loss (for a run of ``p.train.epochs``), from a params block."""
    model = REGISTRY.build_model(name, p.model, input_size=input_size, max_depth=max_depth)
    loss_fn = REGISTRY.build_loss(name, p.loss, p.train.epochs, max_depth=max_depth)
    return model, loss_fn


def train_depth_model(
    name: str,
    p: ModelParams,
    features_dir: Path,
    max_depth: float,
    ckpt_dir: Path,
    on_epoch_end: EpochCallback | None = None,
    figure_dir: Path | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train ``name`` on ``features_dir/train`` (validating on ``val``); returns the result and its card.

    The card holds everything needed to rebuild the model for inference: name, params, input size,
    max depth, input statistics. The metrics handed to ``on_epoch_end`` include the weight of every
    loss term in force (``loss_weight/<key>``). Every ``p.figure_every`` epochs, example figures of
    the validation split go to ``figure_dir`` (``epochNNN_examples.png``).
    """
    train_dir, val_dir = features_dir / "train", features_dir / "val"
    train_set, val_set = depth_dataset(train_dir), depth_dataset(val_dir)
    input_size = int(open_split(train_dir)["spec"].shape[-1])
    REGISTRY.check_memory(name, p.model, p.train.batch_size, input_size=input_size)
    stats = InputStats.measure(train_dir)
    seed_everything(p.train.seed)  # the initial weights depend on the seed alone
    model, loss_fn = build(name, p, input_size, max_depth)
    card = {
        "name": name,
        "params": to_dict(p),
        "input_size": input_size,
        "max_depth": max_depth,
        "stats": to_dict(stats),
        "n_parameters": count_parameters(model),
    }
    task = DepthTask(loss_fn, stats, max_depth)

    def epoch_end(epoch: int, train_m: dict[str, float], val_m: dict[str, float], net: nn.Module) -> None:
        if on_epoch_end is not None:
            on_epoch_end(epoch, {**train_m, **loss_weight_metrics(loss_fn, epoch)}, val_m, net)
        if figure_dir is not None and p.figure_every and (epoch + 1) % p.figure_every == 0:
            save_figures(net, task, val_dir, figure_dir, p.figure_examples, stem=f"epoch{epoch + 1:03d}_")

    # resume only what was written for the same model, the same feature bytes and the same code
    fingerprint = {"card": card, "data": content_hash([train_dir, val_dir])}
    trainer = Trainer(p.train, ckpt_dir, fingerprint=fingerprint)
    result = trainer.fit(model, train_set, val_set, task, epoch_end)
    return result, card


def load_model(path: Path, device: torch.device | None = None) -> tuple[nn.Module, DepthTask, dict[str, Any]]:
    """Rebuild a trained model (eval mode, on ``device``) and its task from ``model.pt``."""
    blob = load_model_file(path)
    card = blob["card"]
    p = REGISTRY.params(card["name"], card["params"])
    model, loss_fn = build(card["name"], p, card["input_size"], card["max_depth"])
    model.load_state_dict(blob["state_dict"])
    model.to(device or torch.device("cpu")).eval()
    return model, DepthTask(loss_fn, InputStats(**card["stats"]), card["max_depth"]), card


@torch.no_grad()
def predict_rows(model: nn.Module, task: DepthTask, spec: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """Predicted depth maps [N, S, S] (float32, metres) for echo spectrograms [N, 2, S, S], on the model's device."""
    device = next(model.parameters()).device
    out = []
    for rows in chunks(len(spec), batch_size):
        batch = {"spec": torch.from_numpy(np.asarray(spec[rows])).to(device)}
        out.append(task.predict(model, batch).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def training_mean_depth(train_dir: Path) -> np.ndarray:
    """Per-pixel mean of the valid training depths (0 where no training image is valid)."""
    depth = open_split(train_dir)["depth"]
    total = np.zeros(depth.shape[1:], dtype=np.float64)
    count = np.zeros(depth.shape[1:], dtype=np.int64)
    for rows in chunks(len(depth)):
        chunk = np.asarray(depth[rows], dtype=np.float64)
        valid = chunk > 0
        total += np.where(valid, chunk, 0).sum(0)
        count += valid.sum(0)
    return (total / np.maximum(count, 1)).astype(np.float32)


class DepthFamily:
    """The depth family as the generic stages and ``blab tune`` see it."""

    registry = REGISTRY
    dataset_slot = "echoes"
    higher_is_better = HIGHER_IS_BETTER
    comparison = COMPARISON

    def train(
        self,
        params: Mapping[str, Any],
        name: str,
        p: ModelParams,
        ckpt_dir: Path,
        on_epoch_end: EpochCallback | None,
        figure_dir: Path | None,
    ) -> tuple[TrainResult, dict[str, Any]]:
        data = dataset(params, self.dataset_slot)
        return train_depth_model(name, p, data.features, data.max_depth_m, ckpt_dir, on_epoch_end, figure_dir)

    def loss_context(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {"max_depth": dataset(params, self.dataset_slot).max_depth_m}

    def evaluate(self, params: Mapping[str, Any], name: str, model_file: Path, out_dir: Path) -> dict[str, Any]:
        """Test metrics, ``metrics.json`` and figures of a trained model; returns the metrics and files."""
        data = dataset(params, self.dataset_slot)
        test_dir = data.features / "test"
        model, task, card = load_model(model_file, pick_device("auto"))
        shards = open_split(test_dir)
        metrics = score_in_chunks(
            DepthMetricAccumulator(), shards["depth"], lambda rows: predict_rows(model, task, shards["spec"][rows])
        )
        report = write_metrics(
            out_dir,
            name,
            metrics,
            split="test",
            convention=convention(data.depth_kind, data.max_depth_m),
            depth_kind=data.depth_kind,
            n_parameters=card["n_parameters"],
            train_seconds=card["train_seconds"],
        )
        n_examples = int(section(params, "evaluate.n_examples"))
        figures = save_figures(model, task, test_dir, out_dir / "figures", n_examples)
        return {"metrics": metrics, "files": [report, *figures]}

    def baseline(self, params: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
        """The per-pixel training-mean predictor on the test split."""
        data = dataset(params, self.dataset_slot)
        mean_map = training_mean_depth(data.features / "train")
        shards = open_split(data.features / "test")
        gt = shards["depth"]
        metrics = score_in_chunks(
            DepthMetricAccumulator(),
            gt,
            lambda rows: np.broadcast_to(mean_map, (rows.stop - rows.start, *mean_map.shape)),
        )
        report = write_metrics(
            out_dir,
            "mean",
            metrics,
            split="test",
            convention=convention(data.depth_kind, data.max_depth_m),
            depth_kind=data.depth_kind,
            n_parameters=0,
            train_seconds=0.0,
        )
        pick = example_indices(len(gt), int(section(params, "evaluate.n_examples")))
        figure = out_dir / "figures" / "examples.png"
        gt_pick = np.asarray(gt[pick])
        preds = {"training mean": np.broadcast_to(mean_map, gt_pick.shape)}
        plots.depth_examples(figure, np.asarray(shards["spec"][pick]), gt_pick, preds, data.max_depth_m)
        return {"metrics": metrics, "files": [report, figure]}


FAMILY = DepthFamily()


def score_prediction_dir(pred_dir: Path, gt_dir: Path, max_depth: float) -> dict[str, float]:
    """Score outside predictions: one ``.npy`` depth map (metres) per sample, matched to gt by file name.

    Ground-truth pixels that are non-finite, <= 0 or beyond ``max_depth`` are invalid; predictions
    are clipped to ``max_depth``. Missing files, shape mismatches and NaN predictions are errors.
    """
    for d, what in ((pred_dir, "--pred-dir"), (gt_dir, "--gt-dir")):
        if not d.is_dir():
            raise FileNotFoundError(f"{what} {d}: directory not found")
    gt_files = sorted(gt_dir.glob("*.npy"))
    if not gt_files:
        raise FileNotFoundError(f"--gt-dir {gt_dir}: no .npy depth maps found")
    missing = [f.name for f in gt_files if not (pred_dir / f.name).is_file()]
    if missing:
        raise FileNotFoundError(f"--pred-dir {pred_dir}: {len(missing)} prediction(s) missing, e.g. {missing[:3]}")
    acc = DepthMetricAccumulator()
    for f in gt_files:
        gt = np.load(f).astype(np.float32)
        pred = np.load(pred_dir / f.name).astype(np.float32)
        if pred.squeeze().shape != gt.squeeze().shape:
            raise PredictionError(f"{pred_dir / f.name}: shape {pred.shape} does not match ground truth {f} {gt.shape}")
        if not np.isfinite(pred).all():
            raise PredictionError(f"{pred_dir / f.name}: prediction holds NaN or infinite values")
        gt = np.where(np.isfinite(gt) & (gt <= max_depth), gt, 0.0)
        acc.update(np.clip(pred.squeeze(), 0, max_depth)[None], gt.squeeze()[None])
    return {**acc.compute(), "n_files": len(gt_files)}


ATTENTION_QUERIES = np.array([[0.25, 0.25], [0.5, 0.5], [0.75, 0.75]])  # (row, col) fractions of the map


@torch.no_grad()
def figure_outputs(model: nn.Module, task: DepthTask, shards: Mapping[str, np.ndarray], pick: np.ndarray) -> dict:
    """What the figures show beyond the prediction: base and residual maps, attention of a few queries."""
    batch = {"spec": torch.from_numpy(np.asarray(shards["spec"][pick])).to(next(model.parameters()).device)}
    wants_attention = isinstance(model, BinauralAttentionDepth)
    out = model(task.inputs(batch), return_attention=True) if wants_attention else model(task.inputs(batch))
    extras: dict[str, Any] = {}
    if "base" in out:
        extras["maps"] = {k: out[k].squeeze(1).float().cpu().numpy() for k in ("base", "residual")}
    if wants_attention and out["attention"]:
        maps = {}
        for level, attn in out["attention"].items():
            side = int(round(attn.shape[-1] ** 0.5))
            rows = (ATTENTION_QUERIES * side).astype(int).clip(0, side - 1)
            maps[level] = attn[0, rows[:, 0] * side + rows[:, 1]].reshape(-1, side, side).float().cpu().numpy()
        extras["attention"] = (maps, ATTENTION_QUERIES)
    return extras


def save_figures(
    model: nn.Module, task: DepthTask, split_dir: Path, out_dir: Path, n_examples: int, stem: str = ""
) -> list[Path]:
    """Example figures of ``n_examples`` evenly spaced samples of a split; returns the files written.

    ``<stem>examples.png``: echoes, prediction (and base / residual where the model has them),
    ground truth, error. ``<stem>attention.png`` for attention models: where a few left-ear queries
    attend on the right ear at each level.
    """
    shards = open_split(split_dir)
    pick = example_indices(len(shards["depth"]), n_examples)
    was_training = model.training
    model.eval()
    pred = predict_rows(model, task, shards["spec"][pick])
    extras = figure_outputs(model, task, shards, pick)
    spec = np.asarray(shards["spec"][pick])
    written = [out_dir / f"{stem}examples.png"]
    plots.depth_examples(
        written[0],
        spec,
        np.asarray(shards["depth"][pick]),
        {"prediction": pred, **extras.get("maps", {})},
        task.max_depth,
        diverging=("residual",),
    )
    if "attention" in extras:
        written.append(out_dir / f"{stem}attention.png")
        plots.attention_maps(written[-1], spec[0], *extras["attention"])
    model.train(was_training)
    return written
