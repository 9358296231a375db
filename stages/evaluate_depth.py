"""Stage evaluate_depth@<model>: REFERENCE depth metrics on the test split, figures, MLflow."""

import typer

from binaural_lab import depth, tracking
from binaural_lab.paths import features_dir, model_dir, report_dir
from binaural_lab.stage import entry, load_params, section


@entry
def main(name: str) -> None:
    params = load_params()
    n_examples = int(section(params, "evaluate_depth.n_examples"))
    test_dir = features_dir("echoes") / "test"
    model, task, card = depth.load_model(model_dir("depth", name) / "model.pt")
    out = report_dir("depth", name)
    with tracking.stage_run("depth", f"evaluate_depth@{name}", {"model": name, "split": "test"}):
        metrics = depth.score(depth.predict_split(model, task, test_dir), test_dir)
        report = depth.write_metrics(out, name, metrics, card["n_parameters"], card["train_seconds"])
        tracking.log_metrics({f"test_{k}": v for k, v in metrics.items()})
        for figure in depth.save_figures(model, task, test_dir, out / "figures", n_examples):
            tracking.log_artifact(figure, "figures")
        tracking.log_artifact(report)


if __name__ == "__main__":
    typer.run(main)
