"""Stage compare_depth: one table of every depth model and the training-mean predictor."""

import typer

from binaural_lab import depth, tracking
from binaural_lab.paths import report_dir
from binaural_lab.stage import entry


@entry
def main() -> None:
    with tracking.stage_run("depth", "compare_depth", {}):
        table = depth.write_comparison(report_dir("depth"))
        tracking.log_artifact(report_dir("depth") / "compare.md")
        for row in table:
            tracking.log_metrics({f"{row['model']}_rmse": row["rmse"]})


if __name__ == "__main__":
    typer.run(main)
