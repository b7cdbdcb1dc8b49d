"""DDIM inversion for DDIM-InPO (Lu et al., CVPR 2025, arXiv 2503.18454), written out step by step.

For each row with sampled timestep t, x0 is carried up a coarse grid with the policy UNet (no grad, conditional,
no CFG). With T = 1000 and ``steps`` = 10 (stride 100), the grid's destination levels are u = 1, 101, ..., 901
(the scheduler's ``steps_offset`` shifts them), and the step to u starts from level s = u - 100 (level -99 is x0
itself, ᾱ = 1). Only destinations u < t are run, so a row takes 0-10 UNet calls. One step, model called at u:

    ε̂ = ε_θ(x_s, u, c)                                  (as epsilon, whatever the prediction type)
    x_u = sqrt(ᾱ_u) (x_s - sqrt(1 - ᾱ_s) ε̂) / sqrt(ᾱ_s) + sqrt(1 - ᾱ_u) ε̂    (DDIM inverse update, no clipping)
    x_u += η · sqrt(σ²_{s→u}) · z,   z ~ N(0, I),   σ²_{s→u} = (1 - ᾱ_s) / (1 - ᾱ_u) · (1 - ᾱ_u / ᾱ_s)

σ²_{s→u} is the DDPM posterior variance of the step just taken (zero for the first step, from x0); η = 0.1.
The row is then trained at its own t on x_inv with the reparameterised noise

    eps* = (x_inv - sqrt(ᾱ_t) x0) / sqrt(1 - ᾱ_t),   so that   x_inv = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) eps*  exactly.

Differences from the authors' script, on purpose: it takes one t for the whole batch (batch size 1 only) and adds
the noise of the *next* grid step (variance between u and u + 100); docs/methods.md specifies the step just taken.
diffusers' ``DDIMInverseScheduler`` is not used: its step semantics and ``clip_sample`` default differ.
"""

from __future__ import annotations

import torch

from ..models.conditioning import cast_floats, take_rows


def grid_destinations(num_train_timesteps: int, steps: int, offset: int = 1) -> list[int]:
    """Destination levels u of the inversion grid, ascending (T=1000, 10 steps, offset 1: 1, 101, ..., 901)."""
    stride = num_train_timesteps // steps
    return [k * stride + offset for k in range(steps) if k * stride + offset < num_train_timesteps]


def _abar(alphas_cumprod: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
    """ᾱ at integer levels [n]; negative levels (x0) have ᾱ = 1."""
    return torch.where(level >= 0, alphas_cumprod[level.clamp(min=0)], torch.ones_like(alphas_cumprod[0]))


def _as_epsilon(scheduler, output: torch.Tensor, x: torch.Tensor, abar: torch.Tensor) -> torch.Tensor:
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return output
    if kind == "v_prediction":  # v = sqrt(ᾱ) ε - sqrt(1-ᾱ) x0  ->  ε = sqrt(ᾱ) v + sqrt(1-ᾱ) x
        return abar.sqrt() * output + (1 - abar).sqrt() * x
    if kind == "sample":
        return (x - abar.sqrt() * output) / (1 - abar).sqrt()
    raise ValueError(f"unsupported prediction_type {kind!r}")


@torch.no_grad()
def ddim_inversion_latents(unet, scheduler, x0: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                           generators: list[torch.Generator], steps: int = 10, eta: float = 0.1,
                           **unet_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 [R, C, H, W] (float32), t [R], text [R, L, D] -> (x_inv [R, C, H, W], eps* [R, C, H, W]).

    ``generators[r]`` draws row r's inversion noise. The UNet runs on the rows still below their t at each level.
    """
    abars = scheduler.alphas_cumprod.to(x0.device, torch.float32)
    stride = scheduler.config.num_train_timesteps // steps
    offset = scheduler.config.get("steps_offset", 0) or 0
    x = x0.clone()
    for u in grid_destinations(scheduler.config.num_train_timesteps, steps, offset):
        active = torch.nonzero(t > u).flatten()
        if len(active) == 0:
            break  # levels only rise; no row needs this one
        level_u = torch.full((len(active),), u, device=x0.device)
        abar_s = _abar(abars, level_u - stride).view(-1, 1, 1, 1)
        abar_u = _abar(abars, level_u).view(-1, 1, 1, 1)
        xs = x[active]
        dtype = next(unet.parameters()).dtype
        out = unet(xs.to(dtype), level_u, text[active].to(dtype),
                   **cast_floats(take_rows(unet_kwargs, active), dtype)).sample.float()
        eps_hat = _as_epsilon(scheduler, out, xs, abar_u)  # the UNet was told it is at level u
        x_u = abar_u.sqrt() * (xs - (1 - abar_s).sqrt() * eps_hat) / abar_s.sqrt() + (1 - abar_u).sqrt() * eps_hat
        if eta > 0:
            variance = (1 - abar_s) / (1 - abar_u) * (1 - abar_u / abar_s)
            z = torch.stack([torch.randn(xs.shape[1:], generator=generators[r]) for r in active.tolist()])
            x_u = x_u + eta * variance.clamp(min=0).sqrt() * z.to(x_u.device)
        x[active] = x_u
    abar_t = abars[t].view(-1, 1, 1, 1)
    eps_star = (x - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
    return x, eps_star
