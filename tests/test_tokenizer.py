"""The offline CLIP tokenizer gives open_clip's (= OpenAI CLIP's) ids, including truncation of long captions."""

import numpy as np
import open_clip
import torch

from diffalign.models.tokenizer import build_clip_tokenizer
from diffalign.toy.captions import write
from diffalign.toy.world import sample_spec


def test_tokenizer_matches_open_clip_on_hundreds_of_captions():
    rng = np.random.default_rng(0)
    captions = [write(sample_spec(rng, n_objects=int(rng.integers(1, 7))), "long" if i % 2 else "short", rng)
                for i in range(300)]
    captions += ["A photo of an astronaut riding a horse, 4k, trending on artstation!",
                 "Two   dogs\tplaying; one's brown — the other isn't.", "a café in Zürich at 3 a.m."]
    tok = build_clip_tokenizer()
    assert len(tok) == 49408 and tok.bos_token_id == 49406 and tok.eos_token_id == tok.pad_token_id == 49407
    ours = tok(captions, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    ref = open_clip.tokenize(captions)  # [N, 77], zero-padded
    real = ref != 0
    assert torch.equal(ours[real], ref[real])
    assert (ours[~real] == 49407).all()  # SD's tokenizer pads with <|endoftext|>
    assert sum(len(tok(c).input_ids) > 77 for c in captions) > 20  # the long ones really were truncated
