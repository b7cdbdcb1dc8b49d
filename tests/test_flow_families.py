"""Flow-matching transformers (SD3, Flux) through the same step and objectives as the UNets, on tiny random models
built from the real architectures' configs (models/tiny.py)."""

import math

import pytest
import torch
from diffusers import FluxPipeline, StableDiffusion3Pipeline
from safetensors.torch import load_file

from diffalign.config import ConfigError, load_config
from diffalign.models.lora import LORA_FILE
from diffalign.paths import REPO_ROOT
from diffalign.train import train

METHODS = ["dpo", "mapo", "kto", "sft", "tdpo", "tkto"]
PIPELINES = {"sd3": StableDiffusion3Pipeline, "flux": FluxPipeline}


@pytest.fixture(scope="module")
def tiny_flow(tmp_path_factory):
    from diffalign.models.tiny import build_tiny_flux, build_tiny_sd3

    paths = {"sd3": tmp_path_factory.mktemp("tiny-sd3"), "flux": tmp_path_factory.mktemp("tiny-flux")}
    build_tiny_sd3(paths["sd3"])
    build_tiny_flux(paths["flux"])
    return paths


def _cfg(model, out, method, extra=()):
    return load_config(REPO_ROOT / f"configs/toy/{method}.yaml", [
        ("model.pretrained", str(model)), ("train.max_steps", "2"), ("train.batch_size", "2"),
        ("data.max_pairs", "8"), ("eval.enabled", "false"), ("train.report_to", "none"), ("train.warmup_steps", "0"),
        ("model.max_sequence_length", "16"), ("output_dir", str(out))] + list(extra))


@pytest.mark.parametrize("family", ["sd3", "flux"])
@pytest.mark.parametrize("method", METHODS)
def test_every_offline_objective_trains_a_flow_transformer_lora(tiny_flow, tmp_path, step_spy, family, method):
    extra = [("objective.text_encoding", "truncate")] if method == "sft" else []  # the toy SFT is LongAlign's
    summary = train(_cfg(tiny_flow[family], tmp_path, method, extra))
    first = summary["first_metrics"]
    if method in ("dpo", "tdpo"):  # policy == reference at the start: -log sigmoid(0)
        assert abs(first["loss"] - math.log(2)) < 1e-6
        assert first["err_policy_w"] == first["err_ref_w"]
    if method in ("kto", "tkto"):
        assert abs(first["loss"] - 0.5) < 1e-6 and first["z0"] == 0.0
    transformer = step_spy["unet"]
    trained = [n for n, p in transformer.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n for n in trained)  # only the adapter trains
    targets = {n.split(".lora_")[0].rsplit(".", 1)[-1] for n in trained}
    assert {"add_q_proj", "to_add_out", "to_q"} <= targets  # diffusers' SD3/Flux LoRA targets, context stream too
    weights = load_file(tmp_path / LORA_FILE)
    assert all(k.startswith("transformer.") for k in weights)
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k)
    assert math.isfinite(summary["final_metrics"]["loss"])


def _family(model, kind):
    from diffalign.families import family_for
    from diffalign.models.loading import load_sd_components

    parts = load_sd_components(str(model), max_sequence_length=16)
    assert parts.kind == kind
    return parts, family_for(parts)


def _pack(x):
    """Flux's 2x2 packing written out: [R, C, h, w] -> [R, hw/4, 4C] (channel-major within each patch)."""
    r, c, h, w = x.shape
    return x.view(r, c, h // 2, 2, w // 2, 2).permute(0, 2, 4, 1, 3, 5).reshape(r, (h // 2) * (w // 2), c * 4)


def _unpack(x, c, h, w):
    r = x.shape[0]
    return x.view(r, h // 2, w // 2, c, 2, 2).permute(0, 3, 1, 4, 2, 5).reshape(r, c, h, w)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_error_is_the_velocity_mse_at_the_shifted_sigma(tiny_flow, kind):
    """x_t = (1 - sigma) x0 + sigma eps, target eps - x0, sigma from the scheduler's shifted table; the error is the
    float32 mean over C, h, w of the squared difference, the transformer called as the pipeline calls it."""
    from diffalign.core.errors import per_sample_errors

    parts, family = _family(tiny_flow[kind], kind)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(3, 4, 16, 16, generator=g), torch.randn(3, 4, 16, 16, generator=g)
    index = torch.tensor([0, 500, 999])
    # shift 3: sigma = 3 s / (1 + 2 s) of the unshifted s = 1 - index / 1000
    s = 1 - index.float() / 1000
    sigma = (3 * s / (1 + 2 * s)).view(3, 1, 1, 1)
    torch.testing.assert_close(family.sigma(index, x0), sigma)
    x_t = family.noisy(x0, eps, index)
    torch.testing.assert_close(x_t, (1 - sigma) * x0 + sigma * eps)
    torch.testing.assert_close(family.target(x0, eps, index), eps - x0)
    states, pooled = family.conditioner.encode(parts.tokenizers(["a red circle"] * 3).input_ids)
    with torch.no_grad():
        if kind == "sd3":
            prediction = parts.unet(hidden_states=x_t, timestep=1000 * sigma.flatten(), encoder_hidden_states=states,
                                    pooled_projections=pooled).sample
        else:
            ids = torch.stack(torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij"), -1).reshape(64, 2)
            out = parts.unet(hidden_states=_pack(x_t), timestep=sigma.flatten(), guidance=torch.full((3,), 3.5),
                             pooled_projections=pooled, encoder_hidden_states=states,
                             txt_ids=torch.zeros(states.shape[1], 3),
                             img_ids=torch.cat([torch.zeros(64, 1), ids], -1)).sample
            prediction = _unpack(out, 4, 16, 16)
        errors = per_sample_errors(parts.unet, x_t, index, states, eps - x0, predict=family.predict,
                                   pooled_projections=pooled)
    expected = ((prediction.float() - (eps - x0)) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(errors, expected)


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_conditioning_equals_the_pipelines_encode_prompt(tiny_flow, kind):
    parts, family = _family(tiny_flow[kind], kind)
    pipe = PIPELINES[kind].from_pretrained(tiny_flow[kind])
    caption = "a large red circle at the top left"
    states, pooled = family.conditioner.encode(parts.tokenizers(caption).input_ids)
    if kind == "sd3":
        ref_states, _, ref_pooled, _ = pipe.encode_prompt(caption, caption, caption, max_sequence_length=16,
                                                          do_classifier_free_guidance=False)
    else:
        ref_states, ref_pooled, _ = pipe.encode_prompt(caption, caption, max_sequence_length=16)
    torch.testing.assert_close(states, ref_states)
    torch.testing.assert_close(pooled, ref_pooled)


def test_pair_members_share_sigma_and_noise(tiny_flow, tmp_path, monkeypatch):
    from diffalign.families.flow import FlowMatching

    seen = []
    original = FlowMatching.noisy
    monkeypatch.setattr(FlowMatching, "noisy", lambda self, x0, noise, t: seen.append((x0, noise, t))
                        or original(self, x0, noise, t))
    train(_cfg(tiny_flow["sd3"], tmp_path, "dpo", [("train.max_steps", "1"), ("train.batch_size", "3")]))
    x0, noise, t = seen[0]  # rows (w_1..w_3, l_1..l_3)
    assert torch.equal(noise[:3], noise[3:]) and torch.equal(t[:3], t[3:])
    assert not torch.equal(x0[:3], x0[3:])  # two different images
    assert len(set(t.tolist())) > 1 and not torch.equal(noise[0], noise[1])  # each pair its own draw


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_reference_is_the_base_transformer_with_the_adapter_off(tiny_flow, tmp_path, step_spy, kind):
    from diffalign.core.reference import reference_unet

    train(_cfg(tiny_flow[kind], tmp_path, "dpo", [("train.lr", "1e-2")]))
    policy, step = step_spy["unet"], step_spy["step"]
    base = _family(tiny_flow[kind], kind)[0].unet
    family = step.family
    g = torch.Generator().manual_seed(1)
    x, index = torch.randn(2, 4, 16, 16, generator=g), torch.tensor([100, 700])
    states, pooled = torch.randn(2, 16 if kind == "flux" else 77 + 16, 64, generator=g), torch.randn(2, 64 if
                                                                                                    kind == "sd3" else 32)
    with torch.no_grad():
        trained = family.predict(policy, x, index, states, pooled_projections=pooled)
        with reference_unet(policy) as reference:
            off = family.predict(reference, x, index, states, pooled_projections=pooled)
        expected = family.predict(base, x, index, states, pooled_projections=pooled)
    torch.testing.assert_close(off, expected)
    assert (trained - expected).abs().max() > 1e-4  # the adapter did change the policy


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_saved_lora_loads_in_the_stock_pipeline_and_changes_its_images(tiny_flow, tmp_path, kind):
    train(_cfg(tiny_flow[kind], tmp_path, "dpo", [("train.lr", "5e-2"), ("train.max_steps", "3")]))
    pipe = PIPELINES[kind].from_pretrained(tiny_flow[kind])
    kwargs = dict(num_inference_steps=2, height=32, width=32, output_type="np", max_sequence_length=16)
    before = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(tmp_path))
    adapted = [n for n, _ in pipe.transformer.named_parameters() if "lora_B" in n]
    assert len(adapted) == len([k for k in load_file(tmp_path / LORA_FILE) if "lora_B" in k])  # every layer loaded
    after = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
    assert abs(before - after).max() > 1e-3


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_with_the_cache_warm_t5_is_never_loaded(tiny_flow, tmp_path, step_spy, kind):
    extra = [("data.cache_encodings", "true"), ("data.cache_dir", str(tmp_path / "cache"))]
    train(_cfg(tiny_flow[kind], tmp_path / "cold", "dpo", extra))
    assert step_spy["step"].family.conditioner.t5.loaded  # the cold run encoded with it
    summary = train(_cfg(tiny_flow[kind], tmp_path / "warm", "dpo", extra))
    assert summary["encoding_cache"]["encoder_calls"] == {"vae": 0, "text_encoder": 0}
    assert not step_spy["step"].family.conditioner.t5.loaded


@pytest.mark.parametrize("method, reason", [("inpo", "inversion of the flow ODE"), ("ppd", "joint attention"),
                                            ("longalign", "T5 tokens")])
def test_methods_that_cannot_run_on_flow_models_are_refused_before_weights_load(tiny_flow, tmp_path, monkeypatch,
                                                                                method, reason):
    import diffalign.train as trainer

    monkeypatch.setattr(trainer, "load_sd_components", lambda *a, **k: pytest.fail("weights loaded"))
    cfg = load_config(REPO_ROOT / f"configs/toy/{method}.yaml", [
        ("model.pretrained", str(tiny_flow["sd3"])), ("output_dir", str(tmp_path)), ("train.report_to", "none")])
    with pytest.raises(ConfigError, match=f"{method} on a sd3 model.*{reason}"):
        train(cfg)


def test_flow_only_settings_are_refused_on_unets(tmp_path):
    cfg = load_config(REPO_ROOT / "configs/toy/dpo.yaml", [("model.max_sequence_length", "64"),
                                                            ("output_dir", str(tmp_path))])
    with pytest.raises(ConfigError, match="max_sequence_length is the T5 length"):
        train(cfg)


@pytest.mark.parametrize("name", ["sd35/dpo_pickapic", "sd35/kto_pickapic", "sd35/softrepa_captions",
                                  "flux/dpo_pickapic", "flux/mapo_pickapic"])
def test_flow_configs_run_the_same_code_path_on_the_tiny_models(tiny_flow, tmp_path, name):
    """configs/sd35 and configs/flux as shipped (gradient checkpointing, LoRA targets, σ sampling, Flux's guidance),
    pointed at the tiny models and the toy data, on CPU in float32 with plain AdamW; a validation grid from the
    family's own pipeline."""
    family = "sd3" if name.startswith("sd35") else "flux"
    source = "feedback_bold" if "kto" in name else "captioned_long" if "softrepa" in name else "pairs_bold"
    extra = [("objective.transformer_blocks", "2")] if "softrepa" in name else []  # the tiny SD3 has 2 blocks
    cfg = load_config(REPO_ROOT / f"configs/{name}.yaml", [
        ("model.pretrained", str(tiny_flow[family])), ("model.max_sequence_length", "16"),
        ("data.source", str(REPO_ROOT / f"assets/toy-data/{source}.parquet")), ("data.resolution", "32"),
        ("data.num_workers", "0"), ("data.max_pairs", "8"), ("train.batch_size", "2"), ("train.grad_accum", "1"),
        ("train.max_steps", "1"), ("train.mixed_precision", "no"), ("train.optimizer", "adamw"),
        ("train.validation_every", "1"), ("train.checkpoint_every", "0"), ("train.report_to", "none"),
        ("eval.validation_prompts", "[a red circle]"), ("eval.num_inference_steps", "2"),
        ("output_dir", str(tmp_path))] + extra)
    summary = train(cfg)
    assert summary["steps"] == 1 and math.isfinite(summary["final_metrics"]["loss"])
    assert (tmp_path / "validation" / "step_000001.png").is_file()


def test_diffalign_cache_fills_what_flow_training_then_reads(tiny_flow, tmp_path, step_spy):
    from diffalign.precompute import fill_encoding_cache

    extra = [("data.cache_encodings", "true"), ("data.cache_dir", str(tmp_path / "cache"))]
    filled = fill_encoding_cache(_cfg(tiny_flow["sd3"], tmp_path / "run", "dpo", extra))
    assert filled["encoded"] > 0
    summary = train(_cfg(tiny_flow["sd3"], tmp_path / "run", "dpo", extra))
    assert summary["encoding_cache"]["encoder_calls"] == {"vae": 0, "text_encoder": 0}
    assert not step_spy["step"].family.conditioner.t5.loaded


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_bf16_keeps_the_frozen_transformer_in_bf16_and_the_lora_in_float32(tiny_flow, tmp_path, step_spy, kind):
    summary = train(_cfg(tiny_flow[kind], tmp_path, "dpo", [("train.mixed_precision", "bf16"),
                                                             ("train.gradient_checkpointing", "true")]))
    assert abs(summary["first_metrics"]["loss"] - math.log(2)) < 1e-6 and math.isfinite(summary["final_metrics"]["loss"])
    dtypes = {n: p.dtype for n, p in step_spy["unet"].named_parameters()}
    assert all(d == torch.float32 for n, d in dtypes.items() if "lora_" in n)
    assert all(d == torch.bfloat16 for n, d in dtypes.items() if "lora_" not in n)
    assert step_spy["unet"].is_gradient_checkpointing


@pytest.mark.parametrize("kind", ["sd3", "flux"])
def test_a_micro_batch_left_without_rows_runs_the_transformer_on_a_dummy_row(tiny_flow, tmp_path, step_spy, kind):
    """A micro-batch whose samples were all skipped must still run the transformer (DDP's collectives on the other
    ranks pair with this rank's): a zero loss whose backward gives every LoRA weight a (zero) gradient."""
    train(_cfg(tiny_flow[kind], tmp_path, "dpo", [("train.max_steps", "1")]))
    step, transformer = step_spy["step"], step_spy["unet"]
    transformer.zero_grad(set_to_none=True)
    loss, metrics = step(transformer, {"rows": 0})
    loss.backward()
    lora = [p for n, p in transformer.named_parameters() if "lora_" in n]
    assert loss.item() == 0.0 and metrics == {}
    assert lora and all(p.grad is not None and not p.grad.any() for p in lora)


@pytest.mark.parametrize("kind, length", [("sd3", 77), ("flux", 512)])
def test_eval_samples_flow_models_with_the_t5_length_they_train_with(tiny_flow, tmp_path, monkeypatch, kind, length):
    """Not SD3's pipeline default (256): the length diffalign trains with (models/loading.T5_LENGTH), in the
    report and the cache key; an explicit length is used as given; a UNet refuses one."""
    from diffalign.evaluation import SamplingSettings, evaluate

    seen = []
    original = PIPELINES[kind].encode_prompt

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("max_sequence_length"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(PIPELINES[kind], "encode_prompt", spy)
    import diffalign.toy.plugin  # noqa: F401  (the scorer "toy")

    common = dict(prompts=["a red circle"], scorers=["toy"], seeds_per_prompt=1, progress=False)
    settings = SamplingSettings(num_inference_steps=2, height=32, width=32)
    report = evaluate(str(tiny_flow[kind]), output_dir=tmp_path / "default", settings=settings, **common)
    assert set(seen) == {length}
    assert report.settings["sampling"]["max_sequence_length"] == length
    seen.clear()
    evaluate(str(tiny_flow[kind]), output_dir=tmp_path / "given", **common,
             settings=SamplingSettings(num_inference_steps=2, height=32, width=32, max_sequence_length=16))
    assert set(seen) == {16}
    folders = {p.name.rsplit("-", 1)[1] for p in (tmp_path / "default" / "images").iterdir()}
    assert folders == {settings.for_kind(kind).key()} and settings.for_kind(kind).key() != settings.key()
    with pytest.raises(ValueError, match="max_sequence_length .16. is the T5 length of SD3/Flux prompts; a sd "
                                         "pipeline has no T5"):
        SamplingSettings(max_sequence_length=16).for_kind("sd")


def test_adapters_that_trained_with_different_t5_lengths_are_refused_together(tmp_path):
    import json

    from diffalign.evaluation.models import ModelSpec, trained_t5_length

    specs = [ModelSpec("base", "m")]
    for name, length in (("a", 77), ("b", 256), ("c", None)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(json.dumps({"model": {"max_sequence_length": length}}))
        specs.append(ModelSpec(name, "m", str(tmp_path / name)))
    assert trained_t5_length([specs[0], specs[1], specs[3]]) == 77  # an adapter that does not say is no conflict
    assert trained_t5_length([specs[0]]) is None
    with pytest.raises(ValueError, match=r"different T5 lengths \({'a': 77, 'b': 256}\)"):
        trained_t5_length(specs)
