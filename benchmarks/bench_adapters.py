"""Preparation cost of the real datasets per clip: adapter and feature time, and disk, at real sizes.

    python benchmarks/bench_adapters.py [--clips N] [--datasets fairplay realbinaural batvision-v1 batvision-v2]

For each dataset it writes ``--clips`` recordings in the distributed layout (the test suite's
builders: tests/test_fairplay.py, test_realbinaural.py, test_batvision.py) and swaps in the sizes
of the real files, then times what ``dvc repro`` runs on them: the adapter (synthesize@<slot>),
the manifest (prepare@<slot>) and the features (featurize@<slot>, with the named pipeline's
``featurize_<slot>`` settings and one worker). Sizes:

- FAIR-Play: 10 s of 48 kHz 16-bit stereo audio (REFERENCE.md section 5) and a 10 s h264 video at
  1920 x 1080, 30 fps, x264's default keyframe interval of 250 frames, of random blocks (about 33 MB).
  The real videos are about 55 MB each; their resolution and encoding are not in REFERENCE, so
  decoding them may cost more or less than these;
- RealBinaural: 10 s at 22.05 kHz, 10 fps JPEG frames at 1920 x 1080 (the frame size is assumed);
- Batvision: depth maps at 720 x 1280 (V2's size, REFERENCE; V1's is assumed the same), echoes of
  0.5 s at 44.1 kHz per ear (V1) or in one stereo WAV (V2), lengths assumed.

Per clip it prints the input size, the adapted size (data/raw/<slot name>), the feature size and
the seconds of each step. Timings are printed, never checked.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from test_batvision import make_v1, make_v2  # noqa: E402  (the test suite's builders of the real layouts)
from test_fairplay import make_fairplay, write_video  # noqa: E402
from test_realbinaural import make_realbinaural  # noqa: E402

from binaural_lab.config import load_yaml, parse  # noqa: E402
from binaural_lab.data.batvision import VERSIONS, adapt_batvision  # noqa: E402
from binaural_lab.data.datasets import dataset  # noqa: E402
from binaural_lab.data.fairplay import adapt_fairplay  # noqa: E402
from binaural_lab.data.features import slot_features  # noqa: E402
from binaural_lab.data.manifest import SplitConfig, build_manifest  # noqa: E402
from binaural_lab.data.realbinaural import adapt_realbinaural  # noqa: E402

VIDEO_SIZE = (1080, 1920)  # height, width
DEPTH_SIZE = (720, 1280)
ECHO_SECONDS = 0.5
SECONDS = 10.0


def textured(i: int) -> np.ndarray:
    """Frame ``i``: fresh random 8 x 8 blocks, which x264 cannot predict from the frame before (about
    33 MB per 10 s at 1080p, near the real videos' 55 MB; a smooth scene would compress far more)."""
    blocks = np.random.default_rng(i).integers(0, 256, (VIDEO_SIZE[0] // 8, VIDEO_SIZE[1] // 8, 3), np.uint8)
    return np.kron(blocks, np.ones((8, 8, 1), np.uint8))


def folder_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def fairplay_source(root: Path, clips: int) -> Path:
    make_fairplay(root, n_clips=clips, seconds=SECONDS)
    for video in sorted((root / "videos").glob("*.mp4")):
        write_video(video, SECONDS, 30.0, image=textured, gop=250)
    return root


def realbinaural_source(root: Path) -> Path:
    make_realbinaural(root, seconds=SECONDS)
    frame = Image.fromarray(textured(0))
    for path in sorted((root / "processed/frames").rglob("*.jpg")):
        frame.save(path, quality=95)
    return root


def batvision_source(root: Path, clips: int, version: str) -> Path:
    base = make_v1(root, per_split=clips) if version == "v1" else make_v2(root, per_split=clips)
    rng = np.random.default_rng(0)
    for path in base.rglob("*.npy"):
        old = np.load(path)
        if old.ndim == 2:  # a depth map: the real size, in millimetres, of its dtype
            np.save(path, rng.uniform(500, 9000, DEPTH_SIZE).astype(old.dtype))
        else:  # one ear's echoes (V1)
            np.save(path, rng.standard_normal(round(ECHO_SECONDS * 44100)).astype(np.float32) * 0.1)
    for path in base.rglob("*.wav"):  # V2's stereo echoes, 24-bit data in 32-bit words
        sf.write(path, rng.standard_normal((round(ECHO_SECONDS * 44100), 2)) * 0.1, 44100, subtype="PCM_32")
    return base


def pipeline(name: str) -> dict:
    return load_yaml(REPO / "pipelines" / f"{name}.yaml")


def bench(name: str, clips: int, work: Path) -> dict[str, float]:
    params = pipeline(name)
    slot = "echoes" if name.startswith("batvision") else "binaural"
    data = dataset(params, slot)
    source, raw, prepared, features = (work / n for n in ("source", "raw", "prepared", "features"))
    timings = {}
    if name == "fairplay":
        source = fairplay_source(source, clips)
        start = time.perf_counter()
        adapt_fairplay(source, raw, data.sample_rate, data.split_set, data.split, data.segment_seconds, data.fps)
    elif name == "realbinaural":
        source = realbinaural_source(source)  # the builder's 5 videos
        start = time.perf_counter()
        adapt_realbinaural(source, raw, data.sample_rate, data.segment_seconds, fps=data.fps)
    else:
        version = VERSIONS[name]
        source = batvision_source(source, clips, version)
        start = time.perf_counter()
        adapt_batvision(
            source,
            raw,
            version,
            data.max_depth_m,
            data.sample_rate,
            published_splits=data.published_splits,
            cut_audio=data.cut_audio,
        )
    timings["adapt_s"] = time.perf_counter() - start
    start = time.perf_counter()
    table = build_manifest(raw, prepared, parse(SplitConfig, params["prepare"]["splits"], "prepare.splits"), 0)
    timings["prepare_s"] = time.perf_counter() - start
    start = time.perf_counter()
    cfg, compute = slot_features(params, slot)
    compute(prepared / "manifest.parquet", raw, features, cfg)
    timings["featurize_s"] = time.perf_counter() - start
    recordings = table["room_id"].nunique() if slot == "binaural" else len(table)
    sizes = {"input_mb": folder_bytes(source), "raw_mb": folder_bytes(raw), "features_mb": folder_bytes(features)}
    per = {k: v / 1e6 / recordings for k, v in sizes.items()} | {k: v / recordings for k, v in timings.items()}
    return {"recordings": recordings, "samples": len(table), **per}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--clips",
        type=int,
        default=3,
        help="FAIR-Play clips, Batvision samples per split",
    )
    parser.add_argument("--datasets", nargs="+", default=["fairplay", "realbinaural", "batvision-v1", "batvision-v2"])
    args = parser.parse_args()
    header = ["dataset", "recordings", "samples", "input_mb", "raw_mb", "features_mb", "adapt_s", "prepare_s",
              "featurize_s"]  # fmt: skip
    print("per recording (clip, video or echo sample):")
    print(" ".join(f"{h:>12}" for h in header))
    for name in args.datasets:
        with tempfile.TemporaryDirectory() as tmp:
            row = {"dataset": name, **bench(name, args.clips, Path(tmp))}
        print(" ".join(f"{row[h]:>12.3f}" if isinstance(row[h], float) else f"{row[h]:>12}" for h in header))


if __name__ == "__main__":
    main()
