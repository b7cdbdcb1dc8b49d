"""LongAlign's segment encoding: prompts longer than CLIP's 77 tokens, encoded sentence by sentence.

(Liu et al., ICLR 2025.) The prompt is split into segments at ``.``, ``?``, ``!`` and ``;``. Each segment goes
through the text encoder on its own (truncated at 77 tokens, counted). Of each segment's states we keep its start
token and its content tokens, and drop its end token and padding; the kept rows are concatenated in order, cut at
``max_length`` (240 in the paper), and padded with a filler: the mean of the empty prompt's trailing (padding)
states, a constant vector the UNet already sees after every short prompt. The UNet's cross-attention takes any
sequence length, so no weight changes.

    states [max_length, D], info = encode_segments(prompt, [(tokenizer, text_encoder)])

``segmenter``: "diffalign" (above) or "authors", as LongAlign's code does it: the prompt is split at ``.`` and
``?`` only (their pattern, AUTHORS_SPLIT below, carries double quotes into the regex, so ``!`` and ``;`` split only
next to a quote), the marks are dropped and every non-empty piece (whitespace-only ones too) gets a ``.``; the
filler is the mean of the empty prompt's last 60 states. diffalign's rule keeps each sentence's own mark, splits
at ``!`` and ``;`` as well, and averages every state after the start and end tokens.

SDXL: one (tokenizer, encoder) pair per encoder; each uses its penultimate hidden states (as SDXL conditions)
and the features are concatenated. The pooled embedding (SDXL's second encoder) is the mean of the segments'
pooled embeddings: one vector per prompt, as the UNet expects, that every segment informs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

SEGMENT_END = re.compile(r"(?<=[.?!;])")
AUTHORS_SPLIT = re.compile(r'"!|\.|\?|;"')  # LongAlign's tools.py pattern, quotes included (see above)
SEGMENTERS = ("diffalign", "authors")
AUTHORS_FILLER_POSITIONS = 60  # LongAlign: the mean of the empty prompt's last 60 states
DEFAULT_MAX_LENGTH = 240
TEXT_ENCODINGS = ("segments", "truncate")  # an objective's ``text_encoding``: LongAlign's, or CLIP's 77-token window


def check_text_encoding(text_encoding: str, max_text_length: int, segmenter: str = "diffalign") -> None:
    """ValueError naming the option when an objective's ``text_encoding`` / ``max_text_length`` / ``segmenter`` is
    not usable."""
    if segmenter not in SEGMENTERS:
        raise ValueError(f"segmenter: expected one of {SEGMENTERS}; got {segmenter!r}")
    if text_encoding not in TEXT_ENCODINGS:
        raise ValueError(f"text_encoding: expected one of {TEXT_ENCODINGS}; got {text_encoding!r}")
    if int(max_text_length) < 1:
        raise ValueError(f"max_text_length must be >= 1; got {max_text_length}")


def split_segments(prompt: str, segmenter: str = "diffalign") -> list[str]:
    """diffalign: the prompt's sentences (the end mark kept), stripped, empty ones left out; [""] for an empty
    prompt. authors: LongAlign's split (see the module docstring); [prompt] when nothing is left."""
    if segmenter == "authors":
        return [piece + "." for piece in AUTHORS_SPLIT.split(prompt) if piece] or [prompt]
    segments = [s.strip() for s in SEGMENT_END.split(prompt)]
    return [s for s in segments if s] or [""]


@dataclass
class SegmentInfo:
    segments: int  # how many segments the prompt had
    tokens: int  # rows of real states kept (start + content tokens), before the cut at max_length
    truncated_segments: int  # segments longer than 77 tokens (their tail was cut by the tokenizer)
    cut: bool  # the concatenation was longer than max_length and was cut


def _states(encoder, ids: torch.Tensor, penultimate: bool):
    out = encoder(ids.to(encoder.device), output_hidden_states=penultimate)
    states = out.hidden_states[-2] if penultimate else out[0]
    pooled = getattr(out, "text_embeds", None)
    return states, pooled


@torch.no_grad()
def filler_vector(tokenizer, encoder, penultimate: bool = False, segmenter: str = "diffalign") -> torch.Tensor:
    """[D]: the mean of the empty prompt's states after its start and end tokens (diffalign), or of its last 60
    (authors; positions 17-76 of CLIP's 77)."""
    ids = tokenizer("", padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    states, _ = _states(encoder, ids, penultimate)
    return states[0, -AUTHORS_FILLER_POSITIONS:].mean(dim=0) if segmenter == "authors" else states[0, 2:].mean(dim=0)


@torch.no_grad()
def encode_segments(prompt: str, encoders: list[tuple], max_length: int = DEFAULT_MAX_LENGTH,
                    penultimate: bool | None = None, start_tokens: str = "all", fillers: list | None = None,
                    segmenter: str = "diffalign") -> tuple[torch.Tensor, torch.Tensor | None, SegmentInfo]:
    """-> (states [max_length, sum of D], pooled [P] or None, info).

    ``encoders``: [(tokenizer, text_encoder)] (SD) or two pairs (SDXL). ``penultimate``: use the penultimate hidden
    states (default: True when there are two encoders, as SDXL). ``start_tokens``: "all" keeps every segment's
    start token (the paper), "first" only the first segment's. ``fillers``: each encoder's ``filler_vector``
    when the caller has it already (it encodes the empty prompt once for many prompts); None computes them.
    ``segmenter``: "diffalign" or "authors" (the split and the filler; see the module docstring).
    """
    penultimate = len(encoders) > 1 if penultimate is None else penultimate
    segments = split_segments(prompt, segmenter)
    per_encoder, pooled_all, info = [], [], None
    for k, (tokenizer, encoder) in enumerate(encoders):
        window = tokenizer.model_max_length
        tokens = tokenizer(segments, padding="max_length", max_length=window, truncation=True, return_tensors="pt")
        lengths = tokens.attention_mask.sum(dim=1).tolist()  # start + content + end, per segment
        full = tokenizer(segments, truncation=False).input_ids
        states, pooled = _states(encoder, tokens.input_ids, penultimate)  # [S, 77, D]
        first_row = [0 if i == 0 or start_tokens == "all" else 1 for i in range(len(lengths))]
        kept = torch.cat([states[i, first_row[i]: n - 1] for i, n in enumerate(lengths)])  # no end, no pad
        rows = len(kept)
        filler = (fillers[k] if fillers is not None else
                  filler_vector(tokenizer, encoder, penultimate, segmenter)).to(kept.dtype)
        if rows < max_length:
            kept = torch.cat([kept, filler.expand(max_length - rows, -1)])
        per_encoder.append(kept[:max_length])
        if pooled is not None:
            pooled_all.append(pooled.mean(dim=0))
        info = SegmentInfo(segments=len(segments), tokens=rows,
                           truncated_segments=sum(len(f) > window for f in full), cut=rows > max_length)
    pooled = pooled_all[-1] if pooled_all else None
    return torch.cat(per_encoder, dim=-1), pooled, info


def encoder_pairs(components) -> list[tuple]:
    """[(tokenizer, text_encoder)] of a pipeline or SDComponents, plus SDXL's second pair when it has one."""
    pairs = [(components.tokenizer, components.text_encoder)]
    if getattr(components, "text_encoder_2", None) is not None:
        pairs.append((components.tokenizer_2, components.text_encoder_2))
    return pairs


def encode_prompts(prompts: list[str], encoders: list[tuple], max_length: int = DEFAULT_MAX_LENGTH,
                   start_tokens: str = "all", segmenter: str = "diffalign"):
    """[N, max_length, D] states (and [N, P] pooled or None) of N prompts."""
    penultimate = len(encoders) > 1
    fillers = [filler_vector(tokenizer, encoder, penultimate, segmenter)  # once, not per prompt
               for tokenizer, encoder in encoders]
    results = [encode_segments(p, encoders, max_length, start_tokens=start_tokens, fillers=fillers,
                               segmenter=segmenter) for p in prompts]
    states = torch.stack([r[0] for r in results])
    pooled = torch.stack([r[1] for r in results]) if results[0][1] is not None else None
    return states, pooled
