"""The toy base's pretraining recipe: its Min-SNR weights, the zero-terminal-SNR option, and a run end to end."""

import json
import shutil
from types import SimpleNamespace

import pytest
import torch
from diffusers import StableDiffusionPipeline

from diffalign.paths import TOY_CLIP, TOY_MODEL_MARKER, TOY_SD, is_toy_model
from diffalign.toy.model import make_scheduler
from diffalign.toy.pretrain import PretrainConfig, denoising_loss, min_snr_weights, pretrain


def test_min_snr_weights_by_hand():
    scheduler = make_scheduler()
    t = torch.tensor([0, 200, 500, 999])
    abar = scheduler.alphas_cumprod[t]
    snr = abar / (1 - abar)
    expected = torch.tensor([min(s, 5.0) / s for s in snr.tolist()])
    torch.testing.assert_close(min_snr_weights(scheduler, t, 5.0), expected)
    assert snr[0] > 5 and snr[-1] < 5  # both sides of gamma are covered


def test_v_prediction_weights_the_x0_error_as_epsilon_prediction_does():
    """min(SNR, g) on the x0 error either way: the epsilon error is SNR x it, the v error (SNR + 1) x it."""
    eps, v = make_scheduler(), make_scheduler(zero_terminal_snr=True)
    t = torch.arange(0, 999, 37)
    for scheduler in (eps, v):
        abar = scheduler.alphas_cumprod[t]
        snr = abar / (1 - abar)
        scale = snr + 1 if scheduler is v else snr
        torch.testing.assert_close(min_snr_weights(scheduler, t, 5.0) * scale, snr.clamp(max=5.0))


def test_zero_terminal_snr_schedule():
    scheduler = make_scheduler(zero_terminal_snr=True)
    assert scheduler.alphas_cumprod[-1] == 0 and make_scheduler().alphas_cumprod[-1].sqrt() > 0.06
    assert scheduler.config.prediction_type == "v_prediction" and scheduler.config.timestep_spacing == "trailing"
    # The last step has SNR 0: weight 1, not 0/0.
    assert min_snr_weights(scheduler, torch.tensor([999]), 5.0).item() == 1.0
    scheduler.set_timesteps(25)
    assert scheduler.timesteps[0] == 999  # sampling starts from pure noise


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_the_loss_targets_the_noise_or_v_as_the_schedule_says(zero_terminal_snr):
    """A model that predicts exactly the schedule's target has zero loss; one predicting the other target has not."""
    scheduler = make_scheduler(zero_terminal_snr)
    x0, noise = torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16)
    t = torch.tensor([10, 500, 999])
    v = scheduler.get_velocity(x0, noise, t)
    right, wrong = (v, noise) if zero_terminal_snr else (noise, v)

    def predicting(target):  # stands in for the UNet: returns a fixed prediction
        return lambda x_t, t, states: SimpleNamespace(sample=target)

    assert denoising_loss(predicting(right), scheduler, x0, noise, t, None, 5.0) == 0
    assert denoising_loss(predicting(wrong), scheduler, x0, noise, t, None, 5.0) > 1e-3


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
def test_a_tiny_pretrain_saves_a_pipeline_that_samples(tmp_path, zero_terminal_snr):
    cfg = PretrainConfig(vae_steps=2, unet_steps=2, pool_size=16, batch_size=4, warmup_steps=1,
                         zero_terminal_snr=zero_terminal_snr)
    pretrain(tmp_path, cfg)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path)
    config = pipe.scheduler.config
    assert config.prediction_type == ("v_prediction" if zero_terminal_snr else "epsilon")
    assert config.rescale_betas_zero_snr == zero_terminal_snr
    image = pipe("a red circle", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images
    assert image.shape == (1, 32, 32, 3) and torch.isfinite(torch.from_numpy(image)).all()
    # Known as a toy base wherever it was saved, with the recipe that made it.
    assert is_toy_model(tmp_path)
    assert json.loads((tmp_path / TOY_MODEL_MARKER).read_text())["recipe"]["zero_terminal_snr"] == zero_terminal_snr


def test_a_frozen_text_encoder_is_saved_unchanged(tmp_path):
    """SD1.5's recipe: the UNet learns to read a given CLIP's text tower, which itself does not move."""
    from transformers import CLIPModel

    cfg = PretrainConfig(vae_steps=1, unet_steps=2, pool_size=8, batch_size=4, warmup_steps=1,
                         frozen_text_encoder=str(TOY_CLIP))
    pretrain(tmp_path, cfg)
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path)
    clip_text = CLIPModel.from_pretrained(TOY_CLIP).text_model.state_dict()
    saved = pipe.text_encoder.state_dict()
    assert saved.keys() == clip_text.keys()
    assert all(torch.equal(saved[k], clip_text[k]) for k in saved)
    assert json.loads((tmp_path / TOY_MODEL_MARKER).read_text())["recipe"]["frozen_text_encoder"] == str(TOY_CLIP)


def test_a_frozen_text_encoder_of_another_shape_is_refused(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffalign.toy.pretrain import load_frozen_text_encoder

    CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                 vocab_size=49408)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="hidden_size is 32, the toy UNet needs 64"):
        load_frozen_text_encoder(str(tmp_path))


def test_only_marked_folders_and_the_embedded_base_are_toy_models(tmp_path):
    assert is_toy_model(TOY_SD)
    copy = tmp_path / "toy-sd"  # the name alone proves nothing
    shutil.copytree(TOY_SD, copy, ignore=shutil.ignore_patterns(TOY_MODEL_MARKER))
    assert not is_toy_model(copy)
    (copy / TOY_MODEL_MARKER).write_text((TOY_SD / TOY_MODEL_MARKER).read_text())
    assert is_toy_model(copy)
