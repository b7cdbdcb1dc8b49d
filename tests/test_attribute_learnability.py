"""experiments/attribute_learnability.py and the training-side scene stream it draws from."""

import sys

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline
from torch.nn.utils import parameters_to_vector

from diffalign.core.errors import per_sample_errors
from diffalign.paths import REPO_ROOT, TOY_SD
from diffalign.toy.captions import parse

sys.path.insert(0, str(REPO_ROOT / "experiments"))
from attribute_learnability import WEIGHTINGS, fine_tune, run, to_markdown, x0_error_weights  # noqa: E402

pytestmark = pytest.mark.experiments  # a study (experiments/), out of the default suite: pytest -m experiments


def test_x0_weights_turn_each_error_into_the_x0_error():
    eps = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    t = torch.tensor([600, 700, 949])
    abar = eps.alphas_cumprod
    factor = (1 - abar) / abar
    # normalised over [lo, hi): hi itself is left out (949 is the last step of [600, 950))
    torch.testing.assert_close(x0_error_weights(eps, t, (600, 950)), factor[t] / factor[600:950].mean())
    assert not torch.allclose(x0_error_weights(eps, t, (600, 950)), factor[t] / factor[600:951].mean())
    x0, noise, wrong = torch.randn(3, 4, 8, 8)
    s = torch.tensor(700)
    x_t = abar[s].sqrt() * x0 + (1 - abar[s]).sqrt() * noise
    scale = factor[600:950].mean()  # undo the normalisation to compare with the raw x0 error
    # epsilon: x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar)
    x0_hat = (x_t - (1 - abar[s]).sqrt() * wrong) / abar[s].sqrt()
    torch.testing.assert_close((x0_hat - x0).pow(2).mean(),
                               x0_error_weights(eps, s, (600, 950)) * scale * (wrong - noise).pow(2).mean())
    # v-prediction: x0_hat = sqrt(abar) x_t - sqrt(1 - abar) v_hat, v = sqrt(abar) noise - sqrt(1 - abar) x0
    v = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                      prediction_type="v_prediction")
    v_true = v.get_velocity(x0, noise, s)
    x0_hat = abar[s].sqrt() * x_t - (1 - abar[s]).sqrt() * wrong
    torch.testing.assert_close((x0_hat - x0).pow(2).mean(), x0_error_weights(v, s, (600, 950))
                               * (1 - abar[600:950]).mean() * (wrong - v_true).pow(2).mean())
    ztsnr = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                          rescale_betas_zero_snr=True)
    with pytest.raises(ValueError, match="infinite where abar_t = 0"):
        x0_error_weights(ztsnr, t, (600, 1000))


def test_fine_tune_trains_unet_and_text_encoder_on_the_chosen_steps_and_captions():
    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD, safety_checker=None)
    unet_before = parameters_to_vector(pipe.unet.parameters()).clone()
    text_before = parameters_to_vector(pipe.text_encoder.parameters()).clone()
    vae_before = parameters_to_vector(pipe.vae.parameters()).clone()
    tokenizer, captions = pipe.tokenizer, []
    pipe.tokenizer = lambda batch, **kw: captions.extend(batch) or tokenizer(batch, **kw)  # records the captions
    pipe.tokenizer.model_max_length = tokenizer.model_max_length
    forward, calls = pipe.unet.forward, []
    pipe.unet.forward = lambda x, t, *a, **k: calls.append((t.clone(), pipe.unet.training)) or forward(x, t, *a, **k)
    losses = fine_tune(pipe, "position", steps=3, lr=1e-3, batch=8, t_range=(500, 600), weighting="x0")
    assert len(losses) == 3 and all(np.isfinite(losses))
    assert len(captions) == 24 and all(parse(c).objects[0].position for c in captions if c)  # every caption states it
    assert 0 < captions.count("") < 8  # and some are blanked, as in pretraining (10%)
    assert all(training and ((500 <= t) & (t < 600)).all() for t, training in calls) and len(calls) == 3
    assert not torch.equal(parameters_to_vector(pipe.unet.parameters()), unet_before)
    assert not torch.equal(parameters_to_vector(pipe.text_encoder.parameters()), text_before)
    assert torch.equal(parameters_to_vector(pipe.vae.parameters()), vae_before)
    assert not pipe.unet.training and not pipe.text_encoder.training
    assert not any(p.requires_grad for p in pipe.unet.parameters())
    with pytest.raises(ValueError, match="--weighting"):
        fine_tune(pipe, "position", 1, 1e-3, 4, (0, 1000), "snr")
    with pytest.raises(ValueError, match="--timestep-range"):
        fine_tune(pipe, "position", 1, 1e-3, 4, (900, 500), "x0")


def test_a_frozen_text_encoder_stays_as_it_was_while_the_unet_trains():
    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD, safety_checker=None)
    unet_before = parameters_to_vector(pipe.unet.parameters()).clone()
    text_before = parameters_to_vector(pipe.text_encoder.parameters()).clone()
    fine_tune(pipe, "background", steps=2, lr=1e-3, batch=4, t_range=(600, 1000), weighting="min-snr",
              train_text_encoder=False)
    assert not torch.equal(parameters_to_vector(pipe.unet.parameters()), unet_before)
    assert torch.equal(parameters_to_vector(pipe.text_encoder.parameters()), text_before)
    assert all(p.grad is None for p in pipe.text_encoder.parameters())  # not even computed


def test_each_weighting_weights_the_per_sample_errors_as_it_says(monkeypatch):
    """loss = mean(errors * w), w = the pretraining's Min-SNR-5 weights or the x0 weights, on the step's own t."""
    import attribute_learnability

    from diffalign.toy.pretrain import min_snr_weights

    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD, safety_checker=None)
    seen = []

    def recording(unet, x_t, t, *args):
        errors = per_sample_errors(unet, x_t, t, *args)
        seen.append((t.clone(), errors.detach().clone()))
        return errors

    monkeypatch.setattr(attribute_learnability, "per_sample_errors", recording)
    expected = {"min-snr": lambda t: min_snr_weights(pipe.scheduler, t, 5.0),
                "x0": lambda t: x0_error_weights(pipe.scheduler, t, (300, 1000))}
    for weighting in WEIGHTINGS:
        loss = fine_tune(pipe, "size", steps=1, lr=0.0, batch=8, t_range=(300, 1000), weighting=weighting)[0]
        t, errors = seen[-1]
        assert loss == pytest.approx((errors * expected[weighting](t)).mean().item(), rel=1e-5)
    assert not torch.allclose(expected["min-snr"](t), expected["x0"](t))  # the two really differ on these t


@pytest.mark.parametrize("train_text_encoder,label", [(True, "UNet + text encoder"),
                                                      (False, "UNet (text encoder frozen)")])
def test_run_measures_the_base_before_and_the_fine_tuned_model_after(train_text_encoder, label):
    result = run(str(TOY_SD), "background", steps=1, lr=1e-3, batch=4, t_range=(0, 1000), weighting="min-snr",
                 seeds=1, measure_steps=2, train_text_encoder=train_text_encoder)
    before, after = result["before"], result["after"]
    assert before["cases"] == after["cases"] == 65 and before["settings"]["num_inference_steps"] == 2
    assert before["attributes"] != after["attributes"] or before["unstated"] != after["unstated"]  # it did train
    table = to_markdown(result)
    assert result["model"] == "assets/toy-sd"
    assert "| before |" in table and "| after |" in table and "always state background" in table
    assert result["text_encoder"] == ("trained" if train_text_encoder else "frozen") and label in table


def test_write_results_keeps_the_json_and_the_table_side_by_side(tmp_path, capsys):
    import json

    from results_files import write_results

    result = {"model": "assets/toy-sd", "rows": [1, 2]}
    out = write_results(tmp_path / "new", "bench", result, "| a |")
    assert json.loads((out / "bench.json").read_text()) == result
    assert (out / "bench.md").read_text() == "| a |\n" and "| a |" in capsys.readouterr().out

