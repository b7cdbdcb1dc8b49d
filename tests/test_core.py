"""The ELBO core: pair-shared noise, prediction-type targets, float32 errors, the reference context."""

import pytest
import torch
from diffusers import DDPMScheduler, UNet2DConditionModel

from diffalign.core.errors import noisy_latents_and_target, per_sample_errors
from diffalign.core.noise import group_noise, seeded_generators
from diffalign.core.reference import reference_unet
from diffalign.models.lora import attach_lora


def tiny_unet():
    torch.manual_seed(0)
    return UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                                cross_attention_dim=16, attention_head_dim=4, norm_num_groups=8)


def test_groups_get_their_own_reproducible_noise_and_timestep():
    noise, t = group_noise((4, 8, 8), seeded_generators(torch.tensor([1, 2, 3])), 1000)
    assert noise.shape == (3, 4, 8, 8) and t.shape == (3,) and t.dtype == torch.long
    assert not torch.equal(noise[0], noise[1])
    again, t2 = group_noise((4, 8, 8), seeded_generators(torch.tensor([1, 2, 3])), 1000)
    assert torch.equal(noise, again) and torch.equal(t, t2)


def test_a_timestep_range_bounds_t_and_the_full_range_draws_as_before():
    seeds = torch.arange(200)
    _, full = group_noise((4, 8, 8), seeded_generators(seeds), 1000)
    _, same = group_noise((4, 8, 8), seeded_generators(seeds), 1000, (0, 1000))
    assert torch.equal(full, same)  # a run without train.timestep_range is unchanged
    _, high = group_noise((4, 8, 8), seeded_generators(seeds), 1000, (500, 1000))
    assert high.min() >= 500 and high.max() <= 999 and high.float().std() > 100  # uniform over the range
    with pytest.raises(ValueError, match=r"\[0, 1200\) is not inside \[0, 1000\)"):
        group_noise((4, 8, 8), seeded_generators(seeds), 1000, (0, 1200))


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction", "sample"])
def test_target_follows_prediction_type(kind):
    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=kind)
    x0, eps, t = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8), torch.tensor([10, 900])
    _, target = noisy_latents_and_target(sched, x0, eps, t)
    abar = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = {"epsilon": eps, "v_prediction": abar.sqrt() * eps - (1 - abar).sqrt() * x0, "sample": x0}[kind]
    torch.testing.assert_close(target, expected)


def test_errors_are_float32_under_bf16_autocast():
    unet = tiny_unet()
    x, t, c = torch.randn(2, 4, 8, 8), torch.tensor([5, 500]), torch.randn(2, 7, 16)
    target = torch.randn(2, 4, 8, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        err = per_sample_errors(unet, x, t, c, target)
    assert err.dtype == torch.float32 and err.shape == (2,)
    with torch.no_grad():
        pred = unet(x, t, c).sample
    torch.testing.assert_close(per_sample_errors(unet, x, t, c, target).detach(),
                               (pred - target).pow(2).mean(dim=(1, 2, 3)))


def test_reference_context_disables_adapters_and_always_restores_them():
    unet = tiny_unet()
    x, t, c = torch.randn(1, 4, 8, 8), torch.tensor([50]), torch.randn(1, 7, 16)
    with torch.no_grad():
        base = unet(x, t, c).sample
    attach_lora(unet, rank=4, alpha=8, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_()  # make the adapter matter
        adapted = unet(x, t, c).sample
        assert not torch.allclose(adapted, base)
        with reference_unet(unet) as ref:
            torch.testing.assert_close(ref(x, t, c).sample, base)
        torch.testing.assert_close(unet(x, t, c).sample, adapted)
        with pytest.raises(RuntimeError):
            with reference_unet(unet):
                raise RuntimeError("boom")
        torch.testing.assert_close(unet(x, t, c).sample, adapted)  # restored despite the exception


def test_reference_context_needs_adapters_or_a_copy():
    with pytest.raises(ValueError, match="frozen reference copy"):
        with reference_unet(tiny_unet()):
            pass
