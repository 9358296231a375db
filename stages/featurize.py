"""Stage featurize_<kind>: compute the shared feature shards into data/features/<dataset>."""

import time

import typer

from binaural_lab import tracking
from binaural_lab.config import to_dict
from binaural_lab.data import features
from binaural_lab.paths import features_dir, prepared_dir, raw_dir
from binaural_lab.stage import BaseParams, config, entry, load_params, section


@entry
def main(kind: str) -> None:
    params = load_params()
    if kind == "binaural":
        # the mel sample rate is the simulated audio's: one key in params, not two to keep in step
        mel = {**(section(params, "featurize_binaural").get("mel") or {})}
        mel["sample_rate"] = section(params, "synthesize_binaural.sample_rate")
        cfg = config(params, "featurize_binaural", features.BinauralFeatureConfig, mel=mel)
        compute = features.compute_binaural_features
    elif kind == "echoes":
        synth = section(params, "synthesize_echoes")
        cfg = config(
            params,
            "featurize_echoes",
            features.EchoFeatureConfig,
            sample_rate=synth["sample_rate"],
            max_depth_m=synth["max_depth_m"],
        )
        compute = features.compute_echo_features
    else:
        raise typer.BadParameter(f"kind must be binaural or echoes, got {kind!r}")
    manifest_file = prepared_dir(kind) / "manifest.parquet"
    with tracking.stage_run("data", f"featurize_{kind}", to_dict(cfg), data=[manifest_file]):
        start = time.perf_counter()
        counts = compute(
            manifest_file, raw_dir(kind), features_dir(kind), cfg, workers=config(params, "base", BaseParams).workers
        )
        tracking.log_metrics({"samples": sum(counts.values()), "seconds": time.perf_counter() - start})


if __name__ == "__main__":
    typer.run(main)
