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
