"""The toy world's judge as a scorer: fidelity, or one persona's score, as a tensor [B]."""

from __future__ import annotations

import torch

from ..toy.personas import TASTES
from ..toy.scoring import judge
from .base import register


@register("toy")
class ToyScorer:
    """``score="fidelity"`` (fraction of stated attributes that hold) or a persona name (bold, subtle, ...)."""

    def __init__(self, score: str = "fidelity"):
        if score != "fidelity" and score not in TASTES:
            raise ValueError(f"unknown toy score {score!r}; expected 'fidelity' or one of {sorted(TASTES)}")
        self.score = score

    def __call__(self, images: list, prompts: list[str]) -> torch.Tensor:
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        verdicts = [judge(im, p) for im, p in zip(images, prompts)]
        values = [v.fidelity if self.score == "fidelity" else v.personas[self.score] for v in verdicts]
        return torch.tensor(values, dtype=torch.float32)
