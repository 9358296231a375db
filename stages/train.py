"""Stage train_<family>@<model>: train one model of a family with the one loop (resumable).

``--variant FLAG`` (repeatable) trains a variant the family's registry names (an ablation); the
run is its own model, ``<model>-<flag>...``, with its own folders.
"""

import csv
import io
from typing import Annotated

import typer

from binaural_lab import tracking
from binaural_lab.config import to_dict
from binaural_lab.data.datasets import dataset
from binaural_lab.family import get_family, save_model
from binaural_lab.paths import model_dir, report_dir, write_text
from binaural_lab.stage import entry, load_params, section


@entry
def main(family: str, name: str, variant: Annotated[list[str] | None, typer.Option()] = None) -> None:
    params = load_params()
    fam = get_family(family)
    run, block = fam.registry.variant(name, variant or [], section(params, fam.registry.where(name)))
    p = fam.registry.params(name, block)
    data = dataset(params, fam.dataset_slot)
    out = model_dir(family, run)
    figures = report_dir(family, run) / "training"
    figures.mkdir(parents=True, exist_ok=True)
    with tracking.stage_run(
        family, f"train_{family}@{run}", to_dict(p), data=sorted(data.features.glob("*/meta.json"))
    ):

        def log_epoch(epoch: int, train_m: dict, val_m: dict, model) -> None:
            tracking.log_metrics({**train_m, **val_m}, step=epoch + 1)

        result, card = fam.train(params, name, p, out, log_epoch, figures)
        if not result.is_main:  # torchrun: rank 0 alone writes
            return
        for figure in sorted(figures.glob("*.png")):
            tracking.log_artifact(figure, "figures/training")
        for example in sorted(figures.glob("*.wav")):  # audio examples of the generative families
            tracking.log_artifact(example, "examples/training")
        card = {**card, "train_seconds": result.seconds, "resumed_from_step": result.resumed_from_step}
        save_model(out / "model.pt", result.model, card, result.history)
        tracking.log_model_state(result.model.state_dict(), card)
        for row in result.validations:  # besides the per-epoch curves: every validation by optimizer step
            tracking.log_metrics({f"{k}_by_step": v for k, v in row.items() if k.startswith("val_")}, step=row["step"])
        summary = {"n_parameters": card["n_parameters"], "train_seconds": result.seconds, **card.get("summary", {})}
        tracking.log_metrics(summary)

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(result.history[-1]))
    writer.writeheader()
    writer.writerows(result.history)
    write_text(report_dir(family, run) / "history.csv", buf.getvalue())


if __name__ == "__main__":
    typer.run(main)
