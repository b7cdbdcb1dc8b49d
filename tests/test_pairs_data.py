"""Pick-a-Pic pairs as training examples: winner first, same crop and flip for both, ties, bad labels."""

import io

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from diffalign.config import DataConfig
from diffalign.data.pairs import PreferencePairs, collate_pairs
from diffalign.models.tokenizer import build_clip_tokenizer


def _png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _table(tmp_path, labels, same=False):
    rng = np.random.default_rng(0)
    rows = []
    for i, lab in enumerate(labels):
        a = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)
        b = a if same else np.full_like(a, 200)
        rows.append({"caption": f"a red circle {i}", "jpg_0": _png(a), "jpg_1": _png(b), "label_0": lab,
                     "label_1": 1 - lab})
    path = tmp_path / "pairs.parquet"
    Dataset.from_list(rows).to_parquet(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


def test_same_random_crop_and_flip_for_both_images(tmp_path, tokenizer):
    cfg = DataConfig(source=_table(tmp_path, [1.0] * 8, same=True), resolution=32, random_crop=True,
                     random_flip=True)
    ds = PreferencePairs(cfg, tokenizer, seed=1)
    crops = set()
    for i in range(len(ds)):
        px = ds[i]["pixels"]  # [2, 3, 32, 32]
        assert px.shape == (2, 3, 32, 32) and torch.equal(px[0], px[1])
        crops.add(float(px[0].sum()))
    assert len(crops) > 1  # the crops really were random


def test_winner_comes_first_and_ties_are_dropped_and_counted(tmp_path, tokenizer):
    ds = PreferencePairs(DataConfig(source=_table(tmp_path, [0.0, 1.0, 0.5]), resolution=32), tokenizer)
    assert len(ds) == 2 and ds.skipped_ties == 1
    # Row 0 has label_0 = 0: the winner is jpg_1, the flat 200-grey image -> (200 / 127.5 - 1) everywhere.
    assert torch.allclose(ds[0]["pixels"][0], torch.full((3, 32, 32), 200 / 127.5 - 1))
    assert torch.allclose(ds[1]["pixels"][1], torch.full((3, 32, 32), 200 / 127.5 - 1))
    kept = PreferencePairs(DataConfig(source=_table(tmp_path, [0.0, 1.0, 0.5]), resolution=32,
                                      drop_ties=False), tokenizer)
    assert len(kept) == 3 and kept.skipped_ties == 0


def test_bad_label_names_the_row(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="row 1 has label_0=0.7"):
        PreferencePairs(DataConfig(source=_table(tmp_path, [1.0, 0.7]), resolution=32), tokenizer)


def test_only_ties_is_a_clear_error(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="no pairs left.*2 ties dropped"):
        PreferencePairs(DataConfig(source=_table(tmp_path, [0.5, 0.5]), resolution=32), tokenizer)


def test_collate_orders_winners_then_losers(tmp_path, tokenizer):
    ds = PreferencePairs(DataConfig(source=_table(tmp_path, [1.0, 1.0, 1.0]), resolution=32), tokenizer)
    batch = collate_pairs([ds[0], ds[1], ds[2]])
    assert batch["pixels"].shape == (6, 3, 32, 32) and batch["input_ids"].shape == (3, 77)
    torch.testing.assert_close(batch["pixels"][1], ds[1]["pixels"][0])
    torch.testing.assert_close(batch["pixels"][4], ds[1]["pixels"][1])
    assert batch["seeds"].shape == (3,) and len(set(batch["seeds"].tolist())) == 3
