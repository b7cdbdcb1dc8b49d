"""The toy world's CLIP (assets/toy-clip): loads like any CLIP, its processor is the training normalisation, and
its image embeddings know the attributes the personas' tastes read."""

import hashlib
import json
from dataclasses import asdict

import numpy as np
import torch
from transformers import CLIPModel, CLIPProcessor

from diffalign.paths import TOY_CLIP
from diffalign.toy.clip import clip_batch, normalise, retrieval_accuracy


def test_toy_clip_loads_offline_and_its_processor_matches_training():
    model, processor = CLIPModel.from_pretrained(TOY_CLIP), CLIPProcessor.from_pretrained(TOY_CLIP)
    _, images = clip_batch(np.random.default_rng(0), 4)
    pixels = processor(images=list(images), return_tensors="pt").pixel_values
    torch.testing.assert_close(pixels, normalise(images), rtol=0, atol=1e-5)
    assert model.config.projection_dim == 64


def _tokenizer(folder):
    """A shipped toy CLIP's own tokenizer (its vocabulary is cut to the toy world's words: toy/shrink.py)."""
    from transformers import CLIPProcessor

    return CLIPProcessor.from_pretrained(folder).tokenizer


def test_toy_clip_retrieves_captions_far_above_chance():
    accuracy = retrieval_accuracy(CLIPModel.from_pretrained(TOY_CLIP).eval(), _tokenizer(TOY_CLIP), n=128)
    assert accuracy > 0.5  # chance is about 1/128; the shipped model gets 0.72 at n=256


def test_scene_sentences_pair_many_object_scenes_with_one_sentence_and_the_long_clip_reads_long_captions():
    from diffalign.models.segment_encoding import split_segments
    from diffalign.paths import TOY_CLIP_LONG
    from diffalign.toy.clip import long_caption_retrieval
    from diffalign.toy.judge import read_image

    captions, images = clip_batch(np.random.default_rng(1), 6, scene_sentences=1.0)
    for caption, image in zip(captions, images):
        assert len(split_segments(caption)) == 1  # one sentence: one object, or the background
        assert len(read_image(image).components) >= 4  # of a 5-6-object scene (some may touch)
    default = clip_batch(np.random.default_rng(1), 6)
    assert default[0] == clip_batch(np.random.default_rng(1), 6, scene_sentences=0.0)[0]
    # The shipped reward CLIP of --method longalign finds a long caption among 64 far above chance (1/64);
    # the first toy CLIP, trained on short captions only, gets 0.125.
    assert long_caption_retrieval(CLIPModel.from_pretrained(TOY_CLIP_LONG).eval(), _tokenizer(TOY_CLIP_LONG)) > 0.5


def test_adversarial_renders_stay_within_eps_and_raise_the_loss():
    from diffalign.models.tokenizer import MAX_LENGTH
    from diffalign.toy.clip import adversarial_pixels, contrastive_loss, normalise_float

    model = CLIPModel.from_pretrained(TOY_CLIP).eval()
    captions, images = clip_batch(np.random.default_rng(3), 32)
    text = _tokenizer(TOY_CLIP)(captions, padding="longest", max_length=MAX_LENGTH, truncation=True,
                                return_tensors="pt")
    clean = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    eps = 4 / 255
    moved = adversarial_pixels(model, text, clean, eps, torch.Generator().manual_seed(0))
    assert (moved - clean).abs().max() <= eps + 1e-6 and moved.min() >= 0 and moved.max() <= 1
    assert (moved - clean).abs().max() > eps / 2  # it did move
    with torch.no_grad():
        loss_clean = contrastive_loss(model, text, normalise_float(clean))
        loss_moved = contrastive_loss(model, text, normalise_float(moved))
        noise = (clean + (torch.rand(clean.shape, generator=torch.Generator().manual_seed(1)) * 2 - 1) * eps)
        loss_noise = contrastive_loss(model, text, normalise_float(noise.clamp(0, 1)))
    # an attack, not noise: the loss rises well beyond what random changes of the same size do
    assert loss_moved - loss_clean > 3 * abs(loss_noise - loss_clean)
    assert loss_moved > loss_clean


def test_fine_tuning_from_a_toy_clip_starts_from_its_weights(tmp_path):
    from diffalign.toy.clip import ToyClipConfig, train_toy_clip

    cfg = ToyClipConfig(steps=1, batch_size=16, lr=1e-12, warmup_steps=1, init=str(TOY_CLIP), adversarial_eps=4 / 255)
    summary = train_toy_clip(tmp_path / "tuned", cfg)
    assert summary["init"] == str(TOY_CLIP) and summary["adversarial_eps"] == 4 / 255
    # The recipe is saved beside the weights: every knob, the starting weights by hash, the thread count.
    recipe = json.loads((tmp_path / "tuned" / "training_args.json").read_text())
    assert recipe["args"] == asdict(cfg)
    init_bytes = (TOY_CLIP / "model.safetensors").read_bytes()
    assert recipe["environment"]["init_sha256"] == hashlib.sha256(init_bytes).hexdigest()
    assert recipe["environment"]["torch_threads"] == torch.get_num_threads()
    assert recipe["results"]["heldout_retrieval"] == summary["heldout_retrieval"]
    tuned, shipped = CLIPModel.from_pretrained(tmp_path / "tuned"), CLIPModel.from_pretrained(TOY_CLIP)
    # lr ~0: the weights are the shipped ones (a fresh init would be far off)
    for (name, a), (_, b) in zip(tuned.state_dict().items(), shipped.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=name)
