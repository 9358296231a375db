"""Stage prepare_<kind>: manifest (Parquet) with room-disjoint train/val/test splits."""

import typer

from binaural_lab import tracking
from binaural_lab.config import to_dict
from binaural_lab.data.manifest import SPLITS, SplitConfig, build_manifest
from binaural_lab.paths import DATASETS, prepared_dir, raw_dir
from binaural_lab.stage import BaseParams, config, entry, load_params


@entry
def main(kind: str) -> None:
    if kind not in DATASETS:
        raise typer.BadParameter(f"kind must be one of {sorted(DATASETS)}, got {kind!r}")
    params = load_params()
    cfg = config(params, "prepare.splits", SplitConfig)
    seed = config(params, "base", BaseParams).seed
    with tracking.stage_run("data", f"prepare_{kind}", {"seed": seed, "splits": to_dict(cfg)}):
        table = build_manifest(raw_dir(kind), prepared_dir(kind), cfg, seed)
        tracking.log_metrics({f"{s}_samples": int((table["split"] == s).sum()) for s in SPLITS})


if __name__ == "__main__":
    typer.run(main)
