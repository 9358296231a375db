"""The losses of the BigVGAN vocoder (DiffBinaural stage 2): least-squares GAN, feature matching, mel L1.

With ``x`` the real wave, ``y = G(s)`` the vocoded one, ``D_k`` the k-th sub-discriminator's logits
and ``F_kl`` its layer-``l`` feature map (:mod:`binaural_lab.models.discriminators`):

- discriminator: ``sum_k mean((1 - D_k(x))^2) + mean(D_k(y)^2)`` (least squares: real -> 1, fake -> 0);
- generator: ``lambda_adv * adv + lambda_fm * fm + lambda_mel * mel + lambda_mel_multiscale * mel_multiscale``
  with ``adv = sum_k mean((1 - D_k(y))^2)``, ``fm = sum_k sum_l mean|F_kl(x) - F_kl(y)|`` and

  - ``mel``: the L1 between the natural-log mels of ``y`` and ``x`` at the vocoder's own mel config
    (80 bands), each frame weighted by :func:`silence_weights` of the ground truth: DiffBinaural's
    term, weight 60 (BigVGAN v1: 45);
  - ``mel_multiscale``: BigVGAN v2's multi-scale mel L1, ``sum_w mean|log10 mel_w(y) - log10 mel_w(x)|``
    over STFT windows ``w`` (hop ``w / 4``, n_fft ``w``, ``n_mels`` per window), fmin 0, fmax at
    Nyquist, weight 15 in v2 (with ``lambda_mel: 0``).

Every mel comes from the project's one mel function (:func:`binaural_lab.audio.mel.mel_spectrogram`:
Slaney basis, ``log(max(mel, 1e-5))``), run in float32 even under bf16 autocast. The multi-scale term
divides its natural-log differences by ``ln 10``, so that it is v2's log10 loss and its lambda means
what v2's does; v2 frames with ``center=True`` (``T / hop + 1`` frames) where the project's mel pads
by ``(n_fft - hop) / 2`` (``T / hop`` frames), which shifts the frames by ``hop / 2`` samples and is
immaterial to a loss. Losses are computed in float32; the parts returned for logging are unweighted.

One GAN step of a ``training_step(ctx)`` (:mod:`binaural_lab.training.loop`), with ``D`` the
:class:`~binaural_lab.models.discriminators.Discriminators` and ``real``, ``fake = G(mel)`` ``[B, 1, T]``::

    out = D(real, fake.detach())
    d_loss, d_real, d_fake = discriminator_loss(out.real_logits, out.fake_logits)
    ctx.optimize("discriminator", d_loss)
    out = D(real, fake)  # the updated discriminator
    g_loss, parts = generator_loss(out.fake_logits, out.real_fmaps, out.fake_fmaps, fake, real, cfg, mel)
    ctx.optimize("generator", g_loss)

Silence weighting: a ground-truth frame is silent when its energy ``E_t = log(mean_m exp(gt[m, t]))``
(the log of its mean mel amplitude, in the log-mel's natural-log units) is below
``silence_threshold``; its absolute errors count ``silence_weight`` times, other frames' once, and the
sum is divided by the number of elements (a mean), not by the weights' sum. So ``silence_weight: 1``
is exactly the plain mean L1 that ``lambda_mel`` was tuned for, a frame's weight does not depend on
how many silent frames share its batch, and a silent frame's gradient is scaled by exactly
``silence_weight`` (a weighted mean would instead scale the loud frames down as silence grows).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from binaural_lab.audio.mel import MelConfig, mel_spectrogram
from binaural_lab.config import ParamError, param

BIGVGAN_MEL = MelConfig()  # 22050 Hz, n_fft 1024, hop 256, win 1024, 80 bands, fmax 11025


@dataclass
class VocoderLossConfig:
    lambda_adv: float = param(1.0, ge=0, doc="weight of the least-squares adversarial term")
    lambda_fm: float = param(2.0, ge=0, doc="weight of the feature-matching L1")
    lambda_mel: float = param(60.0, ge=0, doc="weight of the single-scale log-mel L1 (DiffBinaural 60, BigVGAN v1 45)")
    lambda_mel_multiscale: float = param(
        0.0, ge=0, doc="weight of the multi-scale log10-mel L1 (BigVGAN v2: 15, with lambda_mel 0)"
    )
    mel_scales: list[int] = param(
        [32, 64, 128, 256, 512, 1024, 2048], ge=8, doc="STFT windows of the multi-scale term (hop = window / 4)"
    )
    mel_scale_mels: list[int] = param(
        [5, 10, 20, 40, 80, 160, 320], ge=1, doc="mel bands of each multi-scale window (BigVGAN v2)"
    )
    silence_threshold: float = param(
        -7.0, doc="a ground-truth frame whose log mean mel amplitude is below this is silent (-7: about -61 dB)"
    )
    silence_weight: float = param(
        1.0, ge=0, doc="factor on the single-scale mel L1 of silent frames (>1 keeps silence clean; 1 = off)"
    )

    def validate(self, where: str) -> None:
        lambdas = (self.lambda_adv, self.lambda_fm, self.lambda_mel, self.lambda_mel_multiscale)
        if not any(lambdas):
            raise ParamError(f"{where}: every lambda is 0, so the generator would learn nothing")
        for i, w in enumerate(self.mel_scales):
            if w % 8:
                raise ParamError(f"{where}.mel_scales[{i}]: {w} must be a multiple of 8 (hop w / 4, even padding)")
        if len(self.mel_scale_mels) != len(self.mel_scales):
            raise ParamError(
                f"{where}.mel_scale_mels: {len(self.mel_scale_mels)} values for {len(self.mel_scales)} mel_scales"
            )
        if self.lambda_mel_multiscale > 0 and not self.mel_scales:
            raise ParamError(f"{where}.mel_scales: empty, but lambda_mel_multiscale is {self.lambda_mel_multiscale}")
        if self.silence_weight != 1 and self.lambda_mel == 0:
            raise ParamError(
                f"{where}.silence_weight: {self.silence_weight} would have no effect: it weights the single-scale "
                "mel term, whose lambda_mel is 0"
            )


def float32_mel(wav: Tensor, mel: MelConfig) -> Tensor:
    """The log-mel of ``wav`` with autocast off, so that the mel basis product is not run in bf16."""
    with torch.autocast(wav.device.type, enabled=False):
        return mel_spectrogram(wav, mel)


def discriminator_loss(
    real_logits: Sequence[Tensor], fake_logits: Sequence[Tensor]
) -> tuple[Tensor, list[float], list[float]]:
    """``sum_k mean((1 - D_k(real))^2) + mean(D_k(fake)^2)``; also each sub-discriminator's real and fake part."""
    real = [(1 - r.float()).pow(2).mean() for r in real_logits]
    fake = [g.float().pow(2).mean() for g in fake_logits]
    if len(real) != len(fake) or not real:
        raise ValueError(f"expected as many real as fake logits (at least one), got {len(real)} and {len(fake)}")
    total = torch.stack(real).sum() + torch.stack(fake).sum()
    parts = torch.stack(real + fake).detach().tolist()  # one device sync
    return total, parts[: len(real)], parts[len(real) :]


def generator_adversarial_loss(fake_logits: Sequence[Tensor]) -> Tensor:
    """``sum_k mean((1 - D_k(fake))^2)``: the generator wants every logit at the real target 1."""
    return torch.stack([(1 - g.float()).pow(2).mean() for g in fake_logits]).sum()


def feature_matching_loss(real_fmaps: Sequence[Sequence[Tensor]], fake_fmaps: Sequence[Sequence[Tensor]]) -> Tensor:
    """``sum_k sum_l mean|F_kl(real) - F_kl(fake)|`` over every sub-discriminator ``k`` and layer ``l``."""
    terms = [
        (r.float() - g.float()).abs().mean()
        for rs, gs in zip(real_fmaps, fake_fmaps, strict=True)
        for r, g in zip(rs, gs, strict=True)
    ]
    return torch.stack(terms).sum()


def multiscale_mel_loss(
    wav_fake: Tensor, wav_real: Tensor, cfg: VocoderLossConfig, mel: MelConfig = BIGVGAN_MEL
) -> Tensor:
    """BigVGAN v2's ``sum_w mean|log10 mel_w(fake) - log10 mel_w(real)|`` at ``mel``'s sample rate.

    Window ``w`` of ``cfg.mel_scales`` has n_fft ``w``, hop ``w / 4`` and the matching ``cfg.mel_scale_mels``
    bands from 0 Hz to Nyquist; the mel floor is ``mel.clamp_min``.
    """
    if wav_fake.shape != wav_real.shape:
        raise ValueError(f"fake {tuple(wav_fake.shape)} and real {tuple(wav_real.shape)} waves differ in shape")
    total = wav_fake.new_zeros((), dtype=torch.float32)
    for w, n_mels in zip(cfg.mel_scales, cfg.mel_scale_mels, strict=True):
        scale = dataclasses.replace(mel, n_fft=w, hop=w // 4, win=w, n_mels=n_mels, fmin=0.0, fmax=None)
        total = total + (float32_mel(wav_fake, scale) - float32_mel(wav_real, scale)).abs().mean()
    return total / math.log(10.0)


def silence_weights(gt_log_mel: Tensor, cfg: VocoderLossConfig) -> Tensor:
    """Per-frame weights ``[..., 1, T]`` of a ground-truth log-mel ``[..., n_mels, T]``.

    ``silence_weight`` where the frame energy ``logsumexp_m(gt) - log(n_mels)`` (the log of the mean mel
    amplitude) is below ``silence_threshold``, 1 elsewhere.
    """
    energy = torch.logsumexp(gt_log_mel.float(), dim=-2, keepdim=True) - math.log(gt_log_mel.shape[-2])
    silent = energy < cfg.silence_threshold
    return torch.where(silent, cfg.silence_weight, 1.0).to(energy.dtype)


def silence_aware_mel_loss(pred_log_mel: Tensor, gt_log_mel: Tensor, cfg: VocoderLossConfig) -> Tensor:
    """``mean(w_t * |pred - gt|)`` over every element, ``w`` from :func:`silence_weights` of ``gt``.

    The mean over elements, not the weights' sum, so that weight 1 is the plain mean L1 and silent frames'
    errors count exactly ``silence_weight`` times whatever the batch's share of silence.
    """
    if pred_log_mel.shape != gt_log_mel.shape:
        raise ValueError(f"predicted {tuple(pred_log_mel.shape)} and true {tuple(gt_log_mel.shape)} mels differ")
    error = (pred_log_mel.float() - gt_log_mel.float()).abs()
    return (silence_weights(gt_log_mel, cfg) * error).mean()


def generator_loss(
    fake_logits: Sequence[Tensor],
    real_fmaps: Sequence[Sequence[Tensor]],
    fake_fmaps: Sequence[Sequence[Tensor]],
    wav_fake: Tensor,
    wav_real: Tensor,
    cfg: VocoderLossConfig,
    mel: MelConfig = BIGVGAN_MEL,
) -> tuple[Tensor, dict[str, float]]:
    """The generator's total ``sum lambda * term`` and its unweighted terms (those whose lambda is not 0).

    ``wav_fake`` and ``wav_real`` are ``[B, 1, T]``; ``mel`` is the vocoder's own mel config (the one its
    input mels were made with), used by the single-scale term and for the multi-scale term's sample rate.
    """
    if wav_fake.shape != wav_real.shape:
        raise ValueError(f"fake {tuple(wav_fake.shape)} and real {tuple(wav_real.shape)} waves differ in shape")
    terms: dict[str, tuple[float, Tensor]] = {}
    if cfg.lambda_adv > 0:
        terms["adv"] = (cfg.lambda_adv, generator_adversarial_loss(fake_logits))
    if cfg.lambda_fm > 0:
        terms["fm"] = (cfg.lambda_fm, feature_matching_loss(real_fmaps, fake_fmaps))
    if cfg.lambda_mel > 0:
        pred, gt = float32_mel(wav_fake, mel), float32_mel(wav_real, mel)
        terms["mel"] = (cfg.lambda_mel, silence_aware_mel_loss(pred, gt, cfg))
    if cfg.lambda_mel_multiscale > 0:
        terms["mel_multiscale"] = (cfg.lambda_mel_multiscale, multiscale_mel_loss(wav_fake, wav_real, cfg, mel))
    total = torch.stack([weight * value for weight, value in terms.values()]).sum()
    values = torch.stack([value.detach() for _, value in terms.values()]).tolist()  # one device sync
    return total, dict(zip(terms, values, strict=True))
