"""benchmarks/attribute_learnability.py and the training-side scene stream it draws from."""

import sys

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from torch.nn.utils import parameters_to_vector

from diffalign.paths import REPO_ROOT, TOY_SD
from diffalign.toy.captioned import captioned_rows, training_side_scenes
from diffalign.toy.captions import parse
from diffalign.toy.prompts import is_heldout

sys.path.insert(0, str(REPO_ROOT / "benchmarks"))
from attribute_learnability import fine_tune, run, to_markdown, x0_error_weights  # noqa: E402


def test_the_scene_stream_states_what_it_is_told_and_never_a_heldout_caption():
    scenes = training_side_scenes(np.random.default_rng(0), stated={"position": 1.0, "background": 0.0})
    specs = [next(scenes) for _ in range(200)]
    assert all(spec.objects[0].position and spec.background is None for spec, _ in specs)
    assert all(parse(caption) == spec and not is_heldout(caption) for spec, caption in specs)
    with pytest.raises(ValueError, match="only for size, position, background"):
        next(training_side_scenes(np.random.default_rng(0), stated={"colour": 1.0}))


def test_captioned_rows_still_make_the_shipped_tdpo_data():
    """captioned_rows now reads the scene stream; the shipped file (seed 0) must come out the same, byte for byte."""
    from datasets import load_dataset

    shipped = load_dataset("parquet", data_files=str(REPO_ROOT / "assets/toy-data/captioned.parquet"),
                           split="train").select(range(25))
    assert [(r["caption"], r["image"]) for r in captioned_rows(25)] == list(zip(shipped["caption"], shipped["image"]))


def test_x0_weights_turn_each_error_into_the_x0_error():
    eps = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([10, 500, 990])
    abar = eps.alphas_cumprod
    factor = (1 - abar) / abar
    torch.testing.assert_close(x0_error_weights(eps, t, (0, 1000)), factor[t] / factor.mean())
    torch.testing.assert_close(x0_error_weights(eps, t, (500, 1000)), factor[t] / factor[500:].mean())
    v = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                      prediction_type="v_prediction")
    torch.testing.assert_close(x0_error_weights(v, t, (0, 1000)), (1 - abar)[t] / (1 - abar).mean())
    # the conversion itself: eps error scaled by the factor equals the x0 error of the implied prediction
    x0, noise, wrong = torch.randn(3, 4, 8, 8)
    x_t = abar[500].sqrt() * x0 + (1 - abar[500]).sqrt() * noise
    x0_hat = (x_t - (1 - abar[500]).sqrt() * wrong) / abar[500].sqrt()
    torch.testing.assert_close((x0_hat - x0).pow(2).mean(), factor[500] * (wrong - noise).pow(2).mean())


def test_fine_tune_moves_unet_and_text_encoder_and_refuses_bad_settings():
    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD, safety_checker=None)
    unet_before = pipe.unet.conv_in.weight.clone()
    text_before = parameters_to_vector(pipe.text_encoder.parameters()).clone()
    tokenizer, seen = pipe.tokenizer, []
    pipe.tokenizer = lambda captions, **kw: seen.extend(captions) or tokenizer(captions, **kw)  # records the captions
    pipe.tokenizer.model_max_length = tokenizer.model_max_length
    losses = fine_tune(pipe, "position", steps=2, lr=1e-3, batch=8, t_range=(500, 1000), weighting="x0")
    assert len(seen) == 16 and all(parse(c).objects[0].position for c in seen)  # every caption states it
    assert len(losses) == 2 and all(np.isfinite(losses))
    assert not torch.equal(pipe.unet.conv_in.weight, unet_before)
    assert not torch.equal(parameters_to_vector(pipe.text_encoder.parameters()), text_before)
    assert not pipe.unet.training and not pipe.unet.conv_in.weight.requires_grad
    with pytest.raises(ValueError, match="--weighting"):
        fine_tune(pipe, "position", 1, 1e-3, 4, (0, 1000), "snr")
    with pytest.raises(ValueError, match="--timestep-range"):
        fine_tune(pipe, "position", 1, 1e-3, 4, (900, 500), "x0")


def test_run_measures_the_base_before_and_the_fine_tuned_model_after():
    result = run(str(TOY_SD), "background", steps=1, lr=1e-3, batch=4, t_range=(0, 1000), weighting="min-snr",
                 seeds=1, measure_steps=2)
    before, after = result["before"], result["after"]
    assert before["cases"] == after["cases"] == 65 and before["settings"]["num_inference_steps"] == 2
    assert before["attributes"] != after["attributes"] or before["unstated"] != after["unstated"]  # it did train
    table = to_markdown(result)
    assert result["model"] == "assets/toy-sd"
    assert "| before |" in table and "| after |" in table and "always state background" in table
