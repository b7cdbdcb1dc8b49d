"""Every table layout reads the same pairs into the same examples: parquet (file, hub-like sharded folder), CSV with
image paths and its own column names (data.columns), JSONL with embedded bytes, an imagefolder with
metadata.jsonl, webdataset tar shards; map-style and streamed."""

import base64
import io
import json
import tarfile

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from diffalign.config import DataConfig
from diffalign.data.examples import row_name
from diffalign.data.pairs import PreferencePairs
from diffalign.data.stream import StreamedExamples
from diffalign.data.tables import layout_of, open_table
from diffalign.models.tokenizer import build_clip_tokenizer

LABELS = [1.0, 0.0, 0.5, 1.0, 0.0, 1.0, 0.5, 0.0, 1.0, 1.0, 0.0, 1.0]


def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pairs():
    rng = np.random.default_rng(0)
    return [{"caption": f"a red circle number {i}", "jpg_0": _png(rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)),
             "jpg_1": _png(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)), "label_0": label}
            for i, label in enumerate(LABELS)]


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


def _parquet_file(root, pairs):
    path = root / "pairs.parquet"
    Dataset.from_list(pairs).to_parquet(str(path))
    return str(path), {}


def _hub_like_folder(root, pairs):
    """What a hub dataset repo looks like: a README and data/train-0000k-of-00003.parquet."""
    folder = root / "hub_like"
    (folder / "data").mkdir(parents=True)
    (folder / "README.md").write_text("---\nlicense: mit\n---\n")
    for k, part in enumerate(np.array_split(np.arange(len(pairs)), 3)):
        Dataset.from_list([pairs[i] for i in part]).to_parquet(str(folder / f"data/train-{k:05d}-of-00003.parquet"))
    return str(folder), {}


def _csv_with_paths(root, pairs):
    """Image files beside a CSV of relative paths, in the user's own column names."""
    folder = root / "csv"
    (folder / "images").mkdir(parents=True)
    lines = ["text,image_a,image_b,choice"]
    for i, p in enumerate(pairs):
        for column in ("jpg_0", "jpg_1"):
            (folder / "images" / f"{i}_{column}.png").write_bytes(p[column])
        lines.append(f"\"{p['caption']}\",images/{i}_jpg_0.png,images/{i}_jpg_1.png,{p['label_0']}")
    (folder / "pairs.csv").write_text("\n".join(lines) + "\n")
    return str(folder / "pairs.csv"), {"caption": "text", "jpg_0": "image_a", "jpg_1": "image_b", "label_0": "choice"}


def _jsonl_with_bytes(root, pairs):
    path = root / "pairs.jsonl"
    uri = "data:image/png;base64,{}".format
    with open(path, "w") as handle:
        for p in pairs:
            handle.write(json.dumps({"caption": p["caption"], "jpg_0": uri(base64.b64encode(p["jpg_0"]).decode()),
                                     "jpg_1": uri(base64.b64encode(p["jpg_1"]).decode()), "label_0": p["label_0"]})
                         + "\n")
    return str(path), {}


def _imagefolder(root, pairs):
    folder = root / "imagefolder" / "train"
    folder.mkdir(parents=True)
    with open(folder / "metadata.jsonl", "w") as handle:
        for i, p in enumerate(pairs):
            for column in ("jpg_0", "jpg_1"):
                (folder / f"{i}_{column}.png").write_bytes(p[column])
            handle.write(json.dumps({"jpg_0_file_name": f"{i}_jpg_0.png", "jpg_1_file_name": f"{i}_jpg_1.png",
                                     "caption": p["caption"], "label_0": p["label_0"]}) + "\n")
    return str(folder.parent), {}


def _webdataset(root, pairs):
    """Two tar shards, a sample's files named <key>.jpg_0.png, <key>.caption.txt, <key>.label_0.txt (as the
    Pick-a-Pic webdataset of diffusers' ORPO example)."""
    folder = root / "wds"
    folder.mkdir()
    for k, part in enumerate(np.array_split(np.arange(len(pairs)), 2)):
        with tarfile.open(folder / f"{k:05d}.tar", "w") as tar:
            for i in part:
                p = pairs[i]
                for name, data in (("jpg_0.png", p["jpg_0"]), ("jpg_1.png", p["jpg_1"]),
                                   ("caption.txt", p["caption"].encode()), ("label_0.txt", str(p["label_0"]).encode())):
                    info = tarfile.TarInfo(f"sample{i:04d}.{name}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
    return str(folder), {}


LAYOUTS = {"hub-like parquet folder": _hub_like_folder, "csv with paths": _csv_with_paths,
           "jsonl with bytes": _jsonl_with_bytes, "imagefolder": _imagefolder, "webdataset": _webdataset}


def _examples(dataset, ids):
    return [dataset.load_or_skip(i, lambda i=i: dataset.record(i)) for i in ids]


def _same(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(torch.as_tensor(a[key]), torch.as_tensor(b[key])), key


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_reads_the_same_pairs_into_identical_examples(layout, pairs, tokenizer, tmp_path):
    reference_source, _ = _parquet_file(tmp_path, pairs)
    source, columns = LAYOUTS[layout](tmp_path, pairs)
    options = dict(resolution=32, random_crop=True, random_flip=True, caption_dropout=0.2)
    reference = PreferencePairs(DataConfig(source=reference_source, **options), tokenizer, seed=3)
    dataset = PreferencePairs(DataConfig(source=source, columns=columns, **options), tokenizer, seed=3)
    assert dataset.rows.tolist() == reference.rows.tolist() == [i for i, v in enumerate(LABELS) if v != 0.5]
    assert dataset.skipped_ties == 2
    for got, want in zip(_examples(dataset, dataset.rows), _examples(reference, reference.rows)):
        _same(got, want)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_streams_the_same_pairs(layout, pairs, tokenizer, tmp_path):
    """Streamed, each layout yields every decisive pair once per epoch, its images the same as the parquet
    file's (ids, and so seeds, number shards: compared by image)."""
    source, columns = LAYOUTS[layout](tmp_path, pairs)
    cfg = DataConfig(source=source, columns=columns, resolution=32, streaming=True)
    stream = iter(StreamedExamples(PreferencePairs(cfg, tokenizer, 0, streaming=True), seed=0, buffer=4))
    seen = [next(stream)["example"]["pixels"] for _ in range(10)]  # one epoch: the 10 decisive pairs
    reference = PreferencePairs(DataConfig(source=_parquet_file(tmp_path, pairs)[0], resolution=32), tokenizer)
    for row in reference.rows:
        want = reference.load_record(int(row), reference.record(int(row)))["pixels"]  # preferred first, centred
        assert sum(torch.equal(got, want) for got in seen) == 1


def test_layouts_are_recognised_and_bad_sources_named(tmp_path):
    with pytest.raises(ValueError, match="holds no .parquet"):
        layout_of(str(tmp_path))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt: expected a \.parquet"):
        layout_of(str(tmp_path / "notes.txt"))
    with pytest.raises(FileNotFoundError, match="missing.csv does not exist"):
        layout_of(str(tmp_path / "missing.csv"))
    assert layout_of("yuvalkirstain/pickapic_v2").name == "hub dataset"


def test_column_mapping_errors_name_the_column_and_list_those_found(pairs, tokenizer, tmp_path):
    source, columns = _csv_with_paths(tmp_path, pairs)
    with pytest.raises(ValueError, match=r"missing column\(s\) \['caption', 'jpg_0', 'jpg_1', 'label_0'\]; found "
                                         r"\['text', 'image_a', 'image_b', 'choice'\].*data\.columns"):
        PreferencePairs(DataConfig(source=source, resolution=32), tokenizer)
    with pytest.raises(ValueError, match=r"maps 'caption' to column 'prompt', which the table does not have; its "
                                         r"columns: \['text'"):
        open_table(source, columns={**columns, "caption": "prompt"})
    with pytest.raises(ValueError, match="onto 'caption', which the table already has"):
        open_table(_parquet_file(tmp_path, pairs)[0], columns={"caption": "jpg_0"})


def test_a_missing_image_file_is_a_bad_sample_naming_row_and_column(pairs, tokenizer, tmp_path):
    source, columns = _csv_with_paths(tmp_path, pairs)
    (tmp_path / "csv/images/3_jpg_1.png").unlink()
    dataset = PreferencePairs(DataConfig(source=source, columns=columns, resolution=32, on_bad_sample="skip"),
                              tokenizer)
    assert "skipped" in dataset[2] and "row 3 column jpg_1" in dataset[2]["skipped"]  # rows in use: 0, 1, 3, ...
    assert row_name(3, streaming=False) == "row 3" and row_name(2 << 32 | 5, streaming=True) == "shard 2 row 5"


def test_reward_fine_tuning_prompts_come_from_the_mapped_column(pairs, tokenizer, tmp_path):
    from diffalign.data.prompts import TrainingPrompts

    source, columns = _csv_with_paths(tmp_path, pairs)
    prompts = TrainingPrompts(DataConfig(source=source, columns={"caption": "text"}), tokenizer)
    assert prompts.prompts == [p["caption"] for p in pairs]
    with pytest.raises(ValueError, match=r"reads one column, the prompt.*\['jpg_0', 'jpg_1', 'label_0'\]"):
        TrainingPrompts(DataConfig(source=source, columns=columns), tokenizer)
