"""Objectives, one file each; importing this package registers them all."""

from . import dpo, inpo, kto, longalign, mapo, ppd, sft, softrepa, tpo  # noqa: F401  (registration side effect)
from .base import REGISTRY, Objective, PairErrors, get_objective

__all__ = ["REGISTRY", "Objective", "PairErrors", "get_objective"]
