"""Win rates with confidence intervals, ties counted one half."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


@dataclass
class WinRate:
    rate: float  # mean outcome: 1 per win, 1/2 per tie, 0 per loss
    low: float  # 95% confidence interval (normal approximation on the per-case outcomes)
    high: float
    wins: int
    ties: int
    losses: int

    @property
    def n(self) -> int:
        return self.wins + self.ties + self.losses

    def __str__(self) -> str:
        return (f"{self.rate:.1%} [{self.low:.1%}, {self.high:.1%}] "
                f"({self.wins} wins, {self.ties} ties, {self.losses} losses)")


def win_rate(candidate, baseline, tie_tolerance: float = 0.0) -> WinRate:
    """How often ``candidate[i]`` beats ``baseline[i]`` (paired scores, higher is better).

    Outcome per case o_i ∈ {1, ½, 0}; rate = mean(o); CI = rate ± 1.96 · sd(o) / √n (sd with n - 1).
    """
    a, b = np.asarray(candidate, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two equal-length 1-D score arrays of at least 2 cases; got {a.shape} and {b.shape}")
    diff = a - b
    outcomes = np.where(diff > tie_tolerance, 1.0, np.where(diff < -tie_tolerance, 0.0, 0.5))
    rate = float(outcomes.mean())
    half = Z95 * float(outcomes.std(ddof=1)) / np.sqrt(len(outcomes))
    return WinRate(rate, rate - half, rate + half, int((outcomes == 1).sum()), int((outcomes == 0.5).sum()),
                   int((outcomes == 0).sum()))
