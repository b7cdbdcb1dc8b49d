"""SoftREPA soft tokens: only the down blocks' cross-attention sees them, only they train, and they round-trip."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from diffalign.models.soft_tokens import attach_soft_tokens, load_soft_tokens, save_soft_tokens
from diffalign.paths import TOY_SD


def _unet():
    return UNet2DConditionModel.from_pretrained(TOY_SD, subfolder="unet").eval()


def _inputs(unet):
    g = torch.Generator().manual_seed(0)
    side = unet.config.sample_size
    return (torch.randn(2, unet.config.in_channels, side, side, generator=g), torch.tensor([100, 700]),
            torch.randn(2, 77, unet.config.cross_attention_dim, generator=g))


def test_only_down_block_cross_attention_sees_the_tokens_and_only_the_tokens_train():
    unet = _unet()
    original = dict(unet.attn_processors)
    x, t, text = _inputs(unet)
    with torch.no_grad():
        base = unet(x, t, text).sample
    tokens = attach_soft_tokens(unet, num_tokens=3)
    lengths = {}
    for name, module in unet.named_modules():
        if name.endswith("attn2.to_k"):
            module.register_forward_hook(lambda m, args, out, name=name: lengths.__setitem__(name, args[0].shape[1]))
    out = unet(x, t, text).sample
    assert not torch.allclose(out, base)  # the tokens condition the output
    assert lengths and all(n == (80 if name.startswith("down_blocks") else 77) for name, n in lengths.items())
    for name, processor in unet.attn_processors.items():  # mid and up blocks, and all self-attention: untouched
        if not (name.startswith("down_blocks") and ".attn2." in name):
            assert processor is original[name], name
    out.pow(2).mean().backward()
    assert tokens.tokens.grad is not None and tokens.tokens.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in unet.parameters())
    assert not any("soft" in k for k in unet.state_dict())  # a saved UNet stays the base's


def test_soft_tokens_round_trip_through_safetensors(tmp_path):
    unet = _unet()
    tokens = attach_soft_tokens(unet, num_tokens=2, blocks=("down", "mid"))
    x, t, text = _inputs(unet)
    with torch.no_grad():
        before = unet(x, t, text).sample
    save_soft_tokens(tokens, tmp_path)
    fresh = _unet()
    load_soft_tokens(fresh, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, t, text).sample, before)
    with pytest.raises(ValueError, match="blocks among"):
        attach_soft_tokens(_unet(), blocks=("side",))


def test_softrepa_loss_by_hand():
    import math

    from diffalign.objectives.softrepa import softrepa_loss

    errors = torch.tensor([[0.10, 0.20], [0.30, 0.05]])
    loss, metrics = softrepa_loss(errors)
    logit = lambda e: 4 * math.exp(-e / 0.07)  # noqa: E731
    ce0 = -math.log(math.exp(logit(0.10)) / (math.exp(logit(0.10)) + math.exp(logit(0.20))))
    ce1 = -math.log(math.exp(logit(0.05)) / (math.exp(logit(0.30)) + math.exp(logit(0.05))))
    assert float(loss) == pytest.approx((ce0 + ce1) / 2 + 10 * (0.10 + 0.05) / 2, rel=1e-5)
    assert metrics["caption_accuracy"] == 1.0
    with pytest.raises(ValueError, match="square"):
        softrepa_loss(torch.zeros(2, 3))
