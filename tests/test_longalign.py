"""LongAlign reward fine-tuning: the differentiable Denscore, the prompt data, the reward step, the trainer."""

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from diffalign.config import ConfigError, DataConfig, load_config
from diffalign.core.reward_step import RewardStep
from diffalign.data.prompts import TrainingPrompts, collate_prompts
from diffalign.models.conditioning import conditioner_for
from diffalign.models.loading import load_sd_components
from diffalign.models.lora import attach_lora
from diffalign.models.tokenizer import build_clip_tokenizer
from diffalign.objectives import get_objective
from diffalign.paths import TOY_CLIP, TOY_SD
from diffalign.scorers import create_scorer
from diffalign.scorers.base import differentiable_preprocess
from diffalign.toy import plugin  # noqa: F401  (registers the prompt source "toy:<set>")
from diffalign.toy.prompts import prompt_set

LONG = ["a red circle on the left. a blue square at the top; a green triangle.",
        "in the very center of the picture there is a blue square. the background is sky."]


class _Accelerator:
    """What RewardStep reads of an accelerate.Accelerator on one CPU process."""
    device = torch.device("cpu")

    @staticmethod
    def unwrap_model(model):
        return model


@pytest.fixture(scope="module")
def toy_denscore():
    return create_scorer("denscore", backbone="clipscore", model=str(TOY_CLIP), omega=0.3)


def test_differentiable_denscore_equals_the_scorer_and_passes_gradient_to_the_pixels(toy_denscore):
    rng = np.random.default_rng(0)
    uint8 = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    prompts = LONG + ["a yellow circle.", "a purple square. a red triangle."]
    expected = toy_denscore(list(uint8), prompts)  # through PIL and the CLIP processor
    pixels = torch.from_numpy(uint8).permute(0, 3, 1, 2).float().div(255).requires_grad_(True)
    scores = toy_denscore.reward(pixels, prompts)
    torch.testing.assert_close(scores.detach(), expected, atol=1e-5, rtol=0)
    scores.sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert all(not p.requires_grad for p in toy_denscore.similarity.model.parameters())  # the reward stays frozen


def test_differentiable_resize_and_crop_follow_the_clip_processor(toy_denscore):
    """A 48x64 image is resized (short side 32) and centre-cropped: the torch path matches the processor's PIL path
    up to resampling (a smooth image, so bicubic kernels differ little)."""
    yy, xx = np.mgrid[0:48, 0:64]
    smooth = np.stack([xx * 4, yy * 5, (xx + yy) * 2], axis=-1).clip(0, 255).astype(np.uint8)
    processor = toy_denscore.similarity.processor.image_processor
    expected = processor(images=[Image.fromarray(smooth)], return_tensors="pt")["pixel_values"]
    pixels = torch.from_numpy(smooth).permute(2, 0, 1)[None].float() / 255
    got = differentiable_preprocess(pixels, 32, (32, 32), processor.image_mean, processor.image_std, "shortest")
    assert got.shape == expected.shape == (1, 3, 32, 32)
    error = (got - expected).abs().mean()
    assert error < 0.03  # about 1.5/255 in pixel terms: resampling, not geometry
    left = differentiable_preprocess(pixels[..., :48], 32, (32, 32), processor.image_mean, processor.image_std)
    assert (left - expected).abs().mean() > 3 * error  # the left square instead of the centre one is caught


def test_longest_side_mode_pads_like_open_clip():
    """HPS's preprocessing: longest side to the size, then black padding to a square, centred."""
    import open_clip

    transform = open_clip.image_transform(32, is_train=False, mean=(0.5,) * 3, std=(0.5,) * 3,
                                          resize_mode="longest", interpolation="bicubic", fill_color=0)
    yy, xx = np.mgrid[0:40, 0:64]
    smooth = np.stack([xx * 4, yy * 6, 255 - xx * 3], axis=-1).clip(0, 255).astype(np.uint8)
    expected = transform(Image.fromarray(smooth))[None]
    pixels = torch.from_numpy(smooth).permute(2, 0, 1)[None].float() / 255
    got = differentiable_preprocess(pixels, 32, (32, 32), (0.5,) * 3, (0.5,) * 3, "longest")
    assert got.shape == expected.shape
    assert (got - expected).abs().mean() < 0.03
    black = (0 - 0.5) / 0.5
    torch.testing.assert_close(got[..., :6, :], torch.full_like(got[..., :6, :], black))  # the padded band


def test_one_prompt_leaves_only_the_text_irrelevant_part_which_a_shared_direction_restores():
    from diffalign.scorers.denscore import decomposed_score, shared_direction

    torch.manual_seed(0)
    f, t = torch.randn(3, 8), torch.randn(3, 8)
    alone = decomposed_score(f[:1], t[:1], 0.3)  # v = t / |t|: S = 0.3 <t, f>
    cos_tf = (t[0] @ torch.nn.functional.normalize(f[0], dim=0))
    torch.testing.assert_close(alone[0], 0.3 * cos_tf)
    torch.testing.assert_close(decomposed_score(f[:1], t[:1], 0.3, shared_direction(t)),
                               decomposed_score(f, t, 0.3)[:1])  # the batch's v given to one row


def test_reward_loss_is_half_one_minus_the_mean_score():
    objective = get_objective("longalign")
    scores = torch.tensor([0.2, -0.1, 0.5], requires_grad=True)
    loss, metrics = objective.reward_loss(scores)
    assert float(loss.detach()) == pytest.approx(0.5 * (1 - 0.2))
    loss.backward()
    torch.testing.assert_close(scores.grad, torch.full((3,), -0.5 / 3))
    assert metrics["reward"] == pytest.approx(0.2) and metrics["reward_min"] == pytest.approx(-0.1)
    with pytest.raises(ValueError, match="text_encoding"):
        get_objective("longalign", text_encoding="long")
    assert get_objective("longalign", reward_backbone="hps", reward_model="x.pt").reward_options()["checkpoint"] == "x.pt"
    with pytest.raises(ValueError, match="reward_backbone"):
        get_objective("longalign", reward_backbone="aesthetic")


def test_a_pickscore_reward_builds_offline_from_local_model_and_processor_folders(tmp_path, toy_denscore):
    """A PickScore folder holds no processor (PickScore borrows laion's CLIP-H one, a hub id): with
    objective.reward_processor naming a local processor folder the reward builds with no hub and scores as the same
    CLIP does. Ignoring the option would send the processor to the laion hub id: offline, an error."""
    pickscore = tmp_path / "pickscore"  # weights only, as a PickScore download
    pickscore.mkdir()
    for name in ("config.json", "model.safetensors"):
        (pickscore / name).symlink_to(TOY_CLIP / name)
    objective = get_objective("longalign", reward_backbone="pickscore", reward_model=str(pickscore),
                              reward_processor=str(TOY_CLIP))
    reward = create_scorer("denscore", **objective.reward_options())
    images = list(np.random.default_rng(1).integers(0, 256, (4, 40, 48, 3), dtype=np.uint8))
    prompts = LONG + ["a yellow circle.", "a purple square. a red triangle."]
    torch.testing.assert_close(reward(images, prompts), toy_denscore(images, prompts))  # Denscore: the CLIP's cosines


def test_reward_processor_reaches_the_scorer_and_a_missing_folder_is_named(tmp_path):
    missing = tmp_path / "no-such-processor"
    objective = get_objective("longalign", reward_backbone="clipscore", reward_model=str(TOY_CLIP),
                              reward_processor=str(missing))
    with pytest.raises(FileNotFoundError, match=re.escape(f"CLIP processor {missing}: no such folder")):
        create_scorer("denscore", **objective.reward_options())
    with pytest.raises(ValueError, match="reward_processor applies to the pickscore and clipscore backbones, not hps"):
        get_objective("longalign", reward_backbone="hps", reward_processor=str(TOY_CLIP))
    with pytest.raises(ValueError, match="open_clip models .* take none"):  # never silently unused
        create_scorer("denscore", backbone="clipscore", model="open_clip:ViT-B-32", processor=str(TOY_CLIP))


def test_training_prompts_are_the_train_side_with_seeds_per_epoch(tmp_path):
    tokenizer = build_clip_tokenizer()
    data = TrainingPrompts(DataConfig(source="toy:long", split="train"), tokenizer, seed=0)
    assert data.prompts == prompt_set("long", "train") and not set(data.prompts) & set(prompt_set("long"))
    first = data[3]["seed"]
    data.epoch = 1
    assert data[3]["seed"] != first and data[4]["seed"] != data[3]["seed"]
    batch = collate_prompts([data[0], data[1]])
    assert batch["input_ids"].shape == (2, 77) and batch["captions"] == data.prompts[:2]
    bad = tmp_path / "prompts.jsonl"
    bad.write_text('{"prompt": "a cat"}\n{"prompt": "   "}\n')
    with pytest.raises(ValueError, match="prompt 1: empty"):
        TrainingPrompts(DataConfig(source=str(bad)), tokenizer)
    with pytest.raises(ValueError, match="not a toy split"):  # a typo must not fall through to held-out prompts
        TrainingPrompts(DataConfig(source="toy:long", split="trian"), tokenizer)


def _toy_step(text_encoding="truncate", reward=None, steps=4, every=2):
    parts = load_sd_components(str(TOY_SD))
    for module in (parts.vae, parts.text_encoder):
        module.requires_grad_(False)
    params = attach_lora(parts.unet, 4, 4.0, ["to_q", "to_k", "to_v", "to_out.0"])
    with torch.no_grad():  # non-zero B, so the LoRA changes the samples and both A and B get gradient
        for name, p in parts.unet.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.02)
    objective = get_objective("longalign", num_inference_steps=steps, grad_every=every, guidance_scale=5.0,
                              text_encoding=text_encoding, max_text_length=100)
    step = RewardStep(objective, parts, conditioner_for(parts), _Accelerator(), 32, reward)
    return step, parts, params


def test_reward_step_trains_the_lora_and_is_reproducible(toy_denscore):
    step, parts, params = _toy_step(reward=toy_denscore)
    batch = {"captions": LONG, "input_ids": torch.stack([parts.tokenizer(c, padding="max_length", max_length=77,
                                                                          truncation=True,
                                                                          return_tensors="pt").input_ids[0]
                                                         for c in LONG]), "seeds": torch.tensor([5, 6])}
    loss, metrics = step(parts.unet, batch)
    loss.backward()
    assert metrics["grad_steps"] == 2 and np.isfinite(metrics["reward"])
    assert float(loss) == pytest.approx(0.5 * (1 - metrics["reward"]), abs=1e-6)
    assert all(p.grad is not None for p in params) and sum(float(p.grad.abs().sum()) for p in params) > 0
    again, _ = step(parts.unet, batch)
    assert float(again) == float(loss)  # the same seeds: the same noise and the same chosen steps
    without_ids, _ = step(parts.unet, {**batch, "input_ids": None})  # tokenised from the captions
    assert float(without_ids) == float(loss)
    other, _ = step(parts.unet, {**batch, "seeds": torch.tensor([7, 8])})
    assert float(other) != float(loss)
    with pytest.raises(ValueError, match="at least 2 prompts"):  # v of one prompt would zero the relevant part
        step(parts.unet, {"captions": LONG[:1], "input_ids": None, "seeds": torch.tensor([5])})
    # On two processes v is the mean over both ranks' prompts (gathered): one prompt per rank is then enough, and
    # its score is the one computed with the gathered v.
    from diffalign.scorers.denscore import shared_direction

    other = ["a yellow circle.", "a purple square at the top."]

    class TwoRanks(_Accelerator):
        num_processes = 2

        @staticmethod
        def gather(vectors):
            return torch.cat([vectors, toy_denscore.caption_vectors(other[:len(vectors)])])

    step.accelerator = TwoRanks()
    seen = {}
    reward = toy_denscore.reward

    def recording(pixels, prompts, shared=None):
        seen["shared"] = shared
        return reward(pixels, prompts, shared)

    step.reward = type("R", (), {"caption_vectors": toy_denscore.caption_vectors, "reward": staticmethod(recording)})()
    one, _ = step(parts.unet, {"captions": LONG[:1], "input_ids": None, "seeds": torch.tensor([5])})
    expected = shared_direction(toy_denscore.caption_vectors(LONG[:1] + other[:1]))
    torch.testing.assert_close(seen["shared"], expected)


def test_segment_encoding_feeds_the_sampler_its_long_states(toy_denscore):
    step, parts, _ = _toy_step("segments", reward=toy_denscore)
    lengths = []
    unet_forward = parts.unet.forward

    def spy(sample, t, encoder_hidden_states, *rest, **kwargs):
        lengths.append(encoder_hidden_states.shape[1])
        return unet_forward(sample, t, encoder_hidden_states, *rest, **kwargs)

    parts.unet.forward = spy
    loss, _ = step(parts.unet, {"captions": LONG, "seeds": torch.tensor([1, 2])})
    assert torch.isfinite(loss) and set(lengths) == {100}  # max_text_length rows, uncond and cond alike


@pytest.mark.parametrize("force_zeros", [True, False])
def test_reward_step_on_sdxl_samples_like_the_sdxl_pipeline(tmp_path, toy_denscore, force_zeros):
    """The unconditional half is zeros (states and pooled), as StableDiffusionXLPipeline with no negative prompt,
    when the pipeline's force_zeros_for_empty_prompt is on; the encoded empty prompt when it is off."""
    from diffalign.models.tiny import build_tiny_sdxl

    build_tiny_sdxl(tmp_path / "sdxl")
    index = tmp_path / "sdxl" / "model_index.json"
    index.write_text(json.dumps({**json.loads(index.read_text()), "force_zeros_for_empty_prompt": force_zeros}))
    parts = load_sd_components(str(tmp_path / "sdxl"))
    assert parts.force_zeros_for_empty_prompt is force_zeros
    for module in (parts.vae, parts.text_encoder, parts.text_encoder_2):
        module.requires_grad_(False)
    params = attach_lora(parts.unet, 4, 4.0, ["to_q", "to_k", "to_v", "to_out.0"])
    objective = get_objective("longalign", num_inference_steps=2, grad_every=1, text_encoding="truncate")
    seen = []
    unet_forward = parts.unet.forward

    def spy(sample, t, encoder_hidden_states, *rest, added_cond_kwargs=None, **kwargs):
        seen.append((encoder_hidden_states, added_cond_kwargs))
        return unet_forward(sample, t, encoder_hidden_states, *rest, added_cond_kwargs=added_cond_kwargs, **kwargs)

    parts.unet.forward = spy
    step = RewardStep(objective, parts, conditioner_for(parts), _Accelerator(), 32, toy_denscore)
    loss, _ = step(parts.unet, {"captions": ["a red circle", "a blue square"], "seeds": torch.tensor([1, 2])})
    loss.backward()
    states, added = seen[0]
    pooled = added["text_embeds"]  # [uncond x2; cond x2]
    assert pooled.shape[0] == 4 and not pooled[2:].eq(0).all() and not states[2:].eq(0).all()
    if force_zeros:
        assert pooled[:2].eq(0).all() and states[:2].eq(0).all()
    else:  # the empty prompt, encoded as the pipeline's encode_prompt does
        from diffusers import StableDiffusionXLPipeline

        pipe = StableDiffusionXLPipeline.from_pretrained(str(tmp_path / "sdxl"))
        empty, _, empty_pooled, _ = pipe.encode_prompt("", device="cpu", do_classifier_free_guidance=False)
        torch.testing.assert_close(states[:2], empty.expand(2, -1, -1), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(pooled[:2], empty_pooled.expand(2, -1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(added["time_ids"][0], torch.tensor([32.0, 32, 0, 0, 32, 32]))
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


def test_longalign_config_rejects_image_only_settings():
    with pytest.raises(ConfigError, match="caption_dropout"):
        load_config("configs/toy/longalign.yaml", [("data.caption_dropout", "0.1")])
    with pytest.raises(ConfigError, match="grad_every"):
        load_config("configs/toy/longalign.yaml", [("objective.grad_every", "0")])
    cfg = load_config("configs/sd15/longalign_pickapic.yaml")
    assert cfg.objective["text_encoding"] == "segments" and cfg.objective["num_inference_steps"] == 50


def test_longalign_trains_a_lora_that_diffusers_loads(tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    import diffalign.pipelines.long_prompt as long_prompt

    wrapped = []
    real = long_prompt.as_long_prompt_pipeline
    monkeypatch.setattr(long_prompt, "as_long_prompt_pipeline",
                        lambda pipe, n, segmenter="diffalign": wrapped.append(n) or real(pipe, n, segmenter))

    from diffalign.train import build_config, parse_args, train

    out = tmp_path / "run"
    args, overrides = parse_args(["--method", "longalign", "--train.max_steps", "2", "--train.batch_size", "2",
                                  "--objective.num_inference_steps", "4", "--objective.grad_every", "2",
                                  "--objective.text_encoding", "segments", "--objective.max_text_length", "100",
                                  "--train.validation_every", "2", "--eval.validation_prompts", "[a red circle. a cat.]",
                                  "--eval.enabled", "false", "--train.report_to", "none", "--output_dir", str(out)])
    summary = train(build_config(args, overrides))
    assert summary["steps"] == 2 and "reward" in summary["final_metrics"]
    assert (out / "validation" / "step_000002.png").is_file() and wrapped == [100]  # segments, as it trained
    assert json.loads((out / "summary.json").read_text())["method"] == "longalign"
    # The toy comparison samples a segment-trained LoRA (and the base) with segment encoding, as it trained.
    from diffalign.toy.compare import compare_before_after

    cfg = build_config(args, overrides + [("eval.num_inference_steps", "2"), ("eval.seeds_per_prompt", "1"),
                                          ("eval.prompt_set", "long"), ("overwrite", "true")])
    result = compare_before_after(cfg, out)
    report = json.loads((out / "comparison" / "report.json").read_text())
    assert report["settings"]["sampling"]["text_encoding"] == "segments" and "segment encoding" in result["text"]
    assert report["settings"]["sampling"]["max_text_length"] == 100 and result["cases"] == 75
    pipe = StableDiffusionPipeline.from_pretrained(str(TOY_SD))
    kwargs = dict(num_inference_steps=4, guidance_scale=5.0, output_type="np")
    base = pipe(LONG[0], generator=torch.Generator().manual_seed(0), **kwargs).images
    pipe.load_lora_weights(str(out))
    tuned = pipe(LONG[0], generator=torch.Generator().manual_seed(0), **kwargs).images
    assert np.abs(tuned - base).max() > 0


def test_gradient_checkpointing_recomputes_the_vae_decode_and_trains_the_same_lora(tmp_path, monkeypatch):
    """The reward backpropagates through VAE.decode; with train.gradient_checkpointing its up blocks run again in
    the backward pass (twice per training decode) and the adapter comes out the same."""
    from diffusers.models.unets.unet_2d_blocks import UpDecoderBlock2D
    from safetensors.torch import load_file

    from diffalign.models.lora import LORA_FILE
    from diffalign.train import build_config, parse_args, train

    calls = []
    real_forward = UpDecoderBlock2D.forward
    monkeypatch.setattr(UpDecoderBlock2D, "forward",
                        lambda self, *a, **k: calls.append(1) or real_forward(self, *a, **k))  # counted, called through

    def run(name, *extra):
        calls.clear()
        args, overrides = parse_args(["--method", "longalign", "--train.max_steps", "1", "--train.batch_size", "2",
                                      "--train.lr", "1e-2", "--objective.num_inference_steps", "4",
                                      "--objective.grad_every", "2", "--train.validation_every", "100",
                                      "--eval.enabled", "false", "--train.report_to", "none",
                                      "--output_dir", str(tmp_path / name), *extra])
        train(build_config(args, overrides))
        return len(calls), load_file(tmp_path / name / LORA_FILE)

    plain_calls, plain = run("plain")
    checkpointed_calls, checkpointed = run("checkpointed", "--train.gradient_checkpointing", "true")
    assert plain_calls > 0 and checkpointed_calls == 2 * plain_calls
    assert plain.keys() == checkpointed.keys()
    for key in plain:
        torch.testing.assert_close(checkpointed[key], plain[key], rtol=1e-4, atol=1e-6)
