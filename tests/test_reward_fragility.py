"""experiments/reward_fragility.py: the projected signed-gradient attack against a hand-computed one, and the
measurement on a few toy cases."""

import sys

import numpy as np
import pytest
import torch

from diffalign.paths import REPO_ROOT, TOY_CLIP_LONG, TOY_SD

sys.path.insert(0, str(REPO_ROOT / "experiments"))
from reward_fragility import measure, signed_gradient_attack, to_markdown  # noqa: E402

pytestmark = pytest.mark.experiments  # a study (experiments/), out of the default suite: pytest -m experiments


def test_the_attack_climbs_the_gradient_sign_inside_the_radius():
    torch.manual_seed(0)
    pixels = torch.rand(2, 3, 4, 4)
    weights = torch.randn(3, 4, 4)
    reward = lambda x: (x * weights).flatten(1).sum(1)  # noqa: E731  gradient: weights, everywhere
    eps = 8 / 255
    moved = signed_gradient_attack(reward, pixels, eps, steps=6)  # 6 steps of eps/4 reach the radius and stop
    expected = (pixels + eps * weights.sign()).clamp(0, 1)
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-6)
    assert (moved - pixels).abs().max() <= eps + 1e-6


def test_measure_reports_the_rewards_rise_under_attack_on_toy_cases():
    result = measure(str(TOY_CLIP_LONG), str(TOY_SD), "toy:long", limit=3, seeds=2, first_seed=4, radii=[8.0],
                     attack_steps=3)
    assert result["cases"] == 6 and len(result["rows"]) == 1
    row = result["rows"][0]
    assert row["reward_after"] > row["reward_before"]
    assert 0 <= row["fidelity_before"] <= 1 and 0 <= row["fidelity_after"] <= 1
    assert np.isfinite(result["reward_fidelity_r"])
    assert "8 | " in to_markdown(result)


def test_the_shipped_robust_reward_clip_moves_less_than_half_as_much_under_a_small_attack():
    """assets/toy-clip-long-robust (LongAlign's toy reward) is toy-clip-long fine-tuned on adversarial renders: a
    4/255 change that raises the first one's Denscore moves it less than half as much (on these renders 0.012
    against 0.005)."""
    from diffalign.paths import TOY_CLIP_LONG_ROBUST
    from diffalign.scorers.denscore import Denscore, shared_direction
    from diffalign.toy.prompts import long_scene
    from diffalign.toy.render import render
    from diffalign.toy.world import realise

    rng = np.random.default_rng(7)
    scenes = [long_scene(rng) for _ in range(16)]
    images = np.stack([render(realise(spec, rng)) for spec, _ in scenes])
    captions = [caption for _, caption in scenes]
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    gains = {}
    for name, path in (("first", TOY_CLIP_LONG), ("robust", TOY_CLIP_LONG_ROBUST)):
        scorer = Denscore("clipscore", omega=0.3, model=str(path))
        v = shared_direction(scorer.caption_vectors(captions))
        reward = lambda x: scorer.reward(x, captions, v)  # noqa: E731
        moved = signed_gradient_attack(reward, pixels, 4 / 255, steps=10)
        with torch.no_grad():
            gains[name] = float((reward(moved) - reward(pixels)).mean())
    assert gains["first"] > 0.008
    assert gains["robust"] < 0.5 * gains["first"]
