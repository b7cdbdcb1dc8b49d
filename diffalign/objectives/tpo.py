"""TDPO — text preference optimisation (Xian et al., 2025, arXiv 2509.25771). No image pairs needed.

One image x, its true caption c_w and a perturbed, mismatched caption c_l, the same eps and t for both:

    g_w = m_ref(x, c_w) - m_θ(x, c_w),   g_l = m_ref(x, c_l) - m_θ(x, c_l)
    L = -log σ((β/2) (g_w - clip(g_l)))

The negative term is clipped because nothing else bounds it: the policy could lower the loss forever by
denoising *worse* under wrong captions, which damages the model. The paper's exact clip is unpublished; diffalign's
(``negative_clip`` = ρ) is   clip(g_l) = max(g_l, -ρ · m_ref(x, c_l)),   i.e. once the policy's error under the
wrong caption is ρ above the reference's (relative), that term stops pushing (its gradient is zero). ρ = None
disables the clip. The DPO link options (dpo.py) apply to the clipped margin.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import PairErrors, register
from .caption_pairs import CaptionPairs, CaptionPerturbOptions
from .dpo import DiffusionDPO, DPOOptions


@dataclass
class TDPOOptions(DPOOptions, CaptionPerturbOptions):
    beta: float = 5000.0  # β with the paper's ½, as DPO's
    negative_clip: float | None = 0.1  # ρ: the negative term is clipped at max(g_l, -ρ m_ref); null = no clip

    def check(self) -> None:
        super().check()
        if self.negative_clip is not None and not 0 <= self.negative_clip < math.inf:
            raise ValueError(f"negative_clip must be a finite number >= 0 or null; got {self.negative_clip}")


@register
class TDPO(CaptionPairs, DiffusionDPO):
    Options = TDPOOptions
    name = "tdpo"
    summary = "TDPO: DPO over true/perturbed captions of captioned images (caption, image). arXiv 2509.25771"
    pair_axis = "captions"

    def loss(self, errors: PairErrors, batch: dict | None = None):
        if errors.ref_l is None:
            raise ValueError("tdpo needs reference errors")
        clipped = errors
        if self.options.negative_clip is not None:
            # max(g_l, -ρ m_ref)  <=>  m_θ(l) capped at (1 + ρ) m_ref(l) where it counts
            cap = (1 + self.options.negative_clip) * errors.ref_l
            clipped = PairErrors(errors.policy_w, torch.minimum(errors.policy_l, cap), errors.ref_w, errors.ref_l)
        loss, metrics = super().loss(clipped, batch)
        if self.options.negative_clip is not None:
            metrics["negative_clipped"] = (errors.policy_l > cap).float().mean().item()
        return loss, metrics
