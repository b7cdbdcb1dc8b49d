"""MaPO — margin-aware preference optimisation (Hong et al., 2024, arXiv 2406.06424). Reference-free.

With policy errors m (float32) and f(m) = γ m / (exp(γ m) - 1)  (∈ (0, 1], decreasing, f(0) = 1):

    L = mean(m_θ(w)) - λ · mean( log σ( T · (f(m_θ(w)) - f(m_θ(l))) ) )

the first term keeps the model fitting the preferred images, the second widens the likelihood margin between
preferred and rejected. Defaults are the authors' code's: λ = 0.1, γ = 0.5, T = 1000. f is computed with expm1
and its series near 0 so it stays exact (and finite) for tiny errors.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Objective, Options, PairErrors, implicit_accuracy, register


def mapo_f(m: torch.Tensor, gamma: float) -> torch.Tensor:
    """γm / expm1(γm), with its Taylor series 1 - γm/2 + (γm)²/12 where |γm| < 1e-4 (avoids 0/0)."""
    x = gamma * m
    small = x.abs() < 1e-4
    safe = torch.where(small, torch.ones_like(x), x)
    return torch.where(small, 1 - x / 2 + x * x / 12, safe / torch.expm1(safe))


@dataclass
class MaPOOptions(Options):
    lam: float = 0.1  # λ: weight of the margin term against the winners' denoising loss
    gamma: float = 0.5  # γ: scale of the errors inside the log-odds f(m)
    temperature: float = 1000.0  # sharpness of the margin's log σ

    def check(self) -> None:
        super().check()
        if not (0 < self.gamma < math.inf and 0 < self.temperature < math.inf and 0 <= self.lam < math.inf):
            raise ValueError(f"mapo needs finite gamma > 0, temperature > 0 and lam >= 0; got {self.gamma}, "
                             f"{self.temperature}, {self.lam}")  # the "not" form: NaN fails too


@register
class MaPO(Objective):
    Options = MaPOOptions
    name = "mapo"
    summary = "MaPO: reference-free margin-aware preference optimisation on image pairs. arXiv 2406.06424"
    needs_reference = False
    pair_axis = "images"

    def loss(self, errors: PairErrors, batch: dict | None = None):
        f_w, f_l = mapo_f(errors.policy_w, self.options.gamma), mapo_f(errors.policy_l, self.options.gamma)
        margin = f_w - f_l  # [B], > 0 when the winner is denoised better
        ratio = F.logsigmoid(self.options.temperature * margin)
        loss = errors.policy_w.mean() - self.options.lam * ratio.mean()
        metrics = {
            "implicit_acc": implicit_accuracy(margin).item(),
            "margin": margin.mean().item(),
            "err_policy_w": errors.policy_w.mean().item(), "err_policy_l": errors.policy_l.mean().item(),
        }
        return loss, metrics
