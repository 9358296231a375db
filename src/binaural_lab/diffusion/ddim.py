"""Cosine noise schedule, the noise / v / sample objectives and DDIM sampling (diffusers' conventions).

The schedule is data: ``betas`` from the squared-cosine ``alpha_bar(t) = cos((t + s) / (1 + s) * pi / 2) ** 2``
(Nichol & Dhariwal 2021, ``s = 0.008``), ``beta_i = min(1 - alpha_bar((i + 1) / N) / alpha_bar(i / N), 0.999)``.
The sampler follows ``diffusers.DDIMScheduler`` with ``beta_schedule="squaredcos_cap_v2"``,
``prediction_type`` epsilon (DiffBinaural), v_prediction or sample, ``timestep_spacing`` leading
(DiffBinaural) or trailing, ``set_alpha_to_one=True`` and ``clip_sample`` (range 1):
``set_timesteps(n, spacing)`` then ``step(model_output, t, sample)`` for each ``t`` of ``timesteps``.
Both are checked against diffusers in the tests.

Why the choices matter on small data: a clip's broadband level difference is visible through the
noise of every step but the last few (it is a mean over thousands of bins), so the network learns
it from the condition only at the top of the schedule. "leading" spacing never samples there (25
steps start at t = 960, 7 at t = 852 of 1000: the pure noise is read as if it held signal), and the
noise objective barely penalises a wrong clean-sample estimate there; "trailing" starts at the last
step and v-prediction weighs the clean sample fully at high noise (Lin et al. 2024, "Common
diffusion noise schedules and sample steps are flawed"; Salimans & Ho 2022).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from binaural_lab.config import ParamError, param

PREDICTIONS = ("epsilon", "v_prediction", "sample")
SPACINGS = ("leading", "trailing")


@dataclass
class DiffusionConfig:
    """The ``loss`` block of a diffusion model: schedule, objective and condition dropout."""

    timesteps: int = param(1000, ge=2, doc="training diffusion steps")
    cosine_s: float = param(0.008, ge=0, doc="offset s of the cosine schedule")
    max_beta: float = param(0.999, gt=0, lt=1, doc="betas are clipped to this")
    loss: str = param("l1", choices=("l1", "l2"), doc="distance between the network's output and its target")
    prediction: str = param(
        "epsilon",
        choices=PREDICTIONS,
        doc="what the network predicts: the noise (DiffBinaural), v = sqrt(ab) noise - sqrt(1 - ab) x0, or x0",
    )
    cond_drop: float = param(0.1, ge=0, lt=1, doc="probability that a training sample loses its conditions (CFG)")
    clip_sample: bool = param(True, doc="clamp the predicted clean sample to [-1, 1] while sampling")
    target: str = param(
        "binaural",
        choices=("binaural", "residual", "mid_side"),
        doc="what is diffused: the L / R mels (DiffBinaural), their difference from the mono mel, or the ears' "
        "mean minus mono and half their difference; both residuals standardised per channel and band",
    )


def cosine_betas(timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """The squared-cosine schedule's betas ``[timesteps]`` (float64)."""

    def alpha_bar(t: float) -> float:
        return math.cos((t + s) / (1 + s) * math.pi / 2) ** 2

    return torch.tensor(
        [min(1 - alpha_bar((i + 1) / timesteps) / alpha_bar(i / timesteps), max_beta) for i in range(timesteps)],
        dtype=torch.float64,
    )


class DDIMScheduler:
    """The cosine schedule with the training objective's noising and DDIM's reverse step."""

    def __init__(self, cfg: DiffusionConfig):
        self.cfg = cfg
        self.betas = cosine_betas(cfg.timesteps, cfg.cosine_s, cfg.max_beta).float()
        self.alphas_cumprod = torch.cumprod(1.0 - self.betas, dim=0)
        self.timesteps = torch.arange(cfg.timesteps - 1, -1, -1)
        self.step_ratio = 1

    @property
    def num_train_timesteps(self) -> int:
        return self.cfg.timesteps

    # --- training ---------------------------------------------------------------------------------

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise`` for steps ``t [B]``."""
        ab = self._ab(t, x0)
        return ab.sqrt() * x0 + (1 - ab).sqrt() * noise

    def _ab(self, t: Tensor, like: Tensor) -> Tensor:
        return self.alphas_cumprod.to(like.device)[t].view(-1, *([1] * (like.dim() - 1))).to(like.dtype)

    def training_target(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """What the network should output for ``x_t = add_noise(x0, noise, t)`` (``cfg.prediction``)."""
        if self.cfg.prediction == "epsilon":
            return noise
        if self.cfg.prediction == "sample":
            return x0
        ab = self._ab(t, x0)
        return ab.sqrt() * noise - (1 - ab).sqrt() * x0

    def loss(self, predicted: Tensor, target: Tensor) -> Tensor:
        """The objective: L1 (or L2) distance between the output and :meth:`training_target`."""
        diff = predicted.float() - target.float()
        return diff.abs().mean() if self.cfg.loss == "l1" else diff.pow(2).mean()

    # --- sampling -------------------------------------------------------------------------------

    def set_timesteps(self, num_inference_steps: int, spacing: str = "leading") -> None:
        """Use ``num_inference_steps`` evenly spaced steps: "leading" 0, r, 2r, ... from the top;
        "trailing" N - 1, N - 1 - N / n, ... rounded (it starts at the last training step)."""
        n = self.cfg.timesteps
        if not 1 <= num_inference_steps <= n:
            raise ParamError(f"steps: {num_inference_steps} DDIM steps, expected 1 to {n} (the training steps)")
        if spacing not in SPACINGS:
            raise ParamError(f"spacing: {spacing!r}, expected one of {list(SPACINGS)}")
        self.step_ratio = n // num_inference_steps  # diffusers steps back by this in both spacings
        if spacing == "leading":
            self.timesteps = torch.arange(num_inference_steps - 1, -1, -1) * self.step_ratio
        else:
            top = torch.arange(n, 0, -n / num_inference_steps, dtype=torch.float64)
            self.timesteps = top.round().long() - 1

    def step(
        self,
        model_output: Tensor,
        timestep: int,
        sample: Tensor,
        eta: float = 0.0,
        generator: torch.Generator | None = None,
        variance_noise: Tensor | None = None,
    ) -> Tensor:
        """One DDIM step from ``timestep`` to the previous one of :attr:`timesteps`; returns the new sample.

        ``eta`` 0 is deterministic; above 0 the step adds ``eta``-scaled noise, drawn from
        ``generator`` (or ``variance_noise`` as given).
        """
        t = int(timestep)
        prev = t - self.step_ratio
        ab = self.alphas_cumprod[t].item()
        ab_prev = self.alphas_cumprod[prev].item() if prev >= 0 else 1.0
        if self.cfg.prediction == "epsilon":
            eps = model_output
            x0 = (sample - math.sqrt(1 - ab) * eps) / math.sqrt(ab)
        elif self.cfg.prediction == "sample":
            x0 = model_output
            eps = (sample - math.sqrt(ab) * x0) / math.sqrt(1 - ab)
        else:
            x0 = math.sqrt(ab) * sample - math.sqrt(1 - ab) * model_output
            eps = math.sqrt(ab) * model_output + math.sqrt(1 - ab) * sample
        if self.cfg.clip_sample:
            x0 = x0.clamp(-1, 1)
        variance = (1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)
        std = eta * math.sqrt(variance)
        prev_sample = math.sqrt(ab_prev) * x0 + math.sqrt(max(1 - ab_prev - std**2, 0.0)) * eps
        if eta > 0:
            if variance_noise is None:
                variance_noise = torch.randn(
                    sample.shape, generator=generator, device=sample.device, dtype=sample.dtype
                )
            prev_sample = prev_sample + std * variance_noise
        return prev_sample


def classifier_free_guidance(cond: Tensor, uncond: Tensor, scale: float) -> Tensor:
    """``uncond + scale * (cond - uncond)``: scale 1 is the conditional prediction, 0 the unconditional
    (both exactly: ``torch.lerp`` is exact at its ends)."""
    return torch.lerp(uncond, cond, scale)
