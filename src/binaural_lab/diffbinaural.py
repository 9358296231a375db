"""The binaural-generation family, part 2: DiffBinaural stage 1, mono mel + frame -> binaural mel.

The network (:mod:`binaural_lab.models.diffbinaural`) learns, by denoising (:mod:`binaural_lab.diffusion`),
to generate the left / right log-mel of a clip from its mono log-mel, its frame and the pixel
positions of its sound sources, all read from the binaural feature shards:

- a training example is a window of ``WINDOW`` (80) frames of the [mono, L, R] mel at a random
  offset; log-mels are clamped to [-12, 2.5] and mapped linearly to [-1, 1] (:func:`normalize_mel`);
  the frame enters the ResNet-18 normalised as torchvision expects; with probability
  ``loss.cond_drop`` a sample's visual tokens are zeroed (classifier-free guidance);
- a whole clip is generated window by window (hop ``WINDOW - 2 * CROP``), ``CROP`` (8) frames are
  dropped at each inner end of a window and the overlaps averaged (:func:`stitch` with ``crop``);
  windows of many clips go through the sampler together; the initial noise of each clip is drawn
  from a generator seeded by ``generate_mels.seed`` and the clip's sample id, so the result does not
  depend on batching, resumption or the other clips.

``generate_mels`` writes ``outputs/mels/<dataset>/<split>/``: shards ``mel-<k>.npy`` of
``[n, 2 (L, R), n_mels, T]`` in the features' log-mel units, ``index.parquet`` (sample_id, shard,
row, n_frames; n_frames equals the ground-truth mel's) and ``meta.json``. A killed run resumes at
the first missing shard. ``evaluate_mels`` scores the test split against the ground truth and the
mono copy (:func:`mel_metrics`).
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from binaural_lab import plots
from binaural_lab.binaural import imagenet_normalize, stitch, window_starts
from binaural_lab.config import UserError, param, parse, to_dict
from binaural_lab.data.datasets import dataset
from binaural_lab.data.manifest import SPLITS
from binaural_lab.data.shards import ShardDataset, ShardReader
from binaural_lab.diffusion import SPACINGS, DDIMScheduler, DiffusionConfig, classifier_free_guidance
from binaural_lab.family import (
    ModelEntry,
    ModelParams,
    Registry,
    count_parameters,
    example_indices,
    load_model_file,
    write_metrics,
)
from binaural_lab.models.diffbinaural import DiffBinaural, DiffBinauralConfig
from binaural_lab.paths import atomic_path, model_dir, output_dir, write_json
from binaural_lab.stage import section
from binaural_lab.training import Trainer, TrainResult, content_hash
from binaural_lab.training.loop import EpochCallback, pick_device, seed_everything
from binaural_lab.tuning import Objective

MEL_MIN, MEL_MAX = -12.0, 2.5  # log-mel clamp of DiffBinaural, mapped to [-1, 1]
WINDOW = 80  # mel frames per window
CROP = 8  # frames dropped at each inner end of a window when a clip is stitched, and at each end when scored
MEL_KEYS = {"mel": "mel", "frame": "frame", "positions": "positions"}
OFF_CENTRE_DEG = 20.0  # the sign agreement is also reported for clips whose main source is further off centre
MELS_FORMAT = "binaural-lab generated mels v1"


def _diffusion_process(cfg: DiffusionConfig, epochs: int) -> DDIMScheduler:
    return DDIMScheduler(cfg)


REGISTRY = Registry(
    "diffusion", {"diffbinaural": ModelEntry(DiffBinauralConfig, DiffBinaural, DiffusionConfig, _diffusion_process)}
)


class DiffusionInputError(UserError, ValueError):
    """Features, a checkpoint or generated mels that do not fit the diffusion model."""


@dataclass
class SamplingConfig:
    """How mels are drawn from a trained model (``generate_mels`` in params.yaml)."""

    steps: int = param(25, ge=1, doc="DDIM steps (DiffBinaural: 25)")
    spacing: str = param(
        "leading", choices=SPACINGS, doc="DDIM steps from 0 upwards (DiffBinaural) or down from the last step"
    )
    eta: float = param(0.0, ge=0, le=1, doc="0: deterministic DDIM; 1: DDPM-like noise")
    guidance_scale: float = param(1.0, ge=0, doc="classifier-free guidance; 1 = the conditional model alone")
    temperature: float = param(
        1.0, ge=0, le=1, doc="the sampler's noise is scaled by this; below 1 draws closer to the conditional mean"
    )
    window_batch: int = param(64, ge=1, doc="windows per forward pass (of any clips)")
    shard_size: int = param(64, ge=1, doc="clips per output shard (a killed run resumes at a shard)")
    seed: int = param(0, ge=0)


def normalize_mel(mel: Tensor) -> Tensor:
    """Log-mel to the network's range: clamp to [MEL_MIN, MEL_MAX], then linearly to [-1, 1]."""
    return (mel.clamp(MEL_MIN, MEL_MAX) - MEL_MIN) / (MEL_MAX - MEL_MIN) * 2 - 1


def denormalize_mel(x: Tensor) -> Tensor:
    """The inverse of :func:`normalize_mel` on [-1, 1]."""
    return (x.clamp(-1, 1) + 1) / 2 * (MEL_MAX - MEL_MIN) + MEL_MIN


def _network(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)  # the network under DistributedDataParallel


def _residual(windows: Tensor, cfg: DiffusionConfig) -> Tensor:
    """The unstandardised residual target of normalised [mono, L, R] windows: L / R minus mono, or
    mid (the ears' mean minus mono) and side (half L - R)."""
    mono, left, right = windows[:, :1], windows[:, 1:2], windows[:, 2:3]
    if cfg.target == "mid_side":
        return torch.cat(((left + right) / 2 - mono, (left - right) / 2), dim=1)
    return windows[:, 1:] - mono


def to_target(windows: Tensor, model: nn.Module, cfg: DiffusionConfig) -> Tensor:
    """What the model diffuses, from normalised [mono, L, R] windows ``[B, 3, F, W]``: L / R, or their
    difference from mono (``residual``, ``mid_side``) standardised per channel and band with the model's
    training statistics (``cfg.target``)."""
    if cfg.target == "binaural":
        return windows[:, 1:]
    net = _network(model)
    return (_residual(windows, cfg) - net.target_mean) / net.target_std


def from_target(x: Tensor, mono: Tensor, model: nn.Module, cfg: DiffusionConfig) -> Tensor:
    """Normalised L / R windows from a sample ``x [B, 2, F, W]`` and the normalised ``mono [B, 1, F, W]``."""
    if cfg.target == "binaural":
        return x
    net = _network(model)
    r = x * net.target_std + net.target_mean
    if cfg.target == "mid_side":
        r = torch.cat((r[:, :1] + r[:, 1:], r[:, :1] - r[:, 1:]), dim=1)
    return (mono + r).clamp(-1, 1)


def residual_statistics(mel: np.ndarray, cfg: DiffusionConfig) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation ``[2, F, 1]`` over clips and frames of the residual target of the
    log-mels ``mel [N, 3, F, T]`` of the training split."""
    residual = _residual(normalize_mel(torch.from_numpy(np.array(mel, dtype=np.float32))), cfg).double()
    return residual.mean((0, 3))[..., None].float(), residual.std((0, 3))[..., None].clamp(min=1e-3).float()


def clip_seed(seed: int, sample_id: str) -> int:
    """The noise seed of one clip: the run's seed and the clip's id, nothing else."""
    return (seed * 1_000_003 + zlib.crc32(sample_id.encode())) % (2**63)


def mel_windows(n_frames: int) -> list[int]:
    """First frames of a clip's windows: hop ``WINDOW - 2 * CROP``, the last one ending at the clip's end."""
    return window_starts(n_frames, WINDOW, WINDOW - 2 * CROP)


class DiffusionTask:
    """Training examples, validation and sampling of the mel diffusion model."""

    def __init__(self, scheduler: DDIMScheduler, val_sampling: SamplingConfig, sample_every: int, epochs: int):
        self.scheduler = scheduler
        self.val_sampling = val_sampling
        self.sample_every = sample_every
        self.epochs = epochs

    def context(self, model: nn.Module, frame: Tensor, positions: Tensor) -> Tensor:
        return model.encode(imagenet_normalize(frame), positions.float())

    def training_loss(self, model: nn.Module, batch: dict[str, Tensor], epoch: int) -> tuple[Tensor, dict]:
        mel = batch["mel"].float()  # [B, 3 (mono, L, R), F, T]
        check_window(mel.shape[-1], "the training clips")
        offsets = torch.randint(0, mel.shape[-1] - WINDOW + 1, (mel.shape[0],)).tolist()
        windows = normalize_mel(torch.stack([m[..., o : o + WINDOW] for m, o in zip(mel, offsets, strict=True)]))
        x0, mono = to_target(windows, model, self.scheduler.cfg), windows[:, :1]
        context = self.context(model, batch["frame"], batch["positions"])
        keep = (torch.rand(len(mel), device=mel.device) >= self.scheduler.cfg.cond_drop).to(context.dtype)
        context = context * keep[:, None, None]
        t = torch.randint(0, self.scheduler.num_train_timesteps, (len(mel),), device=mel.device)
        noise = torch.randn_like(x0)
        output = model(self.scheduler.add_noise(x0, noise, t), t, mono, context)
        loss = self.scheduler.loss(output, self.scheduler.training_target(x0, noise, t))
        return loss, {"loss": loss.item()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, epoch: int) -> dict[str, float]:
        """The denoising loss of the middle window of every validation clip at fixed steps and noise;
        every ``sample_every`` epochs and at the last, also the mel RMSE of whole generated clips."""
        device = next(model.parameters()).device
        gen = torch.Generator().manual_seed(0)
        total, n, sq, frames = 0.0, 0, 0.0, 0
        sampled = self.sample_every and ((epoch + 1) % self.sample_every == 0 or epoch + 1 == self.epochs)
        for batch in loader:
            mel = batch["mel"].float().to(device)
            start = max(0, (mel.shape[-1] - WINDOW) // 2)
            windows = normalize_mel(mel[..., start : start + WINDOW])
            t = torch.randint(0, self.scheduler.num_train_timesteps, (len(mel),), generator=gen).to(device)
            noise = torch.randn(windows[:, 1:].shape, generator=gen).to(device)
            context = self.context(model, batch["frame"].to(device), batch["positions"].to(device))
            x0 = to_target(windows, model, self.scheduler.cfg)
            pred = model(self.scheduler.add_noise(x0, noise, t), t, windows[:, :1], context)
            total += self.scheduler.loss(pred, self.scheduler.training_target(x0, noise, t)).item() * len(mel)
            n += len(mel)
            if sampled:
                ids = [f"val{epoch}-{i}" for i in range(n - len(mel), n)]
                out = generate_clips(
                    model, self.scheduler, mel, batch["frame"], batch["positions"], ids, self.val_sampling
                )
                err = (out - mel[:, 1:])[..., CROP : mel.shape[-1] - CROP]
                sq += err.pow(2).sum().item()
                frames += err.numel()
        metrics = {"denoise_loss": total / max(n, 1)}  # the loop names them val_<key>
        if sampled:
            metrics["mel_rmse"] = math.sqrt(sq / max(frames, 1))
        return metrics


def check_window(n_frames: int, what: str) -> None:
    if n_frames < WINDOW:
        raise DiffusionInputError(
            f"{what} have {n_frames} mel frames, fewer than one {WINDOW}-frame window; make longer clips "
            f"(clip_seconds of at least {WINDOW} hops)"
        )


@torch.no_grad()
def sample_windows(
    model: nn.Module,
    scheduler: DDIMScheduler,
    mono: Tensor,
    context: Tensor,
    noise: Tensor,
    cfg: SamplingConfig,
    step_noise: Tensor | None = None,
) -> Tensor:
    """DDIM from ``noise [N, 2, F, W]`` to normalised L / R windows, given normalised ``mono [N, 1, F, W]``.

    Guidance runs the conditional and the unconditional (zeroed tokens) prediction in one batch;
    scale 1 runs the conditional one alone. ``step_noise [steps, N, 2, F, W]`` is the noise of
    ``eta > 0``.
    """
    scheduler.set_timesteps(cfg.steps, cfg.spacing)
    x = noise
    guided = cfg.guidance_scale != 1.0
    both_mono = torch.cat((mono, mono)) if guided else mono
    both_context = torch.cat((context, torch.zeros_like(context))) if guided else context
    for i, t in enumerate(scheduler.timesteps.tolist()):
        steps = torch.full((len(x) * (2 if guided else 1),), t, device=x.device, dtype=torch.long)
        eps = model(torch.cat((x, x)) if guided else x, steps, both_mono, both_context).float()
        if guided:
            eps = classifier_free_guidance(*eps.chunk(2), cfg.guidance_scale)
        extra = step_noise[i] if step_noise is not None else None
        x = scheduler.step(eps, t, x, eta=cfg.eta, variance_noise=extra)
    return x


def _clip_noise(
    sample_id: str, n_windows: int, shape: tuple[int, ...], cfg: SamplingConfig
) -> tuple[Tensor, Tensor | None]:
    gen = torch.Generator().manual_seed(clip_seed(cfg.seed, sample_id))
    noise = torch.randn((n_windows, *shape), generator=gen) * cfg.temperature
    step_noise = torch.randn((cfg.steps, n_windows, *shape), generator=gen) * cfg.temperature if cfg.eta > 0 else None
    return noise, step_noise


@torch.no_grad()
def generate_clips(
    model: nn.Module,
    scheduler: DDIMScheduler,
    mel: Tensor,
    frame: Tensor,
    positions: Tensor,
    sample_ids: Sequence[str],
    cfg: SamplingConfig,
) -> Tensor:
    """Generated L / R log-mels ``[N, 2, F, T]`` of whole clips from their ``mel [N, 3 (mono, L, R) or 1, F, T]``.

    Only the mono channel of ``mel`` is read. Windows of all clips go through the sampler
    ``cfg.window_batch`` at a time.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    n_mels, n_frames = mel.shape[-2:]
    padded = max(n_frames, WINDOW)
    mono = normalize_mel(mel[:, :1].float().to(device))
    if n_frames < WINDOW:  # one window, padded with silence
        mono = torch.nn.functional.pad(mono, (0, WINDOW - n_frames), value=-1.0)
    starts = mel_windows(padded)
    context = torch.cat(
        [
            model.encode(imagenet_normalize(frame[i : i + 16].to(device)), positions[i : i + 16].float().to(device))
            for i in range(0, len(mel), 16)
        ]
    )
    jobs = [(c, s) for c in range(len(mel)) for s in range(len(starts))]
    noises = [_clip_noise(sid, len(starts), (2, n_mels, WINDOW), cfg) for sid in sample_ids]
    out = torch.empty(len(mel), len(starts), 2, n_mels, WINDOW)
    for k in range(0, len(jobs), cfg.window_batch):
        part = jobs[k : k + cfg.window_batch]
        m = torch.stack([mono[c, ..., starts[s] : starts[s] + WINDOW] for c, s in part])
        ctx = torch.stack([context[c] for c, _ in part])
        noise = torch.stack([noises[c][0][s] for c, s in part]).to(device)
        step_noise = None
        if cfg.eta > 0:
            step_noise = torch.stack([noises[c][1][:, s] for c, s in part], dim=1).to(device)
        x = from_target(sample_windows(model, scheduler, m, ctx, noise, cfg, step_noise), m, model, scheduler.cfg)
        for (c, s), w in zip(part, x.float().cpu(), strict=True):
            out[c, s] = w
    model.train(was_training)
    stitched = torch.stack([stitch(windows, starts, padded, crop=CROP) for windows in out])
    return denormalize_mel(stitched[..., :n_frames]).to(mel.device)


# --- training --------------------------------------------------------------------------------------


def train_diffusion(
    name: str,
    p: ModelParams,
    features_dir: Path,
    ckpt_dir: Path,
    on_epoch_end: EpochCallback | None = None,
    figure_dir: Path | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train the mel diffusion model on ``features_dir/train`` (validating on ``val``); the result and card."""
    train_dir, val_dir = features_dir / "train", features_dir / "val"
    train_set, val_set = ShardDataset(train_dir, MEL_KEYS), ShardDataset(val_dir, MEL_KEYS)
    mel_shape = ShardReader(train_dir).meta["arrays"]["mel"]["shape"][1:]
    check_window(mel_shape[-1], f"{train_dir}: the clips")
    cfg = REGISTRY.model_config(name, p.model)
    if mel_shape[1] % cfg.size_multiple:
        raise DiffusionInputError(
            f"{train_dir}: {mel_shape[1]} mel bins; {REGISTRY.where(name)}.model.dim_mults needs a multiple of "
            f"{cfg.size_multiple}"
        )
    if mel_shape[1] != cfg.n_mels:
        raise DiffusionInputError(
            f"{train_dir}: {mel_shape[1]} mel bins; {REGISTRY.where(name)}.model.n_mels is {cfg.n_mels}"
        )
    seed_everything(p.train.seed)
    model = REGISTRY.build_model(name, p.model)
    scheduler = REGISTRY.build_loss(name, p.loss, p.train.epochs)
    if scheduler.cfg.target != "binaural":
        model.target_mean, model.target_std = residual_statistics(ShardReader(train_dir).open("mel"), scheduler.cfg)
    val_sampling = SamplingConfig(steps=min(10, scheduler.num_train_timesteps))
    task = DiffusionTask(scheduler, val_sampling, p.figure_every, p.train.epochs)
    card = {
        "name": name,
        "params": to_dict(p),
        "mel_shape": list(mel_shape),
        "features": ShardReader(train_dir).meta["config"]["mel"],
        "n_parameters": count_parameters(model),
    }

    def epoch_end(epoch: int, train_m: dict[str, float], val_m: dict[str, float], net: nn.Module) -> None:
        if on_epoch_end is not None:
            on_epoch_end(epoch, train_m, val_m, net)
        if figure_dir is not None and "val_mel_rmse" in val_m:
            save_figures(net, scheduler, val_dir, figure_dir, p.figure_examples, val_sampling, f"epoch{epoch + 1:03d}_")

    fingerprint = {"card": card, "data": content_hash([train_dir, val_dir])}
    result = Trainer(p.train, ckpt_dir, fingerprint=fingerprint).fit(model, train_set, val_set, task, epoch_end)
    return result, card


def load_model(path: Path, features_dir: Path | None = None, device: torch.device | None = None):
    """The trained model (eval mode) and its scheduler and card; with ``features_dir``, checked against
    the features' mel configuration."""
    blob = load_model_file(path)
    card = blob.get("card", {})
    if card.get("name") not in REGISTRY.names:
        raise DiffusionInputError(
            f"{path}: a checkpoint of {card.get('name')!r}, not of a diffusion model ({REGISTRY.names})"
        )
    p = REGISTRY.params(card["name"], card["params"])
    model = REGISTRY.build_model(card["name"], p.model)
    try:
        model.load_state_dict(blob["state_dict"])
    except RuntimeError as exc:
        raise DiffusionInputError(f"{path}: its weights do not fit the configuration in its card ({exc})") from exc
    if features_dir is not None:
        reader = ShardReader(features_dir)
        mel_cfg, shape = reader.meta["config"]["mel"], reader.meta["arrays"]["mel"]["shape"][1:]
        if mel_cfg != card["features"] or shape[:2] != card["mel_shape"][:2]:
            raise DiffusionInputError(
                f"{path}: trained on mels {card['mel_shape'][:2]} with {card['features']}, but {features_dir} "
                f"holds mels {shape[:2]} with {mel_cfg}; retrain (train_diffusion) or point at matching features"
            )
    model.to(device or torch.device("cpu")).eval()
    return model, REGISTRY.build_loss(card["name"], p.loss, p.train.epochs), card


# --- generation: outputs/mels/<dataset>/<split>/ ------------------------------------------------------


def _shard_name(k: int) -> str:
    return f"mel-{k:05d}.npy"


def generate_split(
    model: nn.Module,
    scheduler: DDIMScheduler,
    split_dir: Path,
    out_dir: Path,
    cfg: SamplingConfig,
    fingerprint: str,
) -> int:
    """Generate every clip of a feature split into ``out_dir`` (see the module doc); returns the clips.

    Shards already written for the same ``fingerprint`` are kept (a killed run resumes); a folder
    of another fingerprint is cleared first.
    """
    reader = ShardReader(split_dir)
    ids = reader.index()["sample_id"].tolist()
    arrays = {name: reader.open(name) for name in MEL_KEYS}  # a missing array fails here, before out_dir
    n_mels, n_frames = arrays["mel"].shape[-2:]
    meta = {
        "format": MELS_FORMAT,
        "fingerprint": fingerprint,
        "num_samples": len(ids),
        "shape": [2, int(n_mels), int(n_frames)],
        "units": "natural log of the mel magnitude, as the features (binaural_lab.audio.mel)",
        "channels": ["left", "right"],
        "shard_size": cfg.shard_size,
        "sampling": to_dict(cfg),
    }
    progress, done = out_dir / "progress.json", out_dir / "meta.json"
    if out_dir.exists():
        if not progress.is_file() and done.is_file() and (out_dir / "index.parquet").is_file():
            if json.loads(done.read_text()) == meta:
                return len(ids)  # finished before for the same fingerprint and settings
        old = json.loads(progress.read_text()) if progress.is_file() else None
        if old != meta:
            for f in out_dir.iterdir():
                f.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(progress, meta)
    bounds = [(s, min(s + cfg.shard_size, len(ids))) for s in range(0, len(ids), cfg.shard_size)]
    with tqdm(total=len(ids), desc=f"mels {split_dir.name}", unit="clip") as bar:
        for k, (a, b) in enumerate(bounds):
            path = out_dir / _shard_name(k)
            if not path.is_file():
                mel = torch.from_numpy(np.array(arrays["mel"][a:b]))
                frame = torch.from_numpy(np.array(arrays["frame"][a:b]))
                positions = torch.from_numpy(np.array(arrays["positions"][a:b]))
                out = generate_clips(model, scheduler, mel, frame, positions, ids[a:b], cfg).numpy()
                with atomic_path(path) as tmp, open(tmp, "wb") as f:
                    np.save(f, out.astype(np.float32))
            bar.update(b - a)
    index = pd.DataFrame(
        {
            "sample_id": ids,
            "shard": [i // cfg.shard_size for i in range(len(ids))],
            "row": [i % cfg.shard_size for i in range(len(ids))],
            "n_frames": [int(n_frames)] * len(ids),
        }
    )
    with atomic_path(out_dir / "index.parquet") as tmp:
        index.to_parquet(tmp, index=False)
    write_json(out_dir / "meta.json", meta)
    progress.unlink()
    return len(ids)


class GeneratedMels:
    """Reads ``outputs/mels/<dataset>/<split>/``: ``mel(i)`` by row of the index, or all of them."""

    def __init__(self, split_dir: Path):
        meta_file = split_dir / "meta.json"
        if not meta_file.is_file():
            raise DiffusionInputError(f"{split_dir}: no generated mels (meta.json missing); run generate_mels")
        self.dir = split_dir
        self.meta = json.loads(meta_file.read_text())
        self.index = pd.read_parquet(split_dir / "index.parquet")

    def all(self) -> np.ndarray:
        """``[N, 2, n_mels, T]`` in the index's order."""
        shards = [np.load(self.dir / _shard_name(k)) for k in sorted(set(self.index["shard"]))]
        return np.concatenate(shards)


def generation_fingerprint(model_file: Path, features_dir: Path, cfg: SamplingConfig) -> str:
    """What a split's generated mels depend on: the model's bytes, the features and the sampling settings."""
    h = hashlib.sha256()
    h.update(hashlib.sha256(model_file.read_bytes()).digest())
    h.update(content_hash([features_dir]).encode())
    h.update(json.dumps(to_dict(cfg), sort_keys=True).encode())
    return h.hexdigest()[:16]


def sampling_config(params: Mapping[str, Any]) -> SamplingConfig:
    return parse(SamplingConfig, section(params, "generate_mels"), "generate_mels")


def mels_dir(params: Mapping[str, Any]) -> Path:
    """``outputs/mels/<dataset>``: the contract with stage 2."""
    return output_dir("mels", dataset(params, "binaural").name)


def generate_all(params: Mapping[str, Any], model_file: Path) -> dict[str, int]:
    """``generate_mels``: every split of the binaural features; returns clips per split."""
    data = dataset(params, "binaural")
    cfg = sampling_config(params)
    model, scheduler, _ = load_model(model_file, data.features / "train", pick_device("auto"))
    counts = {}
    for split in SPLITS:
        split_dir = data.features / split
        if not (split_dir / "meta.json").is_file():
            continue
        fingerprint = generation_fingerprint(model_file, split_dir, cfg)
        counts[split] = generate_split(model, scheduler, split_dir, mels_dir(params) / split, cfg, fingerprint)
    return counts


# --- scoring ------------------------------------------------------------------------------------------


def _level_db(log_mel: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Energy level in dB of mel magnitudes ``exp(log_mel)`` summed over ``dims``."""
    return 10 / math.log(10) * torch.logsumexp(2 * log_mel.double(), dim=dims)


def mel_metrics(generated: Tensor, truth: Tensor) -> dict[str, float]:
    """Scores of one clip's generated L / R log-mel ``[2, F, T]`` against the ground truth ``[2, F, T]``.

    ``CROP`` frames are dropped at each end first. ``mel_rmse``: root-mean-square difference of the
    log-mels (natural-log units, both ears). ``band_ild_error_db``: mean over mel bands of the absolute
    error of the band's L - R level difference (dB, energy of the band over the clip).
    ``broadband_ild_db`` and ``truth_broadband_ild_db``: L - R level difference of the whole clip;
    ``sign_agreement``: 1 when their signs agree (a zero difference agrees with nothing).
    """
    g, r = generated[..., CROP:-CROP].double(), truth[..., CROP:-CROP].double()
    band_g = _level_db(g[0], (-1,)) - _level_db(g[1], (-1,))
    band_r = _level_db(r[0], (-1,)) - _level_db(r[1], (-1,))
    bb_g = (_level_db(g[0], (-2, -1)) - _level_db(g[1], (-2, -1))).item()
    bb_r = (_level_db(r[0], (-2, -1)) - _level_db(r[1], (-2, -1))).item()
    return {
        "mel_rmse": (g - r).pow(2).mean().sqrt().item(),
        "band_ild_error_db": (band_g - band_r).abs().mean().item(),
        "broadband_ild_db": bb_g,
        "truth_broadband_ild_db": bb_r,
        "sign_agreement": float(np.sign(bb_g) == np.sign(bb_r) and bb_g != 0),
    }


SCORED = ("mel_rmse", "band_ild_error_db", "sign_agreement")


def score_generated(features_split: Path, mels_split: Path) -> pd.DataFrame:
    """Per-clip :func:`mel_metrics` of the generated mels and of the mono copy, with each clip's azimuth."""
    reader = ShardReader(features_split)
    index = reader.index()
    generated = GeneratedMels(mels_split)
    if generated.index["sample_id"].tolist() != index["sample_id"].tolist():
        raise DiffusionInputError(
            f"{mels_split}: its clips are not those of {features_split} (another dataset or split); rerun generate_mels"
        )
    gen = generated.all()
    truth = reader.arrays()["mel"]
    if gen.shape[-2:] != truth.shape[-2:]:
        raise DiffusionInputError(f"{mels_split}: mels of {gen.shape[-2:]}, the ground truth has {truth.shape[-2:]}")
    rows = []
    for i, sid in enumerate(index["sample_id"]):
        t = torch.from_numpy(np.array(truth[i]))
        mono = t[:1].expand(2, -1, -1)
        row = (
            {"sample_id": sid, "azimuth_deg": float(index["azimuth_deg"][i])}
            if "azimuth_deg" in index
            else {"sample_id": sid}
        )
        row.update({f"generated_{k}": v for k, v in mel_metrics(torch.from_numpy(gen[i]), t[1:]).items()})
        row.update({f"mono_{k}": v for k, v in mel_metrics(mono, t[1:]).items() if k in SCORED})
        rows.append(row)
    return pd.DataFrame(rows)


def summarize(per_clip: pd.DataFrame) -> dict[str, float]:
    """Means over clips of both methods, and the sign agreement of the clips far off centre."""
    out: dict[str, float] = {}
    for method in ("generated", "mono"):
        for k in SCORED:
            out[f"{method}_{k}"] = float(per_clip[f"{method}_{k}"].mean())
    if "azimuth_deg" in per_clip:
        off = per_clip[per_clip["azimuth_deg"].abs() > OFF_CENTRE_DEG]
        out["n_off_centre"] = len(off)
        for method in ("generated", "mono"):
            out[f"{method}_sign_agreement_off_centre"] = (
                float(off[f"{method}_sign_agreement"].mean()) if len(off) else float("nan")
            )
    return out


# --- figures -----------------------------------------------------------------------------------------


@torch.no_grad()
def save_figures(
    model: nn.Module,
    scheduler: DDIMScheduler,
    split_dir: Path,
    out_dir: Path,
    n_examples: int,
    cfg: SamplingConfig,
    stem: str = "",
    generated: np.ndarray | None = None,
) -> list[Path]:
    """``<stem>examples.png``: mono, L and R (truth and generated) and L - R of a few clips of a split.

    ``generated`` (all clips of the split) is drawn as given; otherwise the clips are generated.
    """
    reader = ShardReader(split_dir)
    arrays, ids = reader.arrays(), reader.index()["sample_id"].tolist()
    pick = example_indices(len(ids), n_examples)
    mel = torch.from_numpy(np.asarray(arrays["mel"][pick])).float()
    if generated is None:
        frame = torch.from_numpy(np.asarray(arrays["frame"][pick]))
        positions = torch.from_numpy(np.asarray(arrays["positions"][pick]))
        gen = generate_clips(model, scheduler, mel, frame, positions, [ids[i] for i in pick], cfg).numpy()
    else:
        gen = generated[pick]
    examples = [
        {"name": ids[i], "mono": m[0].numpy(), "truth": m[1:].numpy(), "generated": g}
        for i, m, g in zip(pick, mel, gen, strict=True)
    ]
    path = out_dir / f"{stem}examples.png"
    plots.mel_examples(path, examples)
    return [path]


# --- the family -------------------------------------------------------------------------------------


class DiffusionFamily:
    """DiffBinaural stage 1 as the generic stages and ``blab tune`` see it."""

    registry = REGISTRY
    dataset_slot = "binaural"
    higher_is_better = frozenset({"sign_agreement"})

    def train(
        self,
        params: Mapping[str, Any],
        name: str,
        p: ModelParams,
        ckpt_dir: Path,
        on_epoch_end: EpochCallback | None,
        figure_dir: Path | None,
    ) -> tuple[TrainResult, dict[str, Any]]:
        data = dataset(params, self.dataset_slot)
        return train_diffusion(name, p, data.features, ckpt_dir, on_epoch_end, figure_dir)

    def loss_context(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def evaluate(self, params: Mapping[str, Any], name: str, model_file: Path, out_dir: Path) -> dict[str, Any]:
        """``evaluate_mels``: the test split's generated mels against the truth and the mono copy."""
        data = dataset(params, self.dataset_slot)
        card = load_model_file(model_file)["card"]
        per_clip = score_generated(data.features / "test", mels_dir(params) / "test")
        summary = summarize(per_clip)
        with atomic_path(out_dir / "per_clip.csv") as tmp:
            per_clip.to_csv(tmp, index=False)
        files = [
            write_metrics(
                out_dir,
                name,
                summary,
                split="test",
                convention="mel",
                convention_description=(
                    f"log-mel of the features, {CROP} frames cropped at each end; ILD in dB of mel energy; "
                    f"off centre: main source more than {OFF_CENTRE_DEG:g} degrees from the camera axis"
                ),
                n_clips=len(per_clip),
                n_parameters=card["n_parameters"],
                train_seconds=card.get("train_seconds", 0.0),
            ),
            out_dir / "per_clip.csv",
        ]
        n_examples = int(section(params, "evaluate.n_examples"))
        generated = GeneratedMels(mels_dir(params) / "test").all()
        files += save_figures(
            None, None, data.features / "test", out_dir / "figures", n_examples, None, generated=generated
        )
        return {"metrics": summary, "files": files}

    def sampling_objective(self, params: Mapping[str, Any]) -> Objective:
        """The inference-time study (``blab tune diffusion``): sampling settings of the trained model,
        scored on the validation clips' mel RMSE; nothing is retrained."""
        data = dataset(params, self.dataset_slot)
        base = to_dict(sampling_config(params))
        model_file = model_dir("diffusion", REGISTRY.names[0]) / "model.pt"
        model, scheduler, _ = load_model(model_file, data.features / "train", pick_device("auto"))
        reader = ShardReader(data.features / "val")
        arrays, ids = reader.arrays(), reader.index()["sample_id"].tolist()
        mel, frame, positions = (torch.from_numpy(np.asarray(arrays[k])) for k in ("mel", "frame", "positions"))

        def objective(values: dict[str, Any], report: Any) -> float:
            cfg = parse(SamplingConfig, {**base, **values}, "generate_mels")
            gen = generate_clips(model, scheduler, mel, frame, positions, ids, cfg)
            scores = [mel_metrics(g, m[1:]) for g, m in zip(gen, mel.float(), strict=True)]
            metrics = {k: float(np.mean([c[k] for c in scores])) for k in SCORED}
            report(0, metrics["mel_rmse"], metrics)
            return metrics["mel_rmse"]

        return objective


FAMILY = DiffusionFamily()
