"""Stage synthesize_<slot>: simulate the embedded dataset of ``datasets.<slot>`` into data/raw/<name>,
or, for a real kind (batvision-v1, batvision-v2, fairplay, realbinaural), convert the files of its
registry dataset there with its adapter: data/raw/<registry name>, which stage download@<registry
name> fetched (or the ``download.<registry name>.local_root`` it checked). ``datasets.<slot>.input``
names that folder for dvc.yaml, so a new download reruns the adaptation."""

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
import typer

import binaural_lab.cpu_pins  # noqa: F401  (before numpy and torch load: same bytes on every AVX2 CPU)
from binaural_lab import tracking
from binaural_lab.config import ParamError, to_dict
from binaural_lab.data import download, simulate
from binaural_lab.data.datasets import DatasetConfig, dataset
from binaural_lab.paths import nested, raw_dir
from binaural_lab.stage import BaseParams, config, entry, load_params

SIMULATORS = {
    "binaural": (simulate.BinauralSceneConfig, simulate.synthesize_binaural),
    "echoes": (simulate.EchoSceneConfig, simulate.synthesize_echoes),
}


@entry
def main(slot: str) -> None:
    if slot not in SIMULATORS:
        raise typer.BadParameter(f"slot must be one of {sorted(SIMULATORS)}, got {slot!r}")
    params = load_params()
    data = dataset(params, slot)
    if data.kind != "synthetic":
        adapt(slot, data, params)
        return
    name = f"synthesize_{slot}"
    cfg_cls, synthesize = SIMULATORS[slot]
    # the facts about the dataset (sample rate, max depth, depth kind) live in datasets.<slot>, not in
    # the simulation's own section: each simulator takes those of them it has fields for
    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    facts = {k: v for k, v in to_dict(data).items() if k in fields}
    cfg = config(params, name, cfg_cls, **facts)
    base = config(params, "base", BaseParams)
    with tracking.stage_run("data", name, {"seed": base.seed, **to_dict(cfg)}):
        start = time.perf_counter()
        table = synthesize(cfg, data.raw, seed=base.seed, workers=base.workers)
        tracking.log_metrics(
            {"samples": len(table), "rooms": table["room_id"].nunique(), "seconds": time.perf_counter() - start}
        )


def _batvision(root: Path, data: DatasetConfig, seed: int) -> pd.DataFrame:
    from binaural_lab.data import batvision  # loads torch (the resampler): only for real data

    version = batvision.VERSIONS[data.kind]
    return batvision.adapt_batvision(
        root / batvision.FOLDERS[version],
        data.raw,
        version,
        data.max_depth_m,
        data.sample_rate,
        published_splits=data.published_splits,
        cut_audio=data.cut_audio,
    )


def _fairplay(root: Path, data: DatasetConfig, seed: int) -> pd.DataFrame:
    from binaural_lab.data.fairplay import adapt_fairplay

    return adapt_fairplay(root, data.raw, data.sample_rate, data.split_set, data.split, data.segment_seconds, data.fps)


def _realbinaural(root: Path, data: DatasetConfig, seed: int) -> pd.DataFrame:
    from binaural_lab.data.realbinaural import adapt_realbinaural

    return adapt_realbinaural(root, data.raw, data.sample_rate, data.segment_seconds, fps=data.fps, seed=seed)


ADAPTERS = {
    "batvision-v1": _batvision,
    "batvision-v2": _batvision,
    "fairplay": _fairplay,
    "realbinaural": _realbinaural,
}


def adapt(slot: str, data: DatasetConfig, params: Mapping[str, Any]) -> None:
    """Convert the real dataset of ``datasets.<slot>`` into data/raw/<name> with its adapter. It reads
    data/raw/<registry name>, the folder of stage download@<registry name>, or the ``local_root`` that
    stage checked."""
    spec = download.spec_for_adapter(data.kind, params)
    if spec.name not in (params.get("download") or {}):
        raise ParamError(
            f"datasets.{slot}.kind: {data.kind!r} reads data/raw/{spec.name}, made by stage download@{spec.name}; "
            f"add `{spec.name}: {{}}` under `download:` in params.yaml (with local_root there if it is on disk)"
        )
    root = Path(spec.local_root) if spec.local_root else raw_dir(spec.name)
    if nested(root, data.raw):
        raise ParamError(
            f"datasets.{slot}.name: its folder {data.raw} overlaps the dataset folder {root} of {spec.name}, which "
            "the adapter reads and DVC would delete with the stage's output; give the dataset another name"
        )
    base = config(params, "base", BaseParams)
    with tracking.stage_run("data", f"synthesize_{slot}", {**to_dict(data), "source_root": str(root)}):
        start = time.perf_counter()
        table = ADAPTERS[data.kind](root, data, base.seed)
        tracking.log_metrics(
            {"samples": len(table), "rooms": table["room_id"].nunique(), "seconds": time.perf_counter() - start}
        )


if __name__ == "__main__":
    typer.run(main)
