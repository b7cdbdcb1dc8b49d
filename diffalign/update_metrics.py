"""The metrics of one optimizer update: the mean over its micro-batches and over every process.

With gradient accumulation (16 micro-batches in the SD1.5 configs) and several processes, the last micro-batch of
rank 0 alone is a noisy reading of what the update saw. As diffusers' training scripts do for the loss, every
per-micro-batch metric (the loss, the objective's implicit accuracy, reward, ...) is averaged over the update's
micro-batches and then over processes; a metric named ``*_min`` / ``*_max`` takes the minimum / maximum instead.
Every micro-batch counts once, whatever its number of rows (one partly emptied by skipped bad samples too); a
micro-batch whose examples were all skipped adds nothing, and one without a metric (e.g. KTO's reward of a class
it lacks) is left out of that metric's mean.
"""

from __future__ import annotations

import numbers

from accelerate.utils import gather_object


def is_metric_value(value) -> bool:
    """A number to average (bools and text are not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _combine(key: str, a: float, b: float) -> float:
    if key.endswith("_min"):
        return min(a, b)
    if key.endswith("_max"):
        return max(a, b)
    return a + b


class UpdateMetrics:
    def __init__(self):
        self.totals: dict[str, float] = {}  # sums (or the extreme, for *_min / *_max)
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict) -> None:
        """One micro-batch's numeric metrics (other values are left out)."""
        for key, value in metrics.items():
            if is_metric_value(value):
                value = float(value)
                self.totals[key] = _combine(key, self.totals[key], value) if key in self.totals else value
                self.counts[key] = self.counts.get(key, 0) + 1

    def reduce(self, num_processes: int = 1) -> dict:
        """-> {key: this update's value over every process's micro-batches}, and starts the next update.

        Every process must call it at the same update (it is a collective when ``num_processes`` > 1). The ranks'
        key sets may differ (a rank whose micro-batches were all skipped has none), so totals and counts travel as
        objects."""
        local = [(self.totals, self.counts)]
        everyone = gather_object(local) if num_processes > 1 else local
        totals: dict[str, float] = {}
        counts: dict[str, int] = {}
        for rank_totals, rank_counts in everyone:
            for key, value in rank_totals.items():
                totals[key] = _combine(key, totals[key], value) if key in totals else value
                counts[key] = counts.get(key, 0) + rank_counts[key]
        self.totals, self.counts = {}, {}
        return {key: totals[key] if key.endswith(("_min", "_max")) else totals[key] / counts[key]
                for key in sorted(totals)}
