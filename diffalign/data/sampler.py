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


class DesirableRatioSampler(EpochShuffle):
    """For binary feedback (KTO): each draw is desirable with probability ``ratio`` (the paper samples ~80%
    desirable), taken in turn from an epoch-seeded shuffle of that class (reshuffled when used up).

    An epoch is ``n`` draws (trimmed to whole optimizer steps, as EpochShuffle); the order depends only on
    (seed, epoch), so resumes replay it exactly.
    """

    def __init__(self, labels, ratio: float, seed: int, multiple: int = 1):
        super().__init__(len(labels), seed, multiple)
        if not 0 < ratio < 1:
            raise ValueError(f"desirable_ratio must be in (0, 1); got {ratio}")
        labels = torch.as_tensor(labels)
        self.desirable = torch.nonzero(labels == 1).flatten()
        self.undesirable = torch.nonzero(labels != 1).flatten()
        if len(self.desirable) == 0 or len(self.undesirable) == 0:
            raise ValueError("desirable_ratio needs both desirable and undesirable examples")
        self.ratio = ratio

    def __iter__(self):
        gen = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        pools = {True: self.desirable, False: self.undesirable}
        orders = {k: v[torch.randperm(len(v), generator=gen)] for k, v in pools.items()}
        used = {True: 0, False: 0}
        out = []
        for take_desirable in (torch.rand(len(self), generator=gen) < self.ratio).tolist():
            if used[take_desirable] == len(orders[take_desirable]):
                pool = pools[take_desirable]
                orders[take_desirable] = pool[torch.randperm(len(pool), generator=gen)]
                used[take_desirable] = 0
            out.append(int(orders[take_desirable][used[take_desirable]]))
            used[take_desirable] += 1
        return iter(out)
