"""The toy world plugged into the library: importing this module registers the judge as the scorer ``toy`` and the
prompt sets as the prompt source ``toy:<set>`` (the library never imports the toy world; its users do, as here).

``scorer(images, prompts)`` gives one score [B]: fidelity, or one persona's score. ``named_scores`` gives all of
them at once from a single judging pass: fidelity, every persona, and per attribute kind the fraction of its
stated instances that hold in that image (NaN where the caption does not state it), so that the mean of
``colour`` over single-object captions is the base-model table's "colour followed" rate.
"""

from __future__ import annotations

import numpy as np
import torch

from ..evaluation.prompt_sources import register_prompt_source
from ..scorers.base import register
from .personas import TASTES
from .prompts import prompt_set
from .scoring import judge

SPLITS = {"train": "train", "test": "heldout", "heldout": "heldout"}  # a typo must not train on held-out prompts


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


def source_prompts(name: str, split: str) -> list[str]:
    """The prompt source ``toy:<name>``: the set's held-out side ("test" / "heldout") or its training side."""
    if split not in SPLITS:
        raise ValueError(f"toy:{name}: split {split!r} is not a toy split; expected 'train' (the training side) or "
                         "'test' / 'heldout' (the held-out side)")
    return prompt_set(name, SPLITS[split])


register_prompt_source("toy", source_prompts)
