"""DiffBinaural's stage-1 network: a conditional UNet that predicts the noise of a binaural mel.

``DiffBinaural(cfg)(x, t, mono, context)`` maps the noisy left / right mel window ``x [B, 2, 80, W]``
at diffusion step ``t [B]`` to the predicted noise, given the mono mel window ``mono [B, 1, 80, W]``
(concatenated to ``x`` as an extra input channel) and the visual tokens ``context [B, N, C]`` of
:meth:`DiffBinaural.encode` (a frame through a ResNet-18, plus the positional encoding of the sound
sources' pixel positions). Layout, after Okano et al. 2025 (a ``denoising-diffusion-pytorch`` UNet):

- a 7x7 input convolution to ``dim`` channels; a sinusoidal embedding of ``t`` through an MLP to
  ``4 * dim``;
- ``len(dim_mults)`` levels of two ResNet blocks (GroupNorm(``groups``), SiLU, the time embedding as
  a per-channel scale and shift), a cross-attention to the visual tokens and a strided downsampling
  (the last level keeps its size); a bottleneck of ResNet block, cross-attention, ResNet block; the
  mirror-image up path with skip connections; a last ResNet block and a 1x1 convolution to 2 channels.

Cross-attention (``heads`` x ``dim_head``) is pre-normalised and residual; a batch row whose
condition is dropped (classifier-free guidance) attends to zero tokens: no condition, only the output bias.
With ``global_condition`` (not in DiffBinaural) one more token summarises the scene: the mean visual
token plus an MLP of the first ``max_sources`` sources' centred (x, y, present), in their listed order
(loudest first in the synthetic scenes). It joins the tokens and, through a second MLP, shifts the
time embedding, so every ResNet block sees where the sources are directly, not only through attention.
The mel frequency and time sizes must be divisible by ``2 ** (len(dim_mults) - 1)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from binaural_lab.config import ParamError, param
from binaural_lab.models.visual import ResNet18Encoder, VisualConfig

MEL_CHANNELS = 2  # left, right
MAX_PIXEL_FREQUENCY = 10_000.0  # the longest wavelength of the sinusoidal position encodings


@dataclass
class DiffBinauralConfig:
    dim: int = param(16, ge=8, doc="channels of the first level (64 or 128 in DiffBinaural)")
    dim_mults: tuple[int, ...] = param((1, 2, 4), ge=1, doc="channel multiplier of each level")
    groups: int = param(8, ge=1, doc="GroupNorm groups in the ResNet blocks")
    heads: int = param(4, ge=1, doc="cross-attention heads")
    dim_head: int = param(32, ge=1, doc="channels per cross-attention head")
    context_dim: int = param(128, ge=8, doc="width of the visual tokens (512 in DiffBinaural)")
    visual: VisualConfig = field(default_factory=lambda: VisualConfig(base_channels=16))
    token_grid: tuple[int, int] = param((4, 4), ge=1, doc="the ResNet feature map is pooled to this many tokens")
    use_positions: bool = param(True, doc="add the encoding of the sources' pixel positions to the tokens")
    n_mels: int = param(80, ge=8, doc="mel bins of the windows (the features' n_mels)")
    global_condition: bool = param(
        False, doc="a summary token (mean token + MLP of the source positions) that also shifts the time embedding"
    )
    max_sources: int = param(4, ge=1, doc="sources read by the summary token's position MLP (the first ones listed)")

    def validate(self, where: str) -> None:
        if not self.dim_mults:
            raise ParamError(f"{where}.dim_mults: expected at least one level")
        bad = [self.dim * m for m in self.dim_mults if (self.dim * m) % self.groups]
        if bad:
            raise ParamError(f"{where}.groups: {self.groups} does not divide the level widths {bad}")
        if self.context_dim % 4:
            raise ParamError(f"{where}.context_dim: {self.context_dim} must be a multiple of 4 (x and y sinusoids)")
        if len(self.token_grid) != 2:
            raise ParamError(f"{where}.token_grid: expected [rows, columns], got {list(self.token_grid)}")

    @property
    def size_multiple(self) -> int:
        """Mel bins and frames must be multiples of this (one halving per level but the last)."""
        return 2 ** (len(self.dim_mults) - 1)


def sinusoids(x: Tensor, width: int) -> Tensor:
    """``[..., width]`` sine and cosine features of the values ``x [...]`` at geometric frequencies."""
    half = width // 2
    freqs = torch.exp(-math.log(MAX_PIXEL_FREQUENCY) * torch.arange(half, device=x.device) / max(half - 1, 1))
    angles = x[..., None].float() * freqs
    return torch.cat((angles.sin(), angles.cos()), dim=-1)


def position_encoding(xy: Tensor, width: int) -> Tensor:
    """2-D encoding ``[..., width]`` of positions ``xy [..., 2]`` in [0, 1]: half the width for x, half for y.

    Positions are scaled to 0..1000 first, so that the fastest sinusoid resolves a thousandth of the frame.
    """
    scaled = xy * 1000.0
    return torch.cat((sinusoids(scaled[..., 0], width // 2), sinusoids(scaled[..., 1], width // 2)), dim=-1)


class ResnetBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and SiLU; the time embedding scales and shifts the first."""

    def __init__(self, c_in: int, c_out: int, time_dim: int, groups: int):
        super().__init__()
        self.time = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * c_out))
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, c_out)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: Tensor, t_emb: Tensor) -> Tensor:
        scale, shift = self.time(t_emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(self.norm1(self.conv1(x)) * (scale + 1) + shift)
        h = F.silu(self.norm2(self.conv2(h)))
        return h + self.skip(x)


class CrossAttention(nn.Module):
    """Pre-normalised residual attention of every time-frequency position to the visual tokens."""

    def __init__(self, channels: int, context_dim: int, heads: int, dim_head: int, groups: int):
        super().__init__()
        self.heads = heads
        inner = heads * dim_head
        self.norm = nn.GroupNorm(groups, channels)
        self.to_q = nn.Conv2d(channels, inner, 1, bias=False)
        self.to_kv = nn.Linear(context_dim, 2 * inner, bias=False)
        self.to_out = nn.Conv2d(inner, channels, 1)

    def forward(self, x: Tensor, context: Tensor) -> Tensor:
        # channel-first throughout: the few tokens are transposed, never the time-frequency map
        b, _, h, w = x.shape
        q = self.to_q(self.norm(x)).view(b, self.heads, -1, h * w)  # [B, heads, d, HW]
        k, v = (z.unflatten(-1, (self.heads, -1)).transpose(1, 2) for z in self.to_kv(context).chunk(2, dim=-1))
        scores = torch.matmul(k, q * q.shape[2] ** -0.5)  # k, v: [B, heads, N, d]; scores [B, heads, N, HW]
        out = torch.matmul(v.transpose(-1, -2), scores.softmax(dim=2))  # [B, heads, d, HW]
        return x + self.to_out(out.reshape(b, -1, h, w))


class DiffBinaural(nn.Module):
    """The noise-predicting UNet with its visual encoder; ``encode`` then ``forward`` (see the module doc)."""

    def __init__(self, cfg: DiffBinauralConfig):
        super().__init__()
        self.cfg = cfg
        dim, time_dim = cfg.dim, 4 * cfg.dim
        widths = [dim * m for m in cfg.dim_mults]
        self.visual = ResNet18Encoder(cfg.visual, where="visual")
        self.to_tokens = nn.Linear(self.visual.out_channels, cfg.context_dim)
        self.time_mlp = nn.Sequential(nn.Linear(dim, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim))
        self.position_mlp, self.condition_mlp = None, None
        if cfg.global_condition:
            c = cfg.context_dim
            self.position_mlp = nn.Sequential(nn.Linear(3 * cfg.max_sources, c), nn.GELU(), nn.Linear(c, c))
            self.condition_mlp = nn.Sequential(nn.Linear(c, time_dim), nn.GELU(), nn.Linear(time_dim, time_dim))
        self.init_conv = nn.Conv2d(MEL_CHANNELS + 1, dim, 7, padding=3)
        self.downs = nn.ModuleList()
        c = dim
        for i, width in enumerate(widths):
            last = i == len(widths) - 1
            nxt = widths[i + 1] if not last else width
            down = nn.Conv2d(width, nxt, 3, padding=1) if last else nn.Conv2d(width, nxt, 4, stride=2, padding=1)
            self.downs.append(self._level(c, width, time_dim, down))
            c = nxt
        self.mid1 = ResnetBlock(c, c, time_dim, cfg.groups)
        self.mid_attn = CrossAttention(c, cfg.context_dim, cfg.heads, cfg.dim_head, cfg.groups)
        self.mid2 = ResnetBlock(c, c, time_dim, cfg.groups)
        self.ups = nn.ModuleList()
        for i, width in reversed(list(enumerate(widths))):
            prev = widths[i - 1] if i > 0 else dim
            up = (
                nn.Conv2d(width, prev, 3, padding=1)
                if i == 0
                else nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(width, prev, 3, padding=1))
            )
            self.ups.append(self._level(c + width, width, time_dim, up, skip=width))
            c = prev
        self.final_block = ResnetBlock(2 * dim, dim, time_dim, cfg.groups)
        self.final_conv = nn.Conv2d(dim, MEL_CHANNELS, 1)
        # per ear and band statistics of what is diffused, set from the training split (loss.target: residual)
        self.register_buffer("target_mean", torch.zeros(MEL_CHANNELS, cfg.n_mels, 1))
        self.register_buffer("target_std", torch.ones(MEL_CHANNELS, cfg.n_mels, 1))

    def _level(self, c_in: int, width: int, time_dim: int, resample: nn.Module, skip: int = 0) -> nn.ModuleDict:
        g = self.cfg.groups
        return nn.ModuleDict(
            {
                "block1": ResnetBlock(c_in, width, time_dim, g),
                "block2": ResnetBlock(width + skip, width, time_dim, g),
                "attn": CrossAttention(width, self.cfg.context_dim, self.cfg.heads, self.cfg.dim_head, g),
                "resample": resample,
            }
        )

    def encode(self, image: Tensor, positions: Tensor | None = None) -> Tensor:
        """Visual tokens ``[B, rows * columns, context_dim]`` of normalised frames ``[B, 3, H, W]``.

        ``positions [B, S, 3]`` holds each source's (x, y, present) with x and y in [0, 1] of the
        frame's width and height; the encodings of the present sources are summed and added to every
        token (nothing is added for a dataset without positions: all ``present`` are 0). With
        ``global_condition`` the summary token comes last (one more token).
        """
        feat = F.adaptive_avg_pool2d(self.visual(image), tuple(self.cfg.token_grid))
        tokens = self.to_tokens(feat.flatten(2).transpose(1, 2))
        use = self.cfg.use_positions and positions is not None
        if use:
            enc = position_encoding(positions[..., :2], self.cfg.context_dim) * positions[..., 2:3]
            tokens = tokens + enc.sum(1, keepdim=True).to(tokens.dtype)
        if self.position_mlp is None:
            return tokens
        summary = tokens.mean(1)
        if use:
            summary = summary + self.position_mlp(self._position_features(positions)).to(tokens.dtype)
        return torch.cat((tokens, summary[:, None]), dim=1)

    def _position_features(self, positions: Tensor) -> Tensor:
        """``[B, 3 * max_sources]``: each of the first sources' (x, y) centred to [-1, 1] and its flag; zeros pad."""
        k = self.cfg.max_sources
        p = positions[:, :k].float()
        p = F.pad(p, (0, 0, 0, k - p.shape[1]))
        present = p[..., 2:3]
        return torch.cat(((p[..., :2] * 2 - 1) * present, present), dim=-1).flatten(1)

    def time_embedding(self, t: Tensor) -> Tensor:
        return self.time_mlp(sinusoids(t.float(), self.cfg.dim))

    def forward(self, x: Tensor, t: Tensor, mono: Tensor, context: Tensor) -> Tensor:
        """The predicted noise ``[B, 2, F, W]`` of ``x`` at steps ``t``, given ``mono`` and ``context``."""
        m = self.cfg.size_multiple
        if x.shape[-2] % m or x.shape[-1] % m:
            raise ValueError(f"mel windows of {tuple(x.shape[-2:])} (bins, frames): both must be multiples of {m}")
        t_emb = self.time_embedding(t)
        if self.condition_mlp is not None:
            t_emb = t_emb + self.condition_mlp(context[:, -1])
        h = self.init_conv(torch.cat((x, mono), dim=1))
        first = h
        skips = []
        for level in self.downs:
            h = level["block1"](h, t_emb)
            skips.append(h)
            h = level["attn"](level["block2"](h, t_emb), context)
            skips.append(h)
            h = level["resample"](h)
        h = self.mid2(self.mid_attn(self.mid1(h, t_emb), context), t_emb)
        for level in self.ups:
            h = level["block1"](torch.cat((h, skips.pop()), dim=1), t_emb)
            h = level["attn"](level["block2"](torch.cat((h, skips.pop()), dim=1), t_emb), context)
            h = level["resample"](h)
        return self.final_conv(self.final_block(torch.cat((h, first), dim=1), t_emb))
