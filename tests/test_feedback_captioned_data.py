"""KTO's binary feedback and TPO's captioned images as training rows; the desirable-ratio sampler."""

import numpy as np
import pytest
import torch
from datasets import Dataset

from diffalign.config import DataConfig
from diffalign.data.captioned import CaptionedImages, collate_caption_pairs
from diffalign.data.feedback import FeedbackImages, collate_singles
from diffalign.data.sampler import DesirableRatioSampler
from diffalign.models.tokenizer import build_clip_tokenizer
from test_pairs_data import _png


@pytest.fixture(scope="module")
def tokenizer():
    return build_clip_tokenizer()


def _write(tmp_path, rows, name="t.parquet"):
    Dataset.from_list(rows).to_parquet(str(tmp_path / name))
    return str(tmp_path / name)


def _image(value):
    return _png(np.full((32, 32, 3), value, dtype=np.uint8))


def test_feedback_rows_carry_plus_minus_labels(tmp_path, tokenizer):
    src = _write(tmp_path, [{"caption": f"c{i}", "image": _image(40 * i), "label": i % 2} for i in range(4)])
    ds = FeedbackImages(DataConfig(source=src, resolution=32), tokenizer)
    batch = collate_singles([ds[i] for i in range(4)])
    assert batch["labels"].tolist() == [-1, 1, -1, 1]
    assert batch["pixels"].shape == (4, 3, 32, 32) and batch["row_group"].tolist() == [0, 1, 2, 3]
    assert batch["pixels"][2].mean() == pytest.approx(80 / 127.5 - 1, abs=1e-5)


def test_feedback_bad_labels_and_one_class_are_clear_errors(tmp_path, tokenizer):
    src = _write(tmp_path, [{"caption": "c", "image": _image(0), "label": v} for v in (1, 2)], "bad.parquet")
    with pytest.raises(ValueError, match=r"row 1 has label=2.0; expected 1 \(desirable\) or 0"):
        FeedbackImages(DataConfig(source=src, resolution=32), tokenizer)
    src = _write(tmp_path, [{"caption": "c", "image": _image(0), "label": 1}] * 3, "one.parquet")
    with pytest.raises(ValueError, match="both desirable and undesirable"):
        FeedbackImages(DataConfig(source=src, resolution=32), tokenizer)


def test_desirable_ratio_sampler_draws_the_asked_share_reproducibly():
    labels = np.array([1] * 30 + [0] * 70)
    sampler = DesirableRatioSampler(labels, 0.8, seed=3, multiple=10)
    sampler.set_epoch(2)
    order = list(sampler)
    assert len(order) == 100 and 0.7 < labels[order].mean() < 0.9  # 80% desirable despite 30% in the data
    assert order == list(sampler)  # same epoch, same order
    sampler.set_epoch(3)
    assert order != list(sampler)
    with pytest.raises(ValueError, match=r"desirable_ratio must be in \(0, 1\)"):
        DesirableRatioSampler(labels, 1.0, seed=0)


def test_captioned_rows_pair_each_image_with_its_caption_and_a_perturbed_one(tmp_path, tokenizer):
    captions = ["a red circle on the left", "a large blue square", "a green triangle on a white background"]
    src = _write(tmp_path, [{"caption": c, "image": _image(50 * i)} for i, c in enumerate(captions)])
    ds = CaptionedImages(DataConfig(source=src, resolution=32), tokenizer, seed=0)
    examples = [ds[i] for i in range(3)]
    batch = collate_caption_pairs(examples)
    assert batch["pixels"].shape == (3, 3, 32, 32) and batch["input_ids"].shape == (6, 77)
    assert batch["row_image"].tolist() == [0, 1, 2, 0, 1, 2] and batch["row_group"].tolist() == [0, 1, 2, 0, 1, 2]
    assert batch["labels"].tolist() == [1, 1, 1, -1, -1, -1]
    for i, c in enumerate(captions):
        true = tokenizer.decode(batch["input_ids"][i], skip_special_tokens=True)
        wrong = tokenizer.decode(batch["input_ids"][3 + i], skip_special_tokens=True)
        assert true.strip() == c and wrong.strip() != c
    assert torch.equal(ds[1]["negative_ids"], examples[1]["negative_ids"])  # same (seed, epoch, row): same negative
    ds.epoch = 1
    assert any(not torch.equal(ds[i]["negative_ids"], examples[i]["negative_ids"]) for i in range(3))


def test_given_negative_captions_are_used_and_checked(tmp_path, tokenizer):
    src = _write(tmp_path, [{"caption": "a red circle", "image": _image(0), "negative_caption": "a blue circle"},
                            {"caption": "a red circle", "image": _image(0), "negative_caption": "a red circle"}])
    ds = CaptionedImages(DataConfig(source=src, resolution=32), tokenizer)
    assert tokenizer.decode(ds[0]["negative_ids"], skip_special_tokens=True).strip() == "a blue circle"
    with pytest.raises(ValueError, match="row 1: negative_caption 'a red circle' must be .* differs"):
        ds[1]


def test_softrepa_data_neither_builds_nor_checks_a_negative_caption(tmp_path, tokenizer):
    """SoftREPA pairs each image with the batch's other captions: a negative_caption column (even one equal to the
    caption, which TPO refuses) is not its business."""
    from diffalign.data.factory import build_training_data

    src = _write(tmp_path, [{"caption": "a red circle", "image": _image(0), "negative_caption": "a red circle"},
                            {"caption": "a blue square", "image": _image(90), "negative_caption": "a blue square"}])
    from diffalign.objectives import get_objective

    dataset, _, collate = build_training_data(DataConfig(source=src, resolution=32), get_objective("softrepa"),
                                              tokenizer, seed=0, examples_per_update=2)
    examples = [dataset[i] for i in range(2)]
    assert all("negative_ids" not in e for e in examples)
    assert collate(examples)["input_ids"].shape == (2, 77)


def test_pairs_convert_to_feedback_without_ties(tmp_path, tokenizer):
    from diffalign.cli import main

    rows = [{"caption": f"c{i}", "jpg_0": _image(10 * i), "jpg_1": _image(200), "label_0": lab}
            for i, lab in enumerate([1.0, 0.0, 0.5])]
    src = _write(tmp_path, rows, "pairs.parquet")
    assert main(["data", "feedback", "--source", src, "--out", str(tmp_path / "fb")]) == 0
    ds = FeedbackImages(DataConfig(source=str(tmp_path / "fb"), resolution=32), tokenizer)
    assert len(ds) == 4 and sorted(ds.labels.tolist()) == [0, 0, 1, 1]  # 2 decided pairs x 2 sides, tie left out
    by_caption = {}
    for i in range(4):
        row = ds.table[int(ds.rows[i])]
        by_caption.setdefault(row["caption"], {})[row["label"]] = float(ds[i]["pixels"].mean())
    white = 200 / 127.5 - 1
    assert by_caption["c0"][0] == pytest.approx(white, abs=1e-5) and by_caption["c0"][1] != pytest.approx(white)
    assert by_caption["c1"][1] == pytest.approx(white, abs=1e-5)  # label_0 = 0: the second image was preferred
    assert main(["data", "feedback", "--source", src, "--out", str(tmp_path / "fb")]) == 2  # not empty: refused


def test_per_image_feedback_labels_each_unique_image_once_as_the_kto_authors(tmp_path, tokenizer):
    from diffalign.cli import main
    from datasets import load_dataset

    # uids: A beats B; B beats C; A vs C is a tie; D only in a tie with A -> A won (1), B won and lost (1, as the
    # authors' gt_label_wi_l), C only lost (0), D tie-only (left out)
    pairs = [("A", "B", 1.0, 10), ("C", "B", 0.0, 20), ("A", "C", 0.5, 30), ("D", "A", 0.5, 40)]
    rows = [{"caption": f"c{i}", "jpg_0": _image(v), "jpg_1": _image(v + 100), "label_0": lab, "image_0_uid": a,
             "image_1_uid": b} for i, (a, b, lab, v) in enumerate(pairs)]
    src = _write(tmp_path, rows, "pairs.parquet")
    assert main(["data", "feedback", "--source", src, "--out", str(tmp_path / "fb"), "--per-image"]) == 0
    table = load_dataset("parquet", data_dir=str(tmp_path / "fb"), split="train")
    got = {r["image_uid"]: (r["label"], r["wins"], r["losses"], r["caption"], r["image"]) for r in table}
    assert {uid: g[:4] for uid, g in got.items()} == {"A": (1, 1, 0, "c0"), "B": (1, 1, 1, "c0"),
                                                      "C": (0, 0, 1, "c1")}
    assert got["B"][4] == rows[0]["jpg_1"] and got["C"][4] == rows[1]["jpg_0"]  # bytes of the first pair it was in
    ds = FeedbackImages(DataConfig(source=str(tmp_path / "fb"), resolution=32), tokenizer)
    assert sorted(ds.labels.tolist()) == [0, 1, 1]
    no_uids = _write(tmp_path, [{k: v for k, v in r.items() if "uid" not in k} for r in rows], "nouid.parquet")
    with pytest.raises(ValueError, match=r"--per-image needs each image's uid\): missing column\(s\) "
                                         r"\['image_0_uid', 'image_1_uid'\]"):
        from diffalign.data.convert import pairs_to_feedback
        pairs_to_feedback(no_uids, "train", tmp_path / "fb2", per_image=True)


def test_the_shipped_toy_feedback_is_the_shared_conversion_of_the_shipped_pairs():
    from datasets import load_dataset

    from diffalign.paths import TOY_DATA
    from diffalign.toy.preferences import feedback_rows

    pairs = load_dataset("parquet", data_files=str(TOY_DATA / "pairs_bold.parquet"), split="train")
    shipped = load_dataset("parquet", data_files=str(TOY_DATA / "feedback_bold.parquet"), split="train")
    rows, ties = feedback_rows([pairs[i] for i in range(1200)])  # the builder's first 1200 pairs
    assert len(rows) == len(shipped) == 2 * (1200 - ties)
    for mine, theirs in zip(rows[::97], shipped.select(range(0, len(shipped), 97))):
        assert (mine["caption"], mine["image"], mine["label"]) == (theirs["caption"], theirs["image"], theirs["label"])


def test_long_captioned_rows_are_training_side_many_object_scenes_the_judge_reads_back():
    """`diffalign toy captioned --long`: 5-6-object renders with verbose captions, as toy:long, never held out."""
    import io

    from PIL import Image

    from diffalign.toy.captioned import captioned_rows
    from diffalign.toy.captions import parse
    from diffalign.toy.prompts import is_heldout
    from diffalign.toy.scoring import judge

    rows = captioned_rows(12, seed=3, long=True)
    assert len(rows) == 12 and len({r["caption"] for r in rows}) == 12
    assert all(5 <= len(parse(r["caption"]).objects) <= 6 and not is_heldout(r["caption"]) for r in rows)
    fidelity = [judge(np.asarray(Image.open(io.BytesIO(r["image"])).convert("RGB")), r["caption"]).fidelity
                for r in rows]
    assert np.mean(fidelity) > 0.9  # the render shows what its caption says (the judge errs on a few small shapes)
    assert all(len(parse(r["caption"]).objects) == 1 for r in captioned_rows(5, seed=3))  # the default: single


def test_cli_toy_captioned_long_writes_its_own_default_file(tmp_path, monkeypatch):
    """`diffalign toy captioned --long` never lands on the shipped single-object file by default."""
    import diffalign.cli as cli
    from datasets import load_dataset

    from diffalign.toy.captions import parse

    monkeypatch.setattr(cli, "TOY_DATA", tmp_path)  # stands in for assets/toy-data
    assert cli.main(["toy", "captioned", "--long", "--n", "2"]) == 0
    assert not (tmp_path / "captioned.parquet").exists()
    rows = load_dataset("parquet", data_files=str(tmp_path / "captioned_long.parquet"), split="train")
    assert len(rows) == 2 and all(len(parse(c).objects) >= 5 for c in rows["caption"])
    assert cli.main(["toy", "captioned", "--long", "--n", "2"]) == 2  # an existing file is not replaced silently


def test_pairs_read_as_feedback_on_the_fly_equal_the_exported_feedback(tmp_path, tokenizer):
    """KTO on a table of pairs: the examples `diffalign data feedback` would export, without the copy."""
    from diffalign.cli import main

    rows = [{"caption": f"c{i}", "jpg_0": _image(10 * i), "jpg_1": _image(200 - i), "label_0": lab}
            for i, lab in enumerate([1.0, 0.0, 0.5, 0.0, 1.0])]
    src = _write(tmp_path, rows, "pairs.parquet")
    assert main(["data", "feedback", "--source", src, "--out", str(tmp_path / "fb")]) == 0
    options = dict(resolution=32, random_flip=True, caption_dropout=0.3)
    exported = FeedbackImages(DataConfig(source=str(tmp_path / "fb"), **options), tokenizer, seed=2)
    on_the_fly = FeedbackImages(DataConfig(source=src, **options), tokenizer, seed=2)
    assert len(on_the_fly) == len(exported) == 8 and on_the_fly.skipped_ties == 1
    assert on_the_fly.labels.tolist() == exported.labels.tolist() == [1, 0] * 4
    for i in range(8):
        a, b = on_the_fly[i], exported[i]
        assert torch.equal(a["pixels"], b["pixels"]) and torch.equal(a["input_ids"], b["input_ids"])
        assert a["label"] == b["label"]  # (seeds differ: ids 2 * row + j vs the export's own rows)
    assert "row 3 (rejected image of the pair)" in on_the_fly.where(7)


def test_pairs_read_as_captioned_images_give_each_decisive_pairs_preferred_image(tmp_path, tokenizer):
    """TPO, SoftREPA and SFT on a table of pairs: the preferred image under its caption; ties left out."""
    rows = [{"caption": f"a red circle {i}", "jpg_0": _image(10 * i), "jpg_1": _image(200), "label_0": lab}
            for i, lab in enumerate([1.0, 0.0, 0.5])]
    ds = CaptionedImages(DataConfig(source=_write(tmp_path, rows, "pairs.parquet"), resolution=32), tokenizer)
    assert ds.rows.tolist() == [0, 1] and ds.skipped_ties == 1
    assert ds[0]["pixels"].mean() == pytest.approx(0 / 127.5 - 1, abs=1e-5)  # row 0: jpg_0 preferred
    assert ds[1]["pixels"].mean() == pytest.approx(200 / 127.5 - 1, abs=1e-5)  # row 1: jpg_1 preferred
    assert ds[1]["caption"] == "a red circle 1" and "negative_ids" in ds[1]
