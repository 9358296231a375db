"""Networks of the project, one file each; the depth-from-echoes models are built by name here.

Every depth model takes echo spectrograms ``[B, 2, S, S]`` (left, right) and returns a dict whose
``"depth"`` is ``[B, 1, S, S]`` in metres in ``[0, max_depth]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from binaural_lab.config import ParamError, parse
from binaural_lab.models.base_residual import BaseResidualConfig, BaseResidualDepth
from binaural_lab.models.binaural_attention import (
    AttentionMemoryError,
    BinauralAttentionConfig,
    BinauralAttentionDepth,
    attention_memory_mb,
    check_attention_memory,
)
from binaural_lab.models.depth_unet import UNetConfig, UNetDepth

DEPTH_MODELS: dict[str, tuple[type, type[nn.Module]]] = {
    "unet": (UNetConfig, UNetDepth),
    "base_residual": (BaseResidualConfig, BaseResidualDepth),
    "binaural_attention": (BinauralAttentionConfig, BinauralAttentionDepth),
}


def build_depth_model(
    name: str, cfg_dict: dict[str, Any] | None, input_size: int, max_depth: float, where: str | None = None
) -> nn.Module:
    """Parse ``cfg_dict`` (errors name ``where``, default ``models.<name>``) and build the network."""
    if name not in DEPTH_MODELS:
        raise ParamError(f"model: {name!r} is not one of {sorted(DEPTH_MODELS)}")
    if max_depth <= 0:
        raise ParamError(f"max_depth: {max_depth} must be positive")
    cfg_cls, model_cls = DEPTH_MODELS[name]
    cfg = parse(cfg_cls, cfg_dict, where or f"models.{name}")
    return model_cls(cfg, input_size, max_depth)


# memory checks that a model can run before anything is allocated, with the training batch size
MEMORY_CHECKS: dict[str, Callable[..., None]] = {"binaural_attention": check_attention_memory}


def check_depth_model_memory(
    name: str, cfg_dict: dict[str, Any] | None, input_size: int, batch_size: int, where: str
) -> None:
    """Stop with a message naming the key when model ``name`` would not fit its memory budget."""
    if name in MEMORY_CHECKS:
        cfg_cls, _ = DEPTH_MODELS[name]
        MEMORY_CHECKS[name](parse(cfg_cls, cfg_dict, where), input_size, batch_size, where=where)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (trainable or not); works on models built on the meta device."""
    return sum(p.numel() for p in model.parameters())


__all__ = [
    "DEPTH_MODELS",
    "AttentionMemoryError",
    "BaseResidualConfig",
    "BaseResidualDepth",
    "BinauralAttentionConfig",
    "BinauralAttentionDepth",
    "UNetConfig",
    "UNetDepth",
    "attention_memory_mb",
    "build_depth_model",
    "check_attention_memory",
    "check_depth_model_memory",
    "count_parameters",
]
