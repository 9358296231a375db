"""Stage synthesize_<slot>: simulate the embedded dataset of ``datasets.<slot>`` into data/raw/<name>,
or, for a real kind (batvision-v1, batvision-v2), convert its downloaded files there with its adapter."""

import dataclasses
import time
from collections.abc import Mapping
from typing import Any

import typer

import binaural_lab.cpu_pins  # noqa: F401  (before numpy and torch load: same bytes on every AVX2 CPU)
from binaural_lab import tracking
from binaural_lab.config import to_dict
from binaural_lab.data import simulate
from binaural_lab.data.datasets import DatasetConfig, dataset
from binaural_lab.paths import resolve
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


def adapt(slot: str, data: DatasetConfig, params: Mapping[str, Any]) -> None:
    """Convert the real dataset of ``datasets.<slot>`` from its ``source_root`` into data/raw/<name>."""
    from binaural_lab.data import batvision  # loads torch (the resampler): only for real data

    source = resolve(data.source_root) if data.source_root else batvision.default_source_root(data.kind, params)
    with tracking.stage_run("data", f"synthesize_{slot}", {**to_dict(data), "source_root": str(source)}):
        start = time.perf_counter()
        table = batvision.adapt_batvision(
            source,
            data.raw,
            batvision.VERSIONS[data.kind],
            data.max_depth_m,
            data.sample_rate,
            published_splits=data.published_splits,
            cut_audio=data.cut_audio,
        )
        tracking.log_metrics(
            {"samples": len(table), "rooms": table["room_id"].nunique(), "seconds": time.perf_counter() - start}
        )


if __name__ == "__main__":
    typer.run(main)
