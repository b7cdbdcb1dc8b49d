"""Bad training data: each problem stops the run with its row and column named, or, with
data.on_bad_sample=skip, is left out and counted in the summary. Nothing is dropped silently."""

import numpy as np
import pytest
from datasets import Dataset

from diffalign.config import DataConfig, load_config
from diffalign.data.examples import BadSample
from diffalign.data.pairs import PreferencePairs
from diffalign.models.tokenizer import build_clip_tokenizer
from diffalign.paths import REPO_ROOT
from diffalign.train import train
from test_pairs_data import _png

GOOD = _png(np.full((32, 32, 3), 120, dtype=np.uint8))
SMALL = _png(np.full((16, 16, 3), 120, dtype=np.uint8))


def _pairs(tmp_path, bad_rows: dict[int, dict], n=12):
    rows = [{"caption": f"a red circle {i}", "jpg_0": GOOD, "jpg_1": GOOD, "label_0": 1.0} for i in range(n)]
    for i, patch in bad_rows.items():
        rows[i] |= patch
    Dataset.from_list(rows).to_parquet(str(tmp_path / "pairs.parquet"))
    return str(tmp_path / "pairs.parquet")


@pytest.mark.parametrize("patch,message", [
    ({"jpg_1": b"not an image"}, r"row 3 column jpg_1: image could not be decoded"),
    ({"jpg_0": SMALL}, r"row 3 column jpg_0: image is 16x16, smaller than data.resolution=32"),
    ({"caption": ""}, r"row 3 column caption: '' is not a caption"),
])
def test_each_bad_sample_names_row_and_column(tmp_path, patch, message):
    ds = PreferencePairs(DataConfig(source=_pairs(tmp_path, {3: patch}), resolution=32), build_clip_tokenizer())
    with pytest.raises(BadSample, match=message):
        ds[3]


def test_skip_leaves_bad_samples_out_and_counts_them(tmp_path):
    source = _pairs(tmp_path, {1: {"jpg_1": b"junk"}, 5: {"caption": None}, 9: {"jpg_0": SMALL}})
    overrides = [("data.source", source), ("data.on_bad_sample", "skip"), ("train.batch_size", "4"),
                 ("train.max_steps", "3"), ("eval.enabled", "false"), ("train.report_to", "none"),
                 ("output_dir", str(tmp_path / "out"))]
    summary = train(load_config(REPO_ROOT / "configs/toy/dpo.yaml", overrides))
    assert summary["steps"] == 3 and summary["bad_samples_skipped"] == 3  # one epoch of 12 rows: all 3 seen once
    with pytest.raises(BadSample, match=r"pairs.parquet row (1 column jpg_1|5 column caption|9 column jpg_0)"):
        train(load_config(REPO_ROOT / "configs/toy/dpo.yaml",
                          [o for o in overrides if o[0] not in ("data.on_bad_sample", "output_dir")]
                          + [("output_dir", str(tmp_path / "out2"))]))


@pytest.mark.parametrize("rows, message", [
    ([{"caption": "a red circle", "jpg_0": GOOD, "label_0": 1.0}], r"missing column\(s\) \['jpg_1'\]"),
    ([], r"no examples to train on \(the table has 0 rows"),
    (None, r"not a readable table"),
])
def test_table_level_problems_stop_before_any_weights_load(tmp_path, monkeypatch, capsys, rows, message):
    import diffalign.train as train_module
    from diffalign.train import main

    path = tmp_path / "pairs.parquet"
    if rows is None:
        path.write_bytes(b"PAR1 truncated")
    elif rows:
        Dataset.from_list(rows).to_parquet(str(path))
    else:  # the right columns, no rows
        Dataset.from_dict({"caption": [], "jpg_0": [], "jpg_1": [], "label_0": []}).to_parquet(str(path))

    def no_weights(*args, **kwargs):
        raise AssertionError("the model weights were loaded before the data was checked")

    monkeypatch.setattr(train_module, "load_sd_components", no_weights)
    code = main(["--method", "dpo", "--data.source", str(path), "--output_dir", str(tmp_path / "out"),
                 "--eval.enabled", "false", "--train.report_to", "none"])
    err = capsys.readouterr().err
    assert code == 2 and str(path) in err
    assert __import__("re").search(message, err), err
