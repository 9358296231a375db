"""Binaural cross-attention depth network: separate ear encoders that attend to each other.

Each ear has its own 5-level encoder (level k works at ``S / 2**(k-1)`` with
``base_channels * (1, 2, 4, 8, 8)[k-1]`` channels: level 1 keeps the input size, every further
level starts with a stride-2 4x4 convolution). After the encoder levels named in
``attention_levels`` the two ears exchange information through :class:`CrossEarAttention`. At every
level a 1x1 convolution fuses ``concat(left, right)`` into one skip connection; a UNet decoder
(transposed 4x4 convolution, concatenation of the skip, 3x3 convolution) goes back to ``S x S``
and a 1x1 head gives ``sigmoid * max_depth`` (in float32, also under bf16 autocast).

Attention over ``N = H * W`` positions holds ``N x N`` maps, so early levels are expensive: level 2
of a 256 x 256 input (128 x 128 positions) needs 1 GiB per sample and direction in fp32.
:func:`check_attention_memory` refuses configurations over ``attention_memory_budget_mb`` before
anything is allocated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from binaural_lab.config import ParamError, param

NUM_LEVELS = 5
CHANNEL_MULTS = (1, 2, 4, 8, 8)  # channels per level, relative to base_channels


@dataclass
class BinauralAttentionConfig:
    base_channels: int = param(64, ge=1, doc="channels of encoder level 1 (32 / 64 / 96 ~ 10 / 40 / 90 M)")
    attention_levels: list[int] = param([2, 3, 4, 5], ge=1, le=NUM_LEVELS, doc="encoder levels with attention")
    attention_memory_budget_mb: float = param(
        4096.0, gt=0, doc="largest estimated size of all attention maps of one batch, in MiB"
    )

    def validate(self, where: str) -> None:
        if len(set(self.attention_levels)) != len(self.attention_levels):
            raise ParamError(f"{where}.attention_levels: {self.attention_levels} repeats a level")


class AttentionMemoryError(ParamError):
    """The attention maps of the configured levels would exceed ``attention_memory_budget_mb``.

    A :class:`ParamError`: the fix is in params.yaml, and it is raised before anything is allocated.
    """


def attention_memory_mb(
    cfg: BinauralAttentionConfig, input_size: int, batch_size: int, bytes_per_el: int = 4
) -> dict[int, float]:
    """Estimated attention-map memory per level in MiB: ``B * (H*W)**2 * bytes * 2 directions``."""
    return {
        level: batch_size * (input_size // 2 ** (level - 1)) ** 4 * bytes_per_el * 2 / 2**20
        for level in sorted(cfg.attention_levels)
    }


def check_attention_memory(
    cfg: BinauralAttentionConfig,
    input_size: int,
    batch_size: int,
    bytes_per_el: int = 4,
    where: str = "models.binaural_attention",
) -> None:
    """Raise :class:`AttentionMemoryError` when all attention maps together exceed the budget.

    The estimate counts one ``N x N`` map per level and direction, as the plain softmax
    computation holds it. A training step holds more (a 256 x 256 step at batch 1 grew the CPU
    process by 5.8 GiB for a 2 GiB estimate); fused attention kernels on CUDA may hold less. The
    error names the most expensive level, its spatial size and the budget.
    """
    per_level = attention_memory_mb(cfg, input_size, batch_size, bytes_per_el)
    total = sum(per_level.values())
    if total <= cfg.attention_memory_budget_mb:
        return
    level = max(per_level, key=per_level.__getitem__)
    side = input_size // 2 ** (level - 1)
    raise AttentionMemoryError(
        f"{where}.attention_levels: attention at level {level} ({side}x{side} = {side * side} positions) "
        f"needs about {per_level[level]:.0f} MiB for a batch of {batch_size} at input size {input_size} "
        f"({total:.0f} MiB for levels {sorted(per_level)}), over attention_memory_budget_mb = "
        f"{cfg.attention_memory_budget_mb:g}; drop level {level}, lower the batch or input size, "
        "or raise the budget"
    )


def _conv_bn_act(c_in: int, c_out: int, kernel: int, stride: int, act: nn.Module) -> nn.Sequential:
    """Convolution (size-keeping, or halving with stride 2), BatchNorm, activation."""
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding=(kernel - stride) // 2, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(c_out), act)


class EncoderLevel(nn.Sequential):
    """3x3 (level 1) or strided 4x4 (deeper levels) convolution, then a 3x3 convolution."""

    def __init__(self, c_in: int, c_out: int, downsample: bool):
        kernel, stride = (4, 2) if downsample else (3, 1)
        super().__init__(
            _conv_bn_act(c_in, c_out, kernel, stride, nn.LeakyReLU(0.2)),
            _conv_bn_act(c_out, c_out, 3, 1, nn.LeakyReLU(0.2)),
        )


class CrossEarAttention(nn.Module):
    """Symmetric cross-attention between the two ears' feature maps at one level.

    ``left' = left + gamma * attend(q=left, k=v=right)`` and ``right' = right + gamma *
    attend(q=right, k=v=left)``, with queries and keys at C/8 channels, values at C, a softmax over
    the other ear's positions scaled by 1/sqrt(C/8). The two directions share every weight and
    gamma, so swapping the ears swaps the outputs; gamma starts at 0, so the block starts as the
    identity.
    """

    def __init__(self, channels: int):
        super().__init__()
        qk = max(1, channels // 8)
        self.query = nn.Conv2d(channels, qk, 1)
        self.key = nn.Conv2d(channels, qk, 1)
        self.value = nn.Conv2d(channels, channels, 1)
        self.gamma = nn.Parameter(torch.zeros(1))

    def attend(self, a: Tensor, b: Tensor, return_attention: bool) -> tuple[Tensor, Tensor | None]:
        """Features of ``a`` read from ``b``; the ``[B, N_a, N_b]`` map when asked for."""
        batch, c, h, w = a.shape
        q = self.query(a).flatten(2).transpose(1, 2)  # [B, N, C/8]
        k = self.key(b).flatten(2).transpose(1, 2)  # [B, N, C/8]
        v = self.value(b).flatten(2).transpose(1, 2)  # [B, N, C]
        attn = None
        if return_attention:
            attn = torch.softmax(q @ k.transpose(1, 2) * q.shape[-1] ** -0.5, dim=-1)
            out = attn @ v
        else:  # same math; lets CUDA pick a fused kernel that never stores the N x N map
            out = F.scaled_dot_product_attention(q, k, v)
        return out.transpose(1, 2).reshape(batch, c, h, w), attn

    def forward(
        self, left: Tensor, right: Tensor, return_attention: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Updated (left, right) and, when asked for, the left -> right attention map."""
        from_right, attn = self.attend(left, right, return_attention)
        from_left, _ = self.attend(right, left, False)
        return left + self.gamma * from_right, right + self.gamma * from_left, attn


class DecoderLevel(nn.Module):
    """Transposed 4x4 convolution up one level, concatenation of the skip, 3x3 convolution."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.up = nn.Sequential(nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())
        self.merge = _conv_bn_act(2 * c_out, c_out, 3, 1, nn.ReLU())

    def forward(self, x: Tensor, skip: Tensor) -> Tensor:
        return self.merge(torch.cat([skip, self.up(x)], dim=1))


class BinauralAttentionDepth(nn.Module):
    """``forward(x, return_attention=False)`` returns ``{"depth": [B, 1, S, S]}`` in metres.

    With ``return_attention=True`` it adds ``"attention"``: ``{level: [B, N, N]}``, the
    left -> right maps (row = left position, columns = right positions, rows sum to 1).
    """

    def __init__(self, cfg: BinauralAttentionConfig, input_size: int, max_depth: float):
        super().__init__()
        if input_size % 2 ** (NUM_LEVELS - 1):
            raise ParamError(f"input_size: {input_size} is not divisible by {2 ** (NUM_LEVELS - 1)}")
        check_attention_memory(cfg, input_size, batch_size=1)
        self.cfg = cfg
        self.max_depth = max_depth
        ch = [cfg.base_channels * m for m in CHANNEL_MULTS]
        c_in = [1, *ch[:-1]]
        self.left = nn.ModuleList(EncoderLevel(c_in[i], ch[i], i > 0) for i in range(NUM_LEVELS))
        self.right = nn.ModuleList(EncoderLevel(c_in[i], ch[i], i > 0) for i in range(NUM_LEVELS))
        self.attention = nn.ModuleDict({str(k): CrossEarAttention(ch[k - 1]) for k in cfg.attention_levels})
        self.fuse = nn.ModuleList(_conv_bn_act(2 * c, c, 1, 1, nn.LeakyReLU(0.2)) for c in ch)
        self.decoder = nn.ModuleList(DecoderLevel(ch[i + 1], ch[i]) for i in reversed(range(NUM_LEVELS - 1)))
        self.head = nn.Conv2d(ch[0], 1, 1)

    def forward(self, x: Tensor, return_attention: bool = False) -> dict[str, Tensor | dict[int, Tensor]]:
        check_attention_memory(self.cfg, x.shape[-1], x.shape[0])
        left, right = x[:, :1], x[:, 1:]
        skips, maps = [], {}
        for level, (enc_l, enc_r, fuse) in enumerate(zip(self.left, self.right, self.fuse, strict=True), 1):
            left, right = enc_l(left), enc_r(right)
            if str(level) in self.attention:
                left, right, attn = self.attention[str(level)](left, right, return_attention)
                if attn is not None:
                    maps[level] = attn
            skips.append(fuse(torch.cat([left, right], dim=1)))
        y = skips[-1]
        for up, skip in zip(self.decoder, reversed(skips[:-1]), strict=True):
            y = up(y, skip)
        out: dict[str, Tensor | dict[int, Tensor]] = {"depth": torch.sigmoid(self.head(y).float()) * self.max_depth}
        if return_attention:
            out["attention"] = maps
        return out
