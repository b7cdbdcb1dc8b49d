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

import torch
import torch.nn.functional as F

from .base import Objective, PairErrors, implicit_accuracy, register

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


@register
class DiffusionDPO(Objective):
    name = "dpo"
    needs_reference = True
    pair_axis = "images"

    def __init__(self, beta: float = 5000.0, link: str = "sigmoid", epsilon: float = 0.0, ipo_tau: float = 1.0,
                 sft_weight: float = 0.0):
        if link not in LINKS:
            raise ValueError(f"unknown DPO link {link!r}; expected one of {LINKS}")
        if link == "rdpo" and not 0 <= epsilon < 0.5:
            raise ValueError(f"rdpo needs a flip rate epsilon in [0, 0.5); got {epsilon}")
        if link == "cdpo" and not 0 <= epsilon <= 0.5:
            raise ValueError(f"cdpo needs label smoothing epsilon in [0, 0.5]; got {epsilon}")
        if not 0 < ipo_tau < math.inf:  # "not" form: NaN fails too
            raise ValueError(f"ipo_tau must be a finite number > 0; got {ipo_tau}")
        if not 0 <= sft_weight < math.inf:
            raise ValueError(f"sft_weight must be a finite number >= 0; got {sft_weight}")
        # A negative beta trains towards the rejected images. beta 0 leaves only the sft_weight term (plain
        # fine-tuning on the winners, the control run of the TPO study); with no sft_weight nothing would train.
        if not (0 < beta < math.inf or (beta == 0 and sft_weight > 0)):
            raise ValueError(f"beta must be a finite number > 0 (0 only with sft_weight > 0); got {beta}")
        self.beta, self.link, self.epsilon, self.ipo_tau = beta, link, epsilon, ipo_tau
        self.sft_weight = sft_weight

    def loss(self, errors: PairErrors, batch: dict | None = None):
        if errors.ref_w is None:
            raise ValueError("dpo needs reference errors (ref_w, ref_l)")
        win_gain = errors.ref_w - errors.policy_w  # [B]: how much better the policy denoises the winner
        lose_gain = errors.ref_l - errors.policy_l
        h = win_gain - lose_gain
        loss = dpo_link(h, self.beta, self.link, self.epsilon, self.ipo_tau).mean()
        metrics = {
            "implicit_acc": implicit_accuracy(h).item(),
            "margin": h.mean().item(),
            "reward_w": (0.5 * self.beta * win_gain).mean().item(),
            "reward_l": (0.5 * self.beta * lose_gain).mean().item(),
            "err_policy_w": errors.policy_w.mean().item(), "err_policy_l": errors.policy_l.mean().item(),
            "err_ref_w": errors.ref_w.mean().item(), "err_ref_l": errors.ref_l.mean().item(),
        }
        if self.sft_weight:  # the winners' own denoising loss (Iterative RPO's NLL term)
            sft = self.sft_weight * errors.policy_w.mean()
            loss = loss + sft
            metrics["sft_term"] = sft.item()
        return loss, metrics
