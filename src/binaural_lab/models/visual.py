"""ResNet-18 image encoder, written out (no torchvision), trained from scratch or from a local checkpoint.

The network is torchvision's ``resnet18`` without its average pool and classifier: a 7x7 stride-2
stem convolution, BatchNorm, ReLU and a 3x3 stride-2 max pool, then four layers of two BasicBlocks
(3x3 convolutions with BatchNorm, a 1x1 strided projection where the shape changes) with
``base_channels * (1, 2, 4, 8)`` channels, the last three halving the size. An ``H x W`` input gives
a ``[B, 8 * base_channels, ceil(H / 32), ceil(W / 32)]`` feature map (:func:`feature_size`).
``base_channels: 64`` is ResNet-18 (11.18 M parameters); a smaller width makes a CPU-sized encoder.

Modules carry torchvision's names (``conv1``, ``bn1``, ``layer1.0.downsample.0``, ...), so
``weights`` can name a state dict saved from ``torchvision.models.resnet18`` (its ``fc.*`` keys are
ignored, and files older than PyTorch 0.4.1 without ``num_batches_tracked`` load too). The file is
read with ``torch.load(weights_only=True)``, never fetched. Inputs are expected normalised as the
checkpoint was trained (torchvision: RGB in [0, 1], then ImageNet mean and std).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from binaural_lab.config import UserError, param

LAYER_MULTS = (1, 2, 4, 8)  # channels of layer1..layer4, relative to base_channels
IGNORED_PREFIX = "fc."  # torchvision's classifier, not part of the encoder


@dataclass
class VisualConfig:
    base_channels: int = param(64, ge=1, doc="channels of the stem and layer1; 64 = ResNet-18 (11.2 M parameters)")
    weights: str | None = param(
        None, doc="local state dict in torchvision resnet18 key names to start from; null = from scratch"
    )


class WeightsError(UserError, ValueError):
    """A ``weights`` checkpoint is missing, unreadable or does not fit the encoder."""


def feature_size(n: int) -> int:
    """Side of the feature map for an input side of ``n`` pixels: five halvings, rounding up."""
    for _ in range(5):  # stem conv, max pool, layer2, layer3, layer4
        n = (n + 1) // 2
    return n


def pool_features(feat: Tensor, grid: tuple[int, int] = (1, 1)) -> Tensor:
    """Average-pool ``[B, C, h, w]`` to a ``grid`` and flatten it to ``[B, C * grid_h * grid_w]``."""
    return F.adaptive_avg_pool2d(feat, grid).flatten(1)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with BatchNorm and a residual connection (projected where the shape changes)."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


def _layer(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """Two BasicBlocks, the first one changing channels and size."""
    return nn.Sequential(BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1))


class ResNet18Encoder(nn.Module):
    """``forward(x [B, in_channels, H, W])`` returns the layer4 feature map ``[B, out_channels, h, w]``.

    ``where`` is the params key of this encoder's config, used in error messages.
    """

    def __init__(self, cfg: VisualConfig, in_channels: int = 3, where: str = "visual"):
        super().__init__()
        width = [cfg.base_channels * m for m in LAYER_MULTS]
        self.conv1 = nn.Conv2d(in_channels, width[0], 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width[0])
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _layer(width[0], width[0], stride=1)
        self.layer2 = _layer(width[0], width[1], stride=2)
        self.layer3 = _layer(width[1], width[2], stride=2)
        self.layer4 = _layer(width[2], width[3], stride=2)
        self.out_channels = width[-1]
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if cfg.weights is not None:
            self.load_weights(Path(cfg.weights), where)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def load_weights(self, path: Path, where: str) -> None:
        """Load a torchvision-format state dict; every error names ``path`` and the offending key."""
        key = f"{where}.weights"
        if not path.is_file():
            raise WeightsError(f"{key}: {path}: no such checkpoint file")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # unpickling raises many types; each means "not a state dict"
            raise WeightsError(f"{key}: {path}: not a readable PyTorch state dict ({exc})") from exc
        if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
            raise WeightsError(f"{key}: {path}: expected a state dict of tensor names to tensors")
        own = self.state_dict()
        for name, tensor in own.items():
            if name not in state and not name.endswith("num_batches_tracked"):
                raise WeightsError(f"{key}: {path}: missing key {name!r} (of shape {list(tensor.shape)})")
            if name in state and state[name].shape != tensor.shape:
                raise WeightsError(
                    f"{key}: {path}: key {name!r} has shape {list(state[name].shape)}, "
                    f"the encoder expects {list(tensor.shape)} (base_channels or input channels differ)"
                )
        unexpected = sorted(k for k in state if k not in own and not k.startswith(IGNORED_PREFIX))
        if unexpected:
            raise WeightsError(f"{key}: {path}: unexpected key {unexpected[0]!r} ({len(unexpected)} in all)")
        if not self.conv1.weight.is_meta:  # on the meta device (counting parameters) there is nothing to fill
            self.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
