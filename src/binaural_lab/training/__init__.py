"""The one training loop shared by every model."""

from binaural_lab.training.fingerprint import code_fingerprint, content_hash
from binaural_lab.training.loop import (
    EMA,
    EpochCallback,
    EvalCallback,
    StepContext,
    StepTask,
    StoppedByRank0,
    TrainConfig,
    Trainer,
    TrainResult,
    TrainTask,
    lr_factor,
    pick_device,
    seed_everything,
)

__all__ = [
    "EMA",
    "EpochCallback",
    "EvalCallback",
    "StepContext",
    "StepTask",
    "StoppedByRank0",
    "TrainConfig",
    "TrainResult",
    "TrainTask",
    "Trainer",
    "code_fingerprint",
    "content_hash",
    "lr_factor",
    "pick_device",
    "seed_everything",
]
