"""Stage compare_<family>: one table of every model of a family and its baseline."""

import typer

from binaural_lab import tracking
from binaural_lab.family import get_family, write_comparison
from binaural_lab.paths import report_dir
from binaural_lab.stage import entry


@entry
def main(family: str) -> None:
    spec = get_family(family).comparison
    with tracking.stage_run(family, f"compare_{family}", {}):
        table = write_comparison(report_dir(family), spec)
        tracking.log_artifact(report_dir(family) / "compare.md")
        several = len({row["convention"] for row in table}) > 1
        for row in table:
            name = f"{row['model']}_{row['convention']}" if several else row["model"]
            tracking.log_metrics({f"{name}_{spec.key}": row[spec.key]})


if __name__ == "__main__":
    typer.run(main)
