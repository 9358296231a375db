"""Depth from binaural echoes: the pieces every depth stage and study shares.

A depth model is a name from :data:`binaural_lab.models.DEPTH_MODELS` plus a params block
``depth_models.<name>`` with ``model``, ``loss`` and ``train`` sections. :func:`train_depth_model`
fits it with the one training loop, :func:`predict_split` and :func:`score` evaluate it on a split
with the REFERENCE depth metrics, and :func:`training_mean_depth` is the per-pixel training-mean
predictor that every model is compared with. Whole splits are read in chunks, so memory does not
grow with the dataset.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from binaural_lab import plots
from binaural_lab.config import ParamError, UserError, param, parse, to_dict
from binaural_lab.data.shards import ShardDataset, open_split
from binaural_lab.losses import build_depth_loss
from binaural_lab.metrics.depth import DepthMetricAccumulator
from binaural_lab.models import (
    BinauralAttentionDepth,
    build_depth_model,
    check_depth_model_memory,
    count_parameters,
)
from binaural_lab.paths import atomic_path, write_json, write_text
from binaural_lab.training import TrainConfig, Trainer, TrainResult
from binaural_lab.training.loop import EpochCallback, seed_everything
from binaural_lab.tuning import Objective, TuneConfig, set_dotted

METRIC_CONVENTION = (
    "Batvision / Beyond-Image-to-Depth: per image, metres, pixels with gt > 0 only, then mean over images"
)


class PredictionError(UserError, ValueError):
    """Outside predictions that cannot be scored (wrong shape, NaN)."""


@dataclass
class DepthModelParams:
    """One ``depth_models.<name>`` block of params.yaml."""

    model: dict[str, Any] = param({})
    loss: dict[str, Any] = param({})
    train: TrainConfig = field(default_factory=TrainConfig)
    figure_every: int = param(0, ge=0, doc="epochs between validation figures during training; 0 = none")


CHUNK = 256


def _chunks(array: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(start, float64 copy) of consecutive CHUNK-sized slices of a memory-mapped array."""
    for start in range(0, len(array), CHUNK):
        yield start, np.asarray(array[start : start + CHUNK], dtype=np.float64)


@dataclass
class InputStats:
    """Scalar normalisation of the log-magnitude echo spectrograms, measured on the training split."""

    mean: float
    std: float

    @classmethod
    def measure(cls, split_dir: Path) -> InputStats:
        total, sq, count = 0.0, 0.0, 0
        for _, chunk in _chunks(open_split(split_dir)["spec"]):
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


def parse_model_params(name: str, block: Mapping[str, Any] | None) -> DepthModelParams:
    return parse(DepthModelParams, block, f"depth_models.{name}")


def build(name: str, p: DepthModelParams, input_size: int, max_depth: float) -> tuple[nn.Module, Any]:
    """The network and its loss, from a params block."""
    model = build_depth_model(name, p.model, input_size, max_depth, where=f"depth_models.{name}.model")
    loss_fn = build_depth_loss(name, p.loss, max_depth, where=f"depth_models.{name}.loss")
    return model, loss_fn


def train_depth_model(
    name: str,
    p: DepthModelParams,
    features_dir: Path,
    max_depth: float,
    ckpt_dir: Path,
    on_epoch_end: EpochCallback | None = None,
    figure_dir: Path | None = None,
    n_examples: int = 4,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train ``name`` on ``features_dir/train`` (validating on ``val``); returns the result and its card.

    The card holds everything needed to rebuild the model for inference: name, params, input size,
    max depth, input statistics. Every ``p.figure_every`` epochs, example figures of the validation
    split go to ``figure_dir`` (``epochNNN_examples.png``).
    """
    train_dir, val_dir = features_dir / "train", features_dir / "val"
    train_set, val_set = depth_dataset(train_dir), depth_dataset(val_dir)
    input_size = int(open_split(train_dir)["spec"].shape[-1])
    check_depth_model_memory(name, p.model, input_size, p.train.batch_size, f"depth_models.{name}.model")
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
            on_epoch_end(epoch, train_m, val_m, net)
        if figure_dir is not None and p.figure_every and (epoch + 1) % p.figure_every == 0:
            save_figures(net, task, val_dir, figure_dir, n_examples, stem=f"epoch{epoch + 1:03d}_")

    trainer = Trainer(p.train, ckpt_dir, fingerprint={"card": card, "data": _data_stamp(features_dir)})
    result = trainer.fit(model, train_set, val_set, task, epoch_end)
    return result, card


def _data_stamp(features_dir: Path) -> str:
    """What identifies the feature shards, for checkpoint compatibility."""
    metas = sorted(features_dir.glob("*/meta.json"))
    return json.dumps([m.read_text() for m in metas])


def save_model(path: Path, model: nn.Module, card: Mapping[str, Any], history: list[dict[str, float]]) -> None:
    with atomic_path(path) as tmp:
        torch.save({"card": dict(card), "state_dict": model.state_dict(), "history": history}, tmp)


def load_model(path: Path) -> tuple[nn.Module, DepthTask, dict[str, Any]]:
    """Rebuild a trained model (eval mode) and its task from ``model.pt``."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: trained model not found; run the train_depth stage first")
    blob = torch.load(path, map_location="cpu", weights_only=False)
    card = blob["card"]
    p = parse_model_params(card["name"], card["params"])
    model, loss_fn = build(card["name"], p, card["input_size"], card["max_depth"])
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, DepthTask(loss_fn, InputStats(**card["stats"]), card["max_depth"]), card


@torch.no_grad()
def predict_split(model: nn.Module, task: DepthTask, split_dir: Path, batch_size: int = 32) -> np.ndarray:
    """Predicted depth maps [N, S, S] for a whole split (float32, metres)."""
    loader = DataLoader(depth_dataset(split_dir), batch_size=batch_size, shuffle=False)
    return np.concatenate([task.predict(model, b).numpy() for b in loader]).astype(np.float32)


def training_mean_depth(train_dir: Path) -> np.ndarray:
    """Per-pixel mean of the valid training depths (0 where no training image is valid)."""
    depth = open_split(train_dir)["depth"]
    total = np.zeros(depth.shape[1:], dtype=np.float64)
    count = np.zeros(depth.shape[1:], dtype=np.int64)
    for _, chunk in _chunks(depth):
        valid = chunk > 0
        total += np.where(valid, chunk, 0).sum(0)
        count += valid.sum(0)
    return (total / np.maximum(count, 1)).astype(np.float32)


def score(pred: np.ndarray, split_dir: Path) -> dict[str, float]:
    """REFERENCE depth metrics of ``pred`` [N, S, S] (or one map broadcast to all) against a split."""
    gt = open_split(split_dir)["depth"]
    acc = DepthMetricAccumulator()
    for start, g in _chunks(gt):
        p = np.broadcast_to(pred, gt.shape)[start : start + CHUNK] if pred.ndim == 2 else pred[start : start + CHUNK]
        acc.update(np.ascontiguousarray(p), g)
    return acc.compute()


def write_metrics(
    out_dir: Path, model: str, metrics: Mapping[str, float], n_parameters: int, train_seconds: float
) -> Path:
    """``out_dir/metrics.json``: the test metrics of one model, named with their convention."""
    report = {
        "model": model,
        "split": "test",
        "convention": METRIC_CONVENTION,
        **metrics,
        "n_parameters": n_parameters,
        "train_seconds": round(train_seconds, 2),
    }
    write_json(out_dir / "metrics.json", report)
    return out_dir / "metrics.json"


def example_indices(n: int, n_examples: int) -> np.ndarray:
    """``n_examples`` evenly spaced sample indices of a split of ``n``, for figures."""
    return np.linspace(0, n - 1, min(n_examples, n)).astype(int)


COMPARE_METRICS = ("rmse", "abs_rel", "mae", "log10", "delta1", "delta2", "delta3")


def write_comparison(reports: Path) -> list[dict[str, Any]]:
    """Gather ``reports/*/metrics.json`` into ``compare.json`` and ``compare.md`` (mean predictor first)."""
    rows = []
    for f in sorted(reports.glob("*/metrics.json")):
        data = json.loads(f.read_text())
        rows.append(
            {"model": data["model"], **{k: data[k] for k in (*COMPARE_METRICS, "n_parameters", "train_seconds")}}
        )
    if not rows:
        raise FileNotFoundError(f"{reports}: no */metrics.json to compare; run the depth stages first")
    rows.sort(key=lambda r: (r["model"] != "mean", r["rmse"]))
    mean_rmse = next((r["rmse"] for r in rows if r["model"] == "mean"), None)
    for r in rows:
        r["rmse_vs_mean_pct"] = round(100 * (r["rmse"] / mean_rmse - 1), 1) if mean_rmse else None
    header = ["model", *COMPARE_METRICS, "RMSE vs mean", "parameters", "train s"]
    lines = [
        "# Depth from binaural echoes: test split",
        "",
        f"Metric convention: {METRIC_CONVENTION}. Lower is better except delta1..3.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for r in rows:
        cells = [r["model"], *(f"{r[k]:.4f}" for k in COMPARE_METRICS)]
        cells += [
            f"{r['rmse_vs_mean_pct']:+.1f} %" if r["rmse_vs_mean_pct"] is not None else "",
            f"{r['n_parameters']:,}",
            f"{r['train_seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    write_json(reports / "compare.json", {"convention": METRIC_CONVENTION, "rows": rows})
    write_text(reports / "compare.md", "\n".join(lines) + "\n")
    return rows


def make_objective(name: str, block: Mapping[str, Any], feats: Path, max_depth: float, cfg: TuneConfig) -> Objective:
    """Optuna objective for model ``name``: train with the trial's values, return the final val metric."""
    key = f"val_{cfg.metric}"

    def objective(values: dict[str, Any], report: Any) -> float:
        trial_block = set_dotted(block, values, f"depth_models.{name}")
        if cfg.epochs is not None:
            trial_block.setdefault("train", {})["epochs"] = cfg.epochs
        p = parse_model_params(name, trial_block)

        def on_epoch(epoch: int, train_m: dict[str, float], val_m: dict[str, float], model: nn.Module) -> None:
            if key not in val_m:
                raise ParamError(f"tune.metric: {cfg.metric!r} is not a validation metric; have {sorted(val_m)}")
            report(epoch, val_m[key], {**train_m, **val_m})

        with tempfile.TemporaryDirectory(prefix="blab-trial-") as ckpt:
            result, _ = train_depth_model(name, p, feats, max_depth, Path(ckpt), on_epoch_end=on_epoch)
        return float(result.history[-1][key])

    return objective


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
    batch = {"spec": torch.from_numpy(np.asarray(shards["spec"][pick]))}
    wants_attention = isinstance(model, BinauralAttentionDepth)
    out = model(task.inputs(batch), return_attention=True) if wants_attention else model(task.inputs(batch))
    extras: dict[str, Any] = {}
    if "base" in out:
        extras["maps"] = {k: out[k].squeeze(1).numpy() for k in ("base", "residual")}
    if wants_attention and out["attention"]:
        maps = {}
        for level, attn in out["attention"].items():
            side = int(round(attn.shape[-1] ** 0.5))
            rows = (ATTENTION_QUERIES * side).astype(int).clip(0, side - 1)
            maps[level] = attn[0, rows[:, 0] * side + rows[:, 1]].reshape(-1, side, side).numpy()
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
    batch = {"spec": torch.from_numpy(np.asarray(shards["spec"][pick]))}
    with torch.no_grad():
        pred = task.predict(model, batch).numpy()
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
