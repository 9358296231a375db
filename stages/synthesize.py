"""Stage synthesize_<slot>: simulate the embedded dataset of ``datasets.<slot>`` into data/raw/<name>,
or, for a real kind (batvision-v1, batvision-v2), convert its downloaded files there with its adapter.

A real kind without ``source_root`` and without ``download.<registry name>.local_root`` is first
fetched from the registry into data/raw/<registry name> (the first step of the DAG: data download or
synthesis); data a user already has is named by either key instead. The fetch skips what is complete and verified, so a
rerun with the data in place makes no request; an interrupted download resumes where it stopped.
What was fetched is logged to the stage's MLflow run: ``fetch_bytes`` (written to the download
folder by this run), ``fetch_seconds``, ``fetch_dataset_bytes`` (the downloads on disk) and the
sha256 of each unpacked archive."""

import dataclasses
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import typer

import binaural_lab.cpu_pins  # noqa: F401  (before numpy and torch load: same bytes on every AVX2 CPU)
from binaural_lab import tracking
from binaural_lab.config import ParamError, to_dict
from binaural_lab.data import download, simulate
from binaural_lab.data.datasets import DatasetConfig, dataset
from binaural_lab.paths import nested, raw_dir, resolve
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


def fetch_dataset(spec: download.DatasetSpec, out_raw_dir: Path) -> tuple[dict[str, float], dict[str, str]]:
    """Fetch ``spec`` into data/raw/<name>; return the fetch's metrics and the sha256 of each unpacked archive."""
    root = raw_dir(spec.name)
    if nested(root, out_raw_dir):
        raise ParamError(
            f"datasets.<slot>.name: its folder {out_raw_dir} overlaps the download folder {root} of {spec.name}, "
            "which DVC would delete with the stage's output; give the dataset another name"
        )
    before = download.stored_bytes(spec, root)
    start = time.perf_counter()
    download.fetch(spec, root, progress=sys.stderr.isatty())
    seconds = time.perf_counter() - start
    on_disk = download.stored_bytes(spec, root)
    metrics = {"fetch_bytes": max(on_disk - before, 0), "fetch_seconds": seconds, "fetch_dataset_bytes": on_disk}
    print(f"{spec.name}: fetched {metrics['fetch_bytes']} bytes in {seconds:.1f} s into {root}", file=sys.stderr)
    return metrics, download.unpacked_hashes(root)


def adapt(slot: str, data: DatasetConfig, params: Mapping[str, Any]) -> None:
    """Convert the real dataset of ``datasets.<slot>`` from its ``source_root`` into data/raw/<name>,
    fetching it from the registry first when neither ``source_root`` nor ``local_root`` says where it is."""
    from binaural_lab.data import batvision  # loads torch (the resampler): only for real data

    spec = None if data.source_root else download.spec_for_adapter(data.kind, params)
    fetching = spec is not None and not spec.local_root
    source = resolve(data.source_root) if data.source_root else batvision.default_source_root(data.kind, params)
    run_params: dict[str, Any] = {**to_dict(data), "source_root": str(source)}
    if fetching:
        run_params["fetch"] = {"dataset": spec.name, "mirrors": spec.mirrors}
    with tracking.stage_run("data", f"synthesize_{slot}", run_params):
        if fetching:
            metrics, sha256 = fetch_dataset(spec, data.raw)
            tracking.log_metrics(metrics)
            tracking.log_params({"fetch": {"sha256": sha256}})
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
