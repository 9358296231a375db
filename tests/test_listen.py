"""The listening page, opened in a real headless Chromium: every <audio> loads with the clip's duration
and no error, every <img> decodes; the check itself catches truncated or corrupt files and a missing
image; a missing method WAV fails naming the file and leaves nothing behind."""

import html
import json
import os
import re
import runpy
import shutil
import subprocess
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from PIL import Image

from binaural_lab.audio.io import AudioFileError, write_audio
from binaural_lab.data.datasets import DatasetConfig
from binaural_lab.family import ComparisonSpec, example_indices, write_comparison, write_metrics
from binaural_lab.listen import write_listening_page

STAGE = Path(__file__).resolve().parents[1] / "stages" / "listen.py"
SR = 22050
GT_SAMPLES = 11025  # the raw clips: 0.5 s
OUT_SAMPLES = 10752  # the methods' WAVs: cut to a multiple of the mel hop, as render_split writes them
METHODS = ["mono", "mono2binaural", "depth_infused-image-depth"]  # k = 0, 1, 2: louder and better in this order
TEST_IDS = [f"r00{k}_s0{k}" for k in range(5)]
N_EXAMPLES = 3
FACTS = {"n_parameters": 0, "train_seconds": 1.0}
SPEC = ComparisonSpec(title="binaural", metrics=("stft", "snr"), key="stft", baseline="mono")

# Once the page has loaded (media elements and images delay the load event until they have settled),
# record the state of every <audio> and <img> in a <pre> that --dump-dom prints.
CHECK_JS = """
window.addEventListener("load", async () => {
  const settled = (a) => a.readyState >= 1 || a.error ? Promise.resolve() : new Promise((done) => {
    a.addEventListener("loadedmetadata", done, {once: true});
    a.addEventListener("error", done, {once: true});
  });
  const audio = [...document.querySelectorAll("audio")];
  await Promise.all(audio.map(settled));
  // createImageBitmap decodes the whole image (img.decode() never settles under --dump-dom)
  const images = await Promise.all([...document.images].map(async (i) => ({
    src: i.getAttribute("src"),
    width: i.naturalWidth,
    decoded: await createImageBitmap(i).then(() => true, () => false),
  })));
  const out = document.createElement("pre");
  out.id = "listen-check";
  out.textContent = JSON.stringify({
    audio: audio.map((a) => ({src: a.getAttribute("src"), duration: a.duration, error: a.error && a.error.code})),
    images,
  });
  document.body.append(out);
});
"""


@pytest.fixture(scope="module")
def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed and CI is set: install it (apt-get install chromium; .ci/run does)")
        pytest.skip("chromium is not installed (sudo apt-get install chromium)")
    return exe


def browser_check(chromium: str, page: Path, profile: Path) -> dict:
    """Open a copy of ``page`` (same folder, so its relative assets resolve) with :data:`CHECK_JS` in
    headless Chromium; the state of its audio elements and images."""
    check = page.with_name(f"{page.stem}.check.html")
    text = page.read_text()
    assert text.count("</body>") == 1
    check.write_text(text.replace("</body>", f"<script>{CHECK_JS}</script></body>"))
    command = [
        chromium,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--mute-audio",
        f"--user-data-dir={profile}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        check.as_uri(),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        check.unlink()
    found = re.search(r'<pre id="listen-check">(.*?)</pre>', done.stdout, re.S)
    assert found, f"chromium printed no check result (exit {done.returncode}): {done.stderr[-3000:]}"
    return json.loads(html.unescape(found.group(1)))


def broken(result: dict, duration: float) -> list[str]:
    """The assets that did not load: audio with an error or another duration, images that do not decode."""
    bad = [a["src"] for a in result["audio"] if a["error"] or not abs((a["duration"] or 0) - duration) < 1e-3]
    return bad + [i["src"] for i in result["images"] if not (i["width"] > 0 and i["decoded"])]


def _stereo(rng: np.random.Generator, n: int, gain: float) -> np.ndarray:
    t = np.arange(n) / SR
    tone = np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
    return gain * np.stack([tone, 0.5 * tone]) + 0.01 * rng.standard_normal((2, n))


def make_project(root: Path) -> DatasetConfig:
    """A fake project: raw clips and frames, a manifest, every method's test WAVs, their metrics and
    the comparison of them, as the pipeline lays them out."""
    rng = np.random.default_rng(0)
    raw = root / "data" / "raw" / "tiny"
    rows = []
    (raw / "frames").mkdir(parents=True)
    for split, ids in (("train", ["r009_s00", "r009_s01"]), ("test", TEST_IDS)):
        for sid in ids:
            write_audio(raw / "binaural" / f"{sid}.wav", _stereo(rng, GT_SAMPLES, 0.5), SR)
            Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(raw / "frames" / f"{sid}.png")
            paths = {"binaural_path": f"binaural/{sid}.wav", "frame_path": f"frames/{sid}.png"}
            where = {"azimuth_deg": 30.0, "distance_m": 2.0}
            rows.append({"sample_id": sid, "split": split, "room_id": sid[:4], **paths, **where})
    prepared = root / "data" / "prepared" / "tiny"
    prepared.mkdir(parents=True)
    pd.DataFrame(rows).to_parquet(prepared / "manifest.parquet", index=False)
    reports = root / "reports" / "binaural"
    for k, method in enumerate(METHODS):
        wavs = root / "outputs" / "binaural" / method / "test"
        for sid in TEST_IDS:  # the last method is louder than full scale: the page scales its clips down
            write_audio(wavs / f"{sid}.wav", _stereo(rng, OUT_SAMPLES, k), SR)
        for conv, stft in (("gao", 2.0 - 0.1 * k), ("diffbinaural", 0.8 + 0.1 * k)):
            file = f"metrics_{conv}.json"
            metrics = {"stft": stft, "snr": 6.0}
            write_metrics(reports / method, method, metrics, split="test", convention=conv, **FACTS, filename=file)
    write_comparison(reports, SPEC)
    return DatasetConfig(name="tiny", sample_rate=SR)


@pytest.fixture
def project(tmp_path, monkeypatch) -> DatasetConfig:
    monkeypatch.setenv("BLAB_ROOT", str(tmp_path))
    return make_project(tmp_path)


def test_stage_page_and_its_mlflow_artifacts_play_in_headless_chromium(tmp_path, mlflow_store, chromium):
    data = make_project(tmp_path)
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"datasets": {"binaural": {"name": data.name}}, "evaluate": {"n_examples": N_EXAMPLES}})
    )
    runpy.run_path(str(STAGE), run_name="stage")["main"]()
    page = tmp_path / "reports" / "binaural" / "listen.html"
    text = page.read_text()

    picked = [TEST_IDS[i] for i in example_indices(len(TEST_IDS), N_EXAMPLES)]
    assert re.findall(r"<h2>(.*?)</h2>", text) == picked
    table = [r["model"] for r in json.loads((page.parent / "compare.json").read_text())["rows"]]
    assert re.findall(r"<b>(.*?)</b><br>", text)[: 1 + len(METHODS)] == ["ground truth", *table[: len(METHODS)]]
    assert "gao: stft 1.8000 (-10.0 % vs mono)" in text  # the caption of depth_infused-image-depth
    assert "main source at azimuth +30 deg (positive: left), 2.0 m. Scaled by -6." in text
    pcm = sf.info(str(page.parent / "listen" / picked[0] / "methods" / f"{METHODS[-1]}.wav"))
    assert (pcm.subtype, pcm.channels, pcm.frames) == ("PCM_16", 2, OUT_SAMPLES)
    assert not [p.name for p in page.parent.iterdir() if p.name.startswith(".")]  # no temporaries left

    result = browser_check(chromium, page, tmp_path / "profile")
    assert len(result["audio"]) == N_EXAMPLES * (1 + len(METHODS))
    assert len(result["images"]) == N_EXAMPLES * (2 + len(METHODS))  # the frame, the truth's and each method's
    assert broken(result, OUT_SAMPLES / SR) == []

    (run,) = mlflow.search_runs(search_all_experiments=True, filter_string="tags.dvc_stage = 'listen_binaural'").run_id
    artifacts = Path(mlflow.artifacts.download_artifacts(run_id=run, dst_path=str(tmp_path / "artifacts")))
    copied = browser_check(chromium, artifacts / "listen.html", tmp_path / "profile")
    assert len(copied["audio"]) == len(result["audio"]) and broken(copied, OUT_SAMPLES / SR) == []


def test_browser_check_catches_truncated_and_corrupt_files_and_a_missing_image(project, tmp_path, chromium):
    page, assets = write_listening_page(project, N_EXAMPLES)
    sid = TEST_IDS[0]
    names = ("methods/mono2binaural.wav", "frame.png", "ground_truth.wav", "methods/mono.png")
    for name in names[:2]:  # cut in half: the headers still say what the data should be
        truncated = assets / sid / name
        truncated.write_bytes(truncated.read_bytes()[: truncated.stat().st_size // 2])
    (assets / sid / names[2]).write_bytes(b"RIFF" + bytes(range(256)) * 8)
    (assets / sid / names[3]).unlink()
    result = browser_check(chromium, page, tmp_path / "profile")
    assert sorted(broken(result, OUT_SAMPLES / SR)) == sorted(f"listen/{sid}/{name}" for name in names)


def test_a_missing_or_corrupt_method_wav_is_named_and_the_previous_page_stays(project, tmp_path):
    page, assets = write_listening_page(project, N_EXAMPLES)
    before = {p: p.read_bytes() for p in [page, *assets.rglob("*")] if p.is_file()}
    wavs = tmp_path / "outputs" / "binaural" / METHODS[1] / "test"
    missing, corrupt = wavs / f"{TEST_IDS[-1]}.wav", wavs / f"{TEST_IDS[2]}.wav"  # the third and second clip shown
    missing.unlink()
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(missing))}: WAV of method 'mono2binaural'"):
        write_listening_page(project, N_EXAMPLES)
    shutil.copy(wavs / f"{TEST_IDS[0]}.wav", missing)
    corrupt.write_bytes(b"RIFF" + bytes(100))  # found, but fails after the first clip's assets are drawn
    with pytest.raises(AudioFileError, match=re.escape(str(corrupt))):
        write_listening_page(project, N_EXAMPLES)
    assert {p: p.read_bytes() for p in [page, *assets.rglob("*")] if p.is_file()} == before
    assert not [p.name for p in page.parent.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_a_missing_comparison_is_named(project, tmp_path):
    comparison = tmp_path / "reports" / "binaural" / "compare.json"
    comparison.unlink()
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(comparison))}.*compare_binaural"):
        write_listening_page(project, N_EXAMPLES)
    assert not (comparison.parent / "listen.html").exists() and not (comparison.parent / "listen").exists()
