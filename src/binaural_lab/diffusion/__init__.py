"""Noise schedules, the training objective and the DDIM sampler, kept apart from any network."""

from binaural_lab.diffusion.ddim import DDIMScheduler, DiffusionConfig, classifier_free_guidance, cosine_betas

__all__ = ["DDIMScheduler", "DiffusionConfig", "classifier_free_guidance", "cosine_betas"]
