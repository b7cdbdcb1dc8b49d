"""Annotators: judge the K candidates of one prompt -> (gap [K, K], standing [K], details) (selection.py).

``ScoreAnnotator``: a weighted sum of scorers (scorers/: pickscore, hps, imagereward, aesthetic, clipscore, and any
registered one, e.g. the toy world's ``toy`` judge with ``options: {score: bold}``). One scorer: its raw scores
(times its weight), so margins are in its own units. Several: each scorer's K scores are standardised within the
prompt (minus their mean, over their standard deviation; all equal -> 0) before weighting, so a scorer's scale
(PickScore ~21, aesthetic ~5, HPS ~0.3) does not decide its say; margins are then in standard deviations.

``mllm.MLLMJudge``: a multimodal LLM asked which of two images is better, per criterion, in both orders.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np

from .selection import pointwise_judgement


@dataclass
class ScorerTerm:
    name: str  # a registered scorer
    weight: float = 1.0
    options: dict = field(default_factory=dict)  # the scorer's own options (model, processor, score, ...)


def weights_fingerprint(options: dict) -> str:
    """A hash of the local weight files an annotator's options name (size and mtime; hub ids hash by name)."""
    from ..evaluation.models import ModelSpec

    paths = sorted(str(v) for v in options.values() if isinstance(v, str))
    return hashlib.sha256("|".join(ModelSpec("w", p).fingerprint() for p in paths).encode()).hexdigest()[:12]


class ScoreAnnotator:
    def __init__(self, terms: list[ScorerTerm], device: str = "cpu"):
        from ..evaluation.scoring import scorer_on

        if not terms:
            raise ValueError("annotator.scorers: name at least one scorer")
        bad = next((t for t in terms if not t.weight > 0), None)
        if bad is not None:
            raise ValueError(f"annotator.scorers: {bad.name}'s weight must be > 0; got {bad.weight}")
        self.terms = terms
        self.scorers = [scorer_on(t.name, t.options, device) for t in terms]
        self.spec = " + ".join(f"{t.weight:g}*{t.name}" + (json.dumps(t.options, sort_keys=True) if t.options else "")
                               for t in terms)
        self.version = hashlib.sha256(json.dumps([asdict(t) for t in terms], sort_keys=True).encode()
                                      + "".join(weights_fingerprint(t.options) for t in terms).encode()
                                      ).hexdigest()[:12]

    def judge(self, images: list, prompt: str) -> tuple[np.ndarray, np.ndarray, dict]:
        """images: the K candidates (uint8 [H, W, 3] each) of ``prompt``."""
        raw = [np.asarray(scorer(images, [prompt] * len(images)), dtype=np.float64) for scorer in self.scorers]
        if len(raw) == 1:
            total = self.terms[0].weight * raw[0]
        else:
            total = sum(t.weight * _standardised(r) for t, r in zip(self.terms, raw))
        gap, standing = pointwise_judgement(total)
        return gap, standing, {t.name: r.tolist() for t, r in zip(self.terms, raw)}


def _standardised(scores: np.ndarray) -> np.ndarray:
    std = scores.std()
    return (scores - scores.mean()) / std if std > 0 else np.zeros_like(scores)
