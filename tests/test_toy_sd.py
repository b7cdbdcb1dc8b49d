"""The embedded base model loads offline in diffusers and draws what it is asked for."""

import time

import pytest
import torch
from diffusers import StableDiffusionPipeline

from diffalign.paths import TOY_SD
from diffalign.evaluation.sampling import generate
from diffalign.toy.scoring import judge


@pytest.fixture(scope="module")
def pipe():
    return StableDiffusionPipeline.from_pretrained(TOY_SD)


def test_toy_sd_is_small_and_in_safetensors():
    files = [p for p in TOY_SD.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= 25 * 2**20
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)


def test_toy_sd_samples_red_circles(pipe):
    start = time.perf_counter()
    images = generate(pipe, ["a red circle"] * 4, [0, 1, 2, 3], progress=False)
    elapsed = time.perf_counter() - start
    print(f"4 images of 'a red circle' in {elapsed:.2f} s")  # the README reports this; not asserted
    assert images.shape == (4, 32, 32, 3)
    verdicts = [judge(im, "a red circle").checks for im in images]
    red_circles = sum(v["colour"] == [True] and v["shape"] == [True] for v in verdicts)
    assert red_circles >= 3, verdicts


def test_toy_sd_follows_colour_not_just_one_prompt(pipe):
    # The same seeds with another caption must give that caption's colour: the model reads its text.
    images = generate(pipe, ["a blue square"] * 4, [0, 1, 2, 3], progress=False)
    assert sum(judge(im, "a blue square").checks["colour"] == [True] for im in images) >= 3


def test_pipeline_defaults_make_toy_sized_images(pipe):
    out = pipe("a green triangle", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np").images
    assert out.shape == (1, 32, 32, 3)
