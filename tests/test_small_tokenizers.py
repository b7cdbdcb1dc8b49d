"""Small offline tokenizers (models/small_tokenizers.py), the joint tokenizer of flow models, and the vocabulary cut
of the shipped toy text towers (toy/shrink.py)."""

import pytest
import torch

from diffalign.models.joint_tokenizer import JointTokenizer
from diffalign.models.small_tokenizers import build_small_clip_tokenizer, build_t5_tokenizer, shrink_clip_vocabulary
from diffalign.models.tokenizer import build_clip_tokenizer
from diffalign.paths import REPO_ROOT

CORPUS = ["a large red circle on the left on a beige background",
          "in the top left corner of the picture there is a small blue square. the background is sky."]


def test_the_small_clip_tokenizer_splits_corpus_text_as_full_clip_does():
    small, full = build_small_clip_tokenizer(CORPUS), build_clip_tokenizer()
    for text in CORPUS + ["the red square is on the left."]:  # a new sentence of corpus words
        assert small.tokenize(text) == full.tokenize(text)
    assert len(small) < 1000 and small.eos_token_id == small.pad_token_id == len(small) - 1
    assert small.tokenize("a zebra") == ["a</w>", "z", "e", "b", "r", "a</w>"]  # unknown words: byte pieces
    assert small.decode(small("a zebra").input_ids, skip_special_tokens=True) == "a zebra"


def test_the_t5_tokenizer_pads_with_0_and_ends_with_eos():
    t5 = build_t5_tokenizer(CORPUS * 20, vocab_size=64, max_length=24)
    ids = t5("A Red Circle", padding="max_length", max_length=24, truncation=True).input_ids
    assert len(ids) == 24 and t5.pad_token_id == 0 and t5.eos_token_id == 1
    end = ids.index(1)
    assert end > 0 and set(ids[end + 1:]) == {0}
    assert ids == t5("a red circle", padding="max_length", max_length=24, truncation=True).input_ids  # lower-cased


def test_joint_tokenizer_concatenates_and_splits_each_window():
    clip, t5 = build_small_clip_tokenizer(CORPUS), build_t5_tokenizer(CORPUS * 20, vocab_size=64)
    joint = JointTokenizer([clip, clip, t5], [77, 77, 16])
    ids = joint(["a red circle", "a blue square"]).input_ids
    assert ids.shape == (2, 170) and joint.model_max_length == 170
    first, second, third = joint.split(ids)
    assert torch.equal(first, clip(["a red circle", "a blue square"], padding="max_length", max_length=77,
                                   return_tensors="pt").input_ids)
    assert torch.equal(first, second) and third.shape == (2, 16)
    with pytest.raises(ValueError, match="width 154; this model's tokenizers give 170"):
        joint.split(ids[:, :154])


def test_cutting_the_vocabulary_keeps_every_corpus_output_and_only_those():
    from transformers import CLIPTextConfig, CLIPTextModel

    from diffalign.toy.shrink import check_same_outputs

    torch.manual_seed(0)
    full = build_clip_tokenizer()
    model = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, bos_token_id=49406, eos_token_id=49407,
                                         pad_token_id=49407)).eval()
    original = CLIPTextModel(model.config).eval()
    original.load_state_dict(model.state_dict())
    shrunk, small = shrink_clip_vocabulary(model, full, CORPUS)
    reloaded = CLIPTextModel(shrunk.config).eval()  # rebuilt from the new config, as from_pretrained would
    reloaded.load_state_dict(shrunk.state_dict())
    assert reloaded.config.vocab_size == len(small) and reloaded.config.eos_token_id == small.eos_token_id
    assert check_same_outputs(original, full, reloaded, small, CORPUS) == 2
    with pytest.raises(AssertionError, match="outputs differ"):  # "zebra" is one token in full CLIP, five here
        check_same_outputs(original, full, reloaded, small, ["a zebra on the left"])


def test_the_shipped_toy_assets_stay_within_their_budget():
    """Issue budget: assets/ at most 60 MB in all (the cut vocabularies are what make room for the flow base)."""
    total = sum(p.stat().st_size for p in (REPO_ROOT / "assets").rglob("*") if p.is_file())
    assert total <= 60 * 2**20, f"assets/ holds {total / 2**20:.1f} MB"
