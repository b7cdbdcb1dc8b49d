"""Which candidates of a prompt become training examples, from the annotator's judgement of them.

A judgement of K candidates is ``gap`` [K, K], antisymmetric: ``gap[i, j] > 0`` when candidate i is preferred to
j, by that much (a pointwise annotator: score_i - score_j; the MLLM judge: the share of its votes for i minus for
j), and ``scores`` [K], the candidates' standing (pointwise: the scores; pairwise: the mean gap to the others).

Pairs (the Pick-a-Pic v2 schema's ``label_0``; the candidate drawn first is always ``jpg_0``, so the position of
the preferred image carries no signal):
    rule "best-worst"  one pair per prompt: the highest- and the lowest-standing candidate
    rule "margin"      every pair i < j
Each pair's |gap| decides its label: <= ``tie_threshold``: a tie (0.5); > ``margin``: decisive (1 or 0);
in between: left out (too close to trust, too far apart to call equal).

Feedback (KTO): per prompt, the top ``fraction`` of candidates by standing are desirable (label 1), the bottom
``fraction`` undesirable (0), at least one each; equal standings keep the drawing order (stable sort).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PAIR_RULES = ("best-worst", "margin")


@dataclass(frozen=True)
class SelectionRule:
    pairs: str = "best-worst"
    margin: float = 0.0
    tie_threshold: float = 0.0
    feedback_fraction: float = 0.25

    def __post_init__(self):
        if self.pairs not in PAIR_RULES:
            raise ValueError(f"pairs: expected one of {PAIR_RULES}; got {self.pairs!r}")
        if not 0 <= self.tie_threshold <= self.margin:
            raise ValueError(f"tie_threshold must be in [0, margin]; got tie_threshold={self.tie_threshold}, "
                             f"margin={self.margin}")
        if not 0 < self.feedback_fraction <= 0.5:
            raise ValueError(f"feedback_fraction must be in (0, 0.5]; got {self.feedback_fraction}")


def select_pairs(gap: np.ndarray, scores: np.ndarray, rule: SelectionRule) -> list[tuple[int, int, float]]:
    """(i, j, label_0) with i < j (candidate i is jpg_0): label_0 1 when i is preferred, 0 when j, 0.5 a tie."""
    k = len(scores)
    if k < 2:
        raise ValueError(f"a pair needs at least 2 candidates per prompt; got {k}")
    if rule.pairs == "best-worst":
        order = np.argsort(-scores, kind="stable")
        best, worst = int(order[0]), int(order[-1])
        candidates = [(min(best, worst), max(best, worst))]
    else:
        candidates = [(i, j) for i in range(k) for j in range(i + 1, k)]
    pairs = []
    for i, j in candidates:
        g = float(gap[i, j])
        if abs(g) <= rule.tie_threshold:
            pairs.append((i, j, 0.5))
        elif abs(g) > rule.margin:
            pairs.append((i, j, 1.0 if g > 0 else 0.0))
    return pairs


def select_feedback(scores: np.ndarray, rule: SelectionRule) -> list[tuple[int, int]]:
    """(candidate, label): the top fraction desirable (1), the bottom fraction undesirable (0)."""
    k = len(scores)
    n = max(1, int(round(rule.feedback_fraction * k)))
    if 2 * n > k:
        raise ValueError(f"feedback_fraction {rule.feedback_fraction} of {k} candidates: {n} desirable and {n} "
                         "undesirable do not fit; draw more candidates or lower it")
    order = np.argsort(-scores, kind="stable")  # best first; ties in drawing order
    return [(int(c), 1) for c in order[:n]] + [(int(c), 0) for c in order[k - n:]]


def pointwise_judgement(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """scores [K] -> (gap [K, K], scores [K])."""
    scores = np.asarray(scores, dtype=np.float64)
    return scores[:, None] - scores[None, :], scores


def pairwise_judgement(preference: dict[tuple[int, int], float], k: int) -> tuple[np.ndarray, np.ndarray]:
    """{(i, j): preference of i over j in [-1, 1]} for every i < j -> (gap [K, K], standing [K]: mean gap)."""
    gap = np.zeros((k, k))
    for (i, j), p in preference.items():
        gap[i, j], gap[j, i] = p, -p
    return gap, gap.sum(axis=1) / max(1, k - 1)
