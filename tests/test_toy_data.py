"""Toy preference data: Pick-a-Pic v2 schema, binary-feedback and multi-user views, and the shipped sets."""

import io

import numpy as np
import pytest
from datasets import load_dataset
from diffusers import StableDiffusionPipeline
from PIL import Image

from diffalign.paths import REPO_ROOT, TOY_DATA, TOY_SD
from diffalign.toy.captioned import captioned_rows, training_side_scenes
from diffalign.toy.captions import parse
from diffalign.toy.preferences import PERSONA_IDS, build_toy_data
from diffalign.toy.prompts import is_heldout

PICKAPIC_COLUMNS = {"caption", "jpg_0", "jpg_1", "label_0", "label_1", "has_label", "are_different", "user_id",
                    "ranking_id", "model_0", "model_1", "image_0_uid", "image_1_uid", "best_image_uid"}


def _check_pairs(ds):
    assert PICKAPIC_COLUMNS <= set(ds.column_names)
    for row in ds:
        assert (row["label_0"], row["label_1"]) in {(1.0, 0.0), (0.0, 1.0), (0.5, 0.5)}
        for key in ("jpg_0", "jpg_1"):
            assert Image.open(io.BytesIO(row[key])).size == (32, 32)
        assert not is_heldout(row["caption"]), f"held-out prompt leaked into training data: {row['caption']}"
        assert row["user_id"] == PERSONA_IDS[row["persona"]]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD)
    out = tmp_path_factory.mktemp("toy-data")
    result = build_toy_data(pipe, out, n_pairs=12, persona="warm", n_feedback_pairs=12, seed=3,
                            num_inference_steps=4, progress=False)
    return out, result


def test_built_pairs_follow_the_pickapic_schema(built):
    out, result = built
    ds = load_dataset("parquet", data_files=str(result["pairs"]), split="train")
    assert len(ds) == 12 and set(ds["persona"]) == {"warm"}
    _check_pairs(ds)


def test_feedback_view_has_two_rows_per_untied_pair(built):
    out, result = built
    pairs = load_dataset("parquet", data_files=str(result["pairs"]), split="train")
    feedback = load_dataset("parquet", data_files=str(result["feedback"]), split="train")
    untied = sum(l != 0.5 for l in pairs["label_0"])
    assert len(feedback) == 2 * untied and untied + int(result["ties_left_out_of_feedback"]) == 12
    assert sorted(set(feedback["label"])) == [0, 1] and sum(feedback["label"]) == untied
    assert {"caption", "image", "label"} <= set(feedback.column_names)


def test_multiuser_view_labels_each_pair_by_its_user(built):
    out, result = built
    ds = load_dataset("parquet", data_files=str(result["multiuser"]), split="train")
    _check_pairs(ds)
    assert set(ds["persona"]) == {"bold", "subtle", "warm", "skyward"}


def test_same_seed_builds_the_same_images(built, tmp_path):
    out, result = built
    again = build_toy_data(StableDiffusionPipeline.from_pretrained(TOY_SD), tmp_path, n_pairs=12, persona="warm",
                           n_feedback_pairs=12, seed=3, num_inference_steps=4, progress=False)
    a = load_dataset("parquet", data_files=str(result["pairs"]), split="train")
    b = load_dataset("parquet", data_files=str(again["pairs"]), split="train")
    assert a["jpg_0"] == b["jpg_0"] and a["label_0"] == b["label_0"]


def test_shipped_sets_load_and_fit_the_size_budget():
    files = sorted(TOY_DATA.glob("*.parquet"))
    assert {f.name for f in files} >= {"pairs_bold.parquet", "pairs_multiuser.parquet", "feedback_bold.parquet"}
    assert sum(f.stat().st_size for f in files) <= 30 * 2**20
    pairs = load_dataset("parquet", data_files=str(TOY_DATA / "pairs_bold.parquet"), split="train")
    assert len(pairs) >= 2000
    _check_pairs(pairs.select(range(200)))
    ties = np.mean([l == 0.5 for l in pairs["label_0"]])
    assert 0 < ties < 0.3  # like Pick-a-Pic's ~12%: present, not dominant


# The toy world's captioned scenes (library code that the attribute-learnability study also uses).
def test_the_scene_stream_states_what_it_is_told_and_never_a_heldout_caption():
    scenes = training_side_scenes(np.random.default_rng(0), stated={"position": 1.0, "background": 0.0})
    specs = [next(scenes) for _ in range(200)]
    assert all(spec.objects[0].position and spec.background is None for spec, _ in specs)
    assert all(parse(caption) == spec and not is_heldout(caption) for spec, caption in specs)
    with pytest.raises(ValueError, match="only for size, position, background"):  # at the call, not at next()
        training_side_scenes(np.random.default_rng(0), stated={"colour": 1.0})
    with pytest.raises(ValueError, match="single-object scenes"):
        training_side_scenes(np.random.default_rng(0), long=True, stated={"position": 1.0})


def test_captioned_rows_still_make_the_shipped_tdpo_data():
    """captioned_rows now reads the scene stream; the shipped file (seed 0) must come out the same, byte for byte."""
    from datasets import load_dataset

    shipped = load_dataset("parquet", data_files=str(REPO_ROOT / "assets/toy-data/captioned.parquet"),
                           split="train").select(range(25))
    assert [(r["caption"], r["image"]) for r in captioned_rows(25)] == list(zip(shipped["caption"], shipped["image"]))
