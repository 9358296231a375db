"""What every model family shares: registries, params blocks, model cards, scoring, reports, tuning.

A family (depth from echoes, binaural generation, ...) is a :class:`Registry` of models plus a
params block per model (``<family>_models.<name>`` with ``model``, ``loss``, ``train``), a metrics
module that names its convention, and an object satisfying :class:`Family` that the generic stage
scripts (``stages/train.py``, ``evaluate.py``, ``baseline.py``, ``compare.py``) and ``blab tune``
call. Nothing here knows about depth or audio.
"""

from __future__ import annotations

import importlib
import json
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from binaural_lab.config import ParamError, param, parse
from binaural_lab.paths import atomic_path, write_json, write_text
from binaural_lab.training import TrainConfig, TrainResult
from binaural_lab.training.loop import EpochCallback
from binaural_lab.tuning import Objective, TuneConfig, set_dotted

# families by name -> "module:attribute" of their Family object (imported on first use)
FAMILIES = {
    "depth": "binaural_lab.depth:FAMILY",
    "binaural": "binaural_lab.binaural:FAMILY",
    "diffusion": "binaural_lab.diffbinaural:FAMILY",
    "vocoder": "binaural_lab.vocoder:FAMILY",
}


@dataclass
class ModelParams:
    """One ``<family>_models.<name>`` block of params.yaml."""

    model: dict[str, Any] = param({})
    loss: dict[str, Any] = param({})
    train: TrainConfig = field(default_factory=TrainConfig)
    figure_every: int = param(0, ge=0, doc="epochs between validation figures during training; 0 = none")
    figure_examples: int = param(4, ge=1, doc="validation samples drawn in each training figure")


@dataclass(frozen=True)
class ModelEntry:
    """A model of a family: its config and module, its loss config and loss, an optional memory check.

    ``module(cfg, **context)`` builds the network, ``loss(cfg, **context, epochs=E)`` the loss for a
    run of E epochs, ``memory_check(cfg, batch_size=B, where=KEY, **context)`` raises before anything
    is allocated when the configuration cannot fit. ``variants`` names flags that each set dotted
    keys of the params block (an ablation: ``{"no_depth": {"model.use_depth": False}}``); a run with
    flags is its own model, named ``<name>-<flag>-<flag>``.
    """

    config: type
    module: Callable[..., nn.Module]
    loss_config: type
    loss: Callable[..., Any]
    memory_check: Callable[..., None] | None = None
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class Registry:
    """The models of one family, built from their params blocks; errors name the params key."""

    def __init__(self, family: str, entries: Mapping[str, ModelEntry]):
        self.family = family
        self.entries = dict(entries)

    @property
    def params_key(self) -> str:
        return f"{self.family}_models"

    @property
    def names(self) -> list[str]:
        return list(self.entries)

    def where(self, name: str) -> str:
        return f"{self.params_key}.{name}"

    def entry(self, name: str) -> ModelEntry:
        if name not in self.entries:
            raise ParamError(f"{self.params_key}: {name!r} is not one of {self.names}")
        return self.entries[name]

    def variant(self, name: str, flags: Sequence[str], block: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        """The run name and the params block of model ``name`` with variant ``flags`` applied."""
        known = self.entry(name).variants
        values: dict[str, Any] = {}
        for flag in flags:
            if flag not in known:
                raise ParamError(f"{self.where(name)}: variant {flag!r} is not one of {sorted(known)}")
            twice = sorted(set(values) & set(known[flag]))
            if twice:
                raise ParamError(f"{self.where(name)}: variant flags {list(flags)} set {twice} more than once")
            values.update(known[flag])
        block = {**block}
        for key in values:  # a variant may set a section the block leaves to its defaults
            if "." in key and key.split(".")[0] not in block:
                block[key.split(".")[0]] = {}
        return "-".join([name, *flags]), set_dotted(block, values, self.where(name))

    def params(self, name: str, block: Mapping[str, Any] | None) -> ModelParams:
        self.entry(name)
        return parse(ModelParams, block, self.where(name))

    def model_config(self, name: str, cfg: Mapping[str, Any] | None) -> Any:
        return parse(self.entry(name).config, cfg, f"{self.where(name)}.model")

    def build_model(self, name: str, cfg: Mapping[str, Any] | None, **context: Any) -> nn.Module:
        return self.entry(name).module(self.model_config(name, cfg), **context)

    def build_loss(self, name: str, cfg: Mapping[str, Any] | None, epochs: int, **context: Any) -> Any:
        entry = self.entry(name)
        return entry.loss(parse(entry.loss_config, cfg, f"{self.where(name)}.loss"), epochs=epochs, **context)

    def check_memory(self, name: str, cfg: Mapping[str, Any] | None, batch_size: int, **context: Any) -> None:
        entry = self.entry(name)
        if entry.memory_check is not None:
            where = f"{self.where(name)}.model"
            entry.memory_check(self.model_config(name, cfg), batch_size=batch_size, where=where, **context)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not); works on models built on the meta device."""
    return sum(p.numel() for p in model.parameters())


# --- model cards: a trained model with everything needed to rebuild it ---------------------------


def save_model(path: Path, model: nn.Module, card: Mapping[str, Any], history: list[dict[str, float]]) -> None:
    """``model.pt``: the state dict plus its card (plain data only, so it loads with weights_only)."""
    with atomic_path(path) as tmp:
        torch.save({"card": json.loads(json.dumps(card)), "state_dict": model.state_dict(), "history": history}, tmp)


def load_model_file(path: Path) -> dict[str, Any]:
    """The ``{card, state_dict, history}`` of a saved model, loaded without unpickling code."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: trained model not found; run the train stage first")
    return torch.load(path, map_location="cpu", weights_only=True)


# --- scoring and reports ---------------------------------------------------------------------------


class MetricAccumulator(Protocol):
    """Streaming metrics: ``update`` per chunk of predictions and targets, ``compute`` at the end."""

    def update(self, pred: Any, gt: Any) -> None: ...

    def compute(self) -> dict[str, float]: ...


CHUNK = 256


def chunks(n: int, size: int = CHUNK) -> Iterator[slice]:
    """Consecutive slices of ``size`` items covering ``range(n)``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def example_indices(n: int, n_examples: int) -> np.ndarray:
    """``n_examples`` evenly spaced sample indices of a split of ``n``, for figures and examples."""
    return np.linspace(0, n - 1, min(n_examples, n)).astype(int)


def score_in_chunks(
    acc: MetricAccumulator, gt: np.ndarray, predict: Callable[[slice], np.ndarray], size: int = CHUNK
) -> dict[str, float]:
    """Feed ``acc`` with ``predict(rows)`` against ``gt[rows]`` chunk by chunk: memory stays bounded."""
    for rows in chunks(len(gt), size):
        acc.update(predict(rows), np.asarray(gt[rows]))
    return acc.compute()


TRAIN_FACTS = ("n_parameters", "train_seconds")  # what every metrics file states besides its metrics


def write_metrics(
    out_dir: Path,
    model: str,
    metrics: Mapping[str, float],
    *,
    split: str,
    convention: str,
    n_parameters: int,
    train_seconds: float,
    filename: str = "metrics.json",
    **extra: Any,
) -> Path:
    """``out_dir/<filename>``: one model's metrics on a split, named with their convention.

    A family scored in several conventions writes one file per convention (``metrics_<name>.json``).
    """
    report = {
        "model": model,
        "split": split,
        "convention": convention,
        **extra,
        **metrics,
        "n_parameters": n_parameters,
        "train_seconds": round(train_seconds, 2),
    }
    write_json(out_dir / filename, report)
    return out_dir / filename


@dataclass(frozen=True)
class ComparisonSpec:
    """How a family's ``compare`` table looks: which metrics, which baseline, which metric ranks.

    ``metrics`` lists every column a family may report; a convention's table shows those its
    metrics files hold.
    """

    title: str
    metrics: Sequence[str]
    key: str  # the metric that ranks the rows and is compared with the baseline
    baseline: str  # the row every other row is compared with
    higher_is_better: frozenset[str] = frozenset()


def _convention_table(rows: list[dict[str, Any]], spec: ComparisonSpec, heading: str) -> list[str]:
    """Rank one convention's rows (baseline first), add the change against the baseline; its markdown."""
    sign = -1 if spec.key in spec.higher_is_better else 1
    rows.sort(key=lambda r: (r["model"] != spec.baseline, sign * r[spec.key]))
    reference = next((r[spec.key] for r in rows if r["model"] == spec.baseline), None)
    change = f"{spec.key}_vs_{spec.baseline}_pct"
    for r in rows:
        r[change] = round(100 * (r[spec.key] / reference - 1), 1) if reference else None
    shown = [k for k in spec.metrics if all(k in r for r in rows)]
    header = ["model", *shown, f"{spec.key} vs {spec.baseline}", "parameters", "train s"]
    better = "higher" if spec.key in spec.higher_is_better else "lower"
    lines = [heading, "", f"Ranked by {spec.key} ({better} is better).", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["model"], *(f"{r[k]:.4f}" for k in shown)]
        cells += [
            f"{r[change]:+.1f} %" if r[change] is not None else "",
            f"{r['n_parameters']:,}",
            f"{r['train_seconds']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_comparison(reports: Path, spec: ComparisonSpec) -> list[dict[str, Any]]:
    """Gather ``reports/*/metrics*.json`` into ``compare.json`` and ``compare.md`` (baseline first).

    Rows are grouped by the ``convention`` their file names: one table per convention, each with
    the change against the baseline in that convention. Every convention must cover the same
    models (a stale file of another convention is an error, not a second table).
    """
    groups: dict[str, list[dict[str, Any]]] = {}
    described: dict[str, str] = {}
    for f in sorted(reports.glob("*/metrics*.json")):
        data = json.loads(f.read_text())
        conv = data["convention"]
        described[conv] = data.get("convention_description", conv)
        metrics = {k: data[k] for k in spec.metrics if k in data}
        rows = groups.setdefault(conv, [])
        rows.append({"model": data["model"], "convention": conv, **metrics, **{k: data[k] for k in TRAIN_FACTS}})
    if not groups:
        raise FileNotFoundError(f"{reports}: no */metrics*.json to compare; run the evaluation stages first")
    models = {conv: sorted(r["model"] for r in rows) for conv, rows in groups.items()}
    if len({tuple(m) for m in models.values()}) > 1:
        raise ValueError(f"{reports}: metrics files use different conventions for different models: {models}")
    lines = [f"# {spec.title}", ""]
    table: list[dict[str, Any]] = []
    for conv, rows in groups.items():
        heading = f"Metric convention: {conv}." if len(groups) == 1 else f"## {conv}"
        if len(groups) > 1 and described[conv] != conv:
            heading += f"\n\n{described[conv]}."
        lines += [*_convention_table(rows, spec, heading), ""]
        table += rows
    write_json(reports / "compare.json", {"conventions": described, "rows": table})
    write_text(reports / "compare.md", "\n".join(lines).rstrip("\n") + "\n")
    return table


# --- the protocol of a family, and the tuning objective every family shares -----------------------


class Family(Protocol):
    """What the generic stages and ``blab tune`` need from a family."""

    registry: Registry
    dataset_slot: str  # the ``datasets.<slot>`` it reads
    higher_is_better: frozenset[str]  # metric names where larger is better (the rest: smaller)
    comparison: ComparisonSpec

    def train(
        self,
        params: Mapping[str, Any],
        name: str,
        p: ModelParams,
        ckpt_dir: Path,
        on_epoch_end: EpochCallback | None,
        figure_dir: Path | None,
    ) -> tuple[TrainResult, dict[str, Any]]: ...

    def evaluate(self, params: Mapping[str, Any], name: str, model_file: Path, out_dir: Path) -> dict[str, Any]: ...

    def loss_context(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """What the family's losses are built with besides their config and the run length."""
        ...

    def baseline(self, params: Mapping[str, Any], out_dir: Path) -> dict[str, Any]: ...


def get_family(name: str) -> Family:
    if name not in FAMILIES:
        raise ParamError(f"family: {name!r} is not one of {sorted(FAMILIES)}")
    module, attr = FAMILIES[name].split(":")
    return getattr(importlib.import_module(module), attr)


def loss_weight_metrics(loss: Any, epoch: int) -> dict[str, float]:
    """The weight of every loss term in force at ``epoch``, as the metrics ``loss_weight/<key>``."""
    return {f"loss_weight/{k}": float(v) for k, v in loss.weights(epoch).items()}


def direction(metric: str, higher_is_better: frozenset[str]) -> str:
    """The Optuna direction that improves ``metric``."""
    return "maximize" if metric in higher_is_better else "minimize"


def check_searched_terms_active(
    registry: Registry,
    name: str,
    block: Mapping[str, Any],
    space: Mapping[str, Any],
    epochs: int,
    context: Mapping[str, Any],
) -> int:
    """Refuse a study in which a searched loss weight would be off for more than half of a trial.

    The check builds the trial's loss at both ends of each searched range (a weight of 0 is
    "off" whatever the curriculum) and counts the epochs where each searched ``loss.<key>`` is 0.
    Returns the first epoch (from 0) at which every searched weight acts: pruning a trial before it
    would judge the trial without the terms the study searches.
    """
    loss = registry.build_loss(name, block.get("loss"), epochs, **context)
    if not hasattr(loss, "weights"):
        return 0  # an objective without weighted terms (a diffusion process): nothing can be off
    weights = loss.weights(0)
    all_on = 0
    for key, dim in space.items():
        term = key.removeprefix("loss.")
        if not key.startswith("loss.") or term not in weights:
            continue  # not a loss weight (a learning rate, a kernel size): always acts
        for value in dim.extremes():
            trial = set_dotted(block, {key: value}, registry.where(name))
            loss = registry.build_loss(name, trial.get("loss"), epochs, **context)
            on = [loss.weights(e)[term] != 0 for e in range(epochs)]
            off = on.count(False)
            if off > epochs / 2:
                raise ParamError(
                    f"tune.spaces.{registry.family}.{name}.{key}: the loss term is off in {off} of the "
                    f"{epochs} epochs of a trial (at {term}={value}), so the study could not measure it; "
                    f"start its curriculum phase earlier in {registry.where(name)}.loss or lengthen tune.epochs"
                )
            all_on = max(all_on, on.index(True))
    return all_on


def make_objective(
    family: Family, params: Mapping[str, Any], name: str, block: Mapping[str, Any], cfg: TuneConfig, metric: str
) -> Objective:
    """Optuna objective for model ``name``: train with the trial's values, report and return the val metric."""
    key = f"val_{metric}"
    registry = family.registry

    def objective(values: dict[str, Any], report: Any) -> float:
        trial_block = set_dotted(block, values, registry.where(name))
        if cfg.epochs is not None:
            trial_block.setdefault("train", {})["epochs"] = cfg.epochs
        p = registry.params(name, trial_block)

        def on_epoch(epoch: int, train_m: dict[str, float], val_m: dict[str, float], model: nn.Module) -> None:
            if key not in val_m and epoch + 1 < p.train.epochs:
                return  # a metric measured every few epochs (sampled mels) is reported when present
            if key not in val_m:
                raise ParamError(
                    f"tune.metric.{registry.family}: {metric!r} is not a validation metric; have "
                    f"{sorted(k.removeprefix('val_') for k in val_m)}"
                )
            report(epoch, val_m[key], {**train_m, **val_m})

        with tempfile.TemporaryDirectory(prefix="blab-trial-") as ckpt:
            result, _ = family.train(params, name, p, Path(ckpt), on_epoch, None)
        return float(result.history[-1][key])

    return objective
