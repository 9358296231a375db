"""Depth-infused binauralization (Parida et al., "Depth infused binaural audio generation using
hierarchical cross-modal attention"; no public code): the audio UNet of Mono2Binaural whose five
decoder levels each attend to image features and to depth features.

Audio path: as :mod:`binaural_lab.models.mono2binaural` (mono STFT ``[B, 2, F, T]`` zero-padded to
multiples of 32, five strided 4x4 convolutions, five transposed ones with skips, a mask
``sigmoid * 2 - 1`` in [-1, 1], ``diff = mask * mono`` as complex numbers), without the tiled
visual vector. Visual path: the frame ``[B, 3, H, W]`` goes through a ResNet-18 and the depth map
``[B, 1, H, W]`` (normalised by the caller, e.g. metres / max depth, 0 = invalid) through a second
ResNet-18 of its own with one input channel (:mod:`binaural_lab.models.visual`; from scratch by
default, a local checkpoint by ``weights``). The paper uses transformer backbones; ``base_channels``
sets how large these CNNs are.

Attention (:class:`CrossModalAttention`): before each of the five up-convolutions (decoder level 1
= the bottleneck, level 5 = half the input size), the audio features there, ``C`` channels at every
time-frequency position, attend to every position of each visual feature map. The visual map, with
two coordinate channels appended (row and column in [-1, 1]: transformer features carry position
embeddings, CNN features hardly any, and where a source is in the frame is what tells left from
right), is aligned to ``C`` channels by a 1x1 convolution and a GELU, one per level and modality.
The weights are ``softmax(cos(audio, aligned) / temperature)`` over the visual positions, and the
attended features (weights applied to the aligned features) are concatenated to the audio features
before the up-convolution. ``use_image`` and ``use_depth`` remove a modality with its encoder and
attention (the modality ablation of the paper's Table 1 is params only); with both off the network
is the plain audio UNet.

An attention map holds ``audio positions x visual positions`` numbers per level, modality and
sample; :func:`check_attention_memory` refuses a configuration over ``attention_memory_budget_mb``
before anything is computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from binaural_lab.config import param
from binaural_lab.models.binaural_attention import AttentionMemoryError
from binaural_lab.models.mono2binaural import (
    NUM_LEVELS,
    PAD_MULTIPLE,
    AudioEncoder,
    check_spectrogram,
    decoder_blocks,
    decoder_inputs,
    level_channels,
    mask_and_difference,
    pad_spectrogram,
)
from binaural_lab.models.visual import ResNet18Encoder, VisualConfig, feature_size

MODALITIES = ("image", "depth")
IN_CHANNELS = {"image": 3, "depth": 1}


@dataclass
class DepthInfusedConfig:
    ngf: int = param(64, ge=1, doc="channels of the first audio level (64 as Mono2Binaural)")
    use_image: bool = param(True, doc="attend to the frame's ResNet-18 features")
    use_depth: bool = param(True, doc="attend to the depth map's ResNet-18 features")
    image_encoder: VisualConfig = field(default_factory=VisualConfig)
    depth_encoder: VisualConfig = field(default_factory=VisualConfig)
    temperature: float = param(0.1, gt=0, doc="softmax temperature of the cosine similarities (which lie in [-1, 1])")
    attention_memory_budget_mb: float = param(
        4096.0, gt=0, doc="largest estimated size of all attention maps of one batch, in MiB"
    )


def modalities(cfg: DepthInfusedConfig) -> list[str]:
    """The visual modalities the configuration uses."""
    return [m for m in MODALITIES if getattr(cfg, f"use_{m}")]


def level_grid(n_freq: int, n_frames: int, level: int) -> tuple[int, int]:
    """Audio positions (frequency, time) at decoder ``level`` (1 = bottleneck) of the padded input."""
    scale = 2 ** (NUM_LEVELS + 1 - level)
    return (n_freq + -n_freq % PAD_MULTIPLE) // scale, (n_frames + -n_frames % PAD_MULTIPLE) // scale


def attention_memory_mb(
    cfg: DepthInfusedConfig,
    batch_size: int,
    n_freq: int,
    n_frames: int,
    frame_size: tuple[int, int],
    depth_size: tuple[int, int] | None = None,
    bytes_per_el: int = 4,
) -> dict[str, dict[int, float]]:
    """Estimated attention-map memory in MiB, ``{modality: {level: B * audio * visual positions * bytes}}``.

    ``frame_size`` is the (height, width) of the frame, ``depth_size`` that of the depth map
    (default: the same).
    """
    sizes = {"image": frame_size, "depth": depth_size or frame_size}
    out: dict[str, dict[int, float]] = {}
    for m in modalities(cfg):
        visual = feature_size(sizes[m][0]) * feature_size(sizes[m][1])
        out[m] = {
            level: batch_size * math.prod(level_grid(n_freq, n_frames, level)) * visual * bytes_per_el / 2**20
            for level in range(1, NUM_LEVELS + 1)
        }
    return out


def check_attention_memory(
    cfg: DepthInfusedConfig,
    batch_size: int,
    n_freq: int,
    n_frames: int,
    frame_size: tuple[int, int],
    depth_size: tuple[int, int] | None = None,
    bytes_per_el: int = 4,
    where: str = "models.depth_infused",
) -> None:
    """Raise :class:`AttentionMemoryError` when all attention maps of a batch exceed the budget.

    The estimate counts one map per level and modality, as the explicit softmax holds it; a
    training step holds a few times more (logits, weights and their gradients). The error names the
    budget key, the most expensive level and its sizes.
    """
    per_level = attention_memory_mb(cfg, batch_size, n_freq, n_frames, frame_size, depth_size, bytes_per_el)
    total = sum(mb for levels in per_level.values() for mb in levels.values())
    if total <= cfg.attention_memory_budget_mb:
        return
    m, level = max(((m, k) for m in per_level for k in per_level[m]), key=lambda mk: per_level[mk[0]][mk[1]])
    rows, cols = level_grid(n_freq, n_frames, level)
    height, width = (depth_size or frame_size) if m == "depth" else frame_size
    raise AttentionMemoryError(
        f"{where}.attention_memory_budget_mb: the {m} attention at decoder level {level} ({rows} x {cols} "
        f"audio positions x {feature_size(height)} x {feature_size(width)} {m} positions) needs about "
        f"{per_level[m][level]:.0f} MiB for a batch of {batch_size} with {n_freq} x {n_frames} STFT inputs "
        f"({total:.0f} MiB in all), over the budget of {cfg.attention_memory_budget_mb:g} MiB; lower the batch "
        "size, the crop length or the frame size, or raise the budget"
    )


def cosine_attention(
    query: Tensor, key: Tensor, value: Tensor, temperature: float, return_attention: bool = False
) -> tuple[Tensor, Tensor | None]:
    """``softmax(cos(query, key) / temperature) @ value`` over ``[B, N, C]`` tensors, and the map if asked.

    The similarity is the cosine, so scaling a query or a key changes nothing.
    """
    q, k = F.normalize(query, dim=-1), F.normalize(key, dim=-1)
    if return_attention:
        attn = torch.softmax(q @ k.transpose(1, 2) / temperature, dim=-1)
        return attn @ value, attn
    # same math; lets CUDA pick a fused kernel that never stores the map
    return F.scaled_dot_product_attention(q, k, value, scale=1 / temperature), None


def with_coordinates(x: Tensor) -> Tensor:
    """Append two channels to ``[B, C, h, w]``: the row and the column, each in [-1, 1]."""
    b, _, h, w = x.shape
    rows = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
    cols = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
    return torch.cat([x, rows, cols], dim=1)


class CrossModalAttention(nn.Module):
    """Audio positions attend to the positions of one visual feature map at one decoder level.

    The visual map (with coordinate channels) is aligned to the audio channels by a 1x1 convolution
    and a GELU; keys and values are the aligned features, queries the audio features.
    """

    def __init__(self, audio_channels: int, visual_channels: int, temperature: float):
        super().__init__()
        self.align = nn.Sequential(nn.Conv2d(visual_channels + 2, audio_channels, 1), nn.GELU())
        self.temperature = temperature

    def forward(self, audio: Tensor, visual: Tensor, return_attention: bool = False) -> tuple[Tensor, Tensor | None]:
        """Attended features ``[B, C, h, w]`` and, when asked, the map ``[B, h, w, gh, gw]``."""
        b, c, h, w = audio.shape
        aligned = self.align(with_coordinates(visual))
        kv = aligned.flatten(2).transpose(1, 2)  # [B, gh * gw, C]
        out, attn = cosine_attention(audio.flatten(2).transpose(1, 2), kv, kv, self.temperature, return_attention)
        if attn is not None:
            attn = attn.reshape(b, h, w, *aligned.shape[-2:])
        return out.transpose(1, 2).reshape(b, c, h, w), attn


class DepthInfusedBinaural(nn.Module):
    """``forward(mono, image=None, depth=None, return_attention=False)``: ``{"mask", "diff"}``, ``[B, 2, F, T]``.

    ``mono`` is the mono STFT ``[B, 2 (re, im), F, T]``, ``image`` ``[B, 3, H, W]`` (needed when
    ``use_image``), ``depth`` ``[B, 1, H', W']`` (needed when ``use_depth``); an input whose modality
    is off is ignored. ``mask`` is in [-1, 1] and ``diff = mask * mono`` (complex), both float32.
    With ``return_attention=True`` the dict adds ``"attention"``: ``{modality: {level: [B, h, w, gh,
    gw]}}`` for the modalities in use, level 1 (bottleneck) to 5, audio positions ``h x w`` of the
    padded input at that level, visual positions ``gh x gw``; each map sums to 1 over ``gh x gw``.
    ``encode(image, depth)`` gives the visual feature maps alone; ``forward(mono, visual=...)`` reuses
    them (without the memory check, which needs the frame sizes), so the windows of one clip share
    one pass of the encoders.
    """

    def __init__(self, cfg: DepthInfusedConfig):
        super().__init__()
        self.cfg = cfg
        self.modalities = modalities(cfg)
        channels = level_channels(cfg.ngf)
        audio_in = decoder_inputs(channels)
        self.encoder = AudioEncoder(channels)
        configs = {"image": cfg.image_encoder, "depth": cfg.depth_encoder}
        self.visual = nn.ModuleDict(
            {m: ResNet18Encoder(configs[m], IN_CHANNELS[m], where=f"{m}_encoder") for m in self.modalities}
        )
        self.attention = nn.ModuleDict(
            {
                m: nn.ModuleList(CrossModalAttention(c, self.visual[m].out_channels, cfg.temperature) for c in audio_in)
                for m in self.modalities
            }
        )
        self.decoder = decoder_blocks(channels, [len(self.modalities) * c for c in audio_in])

    def encode(self, image: Tensor | None = None, depth: Tensor | None = None) -> dict[str, Tensor]:
        """The feature maps ``{modality: [B, C, gh, gw]}`` of the modalities in use."""
        given = {"image": image, "depth": depth}
        missing = [m for m in self.modalities if given[m] is None]
        if missing:
            raise ValueError(f"use_{missing[0]} is true, so forward needs the {missing[0]} input")
        return {m: self.visual[m](given[m]) for m in self.modalities}

    def forward(
        self,
        mono: Tensor,
        image: Tensor | None = None,
        depth: Tensor | None = None,
        return_attention: bool = False,
        visual: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor | dict[str, dict[int, Tensor]]]:
        check_spectrogram(mono)
        if visual is None:
            given = {m: x for m, x in (("image", image), ("depth", depth)) if x is not None and m in self.modalities}
            if given:
                sizes = {m: tuple(x.shape[-2:]) for m, x in given.items()}
                frame_size = sizes.get("image", sizes.get("depth"))
                check_attention_memory(self.cfg, mono.shape[0], *mono.shape[-2:], frame_size, sizes.get("depth"))
            visual = self.encode(image, depth)
        feats = self.encoder(pad_spectrogram(mono))
        maps: dict[str, dict[int, Tensor]] = {m: {} for m in visual}
        y = feats[-1]
        for level, (block, skip) in enumerate(zip(self.decoder, [*reversed(feats[:-1]), None], strict=True), 1):
            attended = []
            for m, v in visual.items():
                out, attn = self.attention[m][level - 1](y, v, return_attention)
                attended.append(out)
                if attn is not None:
                    maps[m][level] = attn
            y = block(torch.cat([y, *attended], dim=1))
            if skip is not None:
                y = torch.cat([y, skip], dim=1)
        out: dict[str, Tensor | dict[str, dict[int, Tensor]]] = dict(mask_and_difference(y, mono))
        if return_attention:
            out["attention"] = maps
        return out
