"""Speed and memory of the project's BigVGAN generator against NVIDIA's (``bigvgan==2.4.1``), same config and weights.

    python benchmarks/bench_vocoder.py [--configs base_22khz_80band,22khz_80band_256x] [--devices cpu cuda]
        [--threads N] [--seconds S] [--batch N] [--warmup N] [--repeats N] [--json]

For every device (the CPU in float32 with ``--threads`` threads, 2 unless told; CUDA, when available, in
float32 and under bf16 autocast) and named config (``binaural_lab.models.bigvgan.NAMED_CONFIGS``;
``base_22khz_80band`` and ``22khz_80band_256x`` unless told) it builds NVIDIA's generator with random
weights (seeded; no checkpoint is fetched), loads its state dict into ours, removes the weight norm of
both, and vocodes one random log-mel of ``--seconds`` (10) of 22 050 Hz audio: ``ceil(seconds * 22050 /
256)`` frames, 862 for 10 s, batch ``--batch`` (1). In one process, after ``--warmup`` (1) untimed
forwards of each, ``--repeats`` (3) timed forwards alternate: ours, NVIDIA's, ours, NVIDIA's, ... It
prints the parameter count (weight norm removed), the median seconds of each, their ratio ours /
NVIDIA's (below 1: ours is faster) and the ratio of the fastest runs (``min ratio``, the least disturbed
by other processes), the real-time factor (median seconds / audio seconds; below 1 is
faster than real time), the largest difference of the two waves, and the peak memory of each: on the
CPU the peak resident set of the process while that model runs (polled every millisecond from
``/proc/self/statm``; both models' weights included) and its growth over the level before the forward;
on CUDA ``torch.cuda.max_memory_allocated`` and its growth over ``torch.cuda.memory_allocated`` before
the forward. ``load`` is the machine's 1-minute load average (the larger of before and after the case):
with other processes competing for the CPU, both models slow down by up to several times, unevenly, so
numbers from a loaded machine are not comparable.

Each case runs in a fresh subprocess, so that its thread pools and memory are its own. Timings are
printed, never checked. With ``--json`` the table goes to stderr and stdout gets one JSON object per case.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import json
import math
import os
import statistics
import sys
import threading
import time
import warnings
from importlib.metadata import version
from pathlib import Path

import torch

from binaural_lab.family import count_parameters
from binaural_lab.models.bigvgan import NAMED_CONFIGS, BigVGAN, named_config

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package: its sibling script
from bench_binaural import AUDIO_RATE, _failed, _sync, parse_names, spawn  # noqa: E402

DEFAULT_CONFIGS = ("base_22khz_80band", "22khz_80band_256x")
MEL_MEAN = -4.0  # random log-mels around the range of real ones (log of 1e-5 .. 1e1)
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")


def _rss_now_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE_BYTES / 2**20


class RssPeak:
    """The peak resident set (MiB) of this process while the ``with`` block runs, polled every millisecond."""

    def __init__(self) -> None:
        self.before = self.peak = 0.0
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._done.wait(0.001):
            self.peak = max(self.peak, _rss_now_mib())

    def __enter__(self) -> RssPeak:
        self.before = self.peak = _rss_now_mib()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_now_mib())


def nvidia_generator(name: str) -> torch.nn.Module:
    """NVIDIA's generator for the named config, with PyTorch's random initialisation (seeded by the caller)."""
    import bigvgan

    h = bigvgan.AttrDict({**dataclasses.asdict(named_config(name)), "resblock": "1"})
    with warnings.catch_warnings():  # their torch.nn.utils.weight_norm calls warn that it is deprecated
        warnings.simplefilter("ignore", FutureWarning)
        return bigvgan.BigVGAN(h, use_cuda_kernel=False)


def timed_forward(model: torch.nn.Module, mel: torch.Tensor, device: torch.device) -> dict:
    """One forward: its seconds, the peak memory while it ran and the growth over the level before it (MiB)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
        start = time.perf_counter()
        model(mel)
        _sync(device)
        seconds = time.perf_counter() - start
        peak = torch.cuda.max_memory_allocated() / 2**20
        return {"seconds": seconds, "peak_mib": peak, "extra_mib": peak - before}
    with RssPeak() as rss:
        start = time.perf_counter()
        model(mel)
        seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_mib": rss.peak, "extra_mib": rss.peak - rss.before}


def run_case(case: dict) -> dict:
    """Ours against NVIDIA's for one config, device and dtype (see the module docstring)."""
    if case["threads"]:
        torch.set_num_threads(case["threads"])
    torch.manual_seed(0)
    device = torch.device(case["device"])
    cfg = named_config(case["config"])
    theirs = nvidia_generator(case["config"])
    ours = BigVGAN(cfg)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    with contextlib.redirect_stdout(io.StringIO()):  # NVIDIA's remove_weight_norm prints
        theirs.remove_weight_norm()
    ours.remove_weight_norm()
    models = {"ours": ours.to(device).eval(), "nvidia": theirs.to(device).eval()}
    frames = math.ceil(case["seconds"] * AUDIO_RATE / cfg.hop_length)
    mel = torch.randn(case["batch"], cfg.num_mels, frames, device=device) + MEL_MEAN
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=case["dtype"] == "bf16")
    runs: dict[str, list[dict]] = {name: [] for name in models}
    try:
        with torch.inference_mode(), autocast:
            waves = {name: model(mel).float() for name, model in models.items()}  # a warm-up too
            difference = (waves["ours"] - waves["nvidia"]).abs().max().item()
            del waves
            for _ in range(case["warmup"] - 1):
                for model in models.values():
                    model(mel)
            _sync(device)
            for _ in range(case["repeats"]):
                for name, model in models.items():
                    runs[name].append(timed_forward(model, mel, device))
    except (RuntimeError, MemoryError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    audio_seconds = frames * cfg.hop_length / AUDIO_RATE
    result: dict = {"params": count_parameters(ours), "frames": frames, "max_difference": difference}
    for name, timings in runs.items():
        seconds = statistics.median(r["seconds"] for r in timings)
        result[name] = {
            "seconds": seconds,
            "all_seconds": [r["seconds"] for r in timings],
            "rtf": seconds / (audio_seconds * case["batch"]),
            "peak_mib": max(r["peak_mib"] for r in timings),
            "extra_mib": max(r["extra_mib"] for r in timings),
        }
    result["ratio"] = result["ours"]["seconds"] / result["nvidia"]["seconds"]
    result["min_ratio"] = min(result["ours"]["all_seconds"]) / min(result["nvidia"]["all_seconds"])
    return result


HEADER = (
    f"{'device':<6} {'dtype':<5} {'config':<18} {'params':>8} {'ours s':>8} {'nvidia s':>8} {'ratio':>6} {'min':>6} "
    f"{'RTF ours':>8} {'RTF nv':>8} {'peak MiB ours':>13} {'nvidia':>7} {'+MiB ours':>9} {'nvidia':>7} "
    f"{'max |diff|':>10} {'load':>5}"
)


def format_row(case: dict, res: dict, load: float) -> str:
    head = f"{case['device']:<6} {case['dtype']:<5} {case['config']:<18}"
    if "ratio" not in res:
        return f"{head} {_failed(res)}"
    o, n = res["ours"], res["nvidia"]
    return (
        f"{head} {res['params'] / 1e6:7.2f}M {o['seconds']:8.2f} {n['seconds']:8.2f} {res['ratio']:6.3f} "
        f"{res['min_ratio']:6.3f} "
        f"{o['rtf']:8.3f} {n['rtf']:8.3f} {o['peak_mib']:13.0f} {n['peak_mib']:7.0f} {o['extra_mib']:9.0f} "
        f"{n['extra_mib']:7.0f} {res['max_difference']:10.2e} {load:5.2f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS), help="named configs (space or comma)")
    parser.add_argument("--devices", nargs="+", choices=("cpu", "cuda"), default=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (0: torch's default)")
    parser.add_argument("--seconds", type=float, default=10.0, help=f"audio vocoded per forward, at {AUDIO_RATE} Hz")
    parser.add_argument("--batch", type=int, default=1, help="mels per forward")
    parser.add_argument("--warmup", type=int, default=1, help="untimed forwards of each model (at least 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards of each model, alternating")
    parser.add_argument("--json", action="store_true", help="JSON lines on stdout, the table on stderr")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case, print its JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(json.loads(args.one))))
        return

    out = sys.stderr if args.json else sys.stdout
    configs = parse_names(args.configs, NAMED_CONFIGS, "--configs")
    devices = [d for d in args.devices if d == "cpu" or torch.cuda.is_available()]
    gpu = f", {torch.cuda.get_device_name()}" if "cuda" in devices else ""
    frames = ", ".join(f"{n} {math.ceil(args.seconds * AUDIO_RATE / named_config(n).hop_length)}" for n in configs)
    print(
        f"torch {torch.__version__}, bigvgan {version('bigvgan')}, {args.threads or torch.get_num_threads()} CPU "
        f"threads{gpu}\n{args.seconds:g} s of {AUDIO_RATE} Hz audio per mel (frames: {frames}), batch {args.batch}, "
        f"weight norm removed; median of {args.repeats} alternating timed forwards after {max(args.warmup, 1)} "
        "warm-up(s); ratio = ours / nvidia (of the medians; min: of the fastest runs)",
        file=out,
    )
    if "cuda" in args.devices and "cuda" not in devices:
        print("CUDA is not available: CPU only", file=out)
    print(f"\n{HEADER}", file=out)
    for device in devices:
        for dtype in ("fp32", "bf16") if device == "cuda" else ("fp32",):
            for name in configs:
                case = {
                    "device": device,
                    "dtype": dtype,
                    "config": name,
                    "threads": args.threads if device == "cpu" else 0,
                    "seconds": args.seconds,
                    "batch": args.batch,
                    "warmup": max(args.warmup, 1),
                    "repeats": max(args.repeats, 1),
                }
                load = os.getloadavg()[0]
                res = spawn(case, __file__)
                load = max(load, os.getloadavg()[0])
                print(format_row(case, res, load), file=out, flush=True)
                if args.json:
                    print(json.dumps({**case, **res, "load": load}), flush=True)


if __name__ == "__main__":
    main()
