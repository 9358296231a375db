"""Stage vocode: the test split's mels to stereo WAVs for every vocoded method (vocoder.METHODS).

Writes ``outputs/binaural/<method>/test/<sample_id>.wav`` and ``card.json`` for: ground-truth mels
through the pretrained BigVGAN, stage-1 mels through the pretrained and the fine-tuned BigVGAN, and
Griffin-Lim on ground-truth mels; ``evaluate_binaural@<method>`` scores them.
"""

import typer

from binaural_lab import tracking
from binaural_lab.config import to_dict
from binaural_lab.paths import report_dir
from binaural_lab.stage import entry, load_params
from binaural_lab.vocoder import save_vocoded_figures, vocode_config, vocode_test


@entry
def main() -> None:
    params = load_params()
    with tracking.stage_run("vocoder", "vocode", to_dict(vocode_config(params))):
        wavs = vocode_test(params)
        figures = save_vocoded_figures(params, wavs, report_dir("vocoder", "vocode"))
        tracking.log_outputs({"metrics": {f"clips_{m}": len(w) for m, w in wavs.items()}, "files": figures})
        for method, files in wavs.items():
            for wav in files[:2]:
                tracking.log_artifact(wav, f"examples/{method}")


if __name__ == "__main__":
    typer.run(main)
