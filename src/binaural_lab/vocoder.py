"""The vocoder family: DiffBinaural stage 2, a BigVGAN that turns binaural log-mels into audio.

Two models of the family's registry train through the one loop (:mod:`binaural_lab.training`), each
step a least-squares GAN step of the generator (:mod:`binaural_lab.models.bigvgan`) against the
multi-period and the multi-resolution STFT (or, ``discriminator.kind: cqtd``, sub-band CQT)
discriminators (:mod:`binaural_lab.models.discriminators`) with
the losses of :mod:`binaural_lab.losses.vocoder`:

- ``bigvgan`` (stage ``pretrain_vocoder``) learns from the ground-truth mels of the train split; the
  left and right ears are two mono samples. A step cuts, per sample, ``segment_frames`` mel frames
  at a random offset ``o`` and the audio samples ``[o * hop, (o + segment_frames) * hop)``: with
  the project's mel (padding ``(n_fft - hop) / 2``, no centring) frame ``k`` of a clip is centred on
  samples ``k * hop .. (k + 1) * hop``, so mel and audio stay aligned.
- ``bigvgan_finetuned`` (stage ``finetune_vocoder``) starts from ``bigvgan``'s generator and
  discriminators (``model.init_from``; the architecture comes from that model's card) and trains
  with scheduled sampling: for each sample a Bernoulli draw feeds the mel that stage 1 generated
  (``outputs/mels/<dataset>/train``) instead of the ground truth, with the probability of the
  piecewise-linear schedule ``loss.feed_generated`` at that epoch. Offsets then stay ``CROP``
  frames away from each end of the clip, where stage 1 stitched no window.

Validation vocodes whole validation clips from their ground-truth mels (``val_mel_l1``: mean
absolute log-mel difference of the resynthesis) and, when stage-1 mels are given, from those
(``val_mel_l1_generated``, against the ground truth).

``vocode_test`` (stage ``vocode``) writes the test split as stereo WAVs in
``outputs/binaural/<method>/test/`` for the methods of :data:`METHODS`, each with a ``card.json``;
``evaluate_binaural@<method>`` scores them like every other binaural method.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from binaural_lab import plots
from binaural_lab.audio.io import read_audio, write_audio
from binaural_lab.audio.mel import MelConfig, mel_basis, mel_spectrogram
from binaural_lab.config import ParamError, UserError, param, parse, to_dict
from binaural_lab.data.datasets import DatasetConfig, dataset
from binaural_lab.data.manifest import load_manifest
from binaural_lab.data.shards import ShardReader
from binaural_lab.diffbinaural import CROP, GeneratedMels, mels_dir
from binaural_lab.family import (
    ModelEntry,
    ModelParams,
    Registry,
    count_parameters,
    example_indices,
    load_model_file,
    loss_weight_metrics,
)
from binaural_lab.losses.vocoder import VocoderLossConfig, discriminator_loss, generator_loss
from binaural_lab.models.bigvgan import NAMED_CONFIGS, BigVGAN, BigVGANConfig, load_checkpoint, named_config
from binaural_lab.models.discriminators import DiscriminatorConfig, Discriminators
from binaural_lab.paths import atomic_path, model_dir, output_dir, write_json
from binaural_lab.stage import section
from binaural_lab.training import Trainer, TrainResult, content_hash
from binaural_lab.training.loop import EpochCallback, pick_device, seed_everything

PRETRAINED, FINETUNED = "bigvgan", "bigvgan_finetuned"
# what `vocode` writes to outputs/binaural/<method>/test/: (mels, vocoder) and a description
METHODS = {
    "vocoder_truth": ("truth", PRETRAINED, "ground-truth mels through the pretrained BigVGAN (the vocoder's ceiling)"),
    "diffbinaural_pretrained": ("generated", PRETRAINED, "stage-1 mels through the pretrained BigVGAN"),
    "diffbinaural": ("generated", FINETUNED, "stage-1 mels through the scheduled-sampling BigVGAN (the chain)"),
    "griffin_lim": ("truth", None, "ground-truth mels through Griffin-Lim (the classic reference)"),
}


class VocoderInputError(UserError, ValueError):
    """Mels, audio or a checkpoint that do not fit the vocoder."""


@dataclass
class VocoderConfig:
    """The ``model`` block of a vocoder: generator, discriminators, where the weights start."""

    generator: str = param("small", choices=tuple(NAMED_CONFIGS), doc="a named BigVGAN config")
    generator_overrides: dict[str, Any] = param({}, doc="keys of the BigVGAN config that differ from the named one")
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    init_checkpoint: str | None = param(
        None, doc="a local bigvgan_generator.pt ({'generator': state_dict}, NVIDIA's or ours) the generator starts from"
    )
    init_from: str | None = param(
        None, doc="a model of this family whose generator and discriminators (and model block) this one starts from"
    )

    def validate(self, where: str) -> None:
        try:
            self.generator_config()
        except ParamError as exc:
            raise ParamError(f"{where}.generator_overrides: {exc}") from exc

    def generator_config(self) -> BigVGANConfig:
        return named_config(self.generator, **self.generator_overrides)


class Vocoder(nn.Module):
    """The generator and its discriminators, trained together."""

    def __init__(self, cfg: VocoderConfig):
        super().__init__()
        self.generator = BigVGAN(cfg.generator_config())
        self.discriminator = Discriminators(cfg.discriminator)


@dataclass
class VocoderLoss(VocoderLossConfig):
    """The ``loss`` block: the GAN and mel terms, the training segments and the scheduled sampling."""

    segment_frames: int = param(32, ge=4, doc="mel frames per training segment (times hop = audio samples)")
    feed_generated: list[list[float]] = param(
        [], doc="scheduled sampling: [epoch, probability] points, linear between, constant outside; [] = truth only"
    )

    def validate(self, where: str) -> None:
        super().validate(where)
        epochs = [p[0] for p in self.feed_generated]
        if any(len(p) != 2 or not 0 <= p[1] <= 1 for p in self.feed_generated):
            raise ParamError(
                f"{where}.feed_generated: expected [epoch, probability in 0..1] pairs, got {self.feed_generated}"
            )
        if epochs != sorted(epochs) or any(e < 0 for e in epochs):
            raise ParamError(f"{where}.feed_generated: epochs must be >= 0 and increasing, got {epochs}")

    def weights(self, epoch: int) -> dict[str, float]:
        """The lambdas in force (constant over the run)."""
        return {k: getattr(self, k) for k in ("lambda_adv", "lambda_fm", "lambda_mel", "lambda_mel_multiscale")}

    def feed_probability(self, epoch: int) -> float:
        """Probability of feeding the generated mel at ``epoch`` (from 0) under the schedule."""
        points = self.feed_generated
        if not points:
            return 0.0
        return float(np.interp(epoch, [p[0] for p in points], [p[1] for p in points]))


def _vocoder_loss(cfg: VocoderLoss, epochs: int) -> VocoderLoss:
    return cfg


REGISTRY = Registry(
    "vocoder",
    {name: ModelEntry(VocoderConfig, Vocoder, VocoderLoss, _vocoder_loss) for name in (PRETRAINED, FINETUNED)},
)


# --- data -------------------------------------------------------------------------------------------


def mel_config(features_split: Path) -> MelConfig:
    """The mel settings the features were computed with (the vocoder learns exactly those)."""
    return MelConfig(**ShardReader(features_split).meta["config"]["mel"])


def load_clips(data: DatasetConfig, split: str, generated: Path | None = None) -> dict[str, Tensor]:
    """The ``split``'s clips as mono samples (left ears, then right ears): ``audio [2N, T * hop]``,
    ``mel [2N, n_mels, T]`` and, from a ``generated`` folder of stage 1, ``generated [2N, n_mels, T]``."""
    split_dir = data.features / split
    reader = ShardReader(split_dir)
    ids = reader.index()["sample_id"].tolist()
    mel = torch.from_numpy(np.array(reader.open("mel")[:, 1:], dtype=np.float32))  # L, R
    hop = mel_config(split_dir).hop
    n = mel.shape[-1] * hop
    manifest = load_manifest(data.prepared / "manifest.parquet").set_index("sample_id")
    audio = np.zeros((len(ids), 2, n), dtype=np.float32)
    for i, sid in enumerate(ids):
        path = data.raw / manifest.at[sid, "binaural_path"]
        wave, _ = read_audio(path, expect_sr=data.sample_rate, expect_channels=2)
        if wave.shape[1] < n:
            raise VocoderInputError(f"{path}: {wave.shape[1]} samples, its mel of {mel.shape[-1]} frames needs {n}")
        audio[i] = wave[:, :n]
    out = {"audio": torch.from_numpy(audio).flatten(0, 1), "mel": mel.flatten(0, 1)}
    if generated is not None:
        gen = GeneratedMels(generated)
        if gen.index["sample_id"].tolist() != ids:
            raise VocoderInputError(f"{generated}: its clips are not those of {split_dir}; rerun generate_mels")
        g = torch.from_numpy(gen.all())
        if g.shape != mel.shape:
            raise VocoderInputError(
                f"{generated}: generated mels of {list(g.shape[1:])} (ears, bands, frames), the ground truth in "
                f"{split_dir} has {list(mel.shape[1:])}; rerun generate_mels"
            )
        out["generated"] = g.flatten(0, 1)
    return out


class ClipSet(Dataset):
    """Mono samples of :func:`load_clips`, as dicts of tensors."""

    def __init__(self, arrays: Mapping[str, Tensor]):
        self.arrays = dict(arrays)

    def __len__(self) -> int:
        return len(self.arrays["mel"])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.arrays.items()}


def check_bands(generator: BigVGAN, mel: Tensor, where: str) -> None:
    if mel.shape[-2] != generator.cfg.num_mels:
        raise VocoderInputError(
            f"{where}: mels of {mel.shape[-2]} bands, the generator takes {generator.cfg.num_mels} (num_mels)"
        )


def cut_segments(mel: Tensor, audio: Tensor, offsets: Sequence[int], frames: int, hop: int) -> tuple[Tensor, Tensor]:
    """Aligned training segments: ``mel[b, :, o : o + frames]`` and ``audio[b, o * hop : (o + frames) * hop]``."""
    m = torch.stack([x[:, o : o + frames] for x, o in zip(mel, offsets, strict=True)])
    a = torch.stack([x[o * hop : (o + frames) * hop] for x, o in zip(audio, offsets, strict=True)])
    return m, a[:, None]


# --- training ---------------------------------------------------------------------------------------


class VocoderTask:
    """One GAN step per batch (discriminators, then generator) and the resynthesis validation."""

    def __init__(self, loss: VocoderLoss, mel: MelConfig):
        self.loss = loss
        self.mel = mel

    def training_step(self, ctx: Any) -> dict[str, float]:
        gen, disc = ctx.models["generator"], ctx.models["discriminator"]
        mel, audio = ctx.batch["mel"].float(), ctx.batch["audio"].float()
        n, frames = len(mel), self.loss.segment_frames
        p = self.loss.feed_probability(ctx.epoch)
        parts = {"feed_probability": p}
        if "generated" in ctx.batch:
            fed = torch.rand(n, device=mel.device) < p
            mel = torch.where(fed[:, None, None], ctx.batch["generated"].float(), mel)
            lo, hi = CROP, mel.shape[-1] - CROP - frames
            parts["fed_generated"] = fed.float().mean().item()
        else:
            lo, hi = 0, mel.shape[-1] - frames
        if hi < lo:
            raise VocoderInputError(
                f"clips of {mel.shape[-1]} mel frames are too short for segments of {frames} (loss.segment_frames)"
            )
        offsets = torch.randint(lo, hi + 1, (n,)).tolist()
        seg, real = cut_segments(mel, audio, offsets, frames, self.mel.hop)
        fake = gen(seg)
        out = disc(real, fake.detach())
        d_loss, _, _ = discriminator_loss(out.real_logits, out.fake_logits)
        ctx.optimize("discriminator", d_loss)
        out = disc(real, fake)
        g_loss, terms = generator_loss(out.fake_logits, out.real_fmaps, out.fake_fmaps, fake, real, self.loss, self.mel)
        ctx.optimize("generator", g_loss)
        return {**parts, "d_loss": d_loss.item(), "g_loss": g_loss.item(), **terms}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, loader: DataLoader, epoch: int) -> dict[str, float]:
        sums: dict[str, float] = {}
        n = 0
        for batch in loader:
            mel = batch["mel"].float().to(next(model.parameters()).device)
            sources = {"mel_l1": mel}
            if "generated" in batch:
                sources["mel_l1_generated"] = batch["generated"].float().to(mel.device)
            for key, source in sources.items():
                resynth = mel_spectrogram(model(source)[:, 0].float(), self.mel)
                sums[key] = sums.get(key, 0.0) + (resynth - mel).abs().mean().item() * len(mel)
            n += len(mel)
        return {k: v / max(n, 1) for k, v in sums.items()}


def _resolve(name: str, p: ModelParams) -> ModelParams:
    """``p`` with the model block (and the unset loss keys) of the ``model.init_from`` model's card."""
    init_from = p.model.get("init_from")
    if not init_from:
        return p
    where = REGISTRY.where(name)
    extra = sorted(set(p.model) - {"init_from"})
    if extra:
        raise ParamError(f"{where}.model: {extra} come from {init_from!r}'s card (init_from); remove them")
    card = _card(model_dir("vocoder", init_from) / "model.pt")
    block = {**to_dict(p), "model": {**card["params"]["model"], "init_from": init_from}}
    block["loss"] = {**card["params"]["loss"], **p.loss}
    return REGISTRY.params(name, block)


def _card(path: Path) -> dict[str, Any]:
    card = load_model_file(path).get("card", {})
    if card.get("name") not in REGISTRY.names:
        raise VocoderInputError(f"{path}: a checkpoint of {card.get('name')!r}, not of a vocoder ({REGISTRY.names})")
    return card


def train_vocoder(
    params: Mapping[str, Any],
    name: str,
    p: ModelParams,
    ckpt_dir: Path,
    on_epoch_end: EpochCallback | None = None,
    figure_dir: Path | None = None,
) -> tuple[TrainResult, dict[str, Any]]:
    """Train vocoder ``name`` (see the module doc); writes ``discriminator.pt`` beside the checkpoints."""
    data = dataset(params, "binaural")
    p = _resolve(name, p)
    cfg = REGISTRY.model_config(name, p.model)
    loss = REGISTRY.build_loss(name, p.loss, p.train.epochs)
    mel = mel_config(data.features / "train")
    if mel.sample_rate != data.sample_rate:
        raise VocoderInputError(
            f"datasets.binaural.sample_rate {data.sample_rate} differs from its mels' {mel.sample_rate}"
        )
    disc = cfg.discriminator
    if disc.kind == "cqtd" and disc.cqtd_sample_rate != mel.sample_rate:
        raise ParamError(
            f"{REGISTRY.where(name)}.model.discriminator.cqtd_sample_rate: {disc.cqtd_sample_rate} Hz, but the mels "
            f"are at {mel.sample_rate} Hz"
        )
    generated = {split: mels_dir(params) / split for split in ("train", "val")} if loss.feed_generated else {}
    for split, folder in generated.items():
        if not (folder / "meta.json").is_file():
            raise VocoderInputError(
                f"{folder}: no generated {split} mels for {REGISTRY.where(name)}.loss.feed_generated; run generate_mels"
            )
    train_set = ClipSet(load_clips(data, "train", generated.get("train")))
    val_set = ClipSet(load_clips(data, "val", generated.get("val")))
    seed_everything(p.train.seed)
    vocoder = REGISTRY.build_model(name, p.model)
    check_bands(vocoder.generator, train_set.arrays["mel"], f"{data.features / 'train'}")
    if cfg.init_from:
        start = model_dir("vocoder", cfg.init_from)
        vocoder.generator.load_state_dict(load_model_file(start / "model.pt")["state_dict"])
        vocoder.discriminator.load_state_dict(torch.load(start / "discriminator.pt", weights_only=True))
    elif cfg.init_checkpoint:
        load_checkpoint(vocoder.generator, cfg.init_checkpoint)
    card = {
        "name": name,
        "params": to_dict(p),
        "mel": to_dict(mel),
        "n_parameters": count_parameters(vocoder.generator),
        "n_parameters_discriminator": count_parameters(vocoder.discriminator),
    }
    task = VocoderTask(loss, mel)

    def epoch_end(epoch: int, train_m: dict[str, float], val_m: dict[str, float], net: nn.Module) -> None:
        train_m.update(loss_weight_metrics(loss, epoch))
        if on_epoch_end is not None:
            on_epoch_end(epoch, train_m, val_m, net)
        last = epoch + 1 == p.train.epochs
        if figure_dir is not None and (last or (p.figure_every and (epoch + 1) % p.figure_every == 0)):
            save_figures(net, val_set, mel, figure_dir / f"epoch{epoch + 1:03d}_", p.figure_examples)

    sources = [data.features / "train", data.features / "val", *generated.values()]
    if cfg.init_from:
        sources.append(model_dir("vocoder", cfg.init_from) / "model.pt")
    fingerprint = {"card": card, "data": content_hash(sources)}
    models = {"generator": vocoder.generator, "discriminator": vocoder.discriminator}
    result = Trainer(p.train, ckpt_dir, fingerprint=fingerprint).fit(models, train_set, val_set, task, epoch_end)
    curve = [row["val_mel_l1"] for row in result.validations]
    if curve:  # how much the vocoder learned: the first validation against the last
        card["summary"] = {
            "val_mel_l1_first": curve[0],
            "val_mel_l1_last": curve[-1],
            "val_mel_l1_drop": 1 - curve[-1] / curve[0],
            "first_validation_step": result.validations[0]["step"],
        }
    if result.is_main:
        with atomic_path(ckpt_dir / "discriminator.pt") as tmp:
            torch.save(result.models["discriminator"].state_dict(), tmp)
    return result, card


@torch.no_grad()
def save_figures(generator: nn.Module, clips: ClipSet, mel: MelConfig, stem: Path, n_examples: int) -> list[Path]:
    """``<stem>examples.png``: ground-truth against vocoded log-mels (L and R) of a few validation clips, from
    the mels the vocoder is trained on (the generated ones when given); and ``<stem><clip>.wav``, the audio."""
    was_training = generator.training
    generator.eval()
    n_clips = len(clips) // 2
    source_key = "generated" if "generated" in clips.arrays else "mel"
    device = next(generator.parameters()).device
    examples, written = [], []
    for i in example_indices(n_clips, n_examples):
        truth = torch.stack([clips.arrays["mel"][i], clips.arrays["mel"][n_clips + i]])
        source = torch.stack([clips.arrays[source_key][i], clips.arrays[source_key][n_clips + i]])
        wave = generator(source.to(device))[:, 0].float().cpu()
        examples.append(
            {
                "name": f"val clip {i}, from {'stage-1' if source_key == 'generated' else 'true'} mels",
                "mono": source.mean(0).numpy(),
                "truth": truth.numpy(),
                "generated": mel_spectrogram(wave, mel).numpy(),
            }
        )
        written.append(stem.parent / f"{stem.name}clip{i}.wav")
        write_audio(written[-1], wave.clamp(-1, 1).numpy(), mel.sample_rate)
    generator.train(was_training)
    written.insert(0, stem.parent / f"{stem.name}examples.png")
    plots.mel_examples(written[0], examples)
    return written


def load_generator(path: Path, device: torch.device | None = None) -> tuple[BigVGAN, dict[str, Any]]:
    """A trained generator for inference (weight norm removed) and its card."""
    card = _card(path)
    p = REGISTRY.params(card["name"], card["params"])
    generator = BigVGAN(REGISTRY.model_config(card["name"], p.model).generator_config())
    try:
        generator.load_state_dict(load_model_file(path)["state_dict"])
    except RuntimeError as exc:
        raise VocoderInputError(f"{path}: its weights do not fit the configuration in its card ({exc})") from exc
    return generator.remove_weight_norm().to(device or torch.device("cpu")).eval(), card


# --- vocode: outputs/binaural/<method>/test/ -----------------------------------------------------------


@dataclass
class VocodeConfig:
    """The ``vocode`` block."""

    griffin_lim_iters: int = param(32, ge=1, doc="Griffin-Lim iterations")
    griffin_lim_momentum: float = param(0.99, ge=0, lt=1, doc="fast Griffin-Lim momentum")
    batch_size: int = param(8, ge=1, doc="mels per generator call")


def griffin_lim(log_mel: Tensor, mel: MelConfig, cfg: VocodeConfig) -> Tensor:
    """Audio ``[B, T * hop]`` from log-mels ``[B, n_mels, T]``: the minimum-norm linear magnitude of the
    mel basis (pseudo-inverse, clamped at 0), then fast Griffin-Lim from seeded random phases.

    A centred STFT puts frame ``k`` at sample ``k * hop``, the project's mel centres it at
    ``k * hop + hop / 2``: the ``(T - 1) * hop`` samples of Griffin-Lim are delayed by ``hop / 2``
    (zeros at both ends) to line up with the mel.
    """
    basis = mel_basis(mel, log_mel.device, torch.float64)
    mag = (torch.linalg.pinv(basis) @ log_mel.double().exp()).clamp(min=0).float()
    window = torch.hann_window(mel.win, device=log_mel.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # torchaudio draws the initial phases from the global generator
        wave = AF.griffinlim(
            mag,
            window,
            mel.n_fft,
            mel.hop,
            mel.win,
            power=1.0,
            n_iter=cfg.griffin_lim_iters,
            momentum=cfg.griffin_lim_momentum,
            length=(log_mel.shape[-1] - 1) * mel.hop,
            rand_init=True,
        )
    return torch.nn.functional.pad(wave, (mel.hop // 2, mel.hop // 2))


def vocode_config(params: Mapping[str, Any]) -> VocodeConfig:
    return parse(VocodeConfig, section(params, "vocode"), "vocode")


@torch.no_grad()
def vocode_test(params: Mapping[str, Any]) -> dict[str, list[Path]]:
    """``vocode``: every method of :data:`METHODS` on the test split; returns the WAVs per method."""
    data = dataset(params, "binaural")
    cfg = vocode_config(params)
    device = pick_device("auto")
    split_dir = data.features / "test"
    mel = mel_config(split_dir)
    ids = ShardReader(split_dir).index()["sample_id"].tolist()
    clips = load_clips(data, "test", mels_dir(params) / "test")
    vocoders = {
        name: load_generator(model_dir("vocoder", name) / "model.pt", device) for name in (PRETRAINED, FINETUNED)
    }
    written: dict[str, list[Path]] = {}
    for method, (source, vocoder, description) in METHODS.items():
        mels = clips["mel" if source == "truth" else "generated"]
        waves = []
        for a in tqdm(range(0, len(mels), cfg.batch_size), desc=method, leave=False):
            part = mels[a : a + cfg.batch_size].to(device)
            if vocoder is None:
                waves.append(griffin_lim(part, mel, cfg).cpu())
            else:
                check_bands(vocoders[vocoder][0], part, f"{split_dir} ({source} mels)")
                waves.append(vocoders[vocoder][0](part)[:, 0].float().cpu())
        stereo = torch.cat(waves).unflatten(0, (2, len(ids))).transpose(0, 1).numpy()  # [N, 2 (L, R), samples]
        out = output_dir("binaural", method) / "test"
        with atomic_path(out) as tmp:
            tmp.mkdir(parents=True)
            for sid, wave in zip(ids, stereo, strict=True):
                write_audio(tmp / f"{sid}.wav", wave, data.sample_rate)
        card = vocoders[vocoder][1] if vocoder is not None else None
        write_json(
            output_dir("binaural", method) / "card.json",
            {
                "method": method,
                "description": description,
                "mels": source,
                "vocoder": vocoder or "griffin_lim",
                "n_parameters": card["n_parameters"] if card else 0,
                "train_seconds": card.get("train_seconds", 0.0) if card else 0.0,
            },
        )
        written[method] = sorted(out.glob("*.wav"))
    return written


@torch.no_grad()
def save_vocoded_figures(params: Mapping[str, Any], wavs: Mapping[str, list[Path]], out_dir: Path) -> list[Path]:
    """``<method>_examples.png``: the log-mels of a few vocoded test clips (L, R) beside the ground truth."""
    data = dataset(params, "binaural")
    split_dir = data.features / "test"
    reader = ShardReader(split_dir)
    mel_cfg = mel_config(split_dir)
    pick = example_indices(len(reader.index()), int(section(params, "evaluate.n_examples")))
    truth = np.asarray(reader.open("mel")[pick], dtype=np.float32)
    written = []
    for method, files in wavs.items():
        examples = []
        for i, t in zip(pick, truth, strict=True):
            wave, _ = read_audio(files[i], expect_sr=data.sample_rate, expect_channels=2)
            out = mel_spectrogram(torch.from_numpy(wave), mel_cfg).numpy()[..., : t.shape[-1]]
            examples.append({"name": f"{method}: {files[i].stem}", "mono": t[0], "truth": t[1:], "generated": out})
        path = out_dir / f"{method}_examples.png"
        plots.mel_examples(path, examples)
        written.append(path)
    return written


# --- the family -------------------------------------------------------------------------------------


class VocoderFamily:
    """DiffBinaural stage 2 as the generic train stage and ``blab tune`` see it."""

    registry = REGISTRY
    dataset_slot = "binaural"
    higher_is_better: frozenset[str] = frozenset()

    def train(
        self,
        params: Mapping[str, Any],
        name: str,
        p: ModelParams,
        ckpt_dir: Path,
        on_epoch_end: EpochCallback | None,
        figure_dir: Path | None,
    ) -> tuple[TrainResult, dict[str, Any]]:
        return train_vocoder(params, name, p, ckpt_dir, on_epoch_end, figure_dir)

    def loss_context(self, params: Mapping[str, Any]) -> dict[str, Any]:
        return {}


FAMILY = VocoderFamily()
