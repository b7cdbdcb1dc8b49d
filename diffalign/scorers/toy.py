"""The toy world's judge as a scorer.

``scorer(images, prompts)`` gives one score [B]: fidelity, or one persona's score. ``named_scores`` gives all of
them at once from a single judging pass: fidelity, every persona, and per attribute kind the fraction of its
stated instances that hold in that image (NaN where the caption does not state it), so that the mean of
``colour`` over single-object captions is the base-model table's "colour followed" rate.
"""

from __future__ import annotations

import numpy as np
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

    def _judge(self, images: list, prompts: list[str]):
        if len(images) != len(prompts):
            raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
        return [judge(im, p) for im, p in zip(images, prompts)]

    def __call__(self, images: list, prompts: list[str]) -> torch.Tensor:
        verdicts = self._judge(images, prompts)
        values = [v.fidelity if self.score == "fidelity" else v.personas[self.score] for v in verdicts]
        return torch.tensor(values, dtype=torch.float32)

    def named_scores(self, images: list, prompts: list[str]) -> dict[str, torch.Tensor]:
        verdicts = self._judge(images, prompts)
        out = {"fidelity": [v.fidelity for v in verdicts]}
        out |= {name: [v.personas[name] for v in verdicts] for name in TASTES}
        for kind in verdicts[0].checks if verdicts else ():
            out[kind] = [float(np.mean(v.checks[kind])) if v.checks[kind] else float("nan") for v in verdicts]
        return {name: torch.tensor(values, dtype=torch.float32) for name, values in out.items()}
