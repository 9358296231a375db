"""Stage synthesize_<kind>: simulate the embedded dataset into data/raw/<dataset>."""

import time

import typer

from binaural_lab import tracking
from binaural_lab.config import to_dict
from binaural_lab.data import simulate
from binaural_lab.paths import raw_dir
from binaural_lab.stage import BaseParams, config, entry, load_params

KINDS = {
    "binaural": (simulate.BinauralSceneConfig, simulate.synthesize_binaural),
    "echoes": (simulate.EchoSceneConfig, simulate.synthesize_echoes),
}


@entry
def main(kind: str) -> None:
    if kind not in KINDS:
        raise typer.BadParameter(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    params = load_params()
    name = f"synthesize_{kind}"
    cfg_cls, synthesize = KINDS[kind]
    cfg = config(params, name, cfg_cls)
    base = config(params, "base", BaseParams)
    seed, workers = base.seed, base.workers
    with tracking.stage_run("data", name, {"seed": seed, **to_dict(cfg)}):
        start = time.perf_counter()
        table = synthesize(cfg, raw_dir(kind), seed=seed, workers=workers)
        tracking.log_metrics(
            {"samples": len(table), "rooms": table["room_id"].nunique(), "seconds": time.perf_counter() - start}
        )


if __name__ == "__main__":
    typer.run(main)
