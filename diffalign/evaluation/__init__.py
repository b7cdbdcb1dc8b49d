"""Evaluation: fixed-seed generation for a base model and its adapters, scoring, and a report (``evaluate``)."""

from .api import evaluate
from .generation import SamplingSettings
from .models import ModelSpec
from .report import Report

__all__ = ["evaluate", "Report", "ModelSpec", "SamplingSettings"]
