"""Reward sampling (LongAlign): the reward's gradient flows through exactly the chosen sampling steps."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from diffalign.core.reward_sampling import grad_step_indices, sample_with_reward_grad
from diffalign.models.lora import attach_lora
from diffalign.paths import TOY_SD


def test_grad_steps_are_every_kth_from_a_random_start():
    rng = np.random.default_rng(0)
    starts = set()
    for _ in range(50):
        steps = grad_step_indices(50, 10, rng)
        assert len(steps) == 5 and all(b - a == 10 for a, b in zip(steps, steps[1:])) and steps[0] < 10
        starts.add(steps[0])
    assert len(starts) > 3  # the start is drawn
    with pytest.raises(ValueError):
        grad_step_indices(50, 0, rng)


def test_the_reward_gradient_reaches_exactly_the_chosen_steps():
    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD)
    torch.manual_seed(0)
    params = attach_lora(pipe.unet, 4, 4.0, ["to_q", "to_k", "to_v", "to_out.0"])
    with torch.no_grad():  # non-zero B so that the LoRA's A also gets gradient
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.01)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    ids = pipe.tokenizer(["a red circle", ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        text, uncond = pipe.text_encoder(ids)[0].chunk(2)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    seen = {}

    def keep(i, eps):
        seen[i] = eps
        if eps.requires_grad:
            eps.retain_grad()

    chosen = [1, 4]
    final = sample_with_reward_grad(pipe.unet, scheduler, latents, text, uncond, 5.0, 6, chosen, on_step=keep)
    final.pow(2).mean().backward()  # any differentiable reward of the final latents
    assert sorted(i for i, eps in seen.items() if eps.requires_grad) == chosen
    for i in chosen:  # step 1 is reached through the later (no-grad UNet, linear DDIM) updates too
        assert seen[i].grad is not None and seen[i].grad.abs().sum() > 0, i
    assert all(p.grad is not None for p in params) and any(p.grad.abs().sum() > 0 for p in params)
    for p in params:
        p.grad = None
    none = sample_with_reward_grad(pipe.unet, scheduler, latents, text, uncond, 5.0, 6, [])
    assert not none.requires_grad  # no chosen step: nothing to train


def test_cfg_pairs_nested_sdxl_conditioning_unconditional_half_first():
    from diffalign.core.reward_sampling import _paired

    cond = {"added_cond_kwargs": {"text_embeds": torch.ones(2, 4), "time_ids": torch.zeros(2, 6)}, "scale": 1.0}
    uncond = {"added_cond_kwargs": {"text_embeds": torch.zeros(2, 4), "time_ids": torch.zeros(2, 6)}, "scale": 1.0}
    paired = _paired(uncond, cond)
    assert paired["added_cond_kwargs"]["text_embeds"].shape == (4, 4) and paired["scale"] == 1.0
    assert paired["added_cond_kwargs"]["time_ids"].shape == (4, 6)
    assert paired["added_cond_kwargs"]["text_embeds"][:2].eq(0).all()  # [uncond; cond], as diffusers' pipelines
    assert paired["added_cond_kwargs"]["text_embeds"][2:].eq(1).all()


def test_the_unet_input_is_detached_so_no_gradient_passes_through_a_later_unet():
    """Truncated backprop: at every step, chosen or not, the UNet sees a latent without graph; the gradient of an
    earlier chosen step reaches the output only through the later (linear) DDIM updates."""
    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD)
    params = attach_lora(pipe.unet, 4, 4.0, ["to_q", "to_k", "to_v", "to_out.0"])
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    ids = pipe.tokenizer(["a red circle", ""], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        text, uncond = pipe.text_encoder(ids)[0].chunk(2)
    inputs_with_graph = []
    forward = pipe.unet.forward

    def spy(sample, *args, **kwargs):
        inputs_with_graph.append(sample.requires_grad)
        return forward(sample, *args, **kwargs)

    pipe.unet.forward = spy
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    final = sample_with_reward_grad(pipe.unet, scheduler, latents, text, uncond, 5.0, 5, [0, 2, 4])
    assert final.requires_grad and len(inputs_with_graph) == 5 and not any(inputs_with_graph)
    assert all(p.requires_grad for p in params)
