"""The toy world's CLIP (assets/toy-clip): loads like any CLIP, its processor is the training normalisation, and
its image embeddings know the attributes the personas' tastes read."""

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


def test_toy_clip_retrieves_captions_far_above_chance():
    from diffalign.models.tokenizer import build_clip_tokenizer

    accuracy = retrieval_accuracy(CLIPModel.from_pretrained(TOY_CLIP).eval(), build_clip_tokenizer(), n=128)
    assert accuracy > 0.5  # chance is about 1/128; the shipped model gets 0.72 at n=256


def test_scene_sentences_pair_many_object_scenes_with_one_sentence_and_the_long_clip_reads_long_captions():
    from diffalign.models.segment_encoding import split_segments
    from diffalign.models.tokenizer import build_clip_tokenizer
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
    tokenizer = build_clip_tokenizer()
    assert long_caption_retrieval(CLIPModel.from_pretrained(TOY_CLIP_LONG).eval(), tokenizer) > 0.5
