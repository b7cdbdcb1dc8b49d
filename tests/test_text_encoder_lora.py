"""``lora.text_encoder``: a LoRA on the text encoder(s) beside the UNet's (diffusers' --train_text_encoder).

The policy's text states carry gradient into the text encoder's adapter; the reference's come from the text
encoder with its adapters off; the export holds ``text_encoder.*`` keys that ``load_lora_weights`` reads; a
checkpoint holds the text encoder's adapter, so a resumed run ends where an uninterrupted one does.
"""

import math

import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file
from transformers import CLIPTextModel

from diffalign.checkpointing import complete_checkpoints
from diffalign.config import ConfigError, load_config
from diffalign.core.errors import per_sample_errors
from diffalign.core.reference import reference_unet
from diffalign.core.step import TrainStep
from diffalign.models.lora import LORA_FILE
from diffalign.paths import REPO_ROOT, TOY_SD
from diffalign.train import train

FAST = [("train.max_steps", "2"), ("train.batch_size", "4"), ("eval.enabled", "false"), ("train.report_to", "none"),
        ("data.max_pairs", "32"), ("train.warmup_steps", "0"), ("lora.text_encoder", "true"),
        ("lora.rank", "4"), ("lora.alpha", "16")]  # alpha != rank: the export must carry the scale


# The same run with every text-encoder (and UNet) weight trained instead (train.text_encoder), for the behaviour
# both modes share through the step's trained-text interface.
FULL = [("lora.enabled", "false"), ("train.text_encoder", "true")]  # _cfg then leaves out FAST's lora.* settings
MODES = {"lora": [], "full": FULL}


def _trained_weights(out) -> dict:
    """What a run trained: its LoRA file, or a full fine-tune's UNet and text-encoder weights."""
    if (out / LORA_FILE).is_file():
        return load_file(out / LORA_FILE)
    return {f"{part}.{k}": v for part, file in (("unet", "diffusion_pytorch_model.safetensors"),
                                                ("text_encoder", "model.safetensors"))
            for k, v in load_file(out / part / file).items()}


def _cfg(out, method="tdpo", extra=()):
    fast = [(k, v) for k, v in FAST if not k.startswith("lora.")] if ("train.text_encoder", "true") in extra else FAST
    return load_config(REPO_ROOT / f"configs/toy/{method}.yaml", fast + [("output_dir", str(out))] + list(extra))


def _ids(texts):
    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD)
    return pipe.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


@pytest.mark.parametrize("method", ["tdpo", "dpo", "kto"])
def test_the_text_encoder_adapter_trains_and_the_reference_reads_the_base_text_encoder(tmp_path, step_spy, method):
    seen = step_spy
    summary = train(_cfg(tmp_path, method, [("train.lr", "1e-2")]))
    first = summary["first_metrics"]
    if method in ("tdpo", "dpo"):  # both adapters start at zero: policy == reference, loss log 2
        assert abs(first["loss"] - math.log(2)) < 1e-6
    weights = load_file(tmp_path / LORA_FILE)
    text_b = [v for k, v in weights.items() if k.startswith("text_encoder.") and "lora" in k and "up" in k]
    assert text_b and any(v.abs().max() > 0 for v in text_b)  # exported, and it trained (B starts at zero)

    step, batch = seen["step"], seen["batch"]
    base = CLIPTextModel.from_pretrained(TOY_SD, subfolder="text_encoder")
    with torch.no_grad():
        expected_ref = base(batch["input_ids"])[0][batch["row_text"]]
        ref_text, _ = step._text_rows(batch, reference=True)
    policy_text, _ = step._text_rows(batch)
    torch.testing.assert_close(ref_text, expected_ref, rtol=1e-5, atol=1e-5)  # adapters off for the reference
    assert (policy_text - expected_ref).abs().max() > 1e-4  # the policy reads the trained text encoder...
    assert policy_text.requires_grad  # ...with gradient reaching its adapter
    policy_text.sum().backward()
    assert any(p.grad is not None and p.grad.abs().max() > 0 for p in step.text.trained.parameters())
    # and the switch is restored: the policy path is adapted again after a reference call
    assert (step._text_rows(batch)[0] - expected_ref).abs().max() > 1e-4

    # The step's reference errors are the base UNet's on the base text encoder's states.
    recorded, row_loss = {}, step.objective.row_loss
    step.objective.row_loss = lambda policy, ref, b: (recorded.update(ref=ref), row_loss(policy, ref, b))[1]
    prepared = step.objective.prepare_batch(batch)
    unet = seen["unet"]
    with torch.no_grad():
        step(unet, batch)
        x_t, t, target = step._inputs(unet, prepared, expected_ref, {})
        with reference_unet(unet):
            expected_errors = per_sample_errors(unet, x_t, t, expected_ref, target)
    torch.testing.assert_close(recorded["ref"], expected_errors, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("targets", [None, "[fc1, fc2]"])  # the default attention projections; the MLP alone
def test_the_export_loads_in_diffusers_with_the_trainers_text_states(tmp_path, step_spy, targets):
    seen = step_spy
    chosen = [("lora.text_encoder_target_modules", targets)] if targets else []
    train(_cfg(tmp_path, extra=[("train.lr", "1e-2")] + chosen))
    ids = _ids(["a large red circle on the left", "a small blue square on a sky background"])
    with torch.no_grad():
        trained = seen["step"].conditioner.encode(ids)[0]
    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD)
    with torch.no_grad():
        before = pipe.text_encoder(ids)[0]
        pipe.load_lora_weights(str(tmp_path))
        reloaded = pipe.text_encoder(ids)[0]
    assert (trained - before).abs().max() > 1e-4
    torch.testing.assert_close(reloaded, trained, rtol=1e-4, atol=1e-5)  # same weights, same alpha/rank scale


@pytest.mark.parametrize("mode", MODES)
def test_a_resumed_run_restores_the_text_encoder(tmp_path, mode):
    # The encoder at its own lr: the checkpoint holds a two-group optimizer, and resuming restores both groups.
    one_lr = [("train.max_steps", "3"), ("train.checkpoint_every", "1"), ("train.checkpoints_total_limit", "0"),
              ("train.lr", "1e-2")] + MODES[mode]
    setting = one_lr + [("train.text_encoder_lr", "3e-3")]
    train(_cfg(tmp_path / "straight", extra=setting))
    first = complete_checkpoints(tmp_path / "straight")[0]
    with pytest.raises(ConfigError, match="train.text_encoder_lr: 0.003 in the checkpoint, None now"):
        train(_cfg(tmp_path / "changed", extra=one_lr), resume=str(first))
    # Accepted, it still cannot apply: the optimizer's parameter groups differ (the encoder's own group).
    with pytest.raises(ConfigError, match="train.text_encoder_lr .* was set or unset since it was saved"):
        train(_cfg(tmp_path / "changed", extra=one_lr), resume=str(first), resume_accept=("train.text_encoder_lr",))
    train(_cfg(tmp_path / "resumed", extra=setting), resume=str(first))
    straight, resumed = _trained_weights(tmp_path / "straight"), _trained_weights(tmp_path / "resumed")
    assert straight.keys() == resumed.keys() and any(k.startswith("text_encoder.") for k in straight)
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-4, atol=1e-6)


def test_sdxl_trains_and_exports_both_text_encoders(tmp_path):
    from diffalign.models.tiny import build_tiny_sdxl

    build_tiny_sdxl(tmp_path / "tiny-sdxl")
    summary = train(_cfg(tmp_path / "run", extra=[("model.pretrained", str(tmp_path / "tiny-sdxl")),
                                                  ("train.batch_size", "2"), ("data.max_pairs", "8"),
                                                  ("train.lr", "1e-1")]))
    assert abs(summary["first_metrics"]["loss"] - math.log(2)) < 1e-6
    weights = load_file(tmp_path / "run" / LORA_FILE)
    for prefix in ("text_encoder.", "text_encoder_2."):
        assert any(k.startswith(prefix) and v.abs().max() > 0 for k, v in weights.items() if "up" in k), prefix
    pipe = StableDiffusionXLPipeline.from_pretrained(tmp_path / "tiny-sdxl")
    kwargs = dict(num_inference_steps=2, output_type="np", height=32, width=32)
    without = pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(tmp_path / "run"))
    assert pipe.text_encoder_2.peft_config  # diffusers put the second encoder's adapter where it belongs
    assert abs(pipe("a red circle", generator=torch.Generator().manual_seed(0), **kwargs).images - without).max() > 0


@pytest.mark.parametrize("method, overrides, message", [
    ("dpo", [("lora.enabled", "false")], "lora.text_encoder needs a UNet LoRA"),
    ("softrepa", [], "lora.text_encoder needs a UNet LoRA .* not softrepa"),
    ("longalign", [], "lora.text_encoder needs a UNet LoRA .* not longalign"),
    ("ppd", [], "lora.text_encoder needs a UNet LoRA .* not ppd"),
    ("tdpo", [("data.cache_encodings", "true")], "data.cache_encodings with lora.text_encoder"),
    ("dpo", [("lora.text_encoder", "false"), ("lora.text_encoder_target_modules", "[q_proj]")],
     "lora.text_encoder_target_modules is set but"),
])
def test_text_encoder_lora_is_refused_where_it_cannot_apply(method, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO_ROOT / f"configs/toy/{method}.yaml", [("lora.text_encoder", "true")] + overrides)


@pytest.mark.parametrize("mode", MODES)
def test_gradient_checkpointing_trains_the_same_text_encoder(tmp_path, step_spy, mode):
    seen = step_spy
    train(_cfg(tmp_path / "plain", extra=[("train.lr", "1e-2")] + MODES[mode]))
    train(_cfg(tmp_path / "checkpointed", extra=[("train.lr", "1e-2"), ("train.gradient_checkpointing", "true")]
               + MODES[mode]))
    encoder = seen["step"].text.trained.text_encoders[0]
    assert encoder.training and encoder.is_gradient_checkpointing  # active: transformers checkpoints in train mode
    plain, checkpointed = (_trained_weights(tmp_path / run) for run in ("plain", "checkpointed"))
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("inverter", ["reference", "policy"])
def test_inpo_inverts_with_the_text_states_of_the_model_that_inverts(tmp_path, monkeypatch, step_spy, inverter,
                                                                     mode):
    """InPO inverting with the reference reads the base text encoder's states (adapters off, or the frozen
    starting copy); inverting with the policy reads the trained text encoder's, as the step computed them."""
    import diffalign.core.step as step_module

    seen, real_inversion, real_text_rows = step_spy, step_module.ddim_inversion_latents, TrainStep._text_rows
    inverted_with, policy_text = [], []
    monkeypatch.setattr(step_module, "ddim_inversion_latents",
                        lambda model, scheduler, x0, t, text, *a, **k:
                        inverted_with.append(text.detach().clone()) or real_inversion(model, scheduler, x0, t, text,
                                                                                      *a, **k))

    def text_rows(self, batch, reference=False):  # called through; the policy's states recorded
        out = real_text_rows(self, batch, reference=reference)
        if not reference:
            policy_text.append(out[0].detach().clone())
        return out

    monkeypatch.setattr(TrainStep, "_text_rows", text_rows)
    train(_cfg(tmp_path, "inpo", [("train.lr", "1e-2"), ("objective.inversion_model", inverter)] + MODES[mode]))
    batch = seen["batch"]  # the last step's: both adapters had trained one update by then
    base = CLIPTextModel.from_pretrained(TOY_SD, subfolder="text_encoder")
    with torch.no_grad():
        base_states = base(batch["input_ids"])[0][batch["row_text"]]  # [R, 77, D]
    assert (policy_text[-1] - base_states).abs().max() > 1e-4  # the adapter had moved the policy's states
    expected = base_states if inverter == "reference" else policy_text[-1]
    torch.testing.assert_close(inverted_with[-1], expected, rtol=1e-5, atol=1e-5)


def test_bf16_mixed_precision_trains_the_text_encoder_adapter_in_float32(tmp_path, step_spy):
    """bf16 on CPU: the frozen encoders run in bf16, the adapter's weights stay float32 (an Adam step of lr 1e-3 on
    bf16 weights would round away) and train; the first loss is still exactly log 2 (errors in float32)."""
    seen = step_spy
    summary = train(_cfg(tmp_path, extra=[("train.mixed_precision", "bf16"), ("train.lr", "1e-2")]))
    assert abs(summary["first_metrics"]["loss"] - math.log(2)) < 1e-6
    encoder = seen["step"].text.trained.text_encoders[0]
    assert encoder.dtype == torch.bfloat16
    adapter = list(seen["step"].text.trained.parameters())
    assert adapter and all(p.dtype == torch.float32 for p in adapter)
    exported = load_file(tmp_path / LORA_FILE)
    text_b = [v for k, v in exported.items() if k.startswith("text_encoder.") and "lora" in k and "up" in k]
    assert text_b and any(v.abs().max() > 0 for v in text_b)  # it trained (B starts at zero)
