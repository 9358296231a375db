"""Stage train_depth@<model>: train one depth network on the echo features (resumable)."""

import csv
import io

import typer

from binaural_lab import depth, tracking
from binaural_lab.config import to_dict
from binaural_lab.paths import features_dir, model_dir, report_dir, write_text
from binaural_lab.stage import entry, load_params, section


@entry
def main(name: str) -> None:
    params = load_params()
    p = depth.parse_model_params(name, section(params, f"depth_models.{name}"))
    max_depth = float(section(params, "synthesize_echoes.max_depth_m"))
    feats = features_dir("echoes")
    out = model_dir("depth", name)
    figures = report_dir("depth", name) / "training"
    n_examples = int(section(params, "evaluate_depth.n_examples"))
    with tracking.stage_run("depth", f"train_depth@{name}", to_dict(p), data=sorted(feats.glob("*/meta.json"))):

        def log_epoch(epoch: int, train_m: dict, val_m: dict, model) -> None:
            tracking.log_metrics({**train_m, **val_m}, step=epoch + 1)

        figures.mkdir(parents=True, exist_ok=True)
        result, card = depth.train_depth_model(
            name, p, feats, max_depth, out, on_epoch_end=log_epoch, figure_dir=figures, n_examples=n_examples
        )
        if not result.is_main:  # torchrun: rank 0 alone writes
            return
        for figure in sorted(figures.glob("*.png")):
            tracking.log_artifact(figure, "figures/training")
        card = {**card, "train_seconds": result.seconds, "resumed_from_step": result.resumed_from_step}
        depth.save_model(out / "model.pt", result.model, card, result.history)
        tracking.log_model_state(result.model.state_dict(), card)
        tracking.log_metrics({"n_parameters": card["n_parameters"], "train_seconds": result.seconds})

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(result.history[-1]))
    writer.writeheader()
    writer.writerows(result.history)
    write_text(report_dir("depth", name) / "history.csv", buf.getvalue())


if __name__ == "__main__":
    typer.run(main)
