"""SoftREPA on SD3: per-block soft tokens in the joint blocks' text stream (models/soft_tokens_joint.py), trained by
the same step and objective as on UNets, saved beside the run and loaded into the stock StableDiffusion3Pipeline."""

import copy
import json
import math

import pytest
import torch
from diffusers import StableDiffusion3Pipeline

from diffalign.config import ConfigError, load_config
from diffalign.models.soft_tokens import CONFIG_FILE, WEIGHTS_FILE, load_soft_tokens
from diffalign.models.soft_tokens_joint import JointSoftTokens, attach_joint_soft_tokens
from diffalign.paths import REPO_ROOT
from diffalign.train import train


@pytest.fixture(scope="module")
def tiny_sd3(tmp_path_factory):
    from diffalign.models.tiny import build_tiny_sd3

    path = tmp_path_factory.mktemp("tiny-sd3")
    build_tiny_sd3(path)
    return path


@pytest.fixture(scope="module")
def tiny_flux(tmp_path_factory):
    from diffalign.models.tiny import build_tiny_flux

    path = tmp_path_factory.mktemp("tiny-flux")
    build_tiny_flux(path)
    return path


def _inputs(transformer, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = transformer.config
    x = torch.randn(batch, c.in_channels, 8, 8, generator=g)
    states = torch.randn(batch, 7, c.joint_attention_dim, generator=g)  # [B, L, J]
    pooled = torch.randn(batch, c.pooled_projection_dim, generator=g)
    return x, states, pooled


def _written_out(transformer, tokens: torch.Tensor, x, t, states, pooled):
    """The SoftREPA SD3 forward spelled out block by block: block k < K reads [embed(tokens[k]); text stream] and
    hands on only the text stream's own rows. tokens [K, m, J]."""
    tr, (blocks, m, _) = transformer, tokens.shape
    hidden = tr.pos_embed(x)
    temb = tr.time_text_embed(t, pooled)
    context = tr.context_embedder(states)
    for k, block in enumerate(tr.transformer_blocks):
        if k < blocks:
            soft = tr.context_embedder(tokens[k]).expand(len(x), -1, -1)
            context = torch.cat([soft, context], dim=1)
        context, hidden = block(hidden_states=hidden, encoder_hidden_states=context, temb=temb)
        if k < blocks and context is not None:
            context = context[:, m:]
    hidden = tr.proj_out(tr.norm_out(hidden, temb))
    p, (h, w) = tr.config.patch_size, x.shape[-2:]
    hidden = hidden.reshape(len(x), h // p, w // p, p, p, tr.config.out_channels)
    return torch.einsum("nhwpqc->nchpwq", hidden).reshape(len(x), tr.config.out_channels, h, w)


@pytest.mark.parametrize("blocks", [1, 2])  # 2: the last block too (SD3's context_pre_only, no text stream out)
def test_hooked_transformer_equals_the_written_out_forward(tiny_sd3, blocks):
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    transformer = pipe.transformer
    x, states, pooled = _inputs(transformer)
    t = torch.tensor([250.0, 800.0])
    plain = transformer(hidden_states=x, timestep=t, encoder_hidden_states=states, pooled_projections=pooled).sample
    clean = copy.deepcopy(transformer)  # the written-out forward calls the blocks itself: no hooks on them
    tokens = attach_joint_soft_tokens(transformer, num_tokens=3, num_blocks=blocks)
    with torch.no_grad():
        tokens.tokens.normal_(0, 1.0)  # large enough to matter
    hooked = transformer(hidden_states=x, timestep=t, encoder_hidden_states=states, pooled_projections=pooled).sample
    with torch.no_grad():
        expected = _written_out(clean, tokens.tokens, x, t, states, pooled)
    torch.testing.assert_close(hooked, expected)
    assert (hooked - plain).abs().max() > 1e-3


def test_only_the_tokens_train_and_buckets_follow_the_timestep(tiny_sd3):
    transformer = StableDiffusion3Pipeline.from_pretrained(tiny_sd3).transformer
    clean = copy.deepcopy(transformer)
    tokens = attach_joint_soft_tokens(transformer, num_tokens=2, num_blocks=1, timestep_buckets=10)
    assert not any(p.requires_grad for p in transformer.parameters())
    assert tuple(tokens.tokens.shape) == (1, 2, transformer.config.joint_attention_dim)
    assert tuple(tokens.bucket_embedding.shape) == (10, 1, 2, transformer.config.caption_projection_dim)
    with torch.no_grad():
        tokens.bucket_embedding[7].fill_(0.5)  # only timesteps 700-799 (σ 0.7-0.8) see it
    x, states, pooled = _inputs(transformer, batch=1)

    def run(t):
        return transformer(hidden_states=x, timestep=torch.tensor([t]), encoder_hidden_states=states,
                           pooled_projections=pooled).sample

    plain_bucket = run(650.0)
    with torch.no_grad():
        expected = _written_out(clean, tokens.tokens, x, torch.tensor([650.0]), states, pooled)
    torch.testing.assert_close(plain_bucket, expected)  # an untouched bucket adds nothing
    out = run(750.0)
    out.square().mean().backward()
    assert tokens.tokens.grad is not None and tokens.tokens.grad.abs().max() > 0
    assert tokens.bucket_embedding.grad[7].abs().max() > 0
    assert tokens.bucket_embedding.grad[6].abs().max() == 0  # other buckets get no gradient


def test_gradient_checkpointing_gives_the_same_output_and_gradients(tiny_sd3):
    results = []
    for checkpointing in (False, True):
        transformer = StableDiffusion3Pipeline.from_pretrained(tiny_sd3).transformer
        torch.manual_seed(0)
        tokens = attach_joint_soft_tokens(transformer, num_tokens=2, num_blocks=2)
        if checkpointing:
            transformer.enable_gradient_checkpointing()
        transformer.train()
        x, states, pooled = _inputs(transformer)
        out = transformer(hidden_states=x, timestep=torch.tensor([300.0, 600.0]), encoder_hidden_states=states,
                          pooled_projections=pooled).sample
        out.square().mean().backward()
        results.append((out.detach(), tokens.tokens.grad.clone()))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_too_many_blocks_is_a_clear_error(tiny_sd3):
    transformer = StableDiffusion3Pipeline.from_pretrained(tiny_sd3).transformer
    with pytest.raises(ValueError, match="transformer_blocks must be between 1 and the transformer's 2 joint blocks"):
        attach_joint_soft_tokens(transformer, num_blocks=5)


def _cfg(model, out, extra=()):
    return load_config(REPO_ROOT / "configs/toy/softrepa.yaml", [
        ("model.pretrained", str(model)), ("train.max_steps", "3"), ("train.batch_size", "2"),
        ("data.max_pairs", "8"), ("eval.enabled", "false"), ("train.report_to", "none"), ("train.warmup_steps", "0"),
        ("model.max_sequence_length", "16"), ("objective.transformer_blocks", "1"),
        ("objective.timestep_buckets", "4"), ("output_dir", str(out))] + list(extra))


def test_softrepa_trains_sd3_tokens_that_load_into_the_stock_pipeline(tiny_sd3, tmp_path, step_spy):
    summary = train(_cfg(tiny_sd3, tmp_path))
    first = summary["first_metrics"]
    assert math.isfinite(first["loss"]) and 0 <= first["caption_accuracy"] <= 1
    assert not any(p.requires_grad for p in step_spy["unet"].parameters())  # the transformer stays frozen
    config = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert config["layout"] == "joint" and config["num_blocks"] == 1 and config["timestep_buckets"] == 4
    assert (tmp_path / WEIGHTS_FILE).is_file()
    card = (tmp_path / "README.md").read_text()
    assert "load_soft_tokens(pipe.transformer" in card and "max_sequence_length=16)" in card

    pipe = StableDiffusion3Pipeline.from_pretrained(tiny_sd3)
    kwargs = dict(num_inference_steps=2, height=32, width=32, output_type="np", max_sequence_length=16)
    before = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
    tokens = load_soft_tokens(pipe.transformer, tmp_path)
    assert isinstance(tokens, JointSoftTokens)
    after = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
    load_soft_tokens(pipe.transformer, tmp_path)  # loading again replaces the hooks, never stacks them
    again = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert abs(before - after).max() > 1e-4
    assert abs(after - again).max() < 1e-6


def test_diffalign_eval_samples_sd3_with_its_soft_tokens(tiny_sd3, tiny_flux, tmp_path):
    """The tokens change the evaluation's images; they sample at the T5 length they trained with (16 here, read
    from the run's config.json); loading them on anything but an SD3 transformer is refused by name."""
    import diffalign.toy.plugin  # noqa: F401  (the scorer "toy")
    from diffusers import FluxTransformer2DModel, UNet2DConditionModel

    from diffalign.evaluation import SamplingSettings, evaluate
    from diffalign.evaluation.generation import images_for
    from diffalign.evaluation.models import ModelSpec, load_pipeline

    train(_cfg(tiny_sd3, tmp_path / "run", [("train.lr", "1e-1")]))
    pipe = load_pipeline(ModelSpec("softrepa", str(tiny_sd3), str(tmp_path / "run")))
    assert len(pipe.transformer._soft_token_hooks) == 1 + 2  # the timestep hook; one block's prepend and drop
    settings = SamplingSettings(num_inference_steps=2, height=32, width=32, max_sequence_length=16)
    cases = (["a red circle", "a blue square"], [0, 1])
    base, _ = images_for(ModelSpec("base", str(tiny_sd3)), *cases, settings, None)
    tuned, _ = images_for(ModelSpec("softrepa", str(tiny_sd3), str(tmp_path / "run")), *cases, settings, None)
    assert abs(base.astype(int) - tuned.astype(int)).max() > 0
    report = evaluate(str(tiny_sd3), adapters=[f"softrepa={tmp_path / 'run'}"], prompts=["a red circle"],
                      scorers=["toy"], seeds_per_prompt=1, output_dir=tmp_path / "eval", progress=False,
                      settings=SamplingSettings(num_inference_steps=2, height=32, width=32))
    assert report.settings["sampling"]["max_sequence_length"] == 16  # the run's model.max_sequence_length

    unet = UNet2DConditionModel.from_pretrained(REPO_ROOT / "assets/toy-sd", subfolder="unet")
    flux = FluxTransformer2DModel.from_pretrained(tiny_flux, subfolder="transformer")
    for other in (unet, flux):
        with pytest.raises(ValueError, match="trained in SD3's joint blocks: load them onto a StableDiffusion3"):
            load_soft_tokens(other, tmp_path / "run")


def test_a_transformer_blocks_setting_is_refused_on_unets(tmp_path):
    cfg = load_config(REPO_ROOT / "configs/toy/softrepa.yaml", [("objective.transformer_blocks", "2"),
                                                                 ("output_dir", str(tmp_path))])
    with pytest.raises(ConfigError, match="transformer_blocks chooses SD3's joint blocks"):
        train(cfg)


def test_softrepa_on_flux_is_refused_before_weights_load(tiny_flux, tmp_path, monkeypatch):
    import diffalign.train as trainer

    monkeypatch.setattr(trainer, "load_sd_components", lambda *a, **k: pytest.fail("weights loaded"))
    cfg = load_config(REPO_ROOT / "configs/toy/softrepa.yaml", [
        ("model.pretrained", str(tiny_flux)), ("output_dir", str(tmp_path)), ("train.report_to", "none")])
    with pytest.raises(ConfigError, match="softrepa on a flux model.*rotary text positions"):
        train(cfg)


def test_resuming_sd3_softrepa_reaches_the_same_tokens(tiny_sd3, tmp_path):
    from safetensors.torch import load_file

    from diffalign.checkpointing import complete_checkpoints

    keep = [("train.checkpoint_every", "1"), ("train.checkpoints_total_limit", "0")]
    train(_cfg(tiny_sd3, tmp_path / "straight", keep))
    checkpoint = complete_checkpoints(tmp_path / "straight")[0]  # after update 1 of 3
    train(_cfg(tiny_sd3, tmp_path / "resumed"), resume=str(checkpoint))
    straight = load_file(tmp_path / "straight" / WEIGHTS_FILE)
    resumed = load_file(tmp_path / "resumed" / WEIGHTS_FILE)
    assert straight.keys() == resumed.keys() == {"tokens", "bucket_embedding"}
    for key in straight:  # bit for bit, timestep buckets included
        assert torch.equal(straight[key], resumed[key]), key


def test_a_start_token_init_is_refused_on_sd3(tiny_sd3, tmp_path):
    with pytest.raises(ConfigError, match="token_init: start_token is SD1.x's start"):
        train(_cfg(tiny_sd3, tmp_path, [("objective.token_init", "start_token")]))
