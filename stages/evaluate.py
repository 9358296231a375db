"""Stage evaluate_<family>@<model>: the family's metrics on the test split, figures, MLflow.

``--variant FLAG`` (repeatable) evaluates the variant trained with the same flags; ``--rendered`` scores
a method whose outputs another stage rendered (the vocoded WAVs), not a trained model.
"""

from typing import Annotated

import typer

from binaural_lab import tracking
from binaural_lab.family import get_family
from binaural_lab.paths import model_dir, report_dir
from binaural_lab.stage import entry, load_params, section


@entry
def main(
    family: str,
    name: str,
    variant: Annotated[list[str] | None, typer.Option()] = None,
    rendered: Annotated[bool, typer.Option()] = False,
) -> None:
    params = load_params()
    fam = get_family(family)
    if rendered:
        if not hasattr(fam, "evaluate_rendered"):
            raise typer.BadParameter(f"the {family} family scores no rendered methods", param_hint="--rendered")
        run = name
    else:
        run = fam.registry.variant(name, variant or [], section(params, fam.registry.where(name)))[0]
    with tracking.stage_run(family, f"evaluate_{family}@{run}", {"model": run, "split": "test"}):
        if rendered:
            out = fam.evaluate_rendered(params, run, report_dir(family, run))
        else:
            out = fam.evaluate(params, run, model_dir(family, run) / "model.pt", report_dir(family, run))
        tracking.log_outputs(out)


if __name__ == "__main__":
    typer.run(main)
