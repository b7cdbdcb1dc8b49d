"""Per-sample denoising errors: the ELBO proxy every objective is written in.

``m(x, c) = mean over C, H, W of || prediction(x_t, t, c) - target ||^2``, always reduced in float32 (under
bf16/fp16 autocast the UNet output is upcast first), one denoiser call for the whole batch. For flow models the
target is the velocity ε − x0 (families/flow.py).
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


def per_sample_errors(model, x_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor,
                      target: torch.Tensor, predict=None, **model_kwargs) -> torch.Tensor:
    """One denoiser call over the batch -> errors [N] in float32. ``predict``: the model family's call
    (families/: ``predict(model, x_t, t, states, **kwargs) -> [N, C, h, w]``); None: a UNet's."""
    if predict is None:
        prediction = model(x_t, t, encoder_hidden_states, **model_kwargs).sample
    else:
        prediction = predict(model, x_t, t, encoder_hidden_states, **model_kwargs)
    return (prediction.float() - target.float()).pow(2).mean(dim=tuple(range(1, prediction.ndim)))
