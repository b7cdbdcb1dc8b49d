"""Streamed data (data.streaming): every reader (process x DataLoader worker) sees its own examples, none twice in
an epoch; max_pairs reads only the table's first rows; ties and bad rows are counted on the fly; a resumed stream
continues with exactly the batches an uninterrupted one reads next; and a killed + resumed streaming run ends with
the same weights."""

import io

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image
from safetensors.torch import load_file

from diffalign.checkpointing import complete_checkpoints
from diffalign.config import DataConfig, load_config
from diffalign.data.feedback import FeedbackImages, collate_singles
from diffalign.data.pairs import PreferencePairs, collate_pairs
from diffalign.data.stream import Cursor, StreamCollate, StreamedExamples, StreamPositions
from diffalign.models.lora import LORA_FILE
from diffalign.models.tokenizer import build_clip_tokenizer
from diffalign.paths import REPO_ROOT
from diffalign.train import train

N_ROWS, TIES = 60, {3, 17, 40}


def _png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _shards(folder, n_shards: int, n_rows: int = N_ROWS, bad_label_row: int | None = None) -> str:
    """A Pick-a-Pic-schema table in ``n_shards`` parquet files; row i's images are flat colours i and 255 - i."""
    rows = [{"caption": f"pair {i}", "jpg_0": _png(i), "jpg_1": _png(255 - i),
             "label_0": 0.5 if i in TIES else float(i % 2)} for i in range(n_rows)]
    if bad_label_row is not None:
        rows[bad_label_row]["label_0"] = 7.0
    (folder / "data").mkdir(parents=True)
    for k, part in enumerate(np.array_split(np.arange(n_rows), n_shards)):
        shard = folder / f"data/train-{k:05d}-of-{n_shards:05d}.parquet"
        Dataset.from_list([rows[i] for i in part]).to_parquet(str(shard))
    return str(folder)


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


def _table_row(dataset, row: int) -> int:
    """A streamed example id -> the table row it was read from (shards split the rows in order)."""
    shard, offset = row >> 32, row & 0xFFFFFFFF
    return int(np.array_split(np.arange(N_ROWS), dataset.n_shards)[shard][offset])


def _epoch_rows(dataset, stream: int) -> list[int]:
    """The table rows stream ``stream`` yields in epoch 0."""
    rows = []
    for item in dataset._stream(stream, Cursor()):
        if item["epoch"] == 1:
            return rows
        rows.append(_table_row(dataset, item["row"]))


@pytest.mark.parametrize("n_shards", [6, 1])  # shards dealt out to 4 readers; a single shard's rows dealt out
def test_processes_and_workers_read_disjoint_examples_covering_the_table(tmp_path, tokenizer, n_shards):
    source = _shards(tmp_path, n_shards)
    decisive = sorted(set(range(N_ROWS)) - TIES)
    seen = []
    for rank in range(2):  # 2 processes x 2 DataLoader workers, each worker a real process
        stream = StreamedExamples(PreferencePairs(DataConfig(source=source, resolution=8, streaming=True),
                                                  tokenizer, 0, streaming=True), seed=0, buffer=5, rank=rank,
                                  processes=2, workers=2)
        loader = torch.utils.data.DataLoader(stream, batch_size=1, num_workers=2, collate_fn=lambda items: items[0])
        per_stream: dict[int, list] = {}
        done = set()
        for item in loader:
            if item["epoch"] == 1:
                done.add(item["stream"])
            if len(done) == 2:
                break
            if item["stream"] not in done:
                per_stream.setdefault(item["stream"], []).append(_table_row(stream, item["row"]))
        assert sorted(per_stream) == [2 * rank, 2 * rank + 1]  # worker w of rank r is stream 2r + w
        seen += [rows for _, rows in sorted(per_stream.items())]
    everything = [row for rows in seen for row in rows]
    assert sorted(everything) == decisive  # every decisive pair once: disjoint readers, nothing lost
    assert all(rows for rows in seen)


def test_max_pairs_reads_only_the_first_rows_in_stored_order(tmp_path, tokenizer):
    source = _shards(tmp_path, 4)
    streams = [StreamedExamples(PreferencePairs(DataConfig(source=source, resolution=8, streaming=True,
                                                           max_pairs=10), tokenizer, 0, streaming=True),
                                seed=0, buffer=4, rank=rank, processes=2) for rank in range(2)]
    rows = [_epoch_rows(s, s.rank) for s in streams]
    first_ten = [r for r in range(N_ROWS) if r not in TIES][:10]  # the same rows map-style max_pairs keeps
    assert sorted(rows[0] + rows[1]) == first_ten and not set(rows[0]) & set(rows[1])


def test_ties_and_bad_rows_are_counted_as_they_are_read(tmp_path, tokenizer):
    source = _shards(tmp_path, 1, bad_label_row=5)
    skip = StreamedExamples(PreferencePairs(DataConfig(source=source, resolution=8, streaming=True,
                                                       on_bad_sample="skip"), tokenizer, 0, streaming=True),
                            seed=0, buffer=100)
    items = []
    for item in skip._stream(0, Cursor()):
        if item["epoch"] == 1:
            break
        items.append(item)
    assert len(items) == N_ROWS - len(TIES) - 1
    assert sum(i["left_out"] for i in items) == len(TIES) and sum(i["bad"] for i in items) == 1
    error = StreamedExamples(PreferencePairs(DataConfig(source=source, resolution=8, streaming=True), tokenizer, 0,
                                             streaming=True), seed=0, buffer=100)
    with pytest.raises(ValueError, match=r"shard 0 row 5: label_0=7\.0; expected 0, 0\.5 or 1"):
        next(iter(error))


def _loader(dataset, collate, workers):
    return torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=workers, collate_fn=StreamCollate(collate))


def _same_batches(a: list, b: list):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            if torch.is_tensor(x[key]):
                assert torch.equal(x[key], y[key]), key
            else:
                assert x[key] == y[key], key


@pytest.mark.parametrize("view,workers", [("pairs", 2), ("feedback with desirable ratio", 0)])
def test_a_resumed_stream_reads_exactly_the_batches_an_uninterrupted_one_reads_next(tmp_path, tokenizer, view,
                                                                                   workers):
    """Stopped after 5 batches (mid-block, an odd number: the loader's worker turn moves), restored from the
    position a checkpoint saves, it yields the uninterrupted run's next 9 batches, bit for bit."""
    source = _shards(tmp_path, 3)

    def build():
        cfg = DataConfig(source=source, resolution=8, streaming=True, random_flip=True, num_workers=workers)
        if view == "pairs":
            return StreamedExamples(PreferencePairs(cfg, tokenizer, 0, streaming=True), 0, 7, workers=workers), \
                collate_pairs
        examples = FeedbackImages(cfg, tokenizer, 0, streaming=True)  # pairs read as feedback, on the fly
        return StreamedExamples(examples, 0, 7, workers=workers, desirable_ratio=0.8), collate_singles

    dataset, collate = build()
    straight = []
    for batch in _loader(dataset, collate, workers):
        straight.append(batch)
        if len(straight) == 14:
            break
    first, position = build()[0], None
    position = StreamPositions(first)
    for batch in _loader(first, collate, workers):
        position.consumed(batch.pop("stream_position"))
        if position.batches_read == 5:
            break
    saved = position.state_dict()
    resumed, _ = build()
    StreamPositions(resumed).load_state_dict(saved)
    after = []
    for batch in _loader(resumed, collate, workers):
        after.append(batch)
        if len(after) == 9:
            break
    _same_batches(after, straight[5:])
    with pytest.raises(ValueError, match="read by 1 streams.*this run has 2"):
        StreamPositions(StreamedExamples(PreferencePairs(DataConfig(source=source, resolution=8, streaming=True),
                                                         tokenizer, 0, streaming=True), 0, 7, workers=2)
                        ).load_state_dict({**saved, "streams": 1})


SETTING = [("train.batch_size", "4"), ("train.grad_accum", "1"), ("train.max_steps", "5"),
           ("train.warmup_steps", "1"), ("train.lr_scheduler", "cosine"), ("eval.enabled", "false"),
           ("train.report_to", "none"), ("data.streaming", "true"), ("data.shuffle_buffer", "6"),
           ("data.num_workers", "2")]


def test_a_killed_and_resumed_streaming_run_ends_with_the_same_weights(tmp_path):
    """Checkpoints after every update; resuming from the one after update 3 (an odd number of batches with 2
    workers, inside a shuffle block) reaches the uninterrupted run's weights bit for bit."""

    def cfg(out, extra=()):
        return load_config(REPO_ROOT / "configs/toy/dpo.yaml", SETTING + [("output_dir", str(out))] + list(extra))

    straight = tmp_path / "straight"
    summary = train(cfg(straight, [("train.checkpoint_every", "1"), ("train.checkpoints_total_limit", "0")]))
    assert summary["examples_available"] is None and summary["steps"] == 5
    checkpoint = complete_checkpoints(straight)[2]
    assert (checkpoint / "data_0.json").is_file()
    resumed = train(cfg(tmp_path / "resumed"), resume=str(checkpoint))
    assert resumed["resumed"]["from_step"] == 3
    a, b = load_file(straight / LORA_FILE), load_file(tmp_path / "resumed" / LORA_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_streaming_is_chosen_by_source_and_refused_where_a_method_reads_the_table_whole(tmp_path):
    from diffalign.data.factory import wants_streaming

    local = _shards(tmp_path, 2)
    assert not wants_streaming(DataConfig(source=local), "images")  # local: map-style unless asked
    assert wants_streaming(DataConfig(source=local, streaming=True), "images")
    # a hub id whose size cannot be read (offline here): streamed, the safe choice
    assert wants_streaming(DataConfig(source="someone/a-dataset-that-is-not-cached"), "images")
    assert not wants_streaming(DataConfig(source="someone/big", streaming=None), "images", user_profiles=True)
    with pytest.raises(ValueError, match="PPD draws each pair's profile"):
        wants_streaming(DataConfig(source=local, streaming=True), "images", user_profiles=True)
    with pytest.raises(ValueError, match="reads a list of prompts"):
        wants_streaming(DataConfig(source=local, streaming=True), "prompts")
