"""Stage evaluate_<family>@<model>: the family's metrics on the test split, figures, MLflow."""

import typer

from binaural_lab import tracking
from binaural_lab.family import get_family
from binaural_lab.paths import model_dir, report_dir
from binaural_lab.stage import entry, load_params


@entry
def main(family: str, name: str) -> None:
    params = load_params()
    fam = get_family(family)
    with tracking.stage_run(family, f"evaluate_{family}@{name}", {"model": name, "split": "test"}):
        out = fam.evaluate(params, name, model_dir(family, name) / "model.pt", report_dir(family, name))
        tracking.log_metrics(out["metrics"], prefix="test_")
        for path in out["files"]:
            tracking.log_artifact(path, "figures" if path.suffix == ".png" else None)


if __name__ == "__main__":
    typer.run(main)
