"""Training speed and generation real-time factor of the mel diffusion model (DiffBinaural stage 1).

    python benchmarks/bench_diffusion.py [--sizes default,paper] [--devices cpu cuda] [--threads N]
        [--steps N] [--guidance G] [--train-steps N] [--warmup N] [--batch N] [--runs N] [--full] [--json]

For every device (the CPU with ``--threads`` threads, 2 unless told; CUDA with bf16 autocast when
available) and size (``pipelines/<size>.yaml``: ``diffusion_models.diffbinaural.model`` and ``loss``,
``featurize_binaural.frame_size`` and ``mel``, ``generate_mels.window_batch``) it measures, on random
inputs:

- training: ``DiffusionTask.training_loss`` (a random 80-frame window of each mel clip
  ``[B, 3 (mono, L, R), 80, 128]`` in the log-mel range, uint8 frames, source positions ``[B, 4, 3]``)
  then backward and an AdamW step with the pipeline's learning rate and weight decay; ``--warmup``
  steps (3), then ``--train-steps`` timed steps (10); the median steps/s and clips/s, the parameter
  count and the peak memory. Batch 16 at the default size, 8 at paper size (``--batch`` overrides);
- generation: ``generate_clips`` of one 10 s clip (861 mel frames at 22 050 Hz, hop 256: 14 windows of
  80 frames, hop 64) with ``SamplingConfig(steps=--steps, guidance_scale=--guidance)``, 25 and 2.0
  unless told, so every DDIM step runs the conditional and the unconditional batch together (2 x 14
  windows, the pipeline's ``window_batch`` per forward pass); a warm-up of one DDIM step on the same
  shapes, then ``--runs`` timed runs (1); the real-time factor, median wall time / 10 s (below 1 is
  faster than real time).

On the CPU at paper size the work is cut down, as one training step takes seconds and a 10 s clip
minutes: 1 warm-up and 2 timed training steps, and no generation (a note is printed instead);
``--full`` runs both as at the other sizes. Explicit ``--warmup`` / ``--train-steps`` are always obeyed.

Each case runs in a fresh subprocess, so that its thread pools and peak memory are its own: on the
CPU the peak resident set of the process (``ru_maxrss``; for training also its growth over the state
after building model and batch: activations, gradients, optimiser state), on CUDA
``torch.cuda.max_memory_allocated`` (weights included). Timings are printed, never checked. With
``--json`` the table goes to stderr and stdout gets one JSON object per case.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml

from binaural_lab.diffbinaural import REGISTRY, DiffusionTask, SamplingConfig, generate_clips, mel_windows
from binaural_lab.family import count_parameters

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package: its sibling script
from bench_binaural import AUDIO_RATE, _autocast, _failed, _peak, _rss_mib, _setup, _sync, parse_names, spawn  # noqa: E402

MODEL = "diffbinaural"
SIZE_NAMES = ("default", "paper")
PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"
TRAIN_BATCH = {"default": 16, "paper": 8}
TRAIN_FRAMES = 128  # mel frames of a training clip; training_loss takes a random WINDOW of them
N_SOURCES = 4  # rows of positions [B, N_SOURCES, 3 (x, y, present)]
GEN_SECONDS = 10
MEL_MIN, MEL_MAX = -12.0, 2.5  # the log-mel range the model sees (normalize_mel clamps to it)
CPU_PAPER_WARMUP, CPU_PAPER_STEPS = 1, 2


def load_size(name: str) -> dict:
    """The model, diffusion process, optimiser, frame and mel sizes and window batch of pipelines/<name>.yaml."""
    params = yaml.safe_load((PIPELINES / f"{name}.yaml").read_text())
    block = params["diffusion_models"][MODEL]
    mel = params["featurize_binaural"]["mel"]
    return {
        "cfg": block["model"],
        "loss": block["loss"],
        "lr": block["train"]["lr"],
        "weight_decay": block["train"]["weight_decay"],
        "frame_size": list(params["featurize_binaural"]["frame_size"]),
        "n_mels": mel["n_mels"],
        "gen_frames": GEN_SECONDS * params["datasets"]["binaural"]["sample_rate"] // mel["hop"],
        "window_batch": params["generate_mels"]["window_batch"],
    }


def random_batch(batch: int, n_mels: int, frames: int, frame_size: list[int], device: torch.device) -> dict:
    """Clips as the feature shards hold them: log-mels [B, 3, n_mels, frames], uint8 frames, positions."""
    h, w = frame_size
    positions = torch.rand(batch, N_SOURCES, 3, device=device)
    positions[..., 2] = (positions[..., 2] < 0.5).float()  # present or not
    return {
        "mel": torch.empty(batch, 3, n_mels, frames, device=device).uniform_(MEL_MIN, MEL_MAX),
        "frame": torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, device=device),
        "positions": positions,
    }


def _task(case: dict) -> DiffusionTask:
    scheduler = REGISTRY.build_loss(MODEL, case["loss"], epochs=1)
    return DiffusionTask(scheduler, SamplingConfig(), sample_every=0, epochs=1)


def train_case(case: dict) -> dict:
    """Time ``case["steps"]`` training steps after ``case["warmup"]`` ones."""
    device = _setup(case)
    task = _task(case)
    model = REGISTRY.build_model(MODEL, case["cfg"]).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=case["lr"], weight_decay=case["weight_decay"])
    batch = random_batch(case["batch"], case["n_mels"], TRAIN_FRAMES, case["frame_size"], device)
    autocast = _autocast(device)

    def step() -> None:
        with autocast:
            loss, _ = task.training_loss(model, batch, 0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rss_before = _rss_mib()
    try:
        for _ in range(case["warmup"]):  # also allocates gradients and optimiser state: they count in the peak
            step()
        _sync(device)
        seconds = []
        for _ in range(case["steps"]):
            start = time.perf_counter()
            step()
            _sync(device)
            seconds.append(time.perf_counter() - start)
    except (RuntimeError, MemoryError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    rate = 1 / statistics.median(seconds)
    result = {"params": count_parameters(model), "steps_per_s": rate, "clips_per_s": rate * case["batch"]}
    result["peak_mib"] = _peak(device)
    if device.type == "cpu":
        result["train_mib"] = _rss_mib() - rss_before
    return result


def generate_case(case: dict) -> dict:
    """Median wall time of ``case["runs"]`` generations of one whole clip of ``case["frames"]`` mel frames."""
    device = _setup(case)
    task = _task(case)
    model = REGISTRY.build_model(MODEL, case["cfg"]).to(device).eval()
    clip = random_batch(1, case["n_mels"], case["frames"], case["frame_size"], torch.device("cpu"))
    sampling = SamplingConfig(steps=case["steps"], guidance_scale=case["guidance"], window_batch=case["window_batch"])
    autocast = _autocast(device)

    def run(cfg: SamplingConfig) -> float:
        start = time.perf_counter()
        with autocast:
            out = generate_clips(model, task.scheduler, clip["mel"], clip["frame"], clip["positions"], ["bench"], cfg)
        _sync(device)
        if out.shape != (1, 2, case["n_mels"], case["frames"]):
            raise RuntimeError(f"generate_clips returned {tuple(out.shape)}")
        return time.perf_counter() - start

    try:
        run(SamplingConfig(steps=1, guidance_scale=case["guidance"], window_batch=case["window_batch"]))  # warm-up
        seconds = statistics.median(run(sampling) for _ in range(case["runs"]))
    except (RuntimeError, MemoryError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    windows = len(mel_windows(case["frames"]))
    return {
        "windows": windows,
        "forward_batch": windows * (2 if case["guidance"] != 1.0 else 1),
        "seconds": seconds,
        "rtf": seconds / case["clip_seconds"],
        "peak_mib": _peak(device),
    }


CASES = {"train": train_case, "generate": generate_case}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["default"], help="default, paper (space or comma separated)")
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (0: torch's default)")
    parser.add_argument("--batch", type=int, default=0, help="training batch (0: 16 at default size, 8 at paper)")
    parser.add_argument("--warmup", type=int, help=f"untimed training steps (3; {CPU_PAPER_WARMUP} on CPU at paper)")
    parser.add_argument("--train-steps", type=int, help=f"timed training steps (10; {CPU_PAPER_STEPS} on CPU at paper)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps of the generation")
    parser.add_argument("--guidance", type=float, default=2.0, help="classifier-free guidance scale (1: off)")
    parser.add_argument("--runs", type=int, default=1, help="timed generations of the 10 s clip per case")
    parser.add_argument("--full", action="store_true", help="on the CPU at paper size too: all steps, generation")
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

    def reduced(device: str, size_name: str) -> bool:
        return device == "cpu" and size_name == "paper" and not args.full

    devices = [d for d in args.devices if d == "cpu" or torch.cuda.is_available()]
    sizes = {name: load_size(name) for name in parse_names(args.sizes, SIZE_NAMES, "--sizes")}
    gpu = f", {torch.cuda.get_device_name()} (bf16 autocast)" if "cuda" in devices else ""
    print(f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} CPU threads{gpu}", file=out)
    if "cuda" in args.devices and "cuda" not in devices:
        print("CUDA is not available: CPU only", file=out)
    for size_name, size in sizes.items():
        print(f"  {size_name:<8} {json.dumps(size['cfg'], separators=(',', ':'))}", file=out)

    print(
        f"\ntraining: training_loss + AdamW on mel clips [B, 3, {TRAIN_FRAMES} frames], median of the timed steps",
        file=out,
    )
    print(
        f"{'device':<6} {'size':<8} {'params':>8} {'batch':>5} {'frame':>7} {'warm':>4} {'timed':>5} {'steps/s':>8} "
        f"{'clips/s':>8} {'peak MiB':>9} {'train MiB':>10}",
        file=out,
    )
    for device in devices:
        for size_name, size in sizes.items():
            cut = reduced(device, size_name)
            warmup = args.warmup if args.warmup is not None else (CPU_PAPER_WARMUP if cut else 3)
            steps = args.train_steps if args.train_steps is not None else (CPU_PAPER_STEPS if cut else 10)
            case = {
                **{k: size[k] for k in ("cfg", "loss", "lr", "weight_decay", "frame_size", "n_mels")},
                "kind": "train",
                "device": device,
                "threads": args.threads if device == "cpu" else 0,
                "batch": args.batch or TRAIN_BATCH[size_name],
                "warmup": warmup,
                "steps": max(steps, 1),
            }
            res = spawn(case, __file__)
            frame = "x".join(map(str, size["frame_size"]))
            head = f"{device:<6} {size_name:<8}"
            if "steps_per_s" in res:
                train = f"{res['train_mib']:10.0f}" if "train_mib" in res else f"{'-':>10}"
                row = (
                    f"{head} {res['params'] / 1e6:7.2f}M {case['batch']:>5} {frame:>7} {warmup:>4} {case['steps']:>5} "
                    f"{res['steps_per_s']:8.3f} {res['clips_per_s']:8.2f} {res['peak_mib']:9.0f} {train}"
                )
            else:
                row = f"{head} {_failed(res)}"
            record = {"bench": "train", "device": device, "size": size_name, "batch": case["batch"]}
            emit(row, {**record, "warmup": warmup, "steps": case["steps"], **res})

    guided = "on: conditional + unconditional batch" if args.guidance != 1.0 else "off"
    print(
        f"\ngeneration of a {GEN_SECONDS} s clip at {AUDIO_RATE} Hz: generate_clips, {args.steps} DDIM steps, "
        f"guidance {args.guidance:g} ({guided}); median of {args.runs} run(s) after a 1-step warm-up",
        file=out,
    )
    print(
        f"{'device':<6} {'size':<8} {'frames':>6} {'windows':>7} {'batch':>5} {'seconds':>9} {'RTF':>8} "
        f"{'peak MiB':>9}",
        file=out,
    )
    for device in devices:
        for size_name, size in sizes.items():
            head = f"{device:<6} {size_name:<8} {size['gen_frames']:>6}"
            if reduced(device, size_name):
                print(f"{head} skipped on the CPU at paper size (minutes per clip); --full runs it", file=out)
                continue
            case = {
                **{k: size[k] for k in ("cfg", "loss", "frame_size", "n_mels", "window_batch")},
                "kind": "generate",
                "device": device,
                "threads": args.threads if device == "cpu" else 0,
                "frames": size["gen_frames"],
                "clip_seconds": GEN_SECONDS,
                "steps": args.steps,
                "guidance": args.guidance,
                "runs": max(args.runs, 1),
            }
            res = spawn(case, __file__)
            if "rtf" in res:
                row = (
                    f"{head} {res['windows']:>7} {res['forward_batch']:>5} {res['seconds']:9.2f} {res['rtf']:8.3f} "
                    f"{res['peak_mib']:9.0f}"
                )
            else:
                row = f"{head} {_failed(res)}"
            record = {"bench": "generate", "device": device, "size": size_name, "frames": case["frames"]}
            emit(row, {**record, "steps": args.steps, "guidance": args.guidance, **res})


if __name__ == "__main__":
    main()
