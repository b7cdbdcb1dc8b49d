"""SoftREPA soft tokens: only the down blocks' cross-attention sees them, only they train, and they round-trip."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from diffalign.models.soft_tokens import attach_soft_tokens, load_soft_tokens, save_soft_tokens
from diffalign.objectives import get_objective
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


def test_timestep_buckets_give_each_bucket_its_own_offset_and_round_trip(tmp_path):
    unet = _unet()
    x, t, text = _inputs(unet)  # t = 100 and 700: buckets 10 and 70 of 100
    tokens = attach_soft_tokens(unet, num_tokens=2, timestep_buckets=100)
    torch.testing.assert_close(tokens.buckets(torch.tensor([0, 9, 10, 999, 5000])), torch.tensor([0, 0, 1, 99, 99]))
    with torch.no_grad():
        plain = unet(x, t, text).sample
        tokens.bucket_embedding[70].normal_()  # only t = 700's bucket moves
        moved = unet(x, t, text).sample
    torch.testing.assert_close(moved[0], plain[0])  # zero offsets (bucket 10): the plain tokens
    assert not torch.allclose(moved[1], plain[1])
    with torch.no_grad():
        scalar = unet(x, 700, text).sample  # a scalar timestep (pipelines) applies to every row
    torch.testing.assert_close(scalar[1], moved[1], rtol=1e-4, atol=1e-5)
    out = unet(x, t, text).sample
    out.pow(2).mean().backward()
    grads = tokens.bucket_embedding.grad.abs().sum(dim=(1, 2))
    assert grads[10] > 0 and grads[70] > 0 and grads.count_nonzero() == 2  # only the buckets in use train
    save_soft_tokens(tokens, tmp_path)
    fresh = _unet()
    load_soft_tokens(fresh, tmp_path)
    load_soft_tokens(fresh, tmp_path)  # attached again: still one timestep hook, the same output
    assert len(fresh._forward_pre_hooks) == 1
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, t, text).sample, moved)


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


def test_softrepa_trains_only_the_tokens_and_its_output_loads_for_evaluation(tmp_path):
    from diffalign.config import load_config
    from diffalign.evaluation.models import ModelSpec, load_pipeline
    from diffalign.paths import REPO_ROOT
    from diffalign.train import train

    cfg = load_config(REPO_ROOT / "configs/toy/softrepa.yaml", [
        ("train.max_steps", "3"), ("train.batch_size", "4"), ("data.max_pairs", "16"), ("eval.enabled", "false"),
        ("train.report_to", "none"), ("train.checkpoint_every", "3"), ("output_dir", str(tmp_path))])
    summary = train(cfg)
    first = summary["first_metrics"]
    assert first["grad_norm"] > 0 and summary["soft_tokens"].endswith("soft_tokens.safetensors")
    assert not (tmp_path / "unet").exists() and not list(tmp_path.glob("pytorch_lora_weights*"))
    checkpoint = next((tmp_path / "checkpoints").glob("checkpoint_*"))
    assert sorted(p.name for p in checkpoint.glob("*.safetensors")) == [  # the tokens, no UNet
        "optimizer.safetensors", "rng_0.safetensors", "soft_tokens.safetensors"]
    kwargs = dict(num_inference_steps=3, output_type="np")
    tuned = load_pipeline(ModelSpec("softrepa", str(TOY_SD), str(tmp_path)))
    base = load_pipeline(ModelSpec("base", str(TOY_SD)))
    images = [p("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images for p in (tuned, base)]
    assert abs(images[0] - images[1]).max() > 1e-4  # the evaluated pipeline uses the trained tokens


@pytest.mark.parametrize("token_init", ["reference", "start_token", "normal"])
def test_tokens_start_as_the_empty_prompts_start_token_state_as_the_reference_code_does(tmp_path, monkeypatch,
                                                                                         token_init):
    """SD1.x (the authors' code): every token starts as the CLIP output at the start token of the empty prompt;
    token_init normal: N(0, 0.02²)."""
    from transformers import CLIPTextModel, CLIPTokenizer

    import diffalign.models.soft_tokens as soft_tokens
    import diffalign.train as trainer
    from diffalign.config import load_config
    from diffalign.paths import REPO_ROOT

    started = {}
    real_attach = soft_tokens.attach_soft_tokens

    def attach(unet, *args, **kwargs):  # called through; the starting tokens recorded
        tokens = real_attach(unet, *args, **kwargs)
        started["tokens"] = tokens.tokens.detach().clone()
        return tokens

    monkeypatch.setattr(soft_tokens, "attach_soft_tokens", attach)  # what the trainer's components call
    cfg = load_config(REPO_ROOT / "configs/toy/softrepa.yaml", [
        ("objective.token_init", token_init), ("train.max_steps", "1"), ("train.batch_size", "2"),
        ("data.max_pairs", "4"), ("eval.enabled", "false"), ("train.report_to", "none"), ("output_dir", str(tmp_path))])
    trainer.train(cfg)
    tokenizer = CLIPTokenizer.from_pretrained(TOY_SD, subfolder="tokenizer")
    ids = tokenizer("", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        start_state = CLIPTextModel.from_pretrained(TOY_SD, subfolder="text_encoder")(ids)[0][0, 0]  # [D]
    tokens = started["tokens"]  # [m, D]
    assert tokens.shape == (4, start_state.shape[0])
    if token_init == "normal":
        assert tokens.std().item() == pytest.approx(0.02, rel=0.3) and tokens.abs().max() < 0.2
    else:
        torch.testing.assert_close(tokens, start_state.expand(4, -1), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="token_init"):
        get_objective("softrepa", token_init="zeros")


def test_a_start_vector_of_the_wrong_width_is_refused():
    from diffalign.models.soft_tokens import SoftTokens

    with pytest.raises(ValueError, match=r"init must be one \[8\] vector"):
        SoftTokens(2, 8, init=torch.zeros(7))


def test_all_combinations_rows_share_one_noise_group():
    from diffalign.data.captioned import collate_all_combinations

    examples = [{"pixels": torch.zeros(3, 4, 4), "image_meta": torch.zeros(6), "input_ids": torch.full((77,), i),
                 "negative_ids": torch.zeros(77, dtype=torch.long), "seed": 10 + i} for i in range(3)]
    batch = collate_all_combinations(examples)
    assert batch["row_image"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert batch["row_text"].tolist() == [0, 1, 2] * 3 and batch["row_group"].tolist() == [0] * 9
    assert batch["seeds"].tolist() == [10] and batch["input_ids"][:, 0].tolist() == [0, 1, 2]
