"""Stage evaluate_depth@<model>: REFERENCE depth metrics on the test split, figures, MLflow."""

import numpy as np
import typer

from binaural_lab import depth, plots, tracking
from binaural_lab.data.shards import open_split
from binaural_lab.paths import features_dir, model_dir, report_dir, write_json
from binaural_lab.stage import entry, load_params, section


@entry
def main(name: str) -> None:
    params = load_params()
    n_examples = int(section(params, "evaluate_depth.n_examples"))
    test_dir = features_dir("echoes") / "test"
    model, task, card = depth.load_model(model_dir("depth", name) / "model.pt")
    out = report_dir("depth", name)
    with tracking.stage_run("depth", f"evaluate_depth@{name}", {"model": name, "split": "test"}):
        pred = depth.predict_split(model, task, test_dir)
        metrics = depth.score(pred, test_dir)
        report = {
            "model": name,
            "split": "test",
            "convention": depth.METRIC_CONVENTION,
            **metrics,
            "n_parameters": card["n_parameters"],
            "train_seconds": round(card["train_seconds"], 2),
        }
        write_json(out / "metrics.json", report)
        tracking.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        shards = open_split(test_dir)
        pick = np.linspace(0, len(pred) - 1, min(n_examples, len(pred))).astype(int)
        extras = depth.figure_outputs(model, task, shards, pick)
        plots.depth_examples(
            out / "figures" / "examples.png",
            np.asarray(shards["spec"][pick]),
            np.asarray(shards["depth"][pick]),
            {"prediction": pred[pick], **extras.pop("maps", {})},
            card["max_depth"],
            diverging=("residual",),
        )
        tracking.log_artifact(out / "figures" / "examples.png", "figures")
        if "attention" in extras:
            spec = np.asarray(shards["spec"][pick[0]])
            plots.attention_maps(out / "figures" / "attention.png", spec, *extras["attention"])
            tracking.log_artifact(out / "figures" / "attention.png", "figures")
        tracking.log_artifact(out / "metrics.json")


if __name__ == "__main__":
    typer.run(main)
