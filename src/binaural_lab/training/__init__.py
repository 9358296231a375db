"""The one training loop shared by every model."""

from binaural_lab.training.loop import TrainConfig, Trainer, TrainResult, TrainTask

__all__ = ["TrainConfig", "TrainResult", "TrainTask", "Trainer"]
