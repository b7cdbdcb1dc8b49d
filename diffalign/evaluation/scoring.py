"""Turning scorer names into named per-case scores: ``{"pickscore": [N], "toy/fidelity": [N], ...}``."""

from __future__ import annotations

import inspect
import json

import numpy as np

from ..scorers import create_scorer
from ..scorers.base import REGISTRY


def parse_scorer_options(items: list[str]) -> dict[str, dict]:
    """``["pickscore.model=/path", "hps.version=v2"]`` -> {"pickscore": {"model": "/path"}, "hps": {...}}.
    Values are read as JSON when they parse (numbers, booleans), else kept as strings."""
    options: dict[str, dict] = {}
    for item in items:
        key, eq, value = item.partition("=")
        scorer, dot, option = key.partition(".")
        if not eq or not dot or not option:
            raise ValueError(f"scorer option {item!r}: expected SCORER.OPTION=VALUE, e.g. pickscore.model=/path")
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        options.setdefault(scorer, {})[option] = parsed
    return options


def build_scorers(names: list[str], options: dict[str, dict], device: str) -> dict:
    unknown = set(options) - set(names)
    if unknown:
        raise ValueError(f"options given for scorers not in use: {sorted(unknown)} (scorers: {names})")
    return {name: scorer_on(name, options.get(name, {}), device) for name in names}


def scorer_on(name: str, options: dict, device: str):
    """The scorer ``name`` with its ``options``, on ``device`` when it takes one (the toy judge runs on the CPU)."""
    kwargs = dict(options)
    if name in REGISTRY and "device" in inspect.signature(REGISTRY[name]).parameters:
        kwargs.setdefault("device", device)
    return create_scorer(name, **kwargs)


def score_images(scorers: dict, images, prompts: list[str]) -> dict[str, np.ndarray]:
    """Every named score of every scorer for the N cases (float64 [N]; NaN = not applicable)."""
    out = {}
    for name, scorer in scorers.items():
        if hasattr(scorer, "named_scores"):  # one pass yields several scores (the toy judge)
            for sub, values in scorer.named_scores(list(images), prompts).items():
                out[f"{name}/{sub}"] = np.asarray(values, dtype=np.float64)
        else:
            out[name] = np.asarray(scorer(list(images), prompts), dtype=np.float64)
    return out
