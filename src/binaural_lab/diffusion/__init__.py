"""Noise schedules, the training objective and the DDIM sampler, kept apart from any network."""

from binaural_lab.diffusion.ddim import (
    SPACINGS,
    DDIMScheduler,
    DiffusionConfig,
    classifier_free_guidance,
    cosine_betas,
)

__all__ = ["SPACINGS", "DDIMScheduler", "DiffusionConfig", "classifier_free_guidance", "cosine_betas"]
