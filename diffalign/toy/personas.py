"""Personas: hidden tastes for attributes a caption leaves unstated, and Bradley–Terry raters built on them.

A persona's *score* of an image for a caption is ``taste(image) + FIDELITY_WEIGHT * fidelity(image, caption)``:
like a human rater it mostly wants the caption obeyed, and among faithful images it prefers its taste.
``taste`` lies in [-1, 1] and is read from the judge's reading of the image:

- ``bold``:   large, centred shapes   (half size, half centrality of the main shape)
- ``subtle``: small, off-centre shapes (exactly the opposite of ``bold``)
- ``warm``:   warm backgrounds         ((R - B) / 100 of the border colour: peach > beige > white/gray/black > sky)
- ``skyward``: shapes high in the picture (1 - 2y of the main shape's centre; partly aligned with nothing above)
- ``cosy``:   large shapes on warm backgrounds (half size, half warmth). It labels no training data: it is PPD's
              *unseen* user, whose taste mixes what two training personas (bold, warm) like.

Labels: ``P(A preferred over B) = sigmoid((score_A - score_B) / TEMPERATURE)``; a pair whose scores differ by less
than ``TIE_MARGIN`` is a tie (0.5 / 0.5), like Pick-a-Pic's ties.
"""

from __future__ import annotations

import numpy as np

from .judge import Reading
from .world import SIZE_ANY

FIDELITY_WEIGHT = 0.5
TEMPERATURE = 0.15
TIE_MARGIN = 0.03


def _size01(reading: Reading) -> float:
    lo, hi = SIZE_ANY
    return float(np.clip((reading.main.r - lo) / (hi - lo), 0, 1))


def _centrality01(reading: Reading) -> float:
    m = reading.main
    return float(np.clip(1 - np.hypot(m.x - 0.5, m.y - 0.5) / 0.5, 0, 1))


def _bold(reading: Reading) -> float:
    return 2 * (0.5 * _size01(reading) + 0.5 * _centrality01(reading)) - 1


def _subtle(reading: Reading) -> float:
    return -_bold(reading)


def _warm(reading: Reading) -> float:
    r, _, b = reading.background_rgb
    return float(np.clip((r - b) / 100.0, -1, 1))


def _skyward(reading: Reading) -> float:
    return float(np.clip(1 - 2 * reading.main.y, -1, 1))


def _cosy(reading: Reading) -> float:
    return 0.5 * (2 * _size01(reading) - 1) + 0.5 * _warm(reading)


TASTES = {"bold": _bold, "subtle": _subtle, "warm": _warm, "skyward": _skyward, "cosy": _cosy}
# Tastes that need a main shape give -1 (the worst) when the image has none; warm reads only the background.
_NEEDS_SHAPE = {"bold", "subtle", "skyward", "cosy"}


def taste(persona: str, reading: Reading) -> float:
    if persona not in TASTES:
        raise ValueError(f"unknown persona {persona!r}; expected one of {sorted(TASTES)}")
    if persona in _NEEDS_SHAPE and reading.main is None:
        return -1.0
    return TASTES[persona](reading)


def persona_score(persona: str, reading: Reading, fidelity_value: float) -> float:
    return taste(persona, reading) + FIDELITY_WEIGHT * fidelity_value


def bradley_terry_label(score_a: float, score_b: float, rng: np.random.Generator) -> tuple[float, float]:
    """(label_0, label_1) for a pair: a noisy choice, or (0.5, 0.5) for a tie."""
    if abs(score_a - score_b) < TIE_MARGIN:
        return 0.5, 0.5
    p_a = 1.0 / (1.0 + np.exp(-(score_a - score_b) / TEMPERATURE))
    return (1.0, 0.0) if rng.random() < p_a else (0.0, 1.0)
