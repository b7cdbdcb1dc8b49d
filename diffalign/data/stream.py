"""Training examples from a streamed table (``data.streaming``), read as they arrive: nothing is downloaded or
converted before the first step, and memory holds one shuffle block per reader, whatever the table's size.

Readers ("streams"): every DataLoader worker of every process is one stream, ``S = processes x max(1, workers)``.
Each epoch the table's shards (its files) are shuffled from (seed, epoch) and dealt out, stream ``s`` reading shards
``order[s::S]``; a table with fewer shards than streams is read whole by every stream, each keeping the rows with
``(shard + row) % S == s``. Either way no two streams read the same example. With ``data.max_pairs`` every stream
reads the first rows of the table in their stored order until ``max_pairs`` examples are found, taking every S-th
usable row, so no more than that prefix is ever downloaded.

Shuffle: a stream reads ``data.shuffle_buffer`` examples (whole rows: a pair read as feedback gives two) into a
block and yields them in an order drawn from (seed, epoch, stream, block): by the data sampler's own rule
(sampler.py; KTO's desirable ratio included). A resume re-reads only the block it stopped in.

Position (exact resume): each example carries its stream's cursor after it, the batch the cursor of its last
example; the loop keeps the newest cursor of every stream it consumed (``StreamPositions``), the checkpoint saves
them as JSON, and a resumed run restarts each stream at its cursor. The DataLoader hands out batches from its
workers in turn, so after ``n`` batches the next comes from stream slot ``n % workers``; a resumed loader's worker
``w`` plays slot ``(w + n) % workers``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .examples import SHARD_BITS, BadSample, TableExamples
from .sampler import DesirableRatioSampler


@dataclass
class Cursor:
    """Where a stream stands: the block it is in starts at shard ``lanes[lane]``, table row ``offset`` of that
    shard, in ``epoch``; ``index`` of the block's examples are consumed. ``rows`` / ``examples``: usable rows and
    examples counted so far this epoch (all streams together; only ``max_pairs`` reading uses them)."""

    epoch: int = 0
    lane: int = 0
    offset: int = 0
    rows: int = 0
    examples: int = 0
    block: int = 0
    index: int = 0

    def next_epoch(self) -> "Cursor":
        return Cursor(epoch=self.epoch + 1)


class ShardPlan:
    """Which shards stream ``s`` of ``streams`` reads in an epoch, and which of their rows it owns."""

    def __init__(self, n_shards: int, streams: int, seed: int, prefix: bool):
        self.n, self.streams, self.seed, self.prefix = n_shards, streams, seed, prefix

    def lanes(self, stream: int, epoch: int) -> list[int]:
        if self.prefix:  # max_pairs: the table's first rows, in stored order
            return list(range(self.n))
        order = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch)).tolist()
        return order[stream::self.streams] if self.n >= self.streams else order

    def striped(self) -> bool:
        """Rows (not shards) are dealt out: fewer shards than streams, or max_pairs."""
        return self.prefix or self.n < self.streams


@dataclass
class _Row:
    """One table row read by a stream: its examples (id, record) if the stream owns it, the cursor after it."""

    examples: list
    after: Cursor
    left_out: int = 0  # a row with no example (a tie)
    bad: int = 0  # a row skipped as bad (data.on_bad_sample: skip)


def _records(table, batch_size: int = 64):
    """A streamed table's rows as dicts. ``iter`` by batches, not ``iter(table)``: in a DataLoader worker the
    latter would deal the table's shards out to the workers once more."""
    for batch in table.iter(batch_size=batch_size):
        columns = list(batch.items())
        for i in range(len(columns[0][1])):
            yield {name: values[i] for name, values in columns}


class StreamedExamples(torch.utils.data.IterableDataset):
    """``examples`` (a TableExamples opened with ``streaming=True``) read by stream, shuffled by block.

    Yields {"example", "row" (its id), "epoch", "stream", "cursor", "left_out", "bad"}; ``StreamCollate`` turns a list of them into the
    method's batch plus its ``stream_position``. ``desirable_ratio``: KTO's draw (sampler.DesirableRatioSampler)
    within each block."""

    def __init__(self, examples: TableExamples, seed: int, buffer: int, rank: int = 0, processes: int = 1,
                 workers: int = 0, desirable_ratio: float | None = None):
        if buffer < 1:
            raise ValueError(f"data.shuffle_buffer: expected at least 1 example, got {buffer}")
        self.examples, self.seed, self.buffer, self.desirable_ratio = examples, seed, buffer, desirable_ratio
        self.rank, self.workers = rank, max(1, workers)
        self.streams = processes * self.workers
        self.limit = examples.cfg.max_pairs
        self.n_shards = examples.table.n_shards
        if self.n_shards >= 1 << (63 - SHARD_BITS):
            raise ValueError(f"{examples.cfg.source}: {self.n_shards} shards; at most {1 << (63 - SHARD_BITS)}")
        self.plan = ShardPlan(self.n_shards, self.streams, seed, prefix=self.limit is not None)
        self.start: dict[int, Cursor] = {}  # stream -> where a resumed run starts it
        self.rotation = 0  # batches consumed before a resume, modulo workers

    def resume(self, cursors: dict[int, dict], batches_read: int) -> None:
        self.start = {int(s): Cursor(**c) for s, c in cursors.items()}
        self.rotation = batches_read % self.workers

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker = info.id if info is not None else 0
        if info is not None and info.num_workers != self.workers:
            raise RuntimeError(f"streamed data built for {self.workers} workers runs in {info.num_workers}")
        stream = self.rank * self.workers + (worker + self.rotation) % self.workers
        return self._stream(stream, self.start.get(stream, Cursor()))

    # --- reading -------------------------------------------------------------------------------------------------

    def _rows(self, stream: int, cursor: Cursor):
        """The rows of ``cursor``'s epoch from the cursor on, as _Row (the stream's own rows with their examples,
        the others with none); ends at the epoch's end or, with max_pairs, when the prefix is complete."""
        lanes = self.plan.lanes(stream, cursor.epoch)
        rows, examples = cursor.rows, cursor.examples
        for lane in range(cursor.lane, len(lanes)):
            shard = lanes[lane]
            start = cursor.offset if lane == cursor.lane else 0
            table = self.examples.table.shard(num_shards=self.n_shards, index=shard)
            for offset, record in enumerate(_records(table.skip(start) if start else table), start):
                if self.limit is not None and examples >= self.limit:
                    return
                row = shard << SHARD_BITS | offset
                dealt_rows = self.plan.striped() and not self.plan.prefix  # fewer shards than streams
                owner = (shard + offset) % self.streams if dealt_rows else stream
                result = _Row([], Cursor(cursor.epoch, lane, offset + 1))
                if owner == stream or self.plan.prefix:
                    try:
                        found = self.examples.expand(row, record)
                    except BadSample:
                        if self.examples.cfg.on_bad_sample != "skip":
                            raise
                        found, result.bad = [], int(not self.plan.prefix or stream == 0)
                    if self.plan.prefix:  # count every stream's rows alike; keep every S-th usable row
                        found = found[: self.limit - examples]
                        mine = bool(found) and rows % self.streams == stream
                        rows, examples = rows + bool(found), examples + len(found)
                        result.left_out = int(not found and stream == 0 and not result.bad)
                        found = found if mine else []
                    else:
                        result.left_out = int(not found and not result.bad)
                    result.examples = found
                result.after.rows, result.after.examples = rows, examples
                yield result

    def _blocks(self, stream: int, cursor: Cursor):
        """(start cursor, examples, cursor after the block, left_out, bad) forever, epoch after epoch."""
        epoch_examples, epoch_start = 0, cursor == Cursor(epoch=cursor.epoch)
        rows = self._rows(stream, cursor)  # one pass over the epoch's shards, block after block
        while True:
            items, left_out, bad, after, full = [], 0, 0, cursor, False
            for row in rows:
                items += row.examples
                left_out, bad, after = left_out + row.left_out, bad + row.bad, row.after
                if len(items) >= self.buffer:
                    full = True
                    break
            epoch_examples += len(items)
            if full:
                after = dataclasses.replace(after, block=cursor.block + 1, index=0)
            else:  # the epoch ended in this block
                if epoch_examples == 0 and epoch_start:
                    raise ValueError(f"{self.examples.cfg.source}: stream {stream} of {self.streams} found no usable "
                                     f"example in its epoch {cursor.epoch} (every row left out: ties or bad rows)")
                after, epoch_examples, epoch_start = cursor.next_epoch(), 0, True
                rows = self._rows(stream, after)
            yield cursor, items, after, left_out, bad
            cursor = after

    def _order(self, items: list, stream: int, cursor: Cursor) -> list[int]:
        """The order of a block's examples, from (seed, epoch, stream, block)."""
        seed = int(np.random.SeedSequence([self.seed, cursor.epoch, stream, cursor.block]).generate_state(1)[0])
        if self.desirable_ratio is not None:
            labels = [self.examples.label(record) for _, record in items]
            if 0 < sum(label == 1 for label in labels) < len(labels):  # both kinds: draw by the ratio
                return list(DesirableRatioSampler(labels, self.desirable_ratio, seed))
        return np.random.default_rng(seed).permutation(len(items)).tolist()

    def _stream(self, stream: int, cursor: Cursor):
        left_out = bad = 0  # rows left out since the last example yielded: reported with the next one
        for start, items, after, block_left_out, block_bad in self._blocks(stream, cursor):
            self.examples.epoch = start.epoch  # the per-example seeds' epoch
            order = self._order(items, stream, start) if items else []
            if not start.index:  # a resumed block's were counted before the checkpoint
                left_out, bad = left_out + block_left_out, bad + block_bad
            for j in range(start.index, len(order)):
                row, record = items[order[j]]
                position = dataclasses.replace(start, index=j + 1) if j + 1 < len(order) else after
                yield {"example": self.examples.load_or_skip(row, lambda: record), "row": row, "epoch": start.epoch,
                       "stream": stream, "cursor": dataclasses.asdict(position), "left_out": left_out, "bad": bad}
                left_out = bad = 0


class StreamCollate:
    """The method's collate over streamed examples, plus ``stream_position`` {"stream", "cursor"} (the cursor
    after the batch's last example), ``skipped`` (bad samples, rows included) and ``ties_dropped``."""

    def __init__(self, collate):
        self.collate = collate

    def __call__(self, items: list[dict]) -> dict:
        batch = self.collate([item["example"] for item in items])
        batch["skipped"] = batch.get("skipped", 0) + sum(item["bad"] for item in items)
        batch["ties_dropped"] = sum(item["left_out"] for item in items)
        batch["stream_position"] = {"stream": items[-1]["stream"], "cursor": items[-1]["cursor"]}
        return batch


class StreamPositions:
    """The loop's record of the streams it consumed, saved in checkpoints (JSON) and restored on resume."""

    def __init__(self, dataset: StreamedExamples):
        self.dataset, self.cursors, self.batches_read = dataset, {}, 0

    def consumed(self, position: dict) -> None:
        self.cursors[position["stream"]] = position["cursor"]
        self.batches_read += 1

    def state_dict(self) -> dict:
        return {"streams": self.dataset.streams, "batches_read": self.batches_read,
                "cursors": {str(s): c for s, c in self.cursors.items()}}

    def load_state_dict(self, state: dict) -> None:
        if state["streams"] != self.dataset.streams:
            raise ValueError(f"the checkpoint's data was read by {state['streams']} streams (processes x "
                             f"data.num_workers), this run has {self.dataset.streams}: resume with the same "
                             "data.num_workers")
        self.batches_read = state["batches_read"]
        self.cursors = {int(s): c for s, c in state["cursors"].items()}
        self.dataset.resume(self.cursors, self.batches_read)
