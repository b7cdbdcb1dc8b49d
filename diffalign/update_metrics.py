"""The metrics of one optimizer update: the mean over its micro-batches and over every process.

With gradient accumulation (16 micro-batches in the SD1.5 configs) and several processes, the last micro-batch of
rank 0 alone is a noisy reading of what the update saw. As diffusers' training scripts do for the loss, every
per-micro-batch metric (the loss, the objective's implicit accuracy, reward, ...) is averaged over the update's
micro-batches and then over processes. A micro-batch whose examples were all skipped (bad samples) adds nothing.
"""

from __future__ import annotations

from accelerate.utils import gather_object


class UpdateMetrics:
    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, metrics: dict) -> None:
        """One micro-batch's numeric metrics (non-numeric values are left out)."""
        for key, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self.sums[key] = self.sums.get(key, 0.0) + float(value)
                self.counts[key] = self.counts.get(key, 0) + 1

    def reduce(self, num_processes: int = 1) -> dict:
        """-> {key: mean over every process's micro-batches of this update}, and starts the next update.

        Every process must call it at the same update (it is a collective when ``num_processes`` > 1). The ranks'
        key sets may differ (a rank whose micro-batches were all skipped has none), so sums and counts travel as
        objects."""
        local = [(self.sums, self.counts)]
        everyone = gather_object(local) if num_processes > 1 else local
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for rank_sums, rank_counts in everyone:
            for key, value in rank_sums.items():
                sums[key] = sums.get(key, 0.0) + value
                counts[key] = counts.get(key, 0) + rank_counts[key]
        self.sums, self.counts = {}, {}
        return {key: sums[key] / counts[key] for key in sorted(sums)}
