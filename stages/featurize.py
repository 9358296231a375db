"""Stage featurize_<slot>: compute the shared feature shards into data/features/<name>."""

import time

import typer

import binaural_lab.cpu_pins  # noqa: F401  (before numpy and torch load: same bytes on every AVX2 CPU)
from binaural_lab import tracking
from binaural_lab.config import to_dict
from binaural_lab.data import features
from binaural_lab.data.datasets import dataset
from binaural_lab.stage import BaseParams, config, entry, load_params


@entry
def main(slot: str) -> None:
    params = load_params()
    data = dataset(params, slot)
    cfg, compute = features.slot_features(params, slot)
    manifest_file = data.prepared / "manifest.parquet"
    with tracking.stage_run("data", f"featurize_{slot}", to_dict(cfg), data=[manifest_file]):
        start = time.perf_counter()
        counts = compute(
            manifest_file, data.raw, data.features, cfg, workers=config(params, "base", BaseParams).workers
        )
        tracking.log_metrics({"samples": sum(counts.values()), "seconds": time.perf_counter() - start})


if __name__ == "__main__":
    typer.run(main)
