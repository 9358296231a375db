"""The loss of the STFT-domain binauralizers (Mono2Binaural, depth-infused).

``loss_fn(pred_diff, gt_diff, mix, epoch) -> (total, parts)`` with complex spectrograms given as
``[B, 2 (re, im), F, T]``: ``mix`` is the L + R STFT the network saw, ``gt_diff`` the true L - R STFT
and ``pred_diff`` the network's. The terms (Sep-Stereo's combination; ``l_2ch: 0`` is Gao &
Grauman's original):

- ``diff``: mean squared error of the difference spectrogram,
- ``2ch``: mean of the left and right spectrograms' squared errors, the channels rebuilt as
  ``(mix + diff) / 2`` and ``(mix - diff) / 2``.

The mix is the network's input, not a prediction, so both rebuilt channels share it and each
channel's error is half the difference error: ``2ch`` always equals ``diff / 4`` here, and the two
lambdas only set one overall scale of the gradient (as a learning rate would). The term is kept
as Sep-Stereo's published combination; a method that predicts its channels separately would make
the two terms differ. Both are computed in float32.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from binaural_lab.config import ParamError, param


@dataclass
class DifferenceLossConfig:
    l_diff: float = param(1.0, ge=0, doc="weight of the L - R spectrogram's squared error")
    l_2ch: float = param(0.0, ge=0, doc="weight of the left and right spectrograms' squared error (0: Gao)")

    def validate(self, where: str) -> None:
        if self.l_diff == 0 and self.l_2ch == 0:
            raise ParamError(f"{where}: l_diff and l_2ch are both 0, so nothing would be learned")


class DifferenceLoss:
    """``l_diff * MSE(diff) + l_2ch * (MSE(left) + MSE(right)) / 2``; the same weights at every epoch."""

    def __init__(self, cfg: DifferenceLossConfig, epochs: int = 1, **_: object):
        self.cfg = cfg

    def weights(self, epoch: int) -> dict[str, float]:
        return {"l_diff": self.cfg.l_diff, "l_2ch": self.cfg.l_2ch}

    def __call__(self, pred_diff: Tensor, gt_diff: Tensor, mix: Tensor, epoch: int) -> tuple[Tensor, dict[str, float]]:
        if pred_diff.shape != gt_diff.shape or mix.shape != gt_diff.shape:
            raise ValueError(
                f"prediction {tuple(pred_diff.shape)}, target {tuple(gt_diff.shape)} and mix "
                f"{tuple(mix.shape)} must have the same shape"
            )
        pred_diff, gt_diff, mix = pred_diff.float(), gt_diff.float(), mix.float()
        diff = (pred_diff - gt_diff).pow(2).mean()
        left = ((mix + pred_diff) / 2 - (mix + gt_diff) / 2).pow(2).mean()
        right = ((mix - pred_diff) / 2 - (mix - gt_diff) / 2).pow(2).mean()
        two_ch = (left + right) / 2
        total = self.cfg.l_diff * diff + self.cfg.l_2ch * two_ch
        return total, {"diff": diff.item(), "2ch": two_ch.item()}
