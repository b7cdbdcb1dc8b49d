"""Denscore: LongAlign's decomposed preference score over any CLIP-style scorer (Liu et al., ICLR 2025).

A preference model's score mixes how well the image follows the text with a text-independent "looks good" part.
LongAlign splits the text direction in two: for image feature f (normalised), caption vector t̄ (the mean of the
normalised embeddings of the caption's sentences, so long captions count every sentence), v = the normalised
batch mean of t̄ (the direction every caption shares), η = ⟨t̄, v⟩:

    S = ⟨t̄ − η v, f⟩ + ω · η ⟨v, f⟩         (text-relevant part + ω × text-irrelevant part)

ω = 1 gives ⟨t̄, f⟩, the plain cosine for one-sentence captions; ω < 1 (0.3 in the paper) weighs down the shared
part, so a reward built on S favours following the text over generic appeal. Backbones: ``pickscore``,
``clipscore`` (any transformers or open_clip CLIP), ``hps``; their options pass through (``model=...``).
Scores are relative to the batch (v is its mean direction): score a batch of several captions.
"""

from __future__ import annotations

import torch

from ..models.segment_encoding import split_segments
from .base import batched, create_scorer, register, to_pil

BACKBONES = ("pickscore", "clipscore", "hps")


@register("denscore")
class Denscore:
    def __init__(self, backbone: str = "pickscore", omega: float = 0.3, **backbone_options):
        if backbone not in BACKBONES:
            raise ValueError(f"denscore backbone: expected one of {BACKBONES}; got {backbone!r}")
        scorer = create_scorer(backbone, **backbone_options)
        self.similarity = getattr(scorer, "clip", scorer)  # clipscore wraps its CLIP model; the others are one
        self.omega = float(omega)

    def caption_vectors(self, prompts: list[str]) -> torch.Tensor:
        """t̄ [B, D]: the mean of each caption's normalised sentence embeddings (not renormalised)."""
        out = []
        for prompt in prompts:
            sentences = split_segments(prompt)
            e = torch.nn.functional.normalize(self.similarity.embed_texts(sentences).float(), dim=-1)
            out.append(e.mean(dim=0))
        return torch.stack(out)

    @torch.no_grad()
    def __call__(self, images: list, prompts: list[str]) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        batch = getattr(self.similarity, "batch_size", 32)
        f = torch.cat([self.similarity.embed_images([to_pil(i) for i in chunk]).float()
                       for chunk in batched(list(images), batch)])
        f = torch.nn.functional.normalize(f, dim=-1)  # [B, D]
        t = self.caption_vectors(prompts).to(f.device)  # [B, D]
        v = torch.nn.functional.normalize(t.mean(dim=0), dim=0)  # [D]
        eta = t @ v  # [B]
        relevant = ((t - eta[:, None] * v) * f).sum(-1)
        irrelevant = eta * (f @ v)
        return (relevant + self.omega * irrelevant).cpu()
