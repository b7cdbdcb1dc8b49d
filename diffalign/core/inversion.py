"""DDIM inversion for DDIM-InPO (Lu et al., CVPR 2025, arXiv 2503.18454), written out step by step.

For each row with sampled timestep t, x0 is carried up a coarse grid with a UNet (no grad, conditional, no CFG).
With T = 1000 and ``steps`` = 10 (stride 100) the grid's steps go from level s to level d = s + 100, with
d = 1, 101, ..., 901 (the scheduler's ``steps_offset`` shifts them) and s = -99, 1, ..., 801. One step:

    ε̂ = ε_θ(x_s, level, c)                              (as epsilon, whatever the prediction type)
    x_d = sqrt(ᾱ_d) (x_s - sqrt(1 - ᾱ_s) ε̂) / sqrt(ᾱ_s) + sqrt(1 - ᾱ_d) ε̂    (DDIM inverse update, no clipping)
    x_d += η · sqrt(σ²_{s→d}) · z,   z ~ N(0, I),   σ²_{s→d} = (1 - ᾱ_s) / (1 - ᾱ_d) · (1 - ᾱ_d / ᾱ_s)

η = 0.1; σ²_{s→d} is the DDPM posterior variance of the step just taken. The row is then trained at its own t on
x_inv with the reparameterised noise

    eps* = (x_inv - sqrt(ᾱ_t) x0) / sqrt(1 - ᾱ_t),   so that   x_inv = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) eps*  exactly.

Two semantics (``semantics``), which differ in which steps run, the level the UNet is told, and the start:

- ``diffalign``: the steps whose *destination* d < t run (0-10 UNet calls), so x_inv sits at the grid
  level just below t; the UNet is told d; the first step starts from x0 itself (ᾱ_{-99} = 1, so no noise).
- ``authors`` (InPO's default, objectives/inpo.py): the InPO authors' train.py under the diffusers it pins (0.20, ``DDIMInverseScheduler`` with
  ``set_alpha_to_one=False``): the steps whose *source* s < t run (1-10 calls), so x_inv sits at the grid level
  at or above t (at 901 for t > 901); the UNet is told s (-99 on the first call); level -99 has
  ᾱ = alphas_cumprod[0] (SD1.5's and SDXL's configs set ``set_alpha_to_one=False``), so the first step adds its
  noise too. (From diffusers 0.22 on, the same script would
  take destination levels; the authors' batch shares the first row's t, which needs batch size 1.)

``diffalign`` never gives the UNet a level outside its training range (-99) and never makes x_inv noisier than
the t it is trained at; on the toy the authors' grid trains better (docs/results.md), so InPO defaults to it. With
a model that predicts the noise exactly, both give eps* of unit std only at large t (tests/test_inversion.py pins
the values at t = 50 ... 700).
diffusers' ``DDIMInverseScheduler`` is not used: its semantics changed between versions and its ``clip_sample``
default differs.
"""

from __future__ import annotations

import torch

from ..models.conditioning import cast_floats, take_rows


SEMANTICS = ("diffalign", "authors")


def grid_destinations(num_train_timesteps: int, steps: int, offset: int = 1) -> list[int]:
    """Destination levels d of the inversion grid, ascending (T=1000, 10 steps, offset 1: 1, 101, ..., 901)."""
    stride = num_train_timesteps // steps
    return [k * stride + offset for k in range(steps) if k * stride + offset < num_train_timesteps]


def _abar(alphas_cumprod: torch.Tensor, level: torch.Tensor, below_zero: torch.Tensor) -> torch.Tensor:
    """ᾱ at integer levels [n]; negative levels (x0) have ᾱ = ``below_zero``."""
    return torch.where(level >= 0, alphas_cumprod[level.clamp(min=0)], below_zero)


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
                           semantics: str = "diffalign", **unet_kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """x0 [R, C, H, W] (float32), t [R], text [R, L, D] -> (x_inv [R, C, H, W], eps* [R, C, H, W]).

    ``generators[r]`` draws row r's inversion noise. The UNet runs on the rows whose step is due at each level.
    """
    if semantics not in SEMANTICS:
        raise ValueError(f"unknown inversion semantics {semantics!r}; expected one of {SEMANTICS}")
    authors = semantics == "authors"
    abars = scheduler.alphas_cumprod.to(x0.device, torch.float32)
    # level -99: x0 itself (diffalign), or ᾱ_0 (the authors' DDIMInverseScheduler under SD1.5's and SDXL's
    # scheduler configs, which set set_alpha_to_one=False)
    below_zero = abars[0] if authors else abars.new_ones(())
    stride = scheduler.config.num_train_timesteps // steps
    offset = scheduler.config.get("steps_offset", 0) or 0
    x = x0.clone()
    for d in grid_destinations(scheduler.config.num_train_timesteps, steps, offset):
        s = d - stride
        active = torch.nonzero(t > (s if authors else d)).flatten()
        if len(active) == 0:
            break  # levels only rise; no row needs this one
        level_s = torch.full((len(active),), s, device=x0.device)
        level_d = level_s + stride
        told = level_s if authors else level_d  # the level the UNet is given
        abar_s = _abar(abars, level_s, below_zero).view(-1, 1, 1, 1)
        abar_d = _abar(abars, level_d, below_zero).view(-1, 1, 1, 1)
        xs = x[active]
        dtype = next(unet.parameters()).dtype
        out = unet(xs.to(dtype), told, text[active].to(dtype),
                   **cast_floats(take_rows(unet_kwargs, active), dtype)).sample.float()
        eps_hat = _as_epsilon(scheduler, out, xs, abar_s if authors else abar_d)  # at the level it was told
        x_d = abar_d.sqrt() * (xs - (1 - abar_s).sqrt() * eps_hat) / abar_s.sqrt() + (1 - abar_d).sqrt() * eps_hat
        if eta > 0:
            variance = (1 - abar_s) / (1 - abar_d) * (1 - abar_d / abar_s)
            z = torch.stack([torch.randn(xs.shape[1:], generator=generators[r]) for r in active.tolist()])
            x_d = x_d + eta * variance.clamp(min=0).sqrt() * z.to(x_d.device)
        x[active] = x_d
    abar_t = abars[t].view(-1, 1, 1, 1)
    eps_star = (x - abar_t.sqrt() * x0) / (1 - abar_t).sqrt()
    return x, eps_star
