"""Stage evaluate_<family>@<model>: the family's metrics on the test split, figures, MLflow.

``--variant FLAG`` (repeatable) evaluates the variant trained with the same flags.
"""

from typing import Annotated

import typer

from binaural_lab import tracking
from binaural_lab.family import get_family
from binaural_lab.paths import model_dir, report_dir
from binaural_lab.stage import entry, load_params, section


@entry
def main(family: str, name: str, variant: Annotated[list[str] | None, typer.Option()] = None) -> None:
    params = load_params()
    fam = get_family(family)
    # a name without variants may be a method another stage rendered (vocode), not a registry model
    run = fam.registry.variant(name, variant, section(params, fam.registry.where(name)))[0] if variant else name
    with tracking.stage_run(family, f"evaluate_{family}@{run}", {"model": run, "split": "test"}):
        out = fam.evaluate(params, run, model_dir(family, run) / "model.pt", report_dir(family, run))
        tracking.log_outputs(out)


if __name__ == "__main__":
    typer.run(main)
