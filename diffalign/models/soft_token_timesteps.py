"""What SoftREPA's two kinds of soft tokens (UNet cross-attention: models/soft_tokens.py; SD3's joint blocks:
models/soft_tokens_joint.py) share about timesteps: the bucket of a timestep, and the forward pre-hook that records
the denoiser call's timestep (attention processors and block hooks do not see it)."""

from __future__ import annotations

import torch


def bucket_of(timestep, buckets: int, num_train_timesteps: int) -> torch.Tensor:
    """Bucket index of each timestep [1 or B]: t · N // T, clamped to [0, N - 1] (flow timesteps 1000 σ: floored)."""
    t = torch.as_tensor(timestep).reshape(-1).long()
    return (t * buckets // num_train_timesteps).clamp(0, buckets - 1)


def record_timestep(tokens, position: int = 1):
    """A denoiser forward pre-hook that hands the call's timestep (``timestep=``, or the argument at ``position``:
    the UNet's 2nd, SD3's 4th) to the tokens."""
    def hook(module, args, kwargs):
        tokens.timestep = kwargs["timestep"] if "timestep" in kwargs else \
            (args[position] if len(args) > position else None)

    return hook
