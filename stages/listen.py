"""Stage listen_binaural: a page to hear and see every compared binaural method on a few test clips."""

import typer

from binaural_lab import tracking
from binaural_lab.data.datasets import dataset
from binaural_lab.listen import write_listening_page
from binaural_lab.stage import entry, load_params, section


@entry
def main() -> None:
    params = load_params()
    data = dataset(params, "binaural")
    n_examples = int(section(params, "evaluate.n_examples"))
    with tracking.stage_run("binaural", "listen_binaural", {"dataset": data.name, "n_examples": n_examples}):
        page, assets = write_listening_page(data, n_examples)
        tracking.log_artifact(page)
        for f in sorted(p for p in assets.rglob("*") if p.is_file()):
            tracking.log_artifact(f, f.parent.relative_to(page.parent).as_posix())


if __name__ == "__main__":
    typer.run(main)
