"""SDXL through the same core as SD: two text encoders, pooled embeddings and size/crop time ids, for every
objective, on a tiny random SDXL built from configs."""

import math

import pytest
import torch
from diffusers import StableDiffusionXLPipeline
from safetensors.torch import load_file

from diffalign.config import load_config
from diffalign.models.lora import LORA_FILE
from diffalign.paths import REPO_ROOT
from diffalign.train import train

METHODS = ["dpo", "mapo", "inpo", "kto", "tdpo", "tkto"]


@pytest.fixture(scope="module")
def tiny_sdxl(tmp_path_factory):
    from diffalign.models.tiny import build_tiny_sdxl

    path = tmp_path_factory.mktemp("tiny-sdxl")
    build_tiny_sdxl(path)
    return path


def _cfg(tiny_sdxl, out, method, extra=()):
    return load_config(REPO_ROOT / f"configs/toy/{method}.yaml", [
        ("model.pretrained", str(tiny_sdxl)), ("train.max_steps", "2"), ("train.batch_size", "2"),
        ("data.max_pairs", "8"), ("eval.enabled", "false"), ("train.report_to", "none"), ("train.warmup_steps", "0"),
        ("output_dir", str(out))] + list(extra))


@pytest.mark.parametrize("method", METHODS)
def test_every_objective_trains_on_sdxl_through_the_same_step(tiny_sdxl, tmp_path, method):
    summary = train(_cfg(tiny_sdxl, tmp_path, method))
    first = summary["first_metrics"]
    # The reference is the adapter-free UNet, equal to the policy at the first step (so it was left unchanged by
    # the LoRA's initialisation, and the SDXL conditioning reached both the same way).
    if method in ("dpo", "inpo", "tdpo"):
        assert abs(first["loss"] - math.log(2)) < 1e-6
        assert first["err_policy_w"] == pytest.approx(first["err_ref_w"], abs=1e-7)
    if method in ("kto", "tkto"):
        assert abs(first["loss"] - 0.5) < 1e-6 and first["z0"] == 0.0
    weights = load_file(tmp_path / LORA_FILE)
    assert any(v.abs().max() > 0 for k, v in weights.items() if "lora_B" in k or "lora.up" in k)
    assert math.isfinite(summary["final_metrics"]["loss"])


def test_sdxl_conditioning_uses_both_encoders_pooled_text_and_time_ids(tiny_sdxl):
    """The conditioner's states/pooled equal the SDXL pipeline's own encode_prompt; the time ids reach the UNet."""
    from diffalign.models.conditioning import SDXLConditioner
    from diffalign.models.loading import load_sd_components

    parts = load_sd_components(str(tiny_sdxl))
    assert parts.kind == "sdxl"
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    caption = "a large red circle at the top left"
    ids = torch.stack([t(caption, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids[0]
                       for t in (parts.tokenizer, parts.tokenizer_2)])[None]  # [1, 2, 77]
    states, pooled = SDXLConditioner(parts.text_encoder, parts.text_encoder_2).encode(ids)
    ref_states, _, ref_pooled, _ = pipe.encode_prompt(caption, do_classifier_free_guidance=False)
    torch.testing.assert_close(states, ref_states)
    torch.testing.assert_close(pooled, ref_pooled)
    conditioner = SDXLConditioner(parts.text_encoder, parts.text_encoder_2)
    x, t = torch.randn(1, 4, 16, 16), torch.tensor([500])
    outs = [parts.unet(x, t, states, **conditioner.unet_kwargs(pooled, torch.tensor([[h, 32, 0, 0, 32, 32.0]]))).sample
            for h in (32, 64)]
    assert (outs[0] - outs[1]).abs().max() > 1e-6  # another original size is another conditioning


def test_time_ids_carry_original_size_and_the_crop(tmp_path):
    import numpy as np
    from PIL import Image

    from diffalign.data.examples import paired_transform

    image = Image.fromarray(np.zeros((40, 60, 3), dtype=np.uint8))  # 60 wide, 40 high
    _, meta = paired_transform([image, image], 32, random_crop=False, random_flip=False,
                               rng=np.random.default_rng(0))
    # resized to 48x32: a centre crop of width 32 starts at x = 8
    assert meta.tolist() == [[40, 60, 0, 8, 32, 32]] * 2


def test_sdxl_lora_reloads_in_the_sdxl_pipeline_with_the_same_images(tiny_sdxl, tmp_path):
    from diffalign.models.lora import attach_lora, save_lora

    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    torch.manual_seed(0)
    attach_lora(pipe.unet, rank=4, alpha=16.0, target_modules=["to_q", "to_k", "to_v", "to_out.0"])
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.2)
    save_lora(pipe.unet, tmp_path, StableDiffusionXLPipeline)
    kwargs = dict(num_inference_steps=4, output_type="np", height=32, width=32)
    in_training = pipe("a red circle", generator=torch.Generator().manual_seed(3), **kwargs).images
    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    without = base("a red circle", generator=torch.Generator().manual_seed(3), **kwargs).images
    base.load_lora_weights(str(tmp_path))
    reloaded = base("a red circle", generator=torch.Generator().manual_seed(3), **kwargs).images
    assert abs(in_training - without).max() > 1e-3
    assert abs(in_training - reloaded).max() < 1e-4


def test_trained_sdxl_lora_reloads_with_the_trainers_images(tiny_sdxl, tmp_path):
    """The trainer's own export (StableDiffusionXLPipeline.save_lora_weights, with metadata) loads in diffusers."""
    summary = train(_cfg(tiny_sdxl, tmp_path / "run", "dpo", [("train.lr", "1e-1")]))
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    kwargs = dict(num_inference_steps=4, output_type="np", height=32, width=32)
    without = pipe("a red circle", generator=torch.Generator().manual_seed(3), **kwargs).images
    pipe.load_lora_weights(summary["lora"])
    with_lora = pipe("a red circle", generator=torch.Generator().manual_seed(3), **kwargs).images
    assert abs(with_lora - without).max() > 1e-4


def _spy_on_step(monkeypatch):
    """Record the frozen reference and the UNet the trainer's step sees (a spy: the trainer runs unchanged)."""
    from diffalign.core.step import TrainStep

    seen, original_init, original_call = {}, TrainStep.__init__, TrainStep.__call__

    def init(self, objective, vae, family, frozen_reference, accelerator, *rest, **options):
        seen["reference"] = frozen_reference
        original_init(self, objective, vae, family, frozen_reference, accelerator, *rest, **options)

    def call(self, unet, batch):
        seen["unet"] = self.accelerator.unwrap_model(unet)
        return original_call(self, unet, batch)

    monkeypatch.setattr(TrainStep, "__init__", init)
    monkeypatch.setattr(TrainStep, "__call__", call)
    return seen


@pytest.mark.parametrize("method", METHODS)
def test_a_sdxl_lora_step_changes_the_adapter_and_leaves_the_reference_weights(tiny_sdxl, tmp_path, monkeypatch,
                                                                                method):
    from diffusers import UNet2DConditionModel

    seen = _spy_on_step(monkeypatch)
    train(_cfg(tiny_sdxl, tmp_path, method, [("train.max_steps", "1")]))
    base = UNet2DConditionModel.from_pretrained(tiny_sdxl, subfolder="unet").state_dict()
    trained = seen["unet"].state_dict()
    base_keys = [k for k in trained if "lora" not in k]
    assert len(base_keys) == len(base)  # the reference = these weights with the adapters off
    for key in base_keys:
        assert torch.equal(trained[key], base[key.replace(".base_layer", "")]), key
    assert any(v.abs().max() > 0 for k, v in trained.items() if "lora_B" in k)


@pytest.mark.parametrize("method", ["dpo", "mapo", "inpo", "kto"])
def test_a_sdxl_full_finetune_step_moves_the_unet_not_the_frozen_reference(tiny_sdxl, tmp_path, monkeypatch, method):
    from diffusers import UNet2DConditionModel

    seen = _spy_on_step(monkeypatch)
    summary = train(_cfg(tiny_sdxl, tmp_path, method, [("lora.enabled", "false"), ("train.max_steps", "1"),
                                                         ("train.optimizer", "adafactor"), ("train.lr", "1e-3")]))
    base = UNet2DConditionModel.from_pretrained(tiny_sdxl, subfolder="unet").state_dict()
    tuned = UNet2DConditionModel.from_pretrained(summary["unet"]).state_dict()
    assert any(not torch.equal(tuned[k], base[k]) for k in base)
    if method == "mapo":
        assert seen["reference"] is None  # reference-free: no copy is made
    else:
        for k, v in seen["reference"].state_dict().items():
            assert torch.equal(v, base[k]), k


def test_a_sdxl_full_finetune_reloads_in_the_sdxl_pipeline(tiny_sdxl, tmp_path):
    from diffusers import UNet2DConditionModel

    summary = train(_cfg(tiny_sdxl, tmp_path, "dpo", [("lora.enabled", "false"), ("train.lr", "1e-3")]))
    pipe = StableDiffusionXLPipeline.from_pretrained(
        tiny_sdxl, unet=UNet2DConditionModel.from_pretrained(summary["unet"]))
    kwargs = dict(num_inference_steps=2, height=32, width=32, output_type="np")
    image = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
    base = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)("a red circle", generator=torch.Generator().manual_seed(0),
                                                               **kwargs).images
    assert image.shape == (1, 32, 32, 3) and (tmp_path / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert abs(image - base).max() > 1e-4  # the fine-tuned UNet, not the base, is what the pipeline runs


@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_an_ema_reference_follows_the_policy_and_resumes(tiny_sdxl, tmp_path, monkeypatch, precision):
    """In bf16 too: the EMA reference is kept in float32, where a (1 - decay) step does not round away."""
    from diffusers import UNet2DConditionModel

    seen = _spy_on_step(monkeypatch)
    extra = [("lora.enabled", "false"), ("train.lr", "1e-3"), ("train.ema_reference_decay", "0.5"),
             ("train.checkpoint_every", "1"), ("train.mixed_precision", precision)]
    summary = train(_cfg(tiny_sdxl, tmp_path, "dpo", extra))
    base = UNet2DConditionModel.from_pretrained(tiny_sdxl, subfolder="unet").state_dict()
    tuned = UNet2DConditionModel.from_pretrained(summary["unet"]).state_dict()
    reference = seen["reference"].state_dict()
    assert all(v.dtype == torch.float32 for v in reference.values())
    moved = [k for k in base if not torch.equal(tuned[k], base[k])]
    assert moved and any(not torch.equal(reference[k], base[k]) for k in moved)  # the reference moved too...
    assert all(not torch.equal(reference[k], tuned[k]) for k in moved)  # ...but lags the policy
    checkpoint = sorted((tmp_path / "checkpoints").glob("checkpoint_*"))[-1]
    assert (checkpoint / "ema_reference.safetensors").is_file()  # its state is in every checkpoint


@pytest.mark.parametrize("name", ["dpo_pickapic", "mapo_pickapic", "inpo_pickapic", "kto_pickapic",
                                  "dpo_pickapic_full"])
def test_sdxl_configs_run_the_same_code_path_on_the_tiny_sdxl(tiny_sdxl, tmp_path, name):
    """configs/sdxl/*.yaml as shipped (gradient checkpointing, Adafactor for the full fine-tune, shared crop and
    flip), pointed at the tiny SDXL and the toy data, on CPU in float32."""
    source = "feedback_bold" if name.startswith("kto") else "pairs_bold"
    cfg = load_config(REPO_ROOT / f"configs/sdxl/{name}.yaml", [
        ("model.pretrained", str(tiny_sdxl)), ("model.vae", "null"),
        ("data.source", str(REPO_ROOT / f"assets/toy-data/{source}.parquet")), ("data.resolution", "32"),
        ("data.num_workers", "0"), ("data.max_pairs", "8"), ("train.batch_size", "2"), ("train.grad_accum", "1"),
        ("train.max_steps", "1"), ("train.mixed_precision", "no"), ("train.validation_every", "1"),
        ("train.checkpoint_every", "0"), ("train.report_to", "none"), ("output_dir", str(tmp_path))])
    summary = train(cfg)
    assert summary["steps"] == 1 and math.isfinite(summary["final_metrics"]["loss"])
    assert (tmp_path / "validation" / "step_000001.png").is_file()  # sampled by a StableDiffusionXLPipeline


def test_wrong_model_paths_and_types_are_clear_errors(tmp_path, capsys):
    import json

    from safetensors.torch import save_file

    from diffalign.train import main

    other = tmp_path / "pixart"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "PixArtAlphaPipeline"}))
    not_sd = tmp_path / "weights.safetensors"
    save_file({"linear.weight": torch.zeros(2, 2)}, str(not_sd))
    cases = [(tmp_path / "missing", "is not a diffusers pipeline folder (no model_index.json)"),
             (tmp_path / "missing.safetensors", "no such checkpoint file"),
             (other, "a PixArtAlphaPipeline pipeline is not supported; diffalign trains StableDiffusionPipeline, "
                     "StableDiffusionXLPipeline, StableDiffusion3Pipeline, FluxPipeline models"),
             (not_sd, "is not supported; diffalign trains SD 1.x/2.x and SDXL base checkpoints")]
    for path, message in cases:
        code = main(["--method", "dpo", "--model.pretrained", str(path), "--output_dir", str(tmp_path / "out"),
                     "--train.report_to", "none"])
        err = capsys.readouterr().err
        assert code == 2 and message in err and str(path) in err, err


def test_the_encoding_cache_holds_sdxl_pooled_text_and_trains_the_same(tiny_sdxl, tmp_path):
    cache = [("data.cache_encodings", "true"), ("data.cache_dir", str(tmp_path / "cache")), ("train.max_steps", "8")]
    plain = train(_cfg(tiny_sdxl, tmp_path / "plain", "dpo", [("train.max_steps", "8")]))
    train(_cfg(tiny_sdxl, tmp_path / "cold", "dpo", cache))
    warm = train(_cfg(tiny_sdxl, tmp_path / "warm", "dpo", cache))
    assert warm["encoding_cache"]["encoder_calls"] == {"vae": 0, "text_encoder": 0}
    a, b = load_file(plain["lora"]), load_file(warm["lora"])
    # Cached states were encoded in other batches than the plain run's (float noise ~1e-7), which Adam can blow up
    # on a near-zero gradient entry; compare whole tensors: a wrong pooled/time-id cache changes them at ~1e-1.
    for k in a:
        assert (b[k] - a[k]).norm() <= 1e-3 * a[k].norm() + 1e-6, k


def test_diffalign_cache_fills_what_sdxl_training_reads(tiny_sdxl, tmp_path):
    """The precompute uses the trainer's SDXL setup (both encoders, pooled text, float32 VAE)."""
    from diffalign.cli import main

    args = ["--config", str(REPO_ROOT / "configs/toy/dpo.yaml"), "--model.pretrained", str(tiny_sdxl),
            "--train.max_steps", "2", "--train.batch_size", "2", "--data.max_pairs", "8",
            "--data.cache_dir", str(tmp_path / "cache"), "--output_dir", str(tmp_path / "run")]
    assert main(["cache", *args]) == 0
    cache = [("data.cache_encodings", "true"), ("data.cache_dir", str(tmp_path / "cache"))]
    warm = train(_cfg(tiny_sdxl, tmp_path / "run", "dpo", cache))
    assert warm["encoding_cache"]["encoder_calls"] == {"vae": 0, "text_encoder": 0}


@pytest.mark.parametrize("force_zeros", [True, False])
def test_validation_samples_with_the_pipelines_own_empty_prompt_rule(tiny_sdxl, force_zeros):
    """The validation pipeline keeps the trained pipeline's force_zeros_for_empty_prompt (from model_index.json),
    so its unconditional half is what LongAlign trained on and what diffusers samples with."""
    from diffusers import DDIMScheduler

    from diffalign.models.loading import load_sd_components
    from diffalign.validation import sampling_pipeline

    parts = load_sd_components(str(tiny_sdxl))
    assert parts.force_zeros_for_empty_prompt  # the tiny SDXL's index, as SDXL base
    parts.force_zeros_for_empty_prompt = force_zeros
    pipe = sampling_pipeline(parts, parts.unet, DDIMScheduler.from_pretrained(tiny_sdxl, subfolder="scheduler"))
    assert pipe.config.force_zeros_for_empty_prompt is force_zeros


def test_soft_token_start_state_is_the_sdxl_pipelines_empty_prompt_start_row(tiny_sdxl):
    """token_init start_token on SDXL: both encoders' penultimate states at the start token, concatenated, as the
    SDXL pipeline conditions; the reference init is N(0, 0.02²) for SDXL (the authors' code), start_token for SD."""
    from diffalign.models.loading import load_sd_components
    from diffalign.objectives import get_objective
    from diffalign.training.build import start_token_state

    parts = load_sd_components(str(tiny_sdxl))
    pipe = StableDiffusionXLPipeline.from_pretrained(tiny_sdxl)
    empty, *_ = pipe.encode_prompt("", device="cpu", do_classifier_free_guidance=False)  # [1, 77, D1 + D2]
    torch.testing.assert_close(start_token_state(parts), empty[0, 0], rtol=1e-5, atol=1e-5)
    reference, start = get_objective("softrepa"), get_objective("softrepa", token_init="start_token")
    assert not reference.starts_from_start_token("sdxl") and reference.starts_from_start_token("sd")
    assert start.starts_from_start_token("sdxl") and not get_objective(
        "softrepa", token_init="normal").starts_from_start_token("sd")
