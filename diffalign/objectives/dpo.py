"""Diffusion-DPO (Wallace et al., 2023, arXiv 2311.12908) and its link-function variants.

With per-sample errors m (float32) of the policy θ and the frozen reference, for a pair (w, l):

    h = (m_ref(w) - m_θ(w)) - (m_ref(l) - m_θ(l))
    sigmoid (paper, Eq. 14 written with the ½ of the original β convention):   L = -log σ((β/2) h)
    hinge:  L = relu(1 - (β/2) h)
    ipo:    L = (h - 1/(2τ))²
    cdpo (label smoothing ε):   L = -(1-ε) log σ((β/2) h) - ε log σ(-(β/2) h)
    rdpo (flip rate ε < ½):     L = [-(1-ε) log σ((β/2) h) + ε log σ(-(β/2) h)] / (1 - 2ε)

averaged over pairs (the mean of log σ, never log σ of the mean). At θ = ref, h = 0 and the sigmoid loss is
log 2 exactly. ``sft_weight`` λ > 0 adds the winners' own denoising loss, L + λ · mean m_θ(w) (not in the paper:
the chosen-answer NLL term of Iterative RPO, Pang et al., 2024, arXiv 2404.19733, which keeps the preferred
likelihood from falling with the margin); 0 = off. Its scale is λ against the DPO term's β/4 per pair at the start
(the sigmoid link's gradient on m_θ(w)), so λ = 1 next to β = 1000 is a light touch.
β = 5000 (SDXL) / 2000-5000 (SD1.5) in this convention; diffusers' script's 2500 · h is β = 5000.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Objective, Options, PairErrors, implicit_accuracy, register

LINKS = ("sigmoid", "hinge", "ipo", "cdpo", "rdpo")


def dpo_link(h: torch.Tensor, beta: float, link: str = "sigmoid", epsilon: float = 0.0,
             ipo_tau: float = 1.0) -> torch.Tensor:
    """Per-pair loss [B] for margins h [B]."""
    z = 0.5 * beta * h
    if link == "sigmoid":
        return -F.logsigmoid(z)
    if link == "hinge":
        return F.relu(1 - z)
    if link == "ipo":
        return (h - 1 / (2 * ipo_tau)) ** 2
    if link == "cdpo":
        return -(1 - epsilon) * F.logsigmoid(z) - epsilon * F.logsigmoid(-z)
    if link == "rdpo":
        return (-(1 - epsilon) * F.logsigmoid(z) + epsilon * F.logsigmoid(-z)) / (1 - 2 * epsilon)
    raise ValueError(f"unknown DPO link {link!r}; expected one of {LINKS}")


@dataclass
class DPOOptions(Options):
    beta: float = 5000.0  # β with the paper's ½: L = -log σ(β/2 · h); 0 only with sft_weight > 0 (plain SFT)
    link: str = "sigmoid"  # sigmoid | hinge | ipo | cdpo (label smoothing) | rdpo (robust to label flips)
    epsilon: float = 0.0  # cdpo: label smoothing in [0, 0.5]; rdpo: the labels' flip rate in [0, 0.5)
    ipo_tau: float = 1.0  # ipo: τ in L = (h - 1/(2τ))²
    sft_weight: float = 0.0  # λ: adds λ · (mean winner error), Iterative RPO's NLL term (arXiv 2404.19733); 0 = off

    def check(self) -> None:
        super().check()
        if self.link not in LINKS:
            raise ValueError(f"unknown DPO link {self.link!r}; expected one of {LINKS}")
        if self.link == "rdpo" and not 0 <= self.epsilon < 0.5:
            raise ValueError(f"rdpo needs a flip rate epsilon in [0, 0.5); got {self.epsilon}")
        if self.link == "cdpo" and not 0 <= self.epsilon <= 0.5:
            raise ValueError(f"cdpo needs label smoothing epsilon in [0, 0.5]; got {self.epsilon}")
        if not 0 < self.ipo_tau < math.inf:  # "not" form: NaN fails too
            raise ValueError(f"ipo_tau must be a finite number > 0; got {self.ipo_tau}")
        if not 0 <= self.sft_weight < math.inf:
            raise ValueError(f"sft_weight must be a finite number >= 0; got {self.sft_weight}")
        # A negative beta trains towards the rejected images. beta 0 leaves only the sft_weight term (plain
        # fine-tuning on the winners, the control run of the TPO study); with no sft_weight nothing would train.
        if not (0 < self.beta < math.inf or (self.beta == 0 and self.sft_weight > 0)):
            raise ValueError(f"beta must be a finite number > 0 (0 only with sft_weight > 0); got {self.beta}")


@register
class DiffusionDPO(Objective):
    Options = DPOOptions
    name = "dpo"
    summary = "Diffusion-DPO on image pairs (caption, jpg_0, jpg_1, label_0), five links. arXiv 2311.12908"
    needs_reference = True
    pair_axis = "images"

    def loss(self, errors: PairErrors, batch: dict | None = None):
        if errors.ref_w is None:
            raise ValueError("dpo needs reference errors (ref_w, ref_l)")
        o = self.options
        win_gain = errors.ref_w - errors.policy_w  # [B]: how much better the policy denoises the winner
        lose_gain = errors.ref_l - errors.policy_l
        h = win_gain - lose_gain
        loss = dpo_link(h, o.beta, o.link, o.epsilon, o.ipo_tau).mean()
        metrics = {
            "implicit_acc": implicit_accuracy(h).item(),
            "margin": h.mean().item(),
            "reward_w": (0.5 * o.beta * win_gain).mean().item(),
            "reward_l": (0.5 * o.beta * lose_gain).mean().item(),
            "err_policy_w": errors.policy_w.mean().item(), "err_policy_l": errors.policy_l.mean().item(),
            "err_ref_w": errors.ref_w.mean().item(), "err_ref_l": errors.ref_l.mean().item(),
        }
        if o.sft_weight:  # the winners' own denoising loss (Iterative RPO's NLL term)
            sft = o.sft_weight * errors.policy_w.mean()
            loss = loss + sft
            metrics["sft_term"] = sft.item()
        return loss, metrics
