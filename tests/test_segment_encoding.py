"""LongAlign segment encoding: token bookkeeping on the toy SD's CLIP text encoder."""

import hashlib
import json

import pytest
import torch
from transformers import CLIPTextModel, CLIPTokenizer

from diffalign.models.segment_encoding import encode_segments, filler_vector, split_segments
from diffalign.paths import TOY_SD


@pytest.fixture(scope="module")
def clip():
    return (CLIPTokenizer.from_pretrained(TOY_SD, subfolder="tokenizer"),
            CLIPTextModel.from_pretrained(TOY_SD, subfolder="text_encoder").eval())


def test_segments_split_on_sentence_marks():
    assert split_segments("A red circle. A blue square? Big!  Small; end") == [
        "A red circle.", "A blue square?", "Big!", "Small;", "end"]
    assert split_segments("") == [""] and split_segments("no mark") == ["no mark"]


def test_each_segment_keeps_its_start_and_content_tokens_only(clip):
    tokenizer, encoder = clip
    prompt = "a large red circle at the top left. a small blue square in the centre; the background is green."
    states, pooled, info = encode_segments(prompt, [clip], max_length=240)
    segments = split_segments(prompt)
    assert info.segments == 3 and pooled is None and states.shape == (240, encoder.config.hidden_size)
    expected, offset = [], 0
    for segment in segments:
        ids = tokenizer(segment, return_tensors="pt").input_ids  # start, content..., end (no padding)
        alone = encoder(ids)[0][0]  # [n, D]
        expected.append(alone[:-1])  # the start token and the content, without the end token
    expected = torch.cat(expected)
    assert info.tokens == len(expected) == sum(len(tokenizer(s).input_ids) - 1 for s in segments)
    torch.testing.assert_close(states[: info.tokens], expected, rtol=1e-4, atol=1e-5)
    # one start token per segment: CLIP's start state is the same in every segment (causal attention)
    start = encoder(tokenizer("", return_tensors="pt").input_ids)[0][0, 0]
    starts = [i for i in range(info.tokens) if torch.allclose(states[i], start, atol=1e-5)]
    assert len(starts) == 3 and starts[0] == 0
    # the rest is the filler: the mean of the empty prompt's padding states
    torch.testing.assert_close(states[info.tokens:], filler_vector(tokenizer, encoder).expand(240 - info.tokens, -1))


def test_long_segments_are_truncated_and_the_whole_is_cut_at_max_length(clip):
    long_sentence = " ".join(["red"] * 100) + "."
    states, _, info = encode_segments(long_sentence + " a blue square.", [clip], max_length=240)
    assert info.truncated_segments == 1 and info.tokens == 76 + 5  # 77 - end; then start, a, blue, square, "."
    states, _, info = encode_segments(" ".join(["a red circle."] * 60), [clip], max_length=100)
    assert info.cut and states.shape[0] == 100 and info.tokens > 100


def test_short_prompts_match_plain_encoding_up_to_the_end_token(clip):
    """One sentence under 77 tokens: the kept rows are exactly the plain encoding's first rows."""
    tokenizer, encoder = clip
    prompt = "a red circle"
    states, _, info = encode_segments(prompt, [clip], max_length=77)
    plain = encoder(tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids)[0][0]
    torch.testing.assert_close(states[: info.tokens], plain[: info.tokens], rtol=1e-4, atol=1e-5)


def test_start_tokens_first_keeps_only_the_first_segments_start(clip):
    prompt = "a red circle. a blue square. a green triangle."
    _, _, every = encode_segments(prompt, [clip])
    _, _, first = encode_segments(prompt, [clip], start_tokens="first")
    assert every.segments == 3 and first.tokens == every.tokens - 2


def test_the_authors_segmenter_splits_at_periods_and_question_marks_and_ends_each_piece_with_a_period():
    # LongAlign's tools.py, as it runs: its pattern carries quotes, so "!" and ";" do not split; marks are dropped
    # and every non-empty piece, whitespace-only ones included, gets a "."; nothing left -> the prompt itself
    assert split_segments("A cat. A dog", "authors") == ["A cat.", " A dog."]
    assert split_segments("Wow! Great; fine? yes.", "authors") == ["Wow! Great; fine.", " yes."]
    assert split_segments("Hello... world", "authors") == ["Hello.", " world."]
    assert split_segments("A cat. ", "authors") == ["A cat.", " ."]
    assert split_segments("...", "authors") == ["..."] and split_segments("", "authors") == [""]
    assert split_segments("Hello... world") == ["Hello.", ".", ".", "world"]  # diffalign's, for contrast


def test_the_authors_filler_is_the_mean_of_the_empty_prompts_last_sixty_states(clip):
    tokenizer, encoder = clip
    ids = tokenizer("", padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        states = encoder(ids)[0][0]  # [77, D]
    torch.testing.assert_close(filler_vector(tokenizer, encoder, segmenter="authors"), states[17:].mean(dim=0))
    torch.testing.assert_close(filler_vector(tokenizer, encoder), states[2:].mean(dim=0))
    assert not torch.allclose(states[17:].mean(dim=0), states[2:].mean(dim=0))
    prompt = "a red circle; a blue square"  # one segment under the authors' rule, two under diffalign's
    authors, _, info = encode_segments(prompt, [clip], max_length=40, segmenter="authors")
    assert info.segments == 1
    torch.testing.assert_close(authors[info.tokens:], states[17:].mean(dim=0).expand(40 - info.tokens, -1))
    assert encode_segments(prompt, [clip], max_length=40)[2].segments == 2


def test_the_segmenter_is_an_objective_option_and_a_sampling_setting():
    from diffalign.evaluation.generation import SamplingSettings
    from diffalign.objectives import get_objective

    assert get_objective("longalign", segmenter="authors").segmenter == "authors"
    with pytest.raises(ValueError, match="segmenter: expected one of"):
        get_objective("sft", text_encoding="segments", segmenter="nltk")
    with pytest.raises(ValueError, match="segmenter: expected one of"):
        SamplingSettings(text_encoding="segments", segmenter="nltk")
    plain = SamplingSettings(text_encoding="segments")
    assert plain.key() != SamplingSettings(text_encoding="segments", segmenter="authors").key()
    # the default keeps the image-cache key it had before the option existed (no segmenter, no guidance_rescale,
    # no max_sequence_length)
    fields = {k: v for k, v in plain.__dict__.items()
              if k not in ("segmenter", "guidance_rescale", "max_sequence_length")}
    assert plain.key() == hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
