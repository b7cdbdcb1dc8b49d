"""UpdateMetrics: the logged metrics of an update are the mean over its micro-batches (and processes)."""

import numpy as np
import pytest

from diffalign.update_metrics import UpdateMetrics


def test_the_mean_over_micro_batches_then_a_fresh_start():
    metrics = UpdateMetrics()
    metrics.add({"loss": 1.0, "implicit_acc": 0.5, "note": "text", "flag": True})
    metrics.add({"loss": 3.0, "implicit_acc": 1.0})
    metrics.add({"loss": np.float32(2.0)})  # a metric a micro-batch lacks is averaged over those that have it
    assert metrics.reduce() == {"implicit_acc": pytest.approx(0.75), "loss": pytest.approx(2.0)}
    assert metrics.reduce() == {}  # the next update starts empty
    metrics.add({"loss": 5})
    assert metrics.reduce() == {"loss": 5.0}


def test_min_and_max_metrics_keep_the_extreme():
    metrics = UpdateMetrics()
    metrics.add({"reward": 0.2, "reward_min": -0.1, "score_max": 1.0})
    metrics.add({"reward": 0.4, "reward_min": 0.3, "score_max": 2.0})
    assert metrics.reduce() == {"reward": pytest.approx(0.3), "reward_min": -0.1, "score_max": 2.0}


def test_kto_leaves_out_the_reward_of_a_class_its_micro_batch_lacks():
    """Not NaN: one NaN micro-batch would make the whole update's mean NaN (and summary.json invalid JSON)."""
    import torch

    from diffalign.objectives import get_objective

    kto = get_objective("kto")
    policy, ref = torch.tensor([0.1, 0.2]), torch.tensor([0.15, 0.1])
    _, only_desirable = kto.row_loss(policy, ref, {"labels": torch.tensor([1.0, 1.0])})
    _, both = kto.row_loss(policy, ref, {"labels": torch.tensor([1.0, -1.0])})
    assert "reward_undesirable" not in only_desirable and "reward_desirable" in only_desirable
    metrics = UpdateMetrics()
    metrics.add(only_desirable)
    metrics.add(both)
    reduced = metrics.reduce()
    assert all(np.isfinite(v) for v in reduced.values())
    assert reduced["reward_undesirable"] == pytest.approx(both["reward_undesirable"])
