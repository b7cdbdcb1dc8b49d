"""DDIM sampling with classifier-free guidance through which a reward's gradient flows at chosen steps only.

Reward fine-tuning (LongAlign, after DRaFT/AlignProp) scores the *final* image and backpropagates into the UNet.
Keeping the graph of all 50 sampling steps costs 50 UNet activations; LongAlign keeps a few (5: every 10th step
from a random start). At the other steps the UNet runs under ``torch.no_grad()`` (its noise prediction is a
constant), but the DDIM update itself, linear in the latent, stays in the graph, so the gradient of a chosen
early step still reaches the output through every later update:

    x_{s} = sqrt(abar_s) * x0_hat(x_t, eps) + sqrt(1 - abar_s) * eps,   eps = eps_u + g (eps_c - eps_u)

The UNet's *input* is detached at every step (truncated backpropagation, as DRaFT and LongAlign's code): a chosen
step's gradient reaches its weights through the later linear updates only, never through a later UNet's input
Jacobian, which CFG multiplies by up to g (7.5) per chosen step and which can make the gradient explode.

Shapes: latents [B, C, h, w]; text / uncond states [B, L, D].
"""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import torch


def _paired(uncond: dict, cond: dict) -> dict:
    """UNet kwargs for the [uncond; cond] batch: tensors concatenated on dim 0, nested dicts (SDXL) followed."""
    return {k: _paired(uncond[k], v) if isinstance(v, dict) else torch.cat([uncond[k], v]) if torch.is_tensor(v)
            else v for k, v in cond.items()}


def grad_step_indices(num_steps: int, every: int, rng: np.random.Generator) -> list[int]:
    """Steps that keep their graph: every ``every``-th from a random start in [0, every)."""
    if every < 1 or num_steps < 1:
        raise ValueError(f"need num_steps >= 1 and every >= 1; got {num_steps}, {every}")
    start = int(rng.integers(0, min(every, num_steps)))
    return list(range(start, num_steps, every))


def sample_with_reward_grad(unet, scheduler, latents: torch.Tensor, text: torch.Tensor, uncond: torch.Tensor,
                            guidance_scale: float, num_steps: int, grad_steps: list[int],
                            on_step=None, uncond_unet_kwargs: dict | None = None, **unet_kwargs) -> torch.Tensor:
    """Final latents [B, C, h, w], differentiable w.r.t. the UNet's trainable weights at ``grad_steps`` only.

    ``scheduler``: a DDIMScheduler (eta 0). ``on_step(i, eps)`` sees each step's guided noise prediction (tests
    use it to check which steps carry gradient). ``uncond_unet_kwargs``: the unconditional half's extra
    conditioning (SDXL: the empty prompt's pooled embedding); default: the same as the conditional half's.
    """
    scheduler.set_timesteps(num_steps, device=latents.device)
    chosen = set(grad_steps)
    states = torch.cat([uncond, text])  # [2B, L, D]: unconditional first, as diffusers' pipelines
    extra = _paired(unet_kwargs if uncond_unet_kwargs is None else uncond_unet_kwargs, unet_kwargs)
    x = latents * scheduler.init_noise_sigma
    for i, t in enumerate(scheduler.timesteps):
        with nullcontext() if i in chosen else torch.no_grad():
            model_in = scheduler.scale_model_input(torch.cat([x, x]).detach(), t)
            out = unet(model_in, t, states, **extra).sample
            eps_u, eps_c = out.chunk(2)
            eps = eps_u + guidance_scale * (eps_c - eps_u)
        if on_step is not None:
            on_step(i, eps)
        x = scheduler.step(eps, t, x).prev_sample  # in the graph at every step (linear in x)
    return x
