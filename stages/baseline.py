"""Stage baseline_<family>: the family's reference predictor scored on the test split."""

import typer

from binaural_lab import tracking
from binaural_lab.family import get_family
from binaural_lab.paths import report_dir
from binaural_lab.stage import entry, load_params


@entry
def main(family: str) -> None:
    params = load_params()
    fam = get_family(family)
    baseline = fam.comparison.baseline
    with tracking.stage_run(family, f"baseline_{family}", {"model": baseline, "split": "test"}):
        tracking.log_outputs(fam.baseline(params, report_dir(family, baseline)))


if __name__ == "__main__":
    typer.run(main)
