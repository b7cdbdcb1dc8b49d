"""Per-sample denoising errors: the ELBO proxy every objective is written in.

``m(x, c) = mean over C, H, W of || prediction(x_t, t, c) - target ||^2``, always reduced in float32 (under
bf16/fp16 autocast the UNet output is upcast first), one UNet call for the whole batch.
The target follows the scheduler's ``prediction_type``: ``epsilon`` -> the noise, ``v_prediction`` -> the
velocity ``sqrt(abar) eps - sqrt(1 - abar) x0``, ``sample`` -> x0.
"""

from __future__ import annotations

import torch


def noisy_latents_and_target(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor):
    """(x_t [N, C, H, W], target [N, C, H, W]) for the scheduler's prediction type."""
    return scheduler.add_noise(x0, noise, t), target_for(scheduler, x0, noise, t)


def target_for(scheduler, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet should predict at x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise [N, C, H, W]."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        target = noise
    elif kind == "v_prediction":
        target = scheduler.get_velocity(x0, noise, t)
    elif kind == "sample":
        target = x0
    else:
        raise ValueError(f"unsupported prediction_type {kind!r}; expected epsilon, v_prediction or sample")
    return target


def per_sample_errors(unet, x_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor,
                      target: torch.Tensor, **unet_kwargs) -> torch.Tensor:
    """One UNet call over the batch -> errors [N] in float32."""
    prediction = unet(x_t, t, encoder_hidden_states, **unet_kwargs).sample
    return (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, prediction.ndim)))
