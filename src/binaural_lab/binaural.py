"""The binaural-generation family, part 1: the mono copy and the STFT-domain binauralizers.

A method turns the mono clip and the frame (and depth map) of a scene into a left / right pair. The
learned ones (:data:`REGISTRY`: ``mono2binaural``, ``depth_infused``) work as Gao & Grauman's
2.5D Visual Sound does, on the STFT of the feature shards (16 kHz, n_fft 512, hop 160, win 400):

- the network sees the mix ``L + R`` (twice the mono STFT) and predicts the ``L - R`` STFT;
- training crops of ``binauralize.crop_seconds`` (0.63 s: 64 frames) are drawn at random from each
  clip, RMS-normalised: mix and target are divided by the root-mean-square magnitude of the mix crop
  (the STFT is linear, so this is the waveform normalisation up to a constant factor);
- inference slides the same window over the whole clip with a ``hop_seconds`` hop (0.05 s: 5
  frames), the last window ending at the clip's end, and averages the overlapping predictions
  (:func:`window_starts`, :func:`stitch`);
- the predicted difference goes back to a 16 kHz waveform (inverse STFT), is resampled to the
  dataset's rate and combined with the mono clip: ``L = mono + diff / 2``, ``R = mono - diff / 2``.
  The output keeps the full band of the mono; the difference is band-limited to 8 kHz.

``mono`` (the family's baseline) copies the mono clip to both ears. Every method writes a WAV per
clip of every split to ``outputs/binaural/<method>/<split>/<sample_id>.wav`` and is scored on the
test split in both metric conventions (:mod:`binaural_lab.metrics.binaural`) against the dataset's
binaural files. During training the validation metrics are the Gao metrics of the 16 kHz signals
(the ground truth rebuilt exactly from the stored STFT), without the round trip through the
dataset's rate.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from binaural_lab import plots
from binaural_lab.audio.io import read_audio, write_audio
from binaural_lab.audio.stft import istft_features, resample
from binaural_lab.config import UserError, param, parse, to_dict
from binaural_lab.data.datasets import DatasetConfig, dataset
from binaural_lab.data.manifest import SPLITS, load_manifest
from binaural_lab.data.shards import ShardDataset, ShardReader
from binaural_lab.family import (
    ComparisonSpec,
    ModelEntry,
    ModelParams,
    Registry,
    count_parameters,
    example_indices,
    load_model_file,
    loss_weight_metrics,
    write_metrics,
)
from binaural_lab.losses.binaural import DifferenceLoss, DifferenceLossConfig
from binaural_lab.metrics.binaural import CONVENTIONS, GAO, clip_metrics, score_files
from binaural_lab.models.depth_infused import DepthInfusedBinaural, DepthInfusedConfig, check_attention_memory
from binaural_lab.models.mono2binaural import Mono2Binaural, Mono2BinauralConfig
from binaural_lab.paths import output_dir
from binaural_lab.stage import section
from binaural_lab.training import Trainer, TrainResult, content_hash
from binaural_lab.training.loop import EpochCallback, pick_device, seed_everything

MODALITY_FLAGS = {
    "image": {"model.use_image": True},
    "no_image": {"model.use_image": False},
    "depth": {"model.use_depth": True},
    "no_depth": {"model.use_depth": False},
}

REGISTRY = Registry(
    "binaural",
    {
        "mono2binaural": ModelEntry(Mono2BinauralConfig, Mono2Binaural, DifferenceLossConfig, DifferenceLoss),
        "depth_infused": ModelEntry(
            DepthInfusedConfig,
            DepthInfusedBinaural,
            DifferenceLossConfig,
            DifferenceLoss,
            memory_check=check_attention_memory,
            variants=MODALITY_FLAGS,  # the modality ablation of Parida et al., Table 1
        ),
    },
)

BASELINE = "mono"
HIGHER_IS_BETTER = frozenset({"snr"})
COMPARISON = ComparisonSpec(
    title="Binaural generation: test split",
    metrics=("stft", "env", "mag", "phase", "snr", "mel_rmse", "iacc", "ild", "itd"),
    key="stft",
    baseline=BASELINE,
    higher_is_better=HIGHER_IS_BETTER,
)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # frames enter the visual encoders as torchvision's ResNets expect
IMAGENET_STD = (0.229, 0.224, 0.225)
STFT_KEYS = {"stft": "stft", "frame": "frame", "depth": "depth"}


class BinauralizeError(UserError, ValueError):
    """Clips or settings the binauralizers cannot work with."""


@dataclass
class BinauralizeConfig:
    """The ``binauralize`` section: windows of the STFT-domain methods, depth scale, examples."""

    crop_seconds: float = param(0.63, gt=0, doc="training crops and inference windows (Gao & Grauman: 0.63 s)")
    hop_seconds: float = param(0.05, gt=0, doc="hop of the sliding inference window (0.05 s)")
    depth_scale_m: float = param(10.0, gt=0, doc="depth maps enter the network as metres / depth_scale_m")
    example_wavs: int = param(3, ge=0, doc="test clips of each method logged to MLflow as WAV")


@dataclass(frozen=True)
class StftSetup:
    """The STFT of the feature shards, and the clip it was taken from."""

    sample_rate: int  # of the STFT (16 kHz)
    n_fft: int
    hop: int
    win: int
    audio_rate: int  # of the dataset's audio files
    clip_samples: int  # at audio_rate

    @classmethod
    def of_split(cls, split_dir: Path) -> StftSetup:
        cfg = ShardReader(split_dir).meta["config"]
        return cls(
            cfg["stft_sample_rate"],
            cfg["stft_n_fft"],
            cfg["stft_hop"],
            cfg["stft_win"],
            cfg["mel"]["sample_rate"],
            cfg["clip_samples"],
        )

    @property
    def samples(self) -> int:
        """Samples of a clip at the STFT's rate (the resampler's length rule)."""
        return math.ceil(self.clip_samples * self.sample_rate / self.audio_rate)

    def frames(self, seconds: float) -> int:
        """STFT frames (centred) of a crop of ``seconds``."""
        return 1 + round(seconds * self.sample_rate) // self.hop

    def hop_frames(self, seconds: float) -> int:
        return max(1, round(seconds * self.sample_rate / self.hop))


def imagenet_normalize(frame: Tensor) -> Tensor:
    """uint8 RGB frames ``[B, 3, H, W]`` as torchvision's ResNets expect them: [0, 1], then ImageNet mean and std."""
    mean = frame.new_tensor(IMAGENET_MEAN, dtype=torch.float32)[:, None, None]
    std = frame.new_tensor(IMAGENET_STD, dtype=torch.float32)[:, None, None]
    return (frame.float() / 255 - mean) / std


def window_starts(n_frames: int, window: int, hop: int) -> list[int]:
    """First frames of the sliding windows: every ``hop`` frames, the last one ending at the clip's end."""
    if n_frames <= window:
        return [0]
    starts = list(range(0, n_frames - window + 1, hop))
    if starts[-1] != n_frames - window:
        starts.append(n_frames - window)
    return starts


def stitch(windows: Tensor, starts: Sequence[int], n_frames: int, crop: int = 0) -> Tensor:
    """Average the predictions ``[N, ..., W]`` of windows starting at ``starts`` into ``[..., n_frames]``.

    ``crop`` frames at each inner end of a window (one that another window continues) are left out.
    """
    width = windows.shape[-1]
    total = windows.new_zeros((*windows.shape[1:-1], max(n_frames, width)))
    count = windows.new_zeros(total.shape[-1])
    for pred, start in zip(windows, starts, strict=True):
        weight = windows.new_ones(width)
        if crop and start > 0:
            weight[:crop] = 0
        if crop and start + width < n_frames:
            weight[width - crop :] = 0
        total[..., start : start + width] += pred * weight
        count[start : start + width] += weight
    return (total / count.clamp_min(1))[..., :n_frames]


def sliding_prediction(
    predict: Callable[[Tensor, Sequence[int]], Tensor], mix: Tensor, window: int, hop: int
) -> Tensor:
    """``predict(windows [N, ..., window], starts)`` over a whole clip ``[..., T]``, averaged to ``[..., T]``.

    A clip shorter than the window is zero-padded at its end for the one window and cut back.
    """
    n_frames = mix.shape[-1]
    if n_frames < window:
        mix = torch.nn.functional.pad(mix, (0, window - n_frames))
    starts = window_starts(n_frames, window, hop)
    windows = torch.stack([mix[..., s : s + window] for s in starts])
    return stitch(predict(windows, starts), starts, n_frames)


def rms_scale(mix: Tensor) -> Tensor:
    """``1 / RMS`` of each complex spectrogram ``[B, 2, F, T]``, as ``[B, 1, 1, 1]`` (silence: 1)."""
    rms = mix.float().pow(2).sum(1).mean((-2, -1)).sqrt()
    return torch.where(rms > 1e-8, 1 / rms.clamp_min(1e-8), torch.ones_like(rms))[:, None, None, None]


WINDOW_BATCH = 64  # sliding windows per forward pass at inference


def _expand(visual: Tensor | Mapping[str, Tensor], n: int) -> Tensor | dict[str, Tensor]:
    """A batch-of-one visual encoding (a tensor or a dict of them) repeated ``n`` times, without copies."""
    if torch.is_tensor(visual):
        return visual.expand(n, *visual.shape[1:])
    return {k: v.expand(n, *v.shape[1:]) for k, v in visual.items()}


class BinauralTask:
    """Training crops, sliding inference and validation of an STFT-domain binauralizer."""

    def __init__(self, loss_fn: Any, stft: StftSetup, crop_frames: int, hop_frames: int, depth_scale: float):
        self.loss_fn = loss_fn
        self.stft = stft
        self.crop_frames = crop_frames
        self.hop_frames = hop_frames
        self.depth_scale = depth_scale

    def conditions(self, frame: Tensor, depth: Tensor) -> dict[str, Tensor]:
        """The network's visual inputs from uint8 frames ``[B, 3, H, W]`` and depth maps ``[B, H, W]``."""
        return {"image": imagenet_normalize(frame), "depth": depth.float().unsqueeze(1) / self.depth_scale}

    def predict_windows(self, model: nn.Module, mix: Tensor, **inputs: Any) -> Tensor:
        """The L - R STFT of mix windows ``[N, 2, F, W]``: the network runs on RMS-normalised windows.

        ``inputs`` are the network's other inputs (``image`` and ``depth``, or their ``visual`` encoding).
        """
        scale = rms_scale(mix)
        return model(mix * scale, **inputs)["diff"].float() / scale

    def training_loss(self, model: nn.Module, batch: dict[str, Tensor], epoch: int) -> tuple[Tensor, dict]:
        stft = batch["stft"].float()  # [B, 2 (mono, L - R), 2 (re, im), F, T]
        n_frames = stft.shape[-1]
        offsets = torch.randint(0, n_frames - self.crop_frames + 1, (stft.shape[0],)).tolist()
        crops = torch.stack([clip[..., o : o + self.crop_frames] for clip, o in zip(stft, offsets, strict=True)])
        mix, diff = 2 * crops[:, 0], crops[:, 1]
        scale = rms_scale(mix)
        out = model(mix * scale, **self.conditions(batch["frame"], batch["depth"]))
        return self.loss_fn(out["diff"], diff * scale, mix * scale, epoch)

    @torch.no_grad()
    def predict_difference(self, model: nn.Module, stft: Tensor, frame: Tensor, depth: Tensor) -> Tensor:
        """The predicted L - R STFT ``[B, 2, F, T]`` of whole clips (stft ``[B, 2, 2, F, T]``), sliding.

        The frame and depth map of a clip are encoded once and shared by its windows, which go
        through the network ``WINDOW_BATCH`` at a time.
        """
        out = []
        for clip, f, d in zip(stft.float(), frame, depth, strict=True):
            visual = model.encode(**self.conditions(f[None], d[None]))

            def predict(windows: Tensor, starts: Sequence[int], visual: Any = visual) -> Tensor:
                parts = []
                for i in range(0, len(windows), WINDOW_BATCH):
                    chunk = windows[i : i + WINDOW_BATCH]
                    shared = _expand(visual, len(chunk))
                    parts.append(self.predict_windows(model, chunk, visual=shared))
                return torch.cat(parts)

            out.append(sliding_prediction(predict, 2 * clip[0], self.crop_frames, self.hop_frames))
        return torch.stack(out)

    def to_audio(self, spec: Tensor) -> Tensor:
        """Audio at the STFT's rate ``[..., samples]`` (one clip's length) of STFTs ``[..., 2, F, T]``."""
        s = self.stft
        return istft_features(spec.float().cpu(), s.n_fft, s.hop, s.win, length=s.samples)

    def waveforms(self, mono: Tensor, diff: Tensor) -> Tensor:
        """Left / right at the STFT's rate ``[B, 2, samples]`` from mono and L - R STFTs ``[B, 2, F, T]``."""
        return self.to_audio(torch.stack((mono + diff / 2, mono - diff / 2), dim=1))

    def evaluate(self, model: nn.Module, loader: DataLoader, epoch: int) -> dict[str, float]:
        """Mean Gao metrics of whole validation clips at the STFT's rate."""
        device = next(model.parameters()).device
        per_clip = []
        for batch in loader:
            stft = batch["stft"].to(device)
            pred = self.predict_difference(model, stft, batch["frame"].to(device), batch["depth"].to(device))
            gt_wave = self.waveforms(stft[:, 0], stft[:, 1]).numpy()
            pred_wave = self.waveforms(stft[:, 0], pred).numpy()
            for p, g in zip(pred_wave, gt_wave, strict=True):
                per_clip.append(clip_metrics(p, g, self.stft.sample_rate, GAO))
        return {k: float(np.mean([m[k] for m in per_clip])) for k in CONVENTIONS[GAO]}


def binauralize_config(params: Mapping[str, Any]) -> BinauralizeConfig:
    return parse(BinauralizeConfig, section(params, "binauralize"), "binauralize")


def make_task(stft: StftSetup, cfg: BinauralizeConfig, loss_fn: Any) -> BinauralTask:
    crop = stft.frames(cfg.crop_seconds)
    return BinauralTask(loss_fn, stft, crop, stft.hop_frames(cfg.hop_seconds), cfg.depth_scale_m)


def train_binauralizer(
    name: str,
    p: ModelParams,
    features_dir: Path,
    cfg: BinauralizeConfig,
    ckpt_dir: Path,
    on_epoch_end: EpochCallback | None = None,
    figure_dir: Path | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train ``name`` on ``features_dir/train`` (validating on ``val``); returns the result and its card."""
    train_dir, val_dir = features_dir / "train", features_dir / "val"
    train_set, val_set = ShardDataset(train_dir, STFT_KEYS), ShardDataset(val_dir, STFT_KEYS)
    stft = StftSetup.of_split(train_dir)
    reader = ShardReader(train_dir)
    n_freq, n_frames = reader.meta["arrays"]["stft"]["shape"][-2:]
    frame_size = tuple(reader.meta["arrays"]["frame"]["shape"][-2:])
    crop = stft.frames(cfg.crop_seconds)
    if crop > n_frames:
        raise BinauralizeError(
            f"binauralize.crop_seconds: {cfg.crop_seconds} s crops need {crop} STFT frames, but the clips of "
            f"{features_dir} have {n_frames}; shorten the crop or make longer clips"
        )
    REGISTRY.check_memory(name, p.model, p.train.batch_size, n_freq=n_freq, n_frames=crop, frame_size=frame_size)
    seed_everything(p.train.seed)  # the initial weights depend on the seed alone
    model = REGISTRY.build_model(name, p.model)
    loss_fn = REGISTRY.build_loss(name, p.loss, p.train.epochs)
    task = make_task(stft, cfg, loss_fn)
    card = {
        "name": name,
        "params": to_dict(p),
        "stft": asdict(stft),
        "binauralize": to_dict(cfg),
        "n_parameters": count_parameters(model),
    }

    def epoch_end(epoch: int, train_m: dict[str, float], val_m: dict[str, float], net: nn.Module) -> None:
        if on_epoch_end is not None:
            on_epoch_end(epoch, {**train_m, **loss_weight_metrics(loss_fn, epoch)}, val_m, net)
        if figure_dir is not None and p.figure_every and (epoch + 1) % p.figure_every == 0:
            save_figures(net, task, val_dir, figure_dir, p.figure_examples, stem=f"epoch{epoch + 1:03d}_")

    fingerprint = {"card": card, "data": content_hash([train_dir, val_dir])}
    result = Trainer(p.train, ckpt_dir, fingerprint=fingerprint).fit(model, train_set, val_set, task, epoch_end)
    return result, card


def load_model(path: Path, device: torch.device | None = None) -> tuple[nn.Module, BinauralTask, dict[str, Any]]:
    """Rebuild a trained binauralizer (eval mode, on ``device``) and its task from ``model.pt``."""
    blob = load_model_file(path)
    card = blob["card"]
    p = REGISTRY.params(card["name"], card["params"])
    model = REGISTRY.build_model(card["name"], p.model)
    model.load_state_dict(blob["state_dict"])
    model.to(device or torch.device("cpu")).eval()
    loss_fn = REGISTRY.build_loss(card["name"], p.loss, p.train.epochs)
    cfg = parse(BinauralizeConfig, card["binauralize"], f"{path}: binauralize")
    return model, make_task(StftSetup(**card["stft"]), cfg, loss_fn), card


# --- WAV files of every split, their scores, figures -----------------------------------------------


def render_split(
    model: nn.Module | None, task: BinauralTask, data: DatasetConfig, mono_paths: pd.Series, split: str, out_dir: Path
) -> list[Path]:
    """Write ``out_dir/<sample_id>.wav`` (left, right at the dataset's rate) for every clip of ``split``.

    ``model`` None is the mono copy; ``mono_paths`` maps sample ids to the mono files of the raw
    dataset. Returns the files in the split's order.
    """
    reader = ShardReader(data.features / split)
    ids = reader.index()["sample_id"].tolist()
    arrays = reader.arrays()
    n = int(reader.meta["config"]["clip_samples"])
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    written = []
    for i, sample_id in enumerate(tqdm(ids, desc=f"{out_dir.parent.name} {split}", leave=False)):
        mono, _ = read_audio(data.raw / mono_paths[sample_id], expect_sr=data.sample_rate, expect_channels=1)
        mono = mono[0, :n]
        half = np.zeros_like(mono)
        if model is not None:
            stft = torch.from_numpy(np.asarray(arrays["stft"][i : i + 1])).to(device)
            frame = torch.from_numpy(np.asarray(arrays["frame"][i : i + 1])).to(device)
            depth = torch.from_numpy(np.asarray(arrays["depth"][i : i + 1])).to(device)
            wave = task.to_audio(task.predict_difference(model, stft, frame, depth)[0]).numpy()
            wave = resample(wave, task.stft.sample_rate, data.sample_rate)[: len(mono)]
            half[: len(wave)] = wave / 2
        path = out_dir / f"{sample_id}.wav"
        write_audio(path, np.stack((mono + half, mono - half)), data.sample_rate)
        written.append(path)
    return written


def render_and_score(
    model: nn.Module | None, task: BinauralTask, data: DatasetConfig, name: str
) -> tuple[dict[str, list[Path]], dict[str, dict]]:
    """WAVs of every split in ``outputs/binaural/<name>/<split>/`` (``{split: files}``), and both
    conventions' scores of the test WAVs against the dataset's binaural files."""
    manifest = load_manifest(data.prepared / "manifest.parquet").set_index("sample_id")
    root = output_dir("binaural", name)
    wavs = {split: render_split(model, task, data, manifest["mono_path"], split, root / split) for split in SPLITS}
    pairs = [(f, data.raw / manifest.at[f.stem, "binaural_path"]) for f in wavs["test"]]
    return wavs, {conv: score_files(pairs, conv, progress=True) for conv in CONVENTIONS}


def report(
    name: str, scores: Mapping[str, dict], out_dir: Path, n_parameters: int, train_seconds: float
) -> tuple[dict[str, float], list[Path]]:
    """``metrics_<convention>.json`` per convention; the flat metrics ``<convention>_<key>`` and the files."""
    flat: dict[str, float] = {}
    files = []
    for conv, score in scores.items():
        files.append(
            write_metrics(
                out_dir,
                name,
                score["mean"],
                split="test",
                convention=conv,
                convention_description=score["convention_description"],
                n_clips=score["n"],
                n_infinite=score["n_infinite"],
                n_parameters=n_parameters,
                train_seconds=train_seconds,
                filename=f"metrics_{conv}.json",
            )
        )
        flat.update({f"{conv}_{k}": v for k, v in score["mean"].items()})
    return flat, files


@torch.no_grad()
def save_figures(
    model: nn.Module | None,
    task: BinauralTask,
    split_dir: Path,
    out_dir: Path,
    n_examples: int,
    stem: str = "",
    label: str = "prediction",
) -> list[Path]:
    """Spectrograms of L, R and L - R of a few clips of a split (ground truth and prediction, at the
    STFT's rate) in ``<stem>examples.png``; for attention models also the image and depth attention
    of every decoder level, ``<stem>attention_<sample_id>.png``. ``model`` None draws the mono copy."""
    reader = ShardReader(split_dir)
    arrays, ids = reader.arrays(), reader.index()["sample_id"].tolist()
    pick = example_indices(len(ids), n_examples)
    device = next(model.parameters()).device if model is not None else torch.device("cpu")
    stft = torch.from_numpy(np.asarray(arrays["stft"][pick])).to(device).float()
    frame = torch.from_numpy(np.asarray(arrays["frame"][pick])).to(device)
    depth = torch.from_numpy(np.asarray(arrays["depth"][pick])).to(device)
    was_training = model.training if model is not None else False
    if model is not None:
        model.eval()
        diff = task.predict_difference(model, stft, frame, depth)
    else:
        diff = torch.zeros_like(stft[:, 1])
    gt = task.waveforms(stft[:, 0], stft[:, 1]).numpy()
    pred = task.waveforms(stft[:, 0], diff).numpy()
    examples = [{"name": ids[i], "gt": g, "preds": {label: p}} for i, g, p in zip(pick, gt, pred, strict=True)]
    written = [out_dir / f"{stem}examples.png"]
    plots.binaural_examples(written[0], examples, task.stft.sample_rate)
    if isinstance(model, DepthInfusedBinaural) and model.modalities:
        for j, i in enumerate(pick):
            window = 2 * stft[j : j + 1, 0, ..., : task.crop_frames]
            cond = task.conditions(frame[j : j + 1], depth[j : j + 1])
            out = model(window * rms_scale(window), **cond, return_attention=True)
            maps = {
                m: {level: a[0].float().cpu().numpy() for level, a in levels.items()}
                for m, levels in out["attention"].items()
            }
            written.append(out_dir / f"{stem}attention_{ids[i]}.png")
            plots.binaural_attention(
                written[-1], np.asarray(arrays["frame"][i]), np.asarray(arrays["depth"][i]), maps, title=ids[i]
            )
    if model is not None:
        model.train(was_training)
    return written


class BinauralFamily:
    """The binaural-generation family as the generic stages and ``blab tune`` see it."""

    registry = REGISTRY
    dataset_slot = "binaural"
    higher_is_better = HIGHER_IS_BETTER
    comparison = COMPARISON

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
        cfg = binauralize_config(params)
        return train_binauralizer(name, p, data.features, cfg, ckpt_dir, on_epoch_end, figure_dir)

    def loss_context(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def _finish(
        self,
        params: Mapping[str, Any],
        name: str,
        model: nn.Module | None,
        task: BinauralTask,
        out_dir: Path,
        n_parameters: int,
        train_seconds: float,
    ) -> dict[str, Any]:
        data = dataset(params, self.dataset_slot)
        wavs, scores = render_and_score(model, task, data, name)
        flat, files = report(name, scores, out_dir, n_parameters, train_seconds)
        n_examples = int(section(params, "evaluate.n_examples"))
        label = "mono copy" if model is None else name
        files += save_figures(model, task, data.features / "test", out_dir / "figures", n_examples, label=label)
        cfg = binauralize_config(params)
        if cfg.example_wavs:
            files += [wavs["test"][i] for i in example_indices(len(wavs["test"]), cfg.example_wavs)]
        return {"metrics": flat, "files": files}

    def evaluate(self, params: Mapping[str, Any], name: str, model_file: Path, out_dir: Path) -> dict[str, Any]:
        """WAVs of every split, both conventions' test metrics, figures; returns the metrics and files."""
        model, task, card = load_model(model_file, pick_device("auto"))
        return self._finish(params, name, model, task, out_dir, card["n_parameters"], card["train_seconds"])

    def evaluate_rendered(self, params: Mapping[str, Any], name: str, out_dir: Path) -> dict[str, Any]:
        """Score a method whose test WAVs another stage rendered (``vocode``): ``outputs/binaural/<name>/test/``
        with its ``card.json``, as they are."""
        data = dataset(params, self.dataset_slot)
        root = output_dir("binaural", name)
        if not (root / "card.json").is_file():
            raise BinauralizeError(
                f"{root / 'card.json'}: no rendered method {name!r}; run the stage that renders it (vocode)"
            )
        card = json.loads((root / "card.json").read_text())
        manifest = load_manifest(data.prepared / "manifest.parquet").set_index("sample_id")
        ids = ShardReader(data.features / "test").index()["sample_id"]
        pairs = [(root / "test" / f"{sid}.wav", data.raw / manifest.at[sid, "binaural_path"]) for sid in ids]
        scores = {conv: score_files(pairs, conv, progress=True) for conv in CONVENTIONS}
        flat, files = report(name, scores, out_dir, card["n_parameters"], card["train_seconds"])
        n_wavs = binauralize_config(params).example_wavs
        files += [pairs[i][0] for i in example_indices(len(pairs), n_wavs)] if n_wavs else []
        return {"metrics": flat, "files": files}

    def baseline(self, params: Mapping[str, Any], out_dir: Path) -> dict[str, Any]:
        """The mono copy in both ears, rendered and scored as the learned methods are."""
        data = dataset(params, self.dataset_slot)
        stft = StftSetup.of_split(data.features / "test")
        task = make_task(stft, binauralize_config(params), loss_fn=None)
        return self._finish(params, BASELINE, None, task, out_dir, 0, 0.0)


FAMILY = BinauralFamily()
