"""Personas: who prefers what, and Bradley–Terry labels with the noise and ties they promise."""

import numpy as np

from diffalign.toy.judge import read_image
from diffalign.toy.personas import TEMPERATURE, TIE_MARGIN, bradley_terry_label, taste
from diffalign.toy.render import render
from diffalign.toy.scoring import judge
from diffalign.toy.world import Scene, Shape

BIG_CENTRED = Scene("sky", [Shape("red", "circle", 0.5, 0.5, 0.28)])
SMALL_CORNER = Scene("peach", [Shape("red", "circle", 0.15, 0.85, 0.1)])
SMALL_TOP = Scene("gray", [Shape("red", "circle", 0.5, 0.12, 0.1)])


def _taste(persona, scene):
    return taste(persona, read_image(render(scene)))


def test_bold_and_subtle_have_opposite_tastes():
    assert _taste("bold", BIG_CENTRED) > 0.8 and _taste("bold", SMALL_CORNER) < -0.5
    assert _taste("subtle", SMALL_CORNER) > 0.5 and _taste("subtle", BIG_CENTRED) < -0.8
    assert np.isclose(_taste("bold", SMALL_TOP), -_taste("subtle", SMALL_TOP))


def test_warm_prefers_warm_backgrounds_and_skyward_high_shapes():
    assert _taste("warm", SMALL_CORNER) > 0.9 > -0.8 > _taste("warm", BIG_CENTRED)
    assert _taste("skyward", SMALL_TOP) > 0.7 and _taste("skyward", SMALL_CORNER) < -0.6


def test_persona_score_rewards_fidelity():
    image = render(BIG_CENTRED)
    right = judge(image, "a red circle").personas["bold"]
    wrong = judge(image, "a blue square").personas["bold"]
    assert right - wrong == 0.5  # FIDELITY_WEIGHT * (1 - 0)


def test_bradley_terry_choice_rate_and_ties():
    rng = np.random.default_rng(0)
    delta = 0.15
    labels = [bradley_terry_label(delta, 0.0, rng) for _ in range(4000)]
    rate = np.mean([l0 for l0, _ in labels])
    assert abs(rate - 1 / (1 + np.exp(-delta / TEMPERATURE))) < 0.03  # sigmoid(1) = 0.731
    assert bradley_terry_label(0.3, 0.3 + TIE_MARGIN / 2, rng) == (0.5, 0.5)
    assert all(l0 + l1 == 1.0 for l0, l1 in labels)
