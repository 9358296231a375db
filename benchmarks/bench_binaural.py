"""Training speed, inference real-time factor and metric throughput of the binaural generation family.

    python benchmarks/bench_binaural.py [--sizes default paper] [--steps N] [--threads N]
        [--devices cpu cuda] [--methods mono2binaural depth_infused] [--json]

For every device (CPU, and CUDA with bf16 autocast when available), size (``pipelines/<size>.yaml``:
``binaural_models.<method>.model``, ``train.batch_size``, ``featurize_binaural.frame_size``) and
learned method (``mono2binaural``; ``depth_infused`` with image and depth) it measures, on random
inputs:

- training: ``--steps`` full steps (``BinauralTask.training_loss`` on a batch of 1.5 s clips, STFT
  ``[B, 2, 2, 257, 150]``, uint8 frames and depth maps, then backward and AdamW) after one warm-up
  step; the median steps/s and clips/s. The CPU uses the pipeline's batch at the default size and a
  batch of 1 at paper size (``--batch`` overrides both devices);
- inference: the whole-clip prediction of a 10 s clip (``predict_difference``, the 0.63 s window
  slid with a 0.05 s hop, in eval mode under no_grad) plus the inverse STFT (``waveforms``), one
  warm-up and ``--runs`` timed runs; the real-time factor, median wall time / 10 s (lower is
  faster; below 1 is faster than real time), split into network and inverse STFT, and the number
  of windows.

Each of these cases runs in a fresh subprocess, so that its peak memory is its own: on the CPU the
peak resident set of the process (``ru_maxrss``), and for training also its growth over the state
after building model and batch (activations, gradients, optimiser state); on CUDA
``torch.cuda.max_memory_allocated`` (weights included). Finally the metrics: clips/s of
``clip_metrics`` on ``--clips`` 10 s stereo clips of noise at 22.05 kHz in both conventions (``gao``,
``diffbinaural``), with 1 thread and with the default (or ``--threads``) number.

It first prints parameter counts. Timings are printed, never checked. With ``--json`` the table goes
to stderr and stdout gets one JSON object per case.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

from binaural_lab.binaural import REGISTRY, BinauralizeConfig, StftSetup, make_task, window_starts
from binaural_lab.family import count_parameters
from binaural_lab.metrics.binaural import CONVENTIONS, clip_metrics
from binaural_lab.models.binaural_attention import AttentionMemoryError

METHODS = ("mono2binaural", "depth_infused")
SIZE_NAMES = ("default", "paper")
PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"

STFT_RATE, N_FFT, HOP, WIN = 16000, 512, 160, 400  # the feature shards' STFT (Gao & Grauman)
AUDIO_RATE = 22050  # of the dataset's audio files
N_FREQ = N_FFT // 2 + 1
TRAIN_FRAMES = 150  # STFT frames of a 1.5 s clip: the default pipeline's 33 024 samples at 22.05 kHz
TRAIN_CLIP_SAMPLES = 33024
INFER_SECONDS = 10
INFER_FRAMES = 1 + INFER_SECONDS * STFT_RATE // HOP  # 1001
DEPTH_MAX_M = 10.0
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def load_size(name: str) -> dict:
    """Frame size and the model, loss and batch size of each method in pipelines/<name>.yaml."""
    params = yaml.safe_load((PIPELINES / f"{name}.yaml").read_text())
    blocks = params["binaural_models"]
    return {
        "frame_size": list(params["featurize_binaural"]["frame_size"]),
        "models": {m: blocks[m]["model"] for m in METHODS},
        "losses": {m: blocks[m]["loss"] for m in METHODS},
        "batch": {m: blocks[m]["train"]["batch_size"] for m in METHODS},
    }


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _setup(case: dict) -> torch.device:
    if case["threads"]:
        torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    return torch.device(case.get("device", "cpu"))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _autocast(device: torch.device) -> torch.autocast:
    return torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")


def _peak(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else _rss_mib()


def random_inputs(batch: int, frames: int, frame_size: list[int], device: torch.device) -> dict[str, torch.Tensor]:
    """A batch as the shards hold it: STFT (mono, L - R; re, im), uint8 frames, depth in metres."""
    h, w = frame_size
    return {
        "stft": 0.1 * torch.randn(batch, 2, 2, N_FREQ, frames, device=device),
        "frame": torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, device=device),
        "depth": DEPTH_MAX_M * torch.rand(batch, h, w, device=device),
    }


def train_case(case: dict) -> dict:
    """Time ``case["steps"]`` training steps of one method at one size on one device."""
    device = _setup(case)
    name, batch = case["method"], case["batch"]
    loss_fn = REGISTRY.build_loss(name, case["loss"], epochs=1)
    task = make_task(
        StftSetup(STFT_RATE, N_FFT, HOP, WIN, AUDIO_RATE, TRAIN_CLIP_SAMPLES), BinauralizeConfig(), loss_fn
    )
    try:
        REGISTRY.check_memory(
            name, case["cfg"], batch, n_freq=N_FREQ, n_frames=task.crop_frames, frame_size=tuple(case["frame_size"])
        )
    except AttentionMemoryError as exc:
        return {"refused": str(exc)}
    model = REGISTRY.build_model(name, case["cfg"]).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    inputs = random_inputs(batch, TRAIN_FRAMES, case["frame_size"], device)
    autocast = _autocast(device)

    def step() -> None:
        with autocast:
            loss, _ = task.training_loss(model, inputs, 0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rss_before = _rss_mib()
    try:
        step()  # warm-up; also allocates gradients and the optimiser state, which count in the peak
        _sync(device)
        seconds = []
        for _ in range(case["steps"]):
            start = time.perf_counter()
            step()
            _sync(device)
            seconds.append(time.perf_counter() - start)
    except AttentionMemoryError as exc:
        return {"refused": str(exc)}
    except (RuntimeError, MemoryError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    rate = 1 / statistics.median(seconds)
    result = {"params": count_parameters(model), "steps_per_s": rate, "clips_per_s": rate * batch}
    result["peak_mib"] = _peak(device)
    if device.type == "cpu":
        result["train_mib"] = _rss_mib() - rss_before
    return result


def infer_case(case: dict) -> dict:
    """Median wall time of ``case["runs"]`` whole-clip predictions of a 10 s clip, and its inverse STFT."""
    device = _setup(case)
    name = case["method"]
    setup = StftSetup(STFT_RATE, N_FFT, HOP, WIN, AUDIO_RATE, INFER_SECONDS * AUDIO_RATE)
    task = make_task(setup, BinauralizeConfig(), loss_fn=None)
    n_windows = len(window_starts(INFER_FRAMES, task.crop_frames, task.hop_frames))
    model = REGISTRY.build_model(name, case["cfg"]).to(device).eval()
    inputs = random_inputs(1, INFER_FRAMES, case["frame_size"], device)
    stft, autocast = inputs["stft"], _autocast(device)

    def run() -> tuple[float, float]:
        start = time.perf_counter()
        with torch.no_grad(), autocast:
            diff = task.predict_difference(model, stft, inputs["frame"], inputs["depth"])
        _sync(device)
        mid = time.perf_counter()
        with torch.no_grad():
            task.waveforms(stft[:, 0], diff)  # moves to the CPU, as evaluation does
        return mid - start, time.perf_counter() - mid

    try:
        run()  # warm-up
        times = [run() for _ in range(case["runs"])]
    except AttentionMemoryError as exc:
        return {"refused": str(exc)}
    except (RuntimeError, MemoryError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    net = statistics.median(t[0] for t in times)
    istft = statistics.median(t[1] for t in times)
    total = statistics.median(t[0] + t[1] for t in times)
    return {
        "windows": n_windows,
        "frames": INFER_FRAMES,
        "seconds": total,
        "rtf": total / INFER_SECONDS,
        "rtf_net": net / INFER_SECONDS,
        "rtf_istft": istft / INFER_SECONDS,
        "peak_mib": _peak(device),
    }


def metrics_case(case: dict) -> dict:
    """Clips/s of ``clip_metrics`` on ``case["clips"]`` 10 s noise clips at 22.05 kHz, per convention."""
    _setup(case)
    rng = np.random.default_rng(0)
    n = INFER_SECONDS * AUDIO_RATE
    gt = [(0.1 * rng.standard_normal((2, n))).astype(np.float32) for _ in range(case["clips"])]
    pred = [g + (0.05 * rng.standard_normal((2, n))).astype(np.float32) for g in gt]
    result = {"threads": torch.get_num_threads()}
    for conv in CONVENTIONS:
        clip_metrics(pred[0], gt[0], AUDIO_RATE, conv)  # warm-up (filterbanks, windows, FFT plans)
        start = time.perf_counter()
        for p, g in zip(pred, gt, strict=True):
            clip_metrics(p, g, AUDIO_RATE, conv)
        result[conv] = len(gt) / (time.perf_counter() - start)
    return result


CASES = {"train": train_case, "infer": infer_case, "metrics": metrics_case}


def spawn(case: dict, script: str = __file__) -> dict:
    """Run one case by ``script --one`` in a fresh interpreter (its own peak memory and thread pools) with
    the case's thread count; its result dict. The other benchmarks pass their own file."""
    env = dict(os.environ)
    if case["threads"]:
        env.update({var: str(case["threads"]) for var in THREAD_VARS})
    proc = subprocess.run([sys.executable, script, "--one", json.dumps(case)], capture_output=True, text=True, env=env)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        return json.loads(lines[-1])
    return {"error": (proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1][-300:]}


def parse_names(values: list[str], known, flag: str) -> list[str]:
    """``--flag a b`` and ``--flag a,b`` alike, in order, without repeats; a name not in ``known`` fails."""
    names = [n for v in values for n in v.split(",") if n]
    bad = sorted(set(names) - set(known))
    if bad or not names:
        raise SystemExit(f"{flag}: expected some of {', '.join(known)}, got {', '.join(values)}")
    return list(dict.fromkeys(names))


def print_parameter_counts(sizes: dict[str, dict], methods: list[str], out) -> None:
    print("parameter counts (built on the meta device, nothing allocated)", file=out)
    for size_name, size in sizes.items():
        for name in methods:
            with torch.device("meta"):
                model = REGISTRY.build_model(name, size["models"][name])
            cfg = json.dumps(size["models"][name], separators=(",", ":"))
            print(f"  {size_name:<8} {name:<14} {count_parameters(model) / 1e6:7.2f} M  {cfg}", file=out)


def _failed(res: dict) -> str:
    return f"{'refused' if 'refused' in res else 'failed'}: {res.get('refused') or res.get('error')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=SIZE_NAMES, default=["default"])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=["cpu", "cuda"])
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per case")
    parser.add_argument("--runs", type=int, default=2, help="timed 10 s inferences per case")
    parser.add_argument("--batch", type=int, default=0, help="training batch (0: the pipeline's; 1 on CPU at paper)")
    parser.add_argument("--clips", type=int, default=3, help="10 s clips scored per metric convention")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout, the table on stderr")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case, print its JSON
    args = parser.parse_args()
    if args.one:
        case = json.loads(args.one)
        print(json.dumps(CASES[case["kind"]](case)))
        return

    out = sys.stderr if args.json else sys.stdout

    def emit(row: str, record: dict) -> None:
        print(row, file=out, flush=True)
        if args.json:
            print(json.dumps(record), flush=True)

    devices = [d for d in args.devices if d == "cpu" or torch.cuda.is_available()]
    sizes = {name: load_size(name) for name in args.sizes}
    gpu = f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""
    print(f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} CPU threads{gpu}", file=out)
    if "cuda" in args.devices and "cuda" not in devices:
        print("CUDA is not available: CPU only", file=out)
    print_parameter_counts(sizes, args.methods, out)
    base = {"steps": args.steps, "runs": args.runs, "clips": args.clips, "threads": args.threads}

    print(f"\ntraining: {args.steps} timed steps after one warm-up, 0.63 s crops of 1.5 s clips", file=out)
    print(
        f"{'device':<6} {'size':<8} {'method':<14} {'batch':>5} {'steps/s':>8} {'clips/s':>8} "
        f"{'peak MiB':>9} {'train MiB':>10}",
        file=out,
    )
    for device in devices:
        for size_name, size in sizes.items():
            for name in args.methods:
                batch = args.batch or (size["batch"][name] if device == "cuda" or size_name == "default" else 1)
                case = {
                    **base,
                    "kind": "train",
                    "device": device,
                    "size": size_name,
                    "method": name,
                    "cfg": size["models"][name],
                    "loss": size["losses"][name],
                    "frame_size": size["frame_size"],
                    "batch": batch,
                }
                res = spawn(case)
                head = f"{device:<6} {size_name:<8} {name:<14} {batch:>5}"
                if "steps_per_s" in res:
                    train = f"{res['train_mib']:10.0f}" if "train_mib" in res else f"{'-':>10}"
                    row = f"{head} {res['steps_per_s']:8.2f} {res['clips_per_s']:8.1f} {res['peak_mib']:9.0f} {train}"
                else:
                    row = f"{head} {_failed(res)}"
                emit(row, {"bench": "train", **{k: case[k] for k in ("device", "size", "method", "batch")}, **res})

    print(f"\ninference of a {INFER_SECONDS} s clip ({INFER_FRAMES} STFT frames): median of {args.runs} runs", file=out)
    print(
        f"{'device':<6} {'size':<8} {'method':<14} {'windows':>7} {'seconds':>8} {'RTF':>7} {'net':>7} "
        f"{'istft':>7} {'peak MiB':>9}",
        file=out,
    )
    for device in devices:
        for size_name, size in sizes.items():
            for name in args.methods:
                case = {
                    **base,
                    "kind": "infer",
                    "device": device,
                    "size": size_name,
                    "method": name,
                    "cfg": size["models"][name],
                    "frame_size": size["frame_size"],
                }
                res = spawn(case)
                head = f"{device:<6} {size_name:<8} {name:<14}"
                if "rtf" in res:
                    row = (
                        f"{head} {res['windows']:>7} {res['seconds']:8.3f} {res['rtf']:7.4f} {res['rtf_net']:7.4f} "
                        f"{res['rtf_istft']:7.4f} {res['peak_mib']:9.0f}"
                    )
                else:
                    row = f"{head} {_failed(res)}"
                emit(row, {"bench": "infer", **{k: case[k] for k in ("device", "size", "method")}, **res})

    print(f"\nmetrics: clips/s of clip_metrics, {INFER_SECONDS} s stereo clips at {AUDIO_RATE} Hz", file=out)
    print(f"{'threads':>7} " + " ".join(f"{conv:>12}" for conv in CONVENTIONS), file=out)
    for threads in dict.fromkeys((1, args.threads)):
        res = spawn({**base, "kind": "metrics", "threads": threads})
        if "error" in res:
            row = f"{threads or 'default':>7} {_failed(res)}"
        else:
            row = f"{res['threads']:>7} " + " ".join(f"{res[conv]:12.2f}" for conv in CONVENTIONS)
        emit(row, {"bench": "metrics", "clips": args.clips, **res})


if __name__ == "__main__":
    main()
