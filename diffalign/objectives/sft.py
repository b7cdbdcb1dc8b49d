"""Supervised fine-tuning on captioned images (``--method sft``): the plain denoising loss, no reference.

    L = E_{x0, c, t, eps} || target_t(x0, eps) - f_θ(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, c, t) ||^2

(target: eps for epsilon-prediction models, v for v-prediction; the mean over a micro-batch of the per-sample
errors that every objective here is built on). It is how a text-to-image model learns a new kind of
conditioning, and in this package it is LongAlign's first stage (Liu et al., ICLR 2025; the authors' ``align``
run): the UNet learns to read segment-encoded long prompts (``text_encoding: segments``,
models/segment_encoding.py) on long-caption images, a LoRA at lr 3e-5 with 10% empty captions
(data.caption_dropout), before the reward stage (``--method longalign``, run on the base with this LoRA fused).
With the default ``truncate`` it is plain supervised fine-tuning through CLIP's 77-token window.
"""

from __future__ import annotations

import torch

from .base import Objective, register
from .segments import EncodesText, TextEncodingOptions


@register
class SupervisedFineTuning(EncodesText, Objective):
    """Rows: one per captioned image (pair_axis "captioned"), each with its own noise and t."""

    Options = TextEncodingOptions
    name = "sft"
    summary = "Supervised fine-tuning on captioned images (caption, image); LongAlign's first stage"
    pair_axis = "captioned"
    needs_reference = False

    def row_loss(self, policy: torch.Tensor, ref: torch.Tensor | None, batch: dict):
        """policy [R] per-sample float32 errors -> (their mean, metrics)."""
        loss = policy.mean()
        return loss, {"denoising_error": loss.item()}
