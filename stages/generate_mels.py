"""Stage generate_mels: binaural mels of every split from the trained diffusion model (resumable).

Writes ``outputs/mels/<dataset>/<split>/`` (see :mod:`binaural_lab.diffbinaural`); a killed run
resumes at the first unfinished shard. Reads ``generate_mels`` (steps, eta, guidance scale, seed)
only, so changing them reruns generation and evaluation, not training.
"""

import time

import typer

from binaural_lab import tracking
from binaural_lab.config import to_dict
from binaural_lab.diffbinaural import generate_all, sampling_config
from binaural_lab.paths import model_dir
from binaural_lab.stage import entry, load_params


@entry
def main() -> None:
    params = load_params()
    with tracking.stage_run("diffusion", "generate_mels", to_dict(sampling_config(params))):
        start = time.perf_counter()
        counts = generate_all(params, model_dir("diffusion", "diffbinaural") / "model.pt")
        seconds = time.perf_counter() - start
        tracking.log_metrics({**{f"clips_{split}": n for split, n in counts.items()}, "generate_seconds": seconds})


if __name__ == "__main__":
    typer.run(main)
