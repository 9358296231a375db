"""Stage prepare_<slot>: manifest (Parquet) with room-disjoint train/val/test splits."""

import typer

from binaural_lab import tracking
from binaural_lab.config import to_dict
from binaural_lab.data.datasets import dataset
from binaural_lab.data.manifest import SPLITS, SplitConfig, build_manifest
from binaural_lab.stage import BaseParams, config, entry, load_params


@entry
def main(slot: str) -> None:
    params = load_params()
    data = dataset(params, slot)
    cfg = config(params, "prepare.splits", SplitConfig)
    seed = config(params, "base", BaseParams).seed
    with tracking.stage_run("data", f"prepare_{slot}", {"seed": seed, "dataset": data.name, "splits": to_dict(cfg)}):
        table = build_manifest(data.raw, data.prepared, cfg, seed)
        tracking.log_metrics({f"{s}_samples": int((table["split"] == s).sum()) for s in SPLITS})


if __name__ == "__main__":
    typer.run(main)
