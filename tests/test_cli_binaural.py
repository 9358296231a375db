"""`blab evaluate binaural` on real WAV files: JSON report, strict JSON, errors that name the file."""

import json

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from binaural_lab.cli import app


def _clips(folder, rng, n=2, sr=22050, seconds=1.0):
    folder.mkdir()
    clips = {}
    for i in range(n):
        x = 0.3 * rng.standard_normal((int(sr * seconds), 2)).astype(np.float32)
        sf.write(folder / f"{i:03d}.wav", x, sr, subtype="FLOAT")
        clips[f"{i:03d}.wav"] = x
    return clips


@pytest.mark.parametrize("convention", ["gao", "diffbinaural"])
def test_scores_folders_and_writes_strict_json(tmp_path, convention):
    rng = np.random.default_rng(0)
    gt = _clips(tmp_path / "gt", rng)
    (tmp_path / "pred").mkdir()
    for name, x in gt.items():  # the first file is an exact copy (infinite DiffBinaural SNR)
        pred = x if name == "000.wav" else x + 0.1 * rng.standard_normal(x.shape).astype(np.float32)
        sf.write(tmp_path / "pred" / name, pred, 22050, subtype="FLOAT")
    out = tmp_path / "m.json"
    args = ["evaluate", "binaural", "--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "gt")]
    result = CliRunner().invoke(app, [*args, "--convention", convention, "--json", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())  # strict JSON: no bare Infinity
    assert report["convention"] == convention and report["n"] == 2
    assert report["per_file"]["000.wav"]["stft"] == 0.0 and report["mean"]["stft"] > 0
    if convention == "diffbinaural":
        assert report["per_file"]["000.wav"]["snr"] == "inf"


def test_a_missing_prediction_names_the_file_and_writes_nothing(tmp_path):
    rng = np.random.default_rng(1)
    _clips(tmp_path / "gt", rng)
    _clips(tmp_path / "pred", rng, n=1)
    out = tmp_path / "m.json"
    args = ["evaluate", "binaural", "--pred-dir", str(tmp_path / "pred"), "--gt-dir", str(tmp_path / "gt")]
    result = CliRunner().invoke(app, [*args, "--convention", "gao", "--json", str(out)])
    assert result.exit_code == 2 and "001.wav" in result.output
    assert not out.exists()
