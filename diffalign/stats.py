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
    Cases where either score is NaN ("not applicable") are left out; ``n`` counts the cases compared.
    """
    a, b = np.asarray(candidate, dtype=np.float64), np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two equal-length 1-D score arrays; got {a.shape} and {b.shape}")
    defined = ~(np.isnan(a) | np.isnan(b))
    a, b = a[defined], b[defined]
    if len(a) < 2:
        raise ValueError(f"need at least 2 cases where both scores are defined; got {len(a)}")
    diff = a - b
    outcomes = np.where(diff > tie_tolerance, 1.0, np.where(diff < -tie_tolerance, 0.0, 0.5))
    rate = float(outcomes.mean())
    half = Z95 * float(outcomes.std(ddof=1)) / np.sqrt(len(outcomes))
    return WinRate(rate, rate - half, rate + half, int((outcomes == 1).sum()), int((outcomes == 0.5).sum()),
                   int((outcomes == 0).sum()))


@dataclass
class MeanCI:
    mean: float
    low: float  # 95% CI of the mean, normal approximation: mean ± 1.96 · sd / √n (sd with n - 1)
    high: float
    n: int  # cases with a defined value (NaN = "not applicable" and is left out, e.g. an unstated attribute)

    def __str__(self) -> str:
        return f"{self.mean:.4g} ± {(self.high - self.low) / 2:.2g}"


def mean_ci(values) -> MeanCI:
    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return MeanCI(float("nan"), float("nan"), float("nan"), 0)
    mean = float(x.mean())
    half = Z95 * float(x.std(ddof=1)) / np.sqrt(len(x)) if len(x) > 1 else float("nan")
    return MeanCI(mean, mean - half, mean + half, len(x))
