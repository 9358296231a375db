"""Training speed and peak memory of the depth-from-echoes models.

    python benchmarks/bench_depth.py [--sizes default paper] [--steps N] [--models unet ...] [--threads N]

For every device (CPU, and CUDA with bf16 autocast when available), size and model it times
``--steps`` full training steps (forward, loss, backward, AdamW) after one warm-up step, on random
inputs, and reports the median step rate. Each case runs in a fresh subprocess so that peak memory
is its own: on the CPU the peak resident set of the process (``ru_maxrss``) and its growth during
training over the state after building model and batch (activations, gradients, optimiser state);
on CUDA ``torch.cuda.max_memory_allocated`` (weights included). It first prints parameter counts,
including the binaural attention network at base channels 32 / 64 / 96 at paper size.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from binaural_lab.depth import REGISTRY
from binaural_lab.family import count_parameters
from binaural_lab.models.binaural_attention import AttentionMemoryError

MODELS = ("unet", "base_residual", "binaural_attention")
PIPELINES = Path(__file__).resolve().parents[1] / "pipelines"


def load_size(name: str) -> dict:
    """Input size, max depth, model and loss blocks and batch sizes of pipelines/<name>.yaml.

    CUDA uses the pipeline's own batch size; the CPU uses it too for the default pipeline, but a
    batch of 1 at paper size (a paper-size batch takes minutes per step on a 2-core CPU).
    """
    params = yaml.safe_load((PIPELINES / f"{name}.yaml").read_text())
    blocks = params["depth_models"]
    batch = blocks["unet"]["train"]["batch_size"]
    return {
        "input_size": params["featurize_echoes"]["input_size"],
        "max_depth": params["datasets"]["echoes"]["max_depth_m"],
        "batch": {"cpu": batch if name == "default" else 1, "cuda": batch},
        "models": {m: blocks[m]["model"] for m in MODELS},
        "losses": {m: blocks[m]["loss"] for m in MODELS},
    }


SIZES = {name: load_size(name) for name in ("default", "paper")}


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_case(case: dict) -> dict:
    """Time ``case["steps"]`` training steps of one model at one size on one device."""
    if case["threads"]:
        torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    size, batch = case["input_size"], case["batch"]
    torch.manual_seed(0)
    try:
        model = REGISTRY.build_model(case["model"], case["cfg"], input_size=size, max_depth=case["max_depth"])
        model.to(device).train()
    except AttentionMemoryError as exc:
        return {"refused": str(exc)}
    loss_fn = REGISTRY.build_loss(case["model"], case["loss"], epochs=1, max_depth=case["max_depth"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(batch, 2, size, size, device=device)
    target = case["max_depth"] * torch.rand(batch, 1, size, size, device=device)
    target[..., : size // 8, :] = 0  # an invalid band, as in real depth maps
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step() -> None:
        with autocast:
            loss, _ = loss_fn(model(x), target, 0)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    rss_before = _rss_mib()
    try:
        step()  # warm-up; also allocates gradients and the optimiser state, which count in the peak
        seconds = []
        for _ in range(case["steps"]):
            start = time.perf_counter()
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds.append(time.perf_counter() - start)
    except AttentionMemoryError as exc:
        return {"refused": str(exc)}
    except (RuntimeError, MemoryError) as exc:
        return {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    result = {"params": count_parameters(model), "steps_per_s": 1 / statistics.median(seconds)}
    if device.type == "cuda":
        result["peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    else:
        result["peak_mib"] = _rss_mib()
        result["train_mib"] = _rss_mib() - rss_before
    return result


def print_parameter_counts(sizes: list[str]) -> None:
    print("parameter counts (built on the meta device, nothing allocated)")
    rows = [(name, SIZES[s]["input_size"], SIZES[s]["models"][name]) for s in sizes for name in MODELS]
    rows += [("binaural_attention", 256, {"base_channels": c}) for c in (32, 64, 96)]
    for name, size, cfg in dict.fromkeys((n, s, json.dumps(c)) for n, s, c in rows):
        with torch.device("meta"):
            model = REGISTRY.build_model(name, json.loads(cfg), input_size=size, max_depth=10.0)
        print(f"  {name:<19} {size:>3}x{size:<3} {cfg:<24} {count_parameters(model) / 1e6:7.2f} M")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", choices=sorted(SIZES), default=["default", "paper"])
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per case")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case, print its JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_case(json.loads(args.one))))
        return

    print(f"torch {torch.__version__}, {args.threads or torch.get_num_threads()} CPU threads")
    print_parameter_counts(args.sizes)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"\n{'device':<6} {'size':<8} {'model':<19} {'batch':>5} {'steps/s':>8} {'peak MiB':>9} {'train MiB':>10}")
    for device in devices:
        for size_name in args.sizes:
            size = SIZES[size_name]
            for name in args.models:
                case = {
                    "device": device,
                    "model": name,
                    "cfg": size["models"][name],
                    "loss": size["losses"][name],
                    "max_depth": size["max_depth"],
                    "input_size": size["input_size"],
                    "batch": size["batch"][device],
                    "steps": args.steps,
                    "threads": args.threads,
                }
                proc = subprocess.run(
                    [sys.executable, __file__, "--one", json.dumps(case)], capture_output=True, text=True
                )
                lines = proc.stdout.strip().splitlines()
                res = json.loads(lines[-1]) if proc.returncode == 0 and lines else {"error": proc.stderr[-300:]}
                head = f"{device:<6} {size_name:<8} {name:<19} {case['batch']:>5}"
                if "steps_per_s" in res:
                    train = f"{res['train_mib']:10.0f}" if "train_mib" in res else f"{'-':>10}"
                    print(f"{head} {res['steps_per_s']:8.2f} {res['peak_mib']:9.0f} {train}")
                else:
                    print(f"{head} {'refused' if 'refused' in res else 'failed'}: {res.get('refused') or res['error']}")


if __name__ == "__main__":
    main()
