"""Stage baseline_depth: the per-pixel training-mean depth predictor, scored on the test split."""

import numpy as np
import typer

from binaural_lab import depth, plots, tracking
from binaural_lab.data.shards import open_split
from binaural_lab.paths import features_dir, report_dir
from binaural_lab.stage import entry, load_params, section


@entry
def main() -> None:
    params = load_params()
    n_examples = int(section(params, "evaluate_depth.n_examples"))
    max_depth = float(section(params, "synthesize_echoes.max_depth_m"))
    feats = features_dir("echoes")
    out = report_dir("depth", "mean")
    with tracking.stage_run("depth", "baseline_depth", {"model": "training-mean", "split": "test"}):
        mean_map = depth.training_mean_depth(feats / "train")
        metrics = depth.score(mean_map, feats / "test")
        report = depth.write_metrics(out, "mean", metrics, n_parameters=0, train_seconds=0.0)
        tracking.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        shards = open_split(feats / "test")
        pick = depth.example_indices(len(shards["depth"]), n_examples)
        gt = np.asarray(shards["depth"][pick])
        preds = {"training mean": np.broadcast_to(mean_map, gt.shape)}
        plots.depth_examples(out / "figures" / "examples.png", np.asarray(shards["spec"][pick]), gt, preds, max_depth)
        tracking.log_artifact(out / "figures" / "examples.png", "figures")
        tracking.log_artifact(report)


if __name__ == "__main__":
    typer.run(main)
