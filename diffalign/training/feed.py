"""The batches the loop trains on, from where a run (or its resume) starts: ``batches(global_step)`` yields
(epoch, batch) forever; the loop stops at train.max_steps.

EpochFeed: map-style data through accelerate's prepared DataLoader; epoch e in the sampler's (seed, e) order, and
a resume skips the micro-batches of the updates already done. Nothing to checkpoint: the step says where it is.
StreamFeed: streamed data (data/stream.py), sharded by the dataset itself (accelerate does not prepare its
loader); ``position`` (the streams' cursors) goes into every checkpoint and a resume restarts each stream there.
"""

from __future__ import annotations

import torch
from accelerate.utils import send_to_device

from ..data.stream import StreamPositions


def data_loader(cfg, dataset, sampler, collate, device: torch.device) -> torch.utils.data.DataLoader:
    # Workers decode and transform ahead of the step; pinned memory makes the copy to a GPU asynchronous. Not
    # persistent: each epoch's workers must copy the dataset with its new ``epoch`` (the per-example seeds).
    workers = cfg.data.num_workers
    return torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler, collate_fn=collate,
                                       drop_last=sampler is not None, num_workers=workers,
                                       pin_memory=device.type == "cuda", prefetch_factor=4 if workers else None)


class EpochFeed:
    position = None  # nothing to save: the optimizer step says where a resume starts
    prepared_by_accelerate = True  # train.py prepares ``loader`` with the model (DeepSpeed reads its batch size)

    def __init__(self, cfg, accelerator, dataset, sampler, collate):
        self.accelerator, self.dataset, self.sampler = accelerator, dataset, sampler
        self.grad_accum = cfg.train.grad_accum
        self.loader = data_loader(cfg, dataset, sampler, collate, accelerator.device)

    def batches(self, global_step: int):
        updates_per_epoch = len(self.loader) // self.grad_accum  # exact: the sampler trims epochs to whole updates
        epoch, done = divmod(global_step, updates_per_epoch)
        skip = done * self.grad_accum  # micro-batches of this epoch done before a resume
        while True:
            self.dataset.epoch = epoch
            batches = self.accelerator.skip_first_batches(self.loader, skip) if skip else self.loader
            # accelerate's loaders push their own pass counter into the sampler when iterated; make it our epoch
            # (a fresh loader after a resume would otherwise replay epoch 0's order).
            batches.set_epoch(epoch)
            self.sampler.set_epoch(epoch)
            for batch in batches:
                yield epoch, batch
            epoch, skip = epoch + 1, 0


class StreamFeed:
    prepared_by_accelerate = False  # the stream shards itself by process and worker

    def __init__(self, cfg, accelerator, dataset, collate):
        self.device = accelerator.device
        self.dataset, self.position = dataset, StreamPositions(dataset)
        self.loader = data_loader(cfg, dataset, None, collate, accelerator.device)

    def batches(self, global_step: int):
        """The streams from their checkpointed cursors (set by ``position.load_state_dict`` on resume)."""
        for batch in self.loader:
            where = batch.pop("stream_position")
            self.position.consumed(where)
            yield where["cursor"]["epoch"], send_to_device(batch, self.device, non_blocking=True)


def make_feed(cfg, accelerator, dataset, sampler, collate):
    if sampler is None:
        return StreamFeed(cfg, accelerator, dataset, collate)
    return EpochFeed(cfg, accelerator, dataset, sampler, collate)
