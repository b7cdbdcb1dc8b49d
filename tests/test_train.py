"""The trainer end to end on the toy SD: it trains, exports a LoRA diffusers reloads, and is invariant to
splitting a batch into accumulation steps."""

import dataclasses
import json
import math

import pytest
import torch
from diffusers import StableDiffusionPipeline
from safetensors.torch import load_file

from diffalign.config import ConfigError, load_config
from diffalign.models.lora import LORA_FILE, attach_lora, save_lora
from diffalign.paths import REPO_ROOT, TOY_SD
from diffalign.train import main, train

FAST = [("train.max_steps", "2"), ("train.batch_size", "4"), ("eval.enabled", "false"),
        ("train.report_to", "none"), ("data.max_pairs", "64"), ("train.warmup_steps", "0")]


def _cfg(tmp_path, method="dpo", extra=()):
    return load_config(REPO_ROOT / f"configs/toy/{method}.yaml",
                       FAST + [("output_dir", str(tmp_path))] + list(extra))


@pytest.mark.parametrize("method", ["dpo", "mapo", "inpo", "kto", "tdpo", "tkto"])
def test_training_changes_lora_weights_and_writes_outputs(tmp_path, method):
    summary = train(_cfg(tmp_path / method, method))
    weights = load_file(tmp_path / method / LORA_FILE)
    lora_b = [v for k, v in weights.items() if "lora_B" in k or "lora.up" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: nonzero means it trained
    assert summary["steps"] == 2 and (tmp_path / method / "README.md").is_file()
    if method in ("dpo", "mapo", "inpo"):
        assert summary["ties_dropped"] > 0
    first = summary["first_metrics"]
    if method in ("dpo", "inpo", "tdpo"):  # policy == reference at the first step: exactly log 2, errors equal
        assert abs(first["loss"] - math.log(2)) < 1e-6 and first["implicit_acc"] == 0.5
        assert first["err_policy_w"] == pytest.approx(first["err_ref_w"], abs=1e-7)
    if method in ("kto", "tkto"):  # g = 0 and z0 = 0 at the first step: 1 - σ(0) = 0.5 for every row
        assert abs(first["loss"] - 0.5) < 1e-6 and first["z0"] == 0.0


@pytest.mark.parametrize("targets", [["to_q", "to_k", "to_v", "to_out.0"],
                                     # proj_in's keys sort before the attention's: diffusers reads the first key's format
                                     ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "conv1", "ff.net.0.proj"]])
def test_lora_reloads_in_diffusers_with_the_same_images(tmp_path, targets):
    pipe = StableDiffusionPipeline.from_pretrained(TOY_SD)
    torch.manual_seed(0)
    attach_lora(pipe.unet, rank=4, alpha=16.0, target_modules=targets)  # alpha != rank
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    save_lora(pipe.unet, tmp_path)
    kwargs = dict(num_inference_steps=8, output_type="np")
    in_training = pipe("a red circle", generator=torch.Generator().manual_seed(3), **kwargs).images
    base = StableDiffusionPipeline.from_pretrained(TOY_SD)
    without = base("a red circle", generator=torch.Generator().manual_seed(3), **kwargs).images
    base.load_lora_weights(str(tmp_path))
    reloaded = base("a red circle", generator=torch.Generator().manual_seed(3), **kwargs).images
    assert abs(in_training - without).max() > 1e-2  # the LoRA changes the images...
    assert abs(in_training - reloaded).max() < 1e-4  # ...and reloads at the right scale


def test_accumulation_invariance(tmp_path):
    one = train(_cfg(tmp_path / "a", extra=[("train.batch_size", "8"), ("train.grad_accum", "1"),
                                            ("train.max_steps", "2")]))
    two = train(_cfg(tmp_path / "b", extra=[("train.batch_size", "4"), ("train.grad_accum", "2"),
                                            ("train.max_steps", "2")]))
    wa, wb = load_file(one["lora"]), load_file(two["lora"])
    assert wa.keys() == wb.keys()
    moved = 0
    for k in wa:
        # Summation order differs (8 rows at once vs 4 + 4), so equal up to float noise; a real mismatch (e.g. a
        # wrongly scaled accumulated loss) moves weights by about lr = 1e-3.
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-3, atol=1e-5)
        moved += int("lora.up" in k and wa[k].abs().sum() > 0)  # up (= B) starts at zero
    assert moved  # the step really updated the weights being compared
    # What is logged is each update's mean over its micro-batches, so it does not depend on the split either.
    for key in ("loss", "implicit_acc", "err_policy_w", "err_ref_l"):
        assert two["final_metrics"][key] == pytest.approx(one["final_metrics"][key], rel=1e-4, abs=1e-7), key


def test_refuses_to_overwrite_and_reports_config_errors(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("user file")
    assert main(["--method", "dpo", "--output_dir", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["--method", "dpo", "--train.nope", "1"]) == 2
    assert "unknown key" in capsys.readouterr().err


def test_sd15_config_runs_the_same_code_path_on_a_tiny_unet(tmp_path):
    """configs/sd15/dpo_pickapic.yaml, pointed at a randomly initialised tiny SD built from configs."""
    from diffalign.models.tokenizer import build_clip_tokenizer
    from diffalign.toy.model import make_scheduler, make_text_encoder, make_unet, make_vae

    torch.manual_seed(0)
    tiny = StableDiffusionPipeline(vae=make_vae(), text_encoder=make_text_encoder(), tokenizer=build_clip_tokenizer(),
                                   unet=make_unet(), scheduler=make_scheduler(), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    tiny.save_pretrained(tmp_path / "tiny-sd")
    cfg = load_config(REPO_ROOT / "configs/sd15/dpo_pickapic.yaml", [
        ("model.pretrained", str(tmp_path / "tiny-sd")), ("data.source", str(REPO_ROOT / "assets/toy-data/pairs_bold.parquet")),
        ("data.resolution", "32"), ("data.num_workers", "0"), ("data.max_pairs", "16"), ("train.batch_size", "2"),
        ("train.grad_accum", "2"), ("train.max_steps", "2"), ("train.mixed_precision", "no"),
        ("train.checkpoint_every", "1"), ("train.validation_every", "2"), ("train.report_to", "none"),
        ("output_dir", str(tmp_path / "out"))])
    assert cfg.train.gradient_checkpointing and cfg.lora.rank == 8
    summary = train(cfg)
    assert summary["steps"] == 2 and (tmp_path / "out" / LORA_FILE).is_file()
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["checkpoint_0", "checkpoint_1"]
    assert (tmp_path / "out" / "validation" / "step_000002.png").is_file()


def test_full_finetune_uses_a_frozen_reference_and_saves_a_unet(tmp_path):
    summary = train(_cfg(tmp_path, extra=[("lora.enabled", "false"), ("train.lr", "1e-4")]))
    first = summary["first_metrics"]
    assert abs(first["loss"] - math.log(2)) < 1e-6  # the frozen copy equals the policy at the start
    from diffusers import UNet2DConditionModel

    tuned = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    base = UNet2DConditionModel.from_pretrained(TOY_SD, subfolder="unet")
    changed = [n for (n, a), (_, b) in zip(tuned.named_parameters(), base.named_parameters()) if not torch.equal(a, b)]
    assert changed  # the policy moved; the reference (the saved base) did not
    # The saved UNet drops into the diffusers pipeline in place of the base's.
    kwargs = dict(num_inference_steps=4, output_type="np", generator=torch.Generator().manual_seed(0))
    tuned_images = StableDiffusionPipeline.from_pretrained(TOY_SD, unet=tuned)("a red circle", **kwargs).images
    kwargs["generator"] = torch.Generator().manual_seed(0)
    base_images = StableDiffusionPipeline.from_pretrained(TOY_SD)("a red circle", **kwargs).images
    assert tuned_images.shape == base_images.shape and abs(tuned_images - base_images).max() > 1e-4


def test_bf16_mixed_precision_runs_on_cpu(tmp_path):
    summary = train(_cfg(tmp_path, extra=[("train.mixed_precision", "bf16"), ("train.validation_every", "2")]))
    assert abs(summary["first_metrics"]["loss"] - math.log(2)) < 1e-6  # errors reduced in float32
    assert (tmp_path / "validation" / "step_000002.png").is_file()


@pytest.mark.parametrize("lora", [True, False])
def test_bf16_keeps_the_frozen_unet_in_bf16_and_what_trains_in_float32(tmp_path, step_spy, lora):
    """As diffusers' LoRA scripts: the frozen base UNet in the training precision, the adapter in float32 (an Adam
    step on bf16 weights would round away). A full fine-tune keeps float32 master weights throughout."""
    extra = [("train.mixed_precision", "bf16")] + ([] if lora else [("lora.enabled", "false")])
    summary = train(_cfg(tmp_path, extra=extra))
    params = dict(step_spy["unet"].named_parameters())
    trained = {n: p.dtype for n, p in params.items() if p.requires_grad}
    frozen = {n: p.dtype for n, p in params.items() if not p.requires_grad}
    assert trained and set(trained.values()) == {torch.float32}
    if lora:
        assert all("lora" in n for n in trained) and set(frozen.values()) == {torch.bfloat16}
        # The reference is this same bf16 base with the adapter off: equal to the policy at the first step.
        assert abs(summary["first_metrics"]["loss"] - math.log(2)) < 1e-6
    else:  # (its reference, a bf16 copy, differs from the float32 policy by the rounding of the norms' weights)
        assert not frozen


def test_fp16_on_cpu_is_refused_with_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        train(_cfg(tmp_path, extra=[("train.mixed_precision", "fp16")]))


def test_inpo_can_invert_with_the_reference(tmp_path):
    summary = train(_cfg(tmp_path, "inpo", [("objective.inversion_model", "reference")]))
    assert summary["steps"] == 2 and abs(summary["first_metrics"]["loss"] - math.log(2)) < 1e-6


def _nan_loss_at(monkeypatch, calls: set | None):
    """Make the DPO loss non-finite at the given micro-step calls (None: always). The guard under test is the
    trainer's; the objective is only the injection point."""
    from diffalign.objectives.dpo import DiffusionDPO

    original, count = DiffusionDPO.loss, {"n": 0}

    def loss(self, errors, batch=None):
        value, metrics = original(self, errors, batch)
        count["n"] += 1
        return (value * float("nan"), metrics) if calls is None or count["n"] in calls else (value, metrics)

    monkeypatch.setattr(DiffusionDPO, "loss", loss)


def test_a_non_finite_update_is_skipped_and_counted(tmp_path, monkeypatch):
    _nan_loss_at(monkeypatch, {2})
    summary = train(_cfg(tmp_path, extra=[("train.max_steps", "4")]))
    assert summary["steps"] == 4 and summary["nonfinite_skipped"] == 1
    weights = load_file(tmp_path / LORA_FILE)
    assert all(torch.isfinite(v).all() for v in weights.values())


def test_non_finite_updates_in_a_row_stop_the_run_with_a_checkpoint(tmp_path, monkeypatch, capsys):
    _nan_loss_at(monkeypatch, None)
    code = main(["--config", str(REPO_ROOT / "configs/toy/dpo.yaml"), "--output_dir", str(tmp_path),
                 *[x for k, v in FAST for x in (f"--{k}", v)], "--train.max_steps", "10",
                 "--train.max_nonfinite_updates", "3"])
    assert code == 2 and "3 optimizer steps in a row had a non-finite loss" in capsys.readouterr().err
    checkpoints = sorted((tmp_path / "checkpoints").glob("checkpoint_*"))
    assert checkpoints and (checkpoints[-1] / "progress.json").is_file()


def test_an_update_that_makes_the_weights_non_finite_stops_the_run_and_saves_nothing(tmp_path, monkeypatch, capsys):
    """A finite loss and gradient, yet the optimizer's update leaves a weight NaN (as an overflowing fp16 or 8-bit
    optimizer step can): the run must fail at that step, not checkpoint or export the NaN weights (as
    `--train.lr inf` once did, exit 0)."""
    original = torch.optim.AdamW.step

    def overflowing_step(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = float("nan")
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", overflowing_step)
    code = main(["--config", str(REPO_ROOT / "configs/toy/dpo.yaml"), "--output_dir", str(tmp_path),
                 *[x for k, v in FAST for x in (f"--{k}", v)], "--train.checkpoint_every", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "step 1: the update made trained weights NaN or inf" in err and "Traceback" not in err
    assert not (tmp_path / LORA_FILE).exists() and not (tmp_path / "summary.json").exists()
    assert not list(tmp_path.glob("checkpoints/checkpoint_*"))


def test_non_finite_weights_are_never_saved():
    from diffalign.checkpointing import NonFiniteWeights, check_finite

    module = torch.nn.Linear(2, 2)
    check_finite({"adapter": module})  # finite: nothing raised
    with torch.no_grad():
        module.bias[1] = float("nan")
    with pytest.raises(NonFiniteWeights, match="adapter: 1 weight tensor.*first: bias"):
        check_finite({"adapter": module})


def test_a_broken_latest_checkpoint_is_reported_and_skipped_only_when_asked(tmp_path, capsys):
    args = ["--config", str(REPO_ROOT / "configs/toy/dpo.yaml"), "--output_dir", str(tmp_path),
            *[x for k, v in FAST for x in (f"--{k}", v)], "--train.checkpoint_every", "1"]
    assert main(args) == 0
    newest = sorted((tmp_path / "checkpoints").glob("checkpoint_*"))[-1]
    weights = newest / "unet_lora_adapter.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # a truncated file, as a full disk would leave it
    more = ["--train.max_steps", "3"]
    assert main(args + more + ["--resume", "latest"]) == 2
    assert f"checkpoint {newest} is broken" in capsys.readouterr().err
    assert main(args + more + ["--resume", "latest-valid"]) == 0
    err = capsys.readouterr().err
    assert f"checkpoint {newest} is broken" in err and "falling back" in err
    assert json.loads((tmp_path / "summary.json").read_text())["steps"] == 3


def test_loader_workers_and_channels_last_train_the_same_weights(tmp_path):
    """Data workers (each epoch's workers see that epoch's seeds) and channels-last change speed, not results."""
    extra = [("train.max_steps", "4"), ("data.max_pairs", "8")]  # two epochs
    plain = train(_cfg(tmp_path / "plain", extra=extra))
    fast = train(_cfg(tmp_path / "fast", extra=extra + [("data.num_workers", "2"), ("train.channels_last", "true")]))
    a, b = load_file(plain["lora"]), load_file(fast["lora"])
    for k in a:  # channels-last kernels sum in another order: float noise of ~1e-6
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5)


def test_ema_update_is_the_lerp_toward_the_policy():
    from diffalign.training.components import EmaReference

    reference, policy = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    before = [p.clone() for p in reference.parameters()]
    EmaReference(reference, policy, decay=0.9).after_update()
    for r, b, p in zip(reference.parameters(), before, policy.parameters()):
        torch.testing.assert_close(r, 0.9 * b + 0.1 * p)


def test_ema_reference_and_optimizer_are_validated():
    from diffalign.config import ConfigError

    with pytest.raises(ConfigError, match="ema_reference_decay needs full fine-tuning"):
        load_config(overrides=[("train.ema_reference_decay", "0.99")])
    with pytest.raises(ConfigError, match=r"ema_reference_decay needs full fine-tuning .*\(not mapo\)"):
        load_config(overrides=[("method", "mapo"), ("lora.enabled", "false"), ("train.ema_reference_decay", "0.9")])
    with pytest.raises(ConfigError, match="train.optimizer: expected adamw, adamw_8bit or adafactor"):
        load_config(overrides=[("train.optimizer", "sgd")])


def test_train_timestep_range_reaches_the_step(tmp_path, monkeypatch):
    import diffalign.families.unet as step_module  # the UNet family draws the timesteps

    drawn, original = [], step_module.group_noise

    def spy(*args, **kwargs):  # the real draw, recorded
        eps, t = original(*args, **kwargs)
        drawn.append(t)
        return eps, t

    monkeypatch.setattr(step_module, "group_noise", spy)
    train(_cfg(tmp_path, "dpo", [("train.timestep_range", "[990, 1000]")]))
    t = torch.cat(drawn)
    assert len(drawn) == 2 and t.min() >= 990 and t.max() <= 999


def test_validation_grids_sample_at_the_validation_resolution_and_steps(tmp_path, monkeypatch):
    """eval.validation_resolution / validation_steps reach the validation sampler, and null means data.resolution
    and eval.num_inference_steps (never the base's default size); the grid's size follows: 4 prompts x 4 seeds."""
    from PIL import Image

    import diffalign.train as train_module
    import diffalign.validation as validation
    from diffalign.evaluation.grid import TITLE_HEIGHT
    from diffalign.models.loading import load_sd_components

    sampled = []  # (steps, height, width) of each validation sampling call
    real = validation.generate

    def recording(pipe, prompts, seeds, steps, *args, **kwargs):
        sampled.append((steps, kwargs["height"], kwargs["width"]))
        return real(pipe, prompts, seeds, steps, *args, **kwargs)

    monkeypatch.setattr(validation, "generate", recording)
    train(_cfg(tmp_path / "run", extra=[("train.validation_every", "2"), ("eval.validation_resolution", "48"),
                                        ("eval.validation_steps", "2")]))
    assert sampled == [(2, 48, 48)]  # the toy trains at 32 px; its pipeline's default is 32 px too
    grid = Image.open(tmp_path / "run" / "validation" / "step_000002.png")
    assert grid.size == (4 * 48 * 4, 4 * (48 * 4 + TITLE_HEIGHT))  # 4 seeds of 48 px, enlarged 4x; 4 titled rows

    parts = load_sd_components(str(TOY_SD))
    unset = _cfg(tmp_path / "unset", extra=[("data.resolution", "48"), ("eval.num_inference_steps", "3")])
    train_module._validate(unset, parts, parts.unet, tmp_path / "unset", 1)
    assert sampled[-1] == (3, 48, 48)


def test_a_validation_resolution_off_the_models_pixel_grid_fails_before_training(tmp_path, capsys):
    """Config time checks multiples of 8; the model's own factor (here a VAE that downsamples 16x, as SD3/Flux's
    2x2 patches make 16) is checked once the model is known, before any step."""
    from diffusers import AutoencoderKL

    model = tmp_path / "sd-16x"
    model.mkdir()
    for entry in TOY_SD.iterdir():
        if entry.name != "vae":
            (model / entry.name).symlink_to(entry)
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 5, up_block_types=("UpDecoderBlock2D",) * 5,
                  block_out_channels=(8,) * 5, layers_per_block=1, norm_num_groups=8).save_pretrained(model / "vae")
    args = ["--method", "dpo", *[x for k, v in FAST for x in (f"--{k}", v)], "--model.pretrained", str(model),
            "--eval.validation_resolution", "40", "--output_dir", str(tmp_path / "out")]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "eval.validation_resolution: expected a multiple of 16 for this model (its VAE's factor), got 40" in err
    assert not (tmp_path / "out" / "checkpoints").exists() and "Traceback" not in err
