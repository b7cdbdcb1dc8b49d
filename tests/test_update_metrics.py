"""UpdateMetrics: the logged metrics of an update are the mean over its micro-batches (and processes)."""

import pytest

from diffalign.update_metrics import UpdateMetrics


def test_the_mean_over_micro_batches_then_a_fresh_start():
    metrics = UpdateMetrics()
    metrics.add({"loss": 1.0, "implicit_acc": 0.5, "note": "text", "flag": True})
    metrics.add({"loss": 3.0, "implicit_acc": 1.0})
    metrics.add({"loss": 2.0})  # a metric a micro-batch lacks is averaged over those that have it
    assert metrics.reduce() == {"implicit_acc": pytest.approx(0.75), "loss": pytest.approx(2.0)}
    assert metrics.reduce() == {}  # the next update starts empty
    metrics.add({"loss": 5})
    assert metrics.reduce() == {"loss": 5.0}
