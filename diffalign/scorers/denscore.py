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

from collections import OrderedDict

import torch

from ..models.segment_encoding import SEGMENTERS, split_segments
from .base import batched, create_scorer, register, to_pil

BACKBONES = ("pickscore", "clipscore", "hps")


@register("denscore")
class Denscore:
    def __init__(self, backbone: str = "pickscore", omega: float = 0.3, max_cached_captions: int = 8192,
                 segmenter: str = "diffalign", **backbone_options):
        if backbone not in BACKBONES:
            raise ValueError(f"denscore backbone: expected one of {BACKBONES}; got {backbone!r}")
        scorer = create_scorer(backbone, **backbone_options)
        self.similarity = getattr(scorer, "clip", scorer)  # clipscore wraps its CLIP model; the others are one
        self.omega = float(omega)
        if segmenter not in SEGMENTERS:
            raise ValueError(f"denscore segmenter: expected one of {SEGMENTERS}; got {segmenter!r}")
        self.segmenter = segmenter  # how captions are cut into sentences (models/segment_encoding.py)
        # Least recently used captions are evicted past ``max_cached_captions`` (8192 x D=1024 float32: 32 MB on
        # the scorer's device), so a run over Pick-a-Pic's ~58k prompts does not grow without bound.
        self._caption_cache: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.max_cached_captions = int(max_cached_captions)
        if self.max_cached_captions < 1:
            raise ValueError(f"denscore max_cached_captions must be >= 1; got {max_cached_captions}")
        model = getattr(self.similarity, "model", None)
        if isinstance(model, torch.nn.Module):
            model.requires_grad_(False)  # a reward model is never trained; gradients go to the pixels only

    def caption_vectors(self, prompts: list[str]) -> torch.Tensor:
        """t̄ [B, D]: the mean of each caption's normalised sentence embeddings (not renormalised). Cached per
        caption: reward fine-tuning sees the same training prompts every epoch."""
        vectors = {}
        for prompt in dict.fromkeys(prompts):
            if prompt in self._caption_cache:
                self._caption_cache.move_to_end(prompt)
                vectors[prompt] = self._caption_cache[prompt]
                continue
            sentences = split_segments(prompt, self.segmenter)
            e = torch.nn.functional.normalize(self.similarity.embed_texts(sentences).float(), dim=-1)
            vectors[prompt] = self._caption_cache[prompt] = e.mean(dim=0)
            while len(self._caption_cache) > self.max_cached_captions:
                self._caption_cache.popitem(last=False)
        return torch.stack([vectors[p] for p in prompts])

    @torch.no_grad()
    def __call__(self, images: list, prompts: list[str]) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        batch = getattr(self.similarity, "batch_size", 32)
        f = torch.cat([self.similarity.embed_images([to_pil(i) for i in chunk]).float()
                       for chunk in batched(list(images), batch)])
        return decomposed_score(f, self.caption_vectors(prompts).to(f.device), self.omega).cpu()

    def reward(self, pixels: torch.Tensor, prompts: list[str], shared: torch.Tensor | None = None) -> torch.Tensor:
        """S [B] of float pixels [B, 3, H, W] in [0, 1], with gradient to the pixels (the scorer's weights stay
        frozen). The same score as calling the scorer on these images, up to uint8 rounding and resampling.
        ``shared``: the direction v [D] (default: from these prompts; training passes the global batch's)."""
        if len(pixels) != len(prompts):
            raise ValueError(f"got {len(pixels)} images but {len(prompts)} prompts")
        f = self.similarity.pixel_features(pixels).float()  # [B, D]
        return decomposed_score(f, self.caption_vectors(prompts).to(f.device), self.omega, shared)


def shared_direction(caption_vectors: torch.Tensor) -> torch.Tensor:
    """v [D]: the normalised mean of the caption vectors [N, D]. With N = 1 (or N equal captions) v = t̄/|t̄| and
    the text-relevant part of S vanishes: S = ω⟨t̄, f⟩, so callers need captions that differ."""
    return torch.nn.functional.normalize(caption_vectors.mean(dim=0), dim=0)


def decomposed_score(image_features: torch.Tensor, caption_vectors: torch.Tensor, omega: float,
                     shared: torch.Tensor | None = None) -> torch.Tensor:
    """S [B] = ⟨t̄ − η v, f⟩ + ω η ⟨v, f⟩ with f the normalised image features [B, D], t̄ the caption vectors
    [B, D], v the shared direction (default: the normalised mean of these t̄) and η = ⟨t̄, v⟩."""
    f = torch.nn.functional.normalize(image_features, dim=-1)  # [B, D]
    t = caption_vectors
    v = shared_direction(t) if shared is None else shared.to(t.device, t.dtype)  # [D]
    eta = t @ v  # [B]
    relevant = ((t - eta[:, None] * v) * f).sum(-1)
    irrelevant = eta * (f @ v)
    return relevant + omega * irrelevant
