"""``train.text_encoder``: full fine-tuning of the text encoder(s) beside a full UNet fine-tune.

Every text-encoder weight trains; the reference reads a frozen copy of the starting encoder; the output holds
``text_encoder/`` beside ``unet/``, which ``diffalign eval`` loads. Resume, gradient checkpointing and InPO's
inversion text are tested for both modes in test_text_encoder_lora.py; two ranks in test_distributed.py.
"""

import math

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file
from transformers import CLIPTextModel

from diffalign.config import ConfigError, load_config
from diffalign.evaluation.models import ModelSpec, load_pipeline
from diffalign.paths import REPO_ROOT, TOY_SD
from diffalign.train import train

FAST = [("train.max_steps", "2"), ("train.batch_size", "4"), ("eval.enabled", "false"), ("train.report_to", "none"),
        ("data.max_pairs", "32"), ("train.warmup_steps", "0"), ("lora.enabled", "false"),
        ("train.text_encoder", "true"), ("train.lr", "1e-3")]


def _cfg(out, method="tdpo", extra=()):
    return load_config(REPO_ROOT / f"configs/toy/{method}.yaml", FAST + [("output_dir", str(out))] + list(extra))


def _ids(texts):
    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD)
    return pipe.tokenizer(texts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids


@pytest.mark.parametrize("method", ["tdpo", "kto"])
def test_every_text_encoder_weight_trains_and_the_reference_reads_the_starting_encoder(tmp_path, step_spy, method):
    seen = step_spy
    summary = train(_cfg(tmp_path, method))
    if method == "tdpo":  # policy == reference at the start, text encoders included: loss log 2
        assert abs(summary["first_metrics"]["loss"] - math.log(2)) < 1e-6
    step, batch = seen["step"], seen["batch"]
    base = CLIPTextModel.from_pretrained(TOY_SD, subfolder="text_encoder")
    with torch.no_grad():
        expected_ref = base(batch["input_ids"])[0][batch["row_text"]]  # [R, 77, D]
        ref_text, _ = step._text_rows(batch, reference=True)
    policy_text, _ = step._text_rows(batch)
    torch.testing.assert_close(ref_text, expected_ref, rtol=1e-5, atol=1e-5)  # the frozen starting copy
    assert (policy_text - expected_ref).abs().max() > 1e-4  # the policy reads the trained encoder...
    policy_text.sum().backward()  # ...with gradient reaching its weights (not only some adapter)
    encoder = step.text.trained.text_encoders[0]
    assert encoder.dtype == torch.float32
    touched = [p.grad is not None and p.grad.abs().max() > 0 for p in encoder.parameters()]
    assert touched and all(touched)

    # The saved encoder is the trained one, and diffalign eval's loader puts it in the pipeline.
    saved = CLIPTextModel.from_pretrained(tmp_path / "text_encoder")
    ids = _ids(["a large red circle on the left on a sky background"])
    with torch.no_grad():
        trained = step.conditioner.encode(ids)[0]
        torch.testing.assert_close(saved(ids)[0], trained, rtol=1e-5, atol=1e-6)
        pipe = load_pipeline(ModelSpec("run", TOY_SD, str(tmp_path)))
        torch.testing.assert_close(pipe.text_encoder(ids)[0], trained, rtol=1e-5, atol=1e-6)
        assert (base(ids)[0] - trained).abs().max() > 1e-4
    # The model card's snippet, run as written, loads the trained encoder too.
    card = (tmp_path / "README.md").read_text()
    snippet = card[card.index("    from diffusers"):card.index("## Measured")].replace("<this folder>", str(tmp_path))
    scope = {}
    exec("\n".join(line[4:] for line in snippet.splitlines()), scope)
    with torch.no_grad():
        torch.testing.assert_close(scope["pipe"].text_encoder(ids)[0], trained, rtol=1e-5, atol=1e-6)


def test_the_evaluation_fingerprint_covers_the_text_encoder(tmp_path):
    train(_cfg(tmp_path))
    spec = ModelSpec("run", TOY_SD, str(tmp_path))
    before = spec.fingerprint()
    weights = tmp_path / "text_encoder" / "model.safetensors"
    state = load_file(weights)
    key = next(k for k in state if k.endswith("final_layer_norm.bias"))
    state[key] = state[key] + 1.0
    from safetensors.torch import save_file

    save_file(state, weights)
    assert spec.fingerprint() != before  # another text encoder: cached generations are not reused


def test_sdxl_trains_and_saves_both_text_encoders(tmp_path):
    from diffalign.models.tiny import build_tiny_sdxl

    build_tiny_sdxl(tmp_path / "tiny-sdxl")
    summary = train(_cfg(tmp_path / "run", extra=[("model.pretrained", str(tmp_path / "tiny-sdxl")),
                                                  ("train.batch_size", "2"), ("data.max_pairs", "8"),
                                                  ("train.empty_prompt_anchor", "1")]))
    # Policy and frozen copies (UNet and both encoders) start equal: the mean DPO margin h is 0 up to float32
    # rounding of the errors (~1, ulp 1.2e-7; the policy runs under autograd, the copy under inference_mode, and CPU
    # kernels may round a row differently: one ulp in one of four rows moves the loss by 1.5e-5 at beta 1000). Copies
    # that differed from the policy (other weights, another dtype) give margins far above 1e-6. The anchor's drift
    # is exactly 0...
    assert abs(summary["first_metrics"]["margin"]) < 1e-6
    assert abs(summary["first_metrics"]["loss"] - math.log(2)) < 1e-3
    assert summary["first_metrics"]["empty_prompt_drift"] == 0
    assert summary["final_metrics"]["empty_prompt_drift"] > 0  # ...and both encoders' outputs move it after
    for name in ("text_encoder", "text_encoder_2"):
        start = load_file(tmp_path / "tiny-sdxl" / name / "model.safetensors")
        trained = load_file(tmp_path / "run" / name / "model.safetensors")
        assert any((trained[k] - start[k]).abs().max() > 0 for k in start), name
    pipe = load_pipeline(ModelSpec("run", str(tmp_path / "tiny-sdxl"), str(tmp_path / "run")))
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    loaded = pipe.text_encoder_2.state_dict()
    trained = load_file(tmp_path / "run" / "text_encoder_2" / "model.safetensors")
    for key in trained:
        torch.testing.assert_close(loaded[key], trained[key])


@pytest.mark.parametrize("method, overrides, message", [
    ("dpo", [("lora.enabled", "true")], "train.text_encoder needs a full UNet fine-tune .* lora.text_encoder"),
    ("softrepa", [], "train.text_encoder needs a full UNet fine-tune .* not softrepa"),
    ("longalign", [], "train.text_encoder needs a full UNet fine-tune .* not longalign"),
    ("tdpo", [("data.cache_encodings", "true")], "data.cache_encodings with train.text_encoder"),
    ("dpo", [("train.ema_reference_decay", "0.99")], "train.text_encoder with train.ema_reference_decay"),
])
def test_full_text_encoder_training_is_refused_where_it_cannot_apply(method, overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO_ROOT / f"configs/toy/{method}.yaml",
                    [("lora.enabled", "false"), ("train.text_encoder", "true")] + overrides)


def test_bf16_keeps_the_trained_text_encoder_float32_from_its_unrounded_start(tmp_path, step_spy):
    """bf16 on CPU: the encoder that trains keeps the loaded float32 weights (not a bf16 round trip), and only
    the reference's frozen copy runs in bf16."""
    seen = step_spy
    start = load_file(f"{TOY_SD}/text_encoder/model.safetensors")
    assert any((v.float() - v.bfloat16().float()).abs().max() > 0 for v in start.values())  # bf16 would round them
    train(_cfg(tmp_path, extra=[("train.mixed_precision", "bf16"), ("train.lr", "1e-12"),
                                ("train.max_grad_norm", "0")]))
    trained = seen["step"].text.trained
    assert trained.text_encoders[0].dtype == torch.float32
    assert trained.reference_conditioner.text_encoder.dtype == torch.bfloat16
    after = trained.text_encoders[0].state_dict()
    for key, value in start.items():  # lr 1e-12 for 2 steps: still the float32 start, not its bf16 rounding
        torch.testing.assert_close(after[key], value, rtol=0, atol=1e-9)


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_sharded_launches_are_refused_with_the_reason(tmp_path, monkeypatch, kind):
    """The encoders train outside the prepared UNet, which FSDP/DeepSpeed would neither shard nor clip with it."""
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    import diffalign.train as train_module

    launched = SimpleNamespace(distributed_type=DistributedType[kind], device=torch.device("cpu"),
                               mixed_precision="no")
    monkeypatch.setattr(train_module, "make_accelerator", lambda cfg: launched)
    with pytest.raises(ConfigError, match=f"train.text_encoder runs under plain data parallelism only .* {kind}"):
        train(_cfg(tmp_path))


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_the_empty_prompt_anchor_adds_its_term_and_holds_the_unconditional_states(tmp_path, step_spy, mode):
    """train.empty_prompt_anchor λ: loss = objective loss + λ · mean((E_θ("") − E_ref("")) ²), logged as
    empty_prompt_drift; a strong anchor keeps the empty prompt's states nearer the base than no anchor does."""
    lora = [("lora.enabled", "true"), ("lora.text_encoder", "true"), ("train.text_encoder", "false")]
    extra = [("train.lr", "1e-2"), ("train.max_steps", "4")] + (lora if mode == "lora" else [])
    base = CLIPTextModel.from_pretrained(TOY_SD, subfolder="text_encoder")
    empty = _ids([""])
    with torch.no_grad():
        base_empty = base(empty)[0]  # [1, 77, D]
    drifts = {}
    for weight in (0.0, 1e4):
        seen = step_spy
        summary = train(_cfg(tmp_path / f"w{weight}", extra=extra + [("train.empty_prompt_anchor", str(weight))]))
        step = seen["step"]
        with torch.no_grad():
            drifts[weight] = ((step.conditioner.encode(empty)[0] - base_empty) ** 2).mean().item()
        if weight:
            assert summary["final_metrics"]["empty_prompt_drift"] >= 0
            # the term by hand, on the trained encoder: the step's own value equals it
            torch.testing.assert_close(step.text.empty_prompt_drift().detach(), torch.tensor(drifts[weight]),
                                       rtol=1e-4, atol=1e-10)
            recorded, row_loss = {}, step.objective.row_loss
            step.objective.row_loss = lambda p, r, b: recorded.setdefault("out", row_loss(p, r, b))
            with torch.no_grad():
                loss, metrics = step(seen["unet"], seen["batch"])
            expected = recorded["out"][0] + weight * metrics["empty_prompt_drift"]
            torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-7)
        else:
            assert "empty_prompt_drift" not in summary["final_metrics"]
    assert drifts[0.0] > 0 and drifts[1e4] < drifts[0.0] / 2


@pytest.mark.parametrize("overrides, message", [
    ([("lora.enabled", "true"), ("train.text_encoder", "false")], "no text encoder trains here"),
    ([("train.empty_prompt_anchor", "-1")], "train.empty_prompt_anchor: expected a finite number >= 0"),
])
def test_the_empty_prompt_anchor_is_refused_where_it_cannot_apply(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO_ROOT / "configs/toy/tdpo.yaml", [("lora.enabled", "false"), ("train.text_encoder", "true"),
                                                          ("train.empty_prompt_anchor", "1")] + overrides)


@pytest.mark.parametrize("lora", [False, True])
def test_text_encoder_lr_sets_the_text_encoders_step_size(tmp_path, lora):
    """One AdamW step moves every weight by about its group's lr (Adam's first step is lr * sign(grad), plus the
    tiny decay): the UNet's weights by train.lr, the text encoder's by train.text_encoder_lr."""
    extra = [("train.max_steps", "1"), ("train.weight_decay", "0"), ("train.text_encoder_lr", "1e-5")]
    if lora:
        extra += [("lora.enabled", "true"), ("train.text_encoder", "false"), ("lora.text_encoder", "true")]
    summary = train(_cfg(tmp_path, extra=extra))
    assert summary["first_metrics"]["text_encoder_lr"] == 1e-5 and summary["first_metrics"]["lr"] == 1e-3
    base = StableDiffusionPipeline.from_pretrained(TOY_SD)
    trained = load_pipeline(ModelSpec("run", TOY_SD, str(tmp_path)))
    if lora:  # LoRA B starts at 0, so a weight's change is B @ A: look at B, which took exactly one step
        from peft.tuners.lora import LoraLayer

        def largest_b(model):
            return max(m.lora_B["evaluated"].weight.abs().max().item() for m in model.modules()
                       if isinstance(m, LoraLayer) and "evaluated" in m.lora_B)
        unet_step, text_step = largest_b(trained.unet), largest_b(trained.text_encoder)
    else:
        def largest_change(a, b):
            return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))
        unet_step = largest_change(trained.unet, base.unet)
        text_step = largest_change(trained.text_encoder, base.text_encoder)
    assert 0.9e-3 < unet_step < 1.1e-3
    assert 0.9e-5 < text_step < 1.1e-5


@pytest.mark.parametrize("overrides, message", [
    ([("train.text_encoder_lr", "0")], "train.text_encoder_lr must be a finite number > 0"),
    ([("train.text_encoder_lr", "1e-4"), ("train.text_encoder", "false")],
     "train.text_encoder_lr is a trained text encoder's learning rate; no text encoder trains here"),
])
def test_text_encoder_lr_is_refused_where_it_cannot_apply(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(REPO_ROOT / "configs/toy/tdpo.yaml", [("lora.enabled", "false"), ("train.text_encoder", "true")]
                    + overrides)
