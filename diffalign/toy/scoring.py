"""One call that judges an image for a caption: fidelity, per-attribute outcomes and every persona's score."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .captions import parse
from .judge import attribute_checks, read_image
from .personas import TASTES, persona_score


@dataclass
class Judgement:
    fidelity: float  # fraction of stated attributes that hold, in [0, 1]
    checks: dict[str, list[bool]]  # attribute kind -> outcome of each stated instance
    personas: dict[str, float]  # persona name -> score (taste + FIDELITY_WEIGHT * fidelity)


def judge(image, caption: str) -> Judgement:
    reading = read_image(image)
    checks = attribute_checks(parse(caption), reading)
    fid = float(np.mean([ok for values in checks.values() for ok in values]))
    return Judgement(fid, checks, {p: persona_score(p, reading, fid) for p in TASTES})


def attribute_rates(judgements: list[Judgement]) -> dict[str, float]:
    """Fraction of stated instances that hold, per attribute kind, over a set of judged images (NaN if unstated)."""
    rates = {}
    for kind in judgements[0].checks:
        outcomes = [ok for j in judgements for ok in j.checks[kind]]
        rates[kind] = float(np.mean(outcomes)) if outcomes else float("nan")
    return rates
