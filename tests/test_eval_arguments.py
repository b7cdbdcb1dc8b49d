"""`diffalign eval` refuses bad arguments with one line and exit code 2, before any model loads: numeric options out
of range, LoRA files with no or non-finite tensors, and a base model that is neither a folder nor a hub pipeline.
A truncated cached image is sampled again, with a warning naming it."""

import logging

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import diffalign
from diffalign.cli import main
from diffalign.evaluation import SamplingSettings
from diffalign.paths import TOY_SD


@pytest.fixture
def no_model_loads(monkeypatch):
    """Validation must come first: any pipeline load fails the test (and keeps a failing run fast)."""
    from diffusers import DiffusionPipeline

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", refuse)


@pytest.fixture
def offline(monkeypatch):
    """The hub unreachable, as on machines with no network (without waiting for connection retries)."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _eval_args(tmp_path, *extra: str) -> list[str]:
    """A one-prompt, one-seed, one-step evaluation of the toy model, then ``extra``."""
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    return ["eval", "--model", str(TOY_SD), "--prompts", str(prompts), "--seeds-per-prompt", "1", "--steps", "1",
            "--out", str(tmp_path / "out"), "--scorers", "toy", *extra]


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("flag, value, expected", [
    ("--seeds-per-prompt", "0", "expected an integer >= 1, got 0"),
    ("--steps", "0", "expected an integer >= 1, got 0"),
    ("--steps", "2.5", "expected an integer >= 1, got 2.5"),
    ("--batch-size", "0", "expected an integer >= 1, got 0"),
    ("--limit", "0", "expected an integer >= 1, got 0"),
    ("--height", "30", "expected a positive multiple of 8, got 30"),
    ("--width", "0", "expected a positive multiple of 8, got 0"),
    ("--guidance", "-1", "expected a finite number >= 0, got -1"),
    ("--guidance", "nan", "expected a finite number >= 0, got nan"),
    ("--guidance", "inf", "expected a finite number >= 0, got inf"),
    ("--guidance-rescale", "1.5", "expected a number in [0, 1]"),
    ("--guidance-rescale", "-0.1", "expected a number in [0, 1]"),
    ("--first-seed", "-1", "expected an integer >= 0, got -1"),
    ("--max-text-length", "0", "expected an integer >= 1, got 0"),
])
def test_numeric_options_out_of_range_are_argparse_errors(tmp_path, capsys, no_model_loads, flag, value, expected):
    with pytest.raises(SystemExit) as exit_:
        main(_eval_args(tmp_path, flag, value))
    assert exit_.value.code == 2
    line = _one_line_error(capsys)
    assert line.startswith(f"diffalign eval: error: argument {flag}: {expected}"), line
    assert not (tmp_path / "out").exists()


def test_the_library_checks_the_same_ranges(tmp_path, no_model_loads):
    with pytest.raises(ValueError, match=r"^seeds_per_prompt: expected an integer >= 1, got 0$"):
        diffalign.evaluate(str(TOY_SD), prompts=["a red circle"], seeds_per_prompt=0, output_dir=tmp_path / "a")
    with pytest.raises(ValueError, match=r"^limit: expected an integer >= 1, got 0$"):
        diffalign.evaluate(str(TOY_SD), limit=0, output_dir=tmp_path / "b")
    with pytest.raises(ValueError, match=r"^num_inference_steps: expected an integer >= 1, got 0$"):
        SamplingSettings(num_inference_steps=0)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.fixture(scope="module")
def toy_lora(tmp_path_factory) -> dict:
    """The tensors of a LoRA on the toy UNet as the trainer saves them (diffusers would load them)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    from diffalign.models.lora import attach_lora, save_lora

    unet = UNet2DConditionModel.from_pretrained(TOY_SD, subfolder="unet")
    attach_lora(unet, rank=2, alpha=2, target_modules=["to_q", "to_v"])
    return load_file(str(save_lora(unet, tmp_path_factory.mktemp("lora"))))


@pytest.mark.parametrize("case", ["empty file", "diverged folder"])
def test_a_lora_with_no_or_non_finite_tensors_is_refused(tmp_path, capsys, toy_lora, case):
    if case == "empty file":
        lora = path = tmp_path / "empty.safetensors"
        save_file({}, str(path))
        expected = f"{path}: a LoRA file with no tensors"
    else:  # what a training run that diverged leaves in its output folder: some tensors NaN or inf
        (tmp_path / "run").mkdir()
        lora, path = tmp_path / "run", tmp_path / "run" / "pytorch_lora_weights.safetensors"
        keys = sorted(toy_lora)
        diverged = {**toy_lora, keys[1]: torch.full_like(toy_lora[keys[1]], float("nan")),
                    keys[3]: toy_lora[keys[3]].clone().fill_(float("inf"))}
        save_file(diverged, str(path))
        expected = f"{path}: 2 of {len(keys)} LoRA tensors hold NaN/inf values (first: {keys[1]})"
    assert main(_eval_args(tmp_path, "--lora", f"run={lora}")) == 2
    line = _one_line_error(capsys)
    assert line.startswith(f"diffalign: {expected}"), line
    assert not (tmp_path / "out").exists()  # refused before anything was sampled (the base model's images too)


@pytest.mark.parametrize("model", ["./typo", "outputs/runs/typo", "typo.safetensors", "~/typo"])
def test_a_model_path_that_is_no_folder_is_refused(tmp_path, capsys, monkeypatch, model):
    monkeypatch.chdir(tmp_path)
    assert main(_eval_args(tmp_path, "--model", model)) == 2
    assert _one_line_error(capsys) == (f"diffalign: base model: {model} is not a diffusers pipeline folder (no "
                                       "model_index.json): no such folder, and not a hub id of the form owner/name")


def test_a_hub_shaped_model_missing_locally_and_offline_is_one_line(tmp_path, capsys, monkeypatch, offline):
    monkeypatch.chdir(tmp_path)  # outputs/typo: a mistyped run folder, which reads as owner/name
    assert main(_eval_args(tmp_path, "--model", "outputs/typo")) == 2
    assert _one_line_error(capsys) == ("diffalign: base model: outputs/typo: no such folder, and as a hub id: not in "
                                       "the local hub cache, and the hub cannot be reached (offline?)")


def test_training_gets_the_same_model_check(tmp_path, capsys, monkeypatch, offline):
    monkeypatch.chdir(tmp_path)
    for model, expected in [("outputs/typo", "model.pretrained: outputs/typo: no such folder, and as a hub id: not in "
                                             "the local hub cache"),
                            ("outputs/runs/typo", "model.pretrained: outputs/runs/typo is not a diffusers pipeline "
                                                  "folder (no model_index.json): no such folder, and not a hub id")]:
        code = main(["train", "--method", "dpo", "--model.pretrained", model, "--output_dir", str(tmp_path / "run"),
                     "--train.report_to", "none"])
        line = _one_line_error(capsys)
        assert code == 2 and line.startswith(f"diffalign train: {expected}"), line


def test_a_truncated_cached_image_is_sampled_again(tmp_path, capsys, caplog):
    assert main(_eval_args(tmp_path)) == 0
    [cached] = (tmp_path / "out" / "images").glob("base-*/*.png")
    original = np.asarray(Image.open(cached))
    cached.write_bytes(cached.read_bytes()[:len(cached.read_bytes()) // 2])  # as a full disk or a broken copy leaves it
    with caplog.at_level(logging.WARNING):
        assert main(_eval_args(tmp_path)) == 0
    assert f"cached image {cached} is unreadable" in caplog.text and "sampling it again" in caplog.text
    np.testing.assert_array_equal(np.asarray(Image.open(cached)), original)  # the same seed, the same image
    assert "Traceback" not in capsys.readouterr().err
