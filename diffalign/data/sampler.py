"""An epoch-seeded shuffle: the order of epoch e depends only on (seed, e), so a resumed run replays it exactly.

It also trims each epoch to a whole number of optimizer steps (``multiple`` = pairs per step across all
processes), so no update is made of a short, under-weighted accumulation window at an epoch's end.
"""

from __future__ import annotations

import torch


class EpochShuffle(torch.utils.data.Sampler):
    def __init__(self, n: int, seed: int, multiple: int = 1):
        if n < multiple:
            raise ValueError(f"{n} examples cannot fill one optimizer step of {multiple} (batch x accumulation x "
                             "processes); lower train.batch_size or train.grad_accum")
        self.n, self.seed, self.multiple, self.epoch = n, seed, multiple, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n - self.n % self.multiple

    def __iter__(self):
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))
        return iter(order[: len(self)].tolist())
