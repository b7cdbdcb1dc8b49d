"""Scorers, created lazily by name: ``create_scorer("pickscore")``. Importing registers them; no weights load."""

from . import aesthetic, clip_scores, denscore, hps, imagereward  # noqa: F401  (registration side effect)
from .base import REGISTRY, create_scorer

__all__ = ["REGISTRY", "create_scorer"]
