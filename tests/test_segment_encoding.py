"""LongAlign segment encoding: token bookkeeping on the toy SD's CLIP text encoder."""

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
