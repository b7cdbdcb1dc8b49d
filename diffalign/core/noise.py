"""Noise and timesteps, shared within a pair and derived from each example's own seed.

Image-pair objectives batch the two members as ``[w_1..w_B, l_1..l_B]`` (2B rows). The derivation of
Diffusion-DPO compares the two members under the *same* forward-process draw, so row i and row B+i form one noise
group and get the same ``eps`` and the same ``t``; this also lowers the variance of their difference. Caption pairs
(TPO) group the same image under two captions the same way; single images (KTO) are groups of one.

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


def sample_latents(mean: torch.Tensor, std: torch.Tensor, generators: list[torch.Generator]) -> torch.Tensor:
    """A draw from the VAE posterior (mean, std [N, C, H, W]); image j uses ``generators[j]`` (its noise group's)."""
    eps = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in generators])
    return mean + std * eps.to(mean.device, mean.dtype)


def group_noise(shape: tuple, generators: list[torch.Generator], num_train_timesteps: int,
                timestep_range: tuple[int, int] | None = None):
    """One (eps [C, H, W], t) per noise group -> (noise [G, C, H, W], timesteps [G] long), from its generator.

    Rows of a batch that belong to the same group (the two members of a pair) take the same eps and t.
    t is uniform on [0, num_train_timesteps), or on ``timestep_range`` = [low, high) (the same draws for the
    full range, so a run without one is unchanged).
    """
    low, high = timestep_range or (0, num_train_timesteps)
    if not 0 <= low < high <= num_train_timesteps:
        raise ValueError(f"timestep range [{low}, {high}) is not inside [0, {num_train_timesteps})")
    eps = torch.stack([torch.randn(shape, generator=g) for g in generators])
    t = torch.stack([torch.randint(low, high, (), generator=g) for g in generators])
    return eps, t
