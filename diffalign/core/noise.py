"""Noise and timesteps, shared within a pair and derived from each example's own seed.

Image-pair objectives batch the two members as ``[w_1..w_B, l_1..l_B]`` (2B rows). The derivation of
Diffusion-DPO compares the two members under the *same* forward-process draw, so row i and row B+i get the same
``eps`` and the same ``t``; this also lowers the variance of their difference.

Every random draw of an example comes from a generator seeded with that example's seed (run seed, epoch, row), not
from a stream shared by the batch. So a pair gets the same noise whatever the batch size, the accumulation, the
number of processes or a resume: batch 8 x 1 equals batch 4 x 2 equals 2 ranks x 4.
"""

from __future__ import annotations

import numpy as np
import torch


def example_seed(run_seed: int, epoch: int, row: int) -> int:
    """A 63-bit seed for one example in one epoch (numpy's SeedSequence: stable across Python versions)."""
    state = np.random.SeedSequence([run_seed, epoch, row]).generate_state(1, np.uint64)[0]
    return int(state) & 0x7FFF_FFFF_FFFF_FFFF


def seeded_generators(seeds: torch.Tensor) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def sample_latents(latent_dist, generators: list[torch.Generator], repeats: int = 1) -> torch.Tensor:
    """A draw from the VAE posterior [repeats * B, C, H, W]; rows r * B + i use generator i."""
    mean, std = latent_dist.mean, latent_dist.std
    per_row = mean.shape[0] // repeats
    eps = torch.stack([torch.randn(mean.shape[1:], generator=generators[i % per_row])
                       for i in range(mean.shape[0])])  # row order: all w first, then all l (same generator i)
    return mean + std * eps.to(mean.device, mean.dtype)


def pair_noise(latents: torch.Tensor, generators: list[torch.Generator], num_train_timesteps: int):
    """latents [2B, C, H, W] ordered (winners, losers) -> (noise [2B, C, H, W], timesteps [2B] long).

    Rows i and B + i share noise and timestep, drawn from generator i.
    """
    half = latents.shape[0] // 2
    if latents.shape[0] != 2 * len(generators):
        raise ValueError(f"pair batches need 2 rows per generator; got {latents.shape[0]} rows, {len(generators)}")
    eps = torch.stack([torch.randn(latents.shape[1:], generator=g) for g in generators])
    t = torch.stack([torch.randint(0, num_train_timesteps, (), generator=g) for g in generators])
    eps, t = eps.to(latents.device, latents.dtype), t.to(latents.device)
    assert eps.shape[0] == half
    return torch.cat([eps, eps]), torch.cat([t, t])
