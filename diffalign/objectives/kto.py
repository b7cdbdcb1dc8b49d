"""Diffusion-KTO (Li et al., NeurIPS 2024, arXiv 2404.04465): unpaired thumbs up / down; and TKTO (TPO's KTO on
(image, true caption) desirable vs (image, perturbed caption) undesirable).

Per row (image x, caption c, label y = +1 desirable / -1 undesirable), with its own noise and t:

    g = m_ref(x, c) - m_θ(x, c)                    (implicit reward, per-sample errors in float32)
    z0 = reference point (detached)
    L = λ_y · (1 - U(β · y · (g - z0)))   for the sigmoid utility U = σ (paper default; no ½ on β)

Utilities: ``sigmoid`` U = σ (loss λ(1 - σ(u))); ``loss_averse`` U = log σ (loss -λ log σ(u)); ``risk_seeking``
U = -log σ(-u) (loss λ log σ(-u)). Reference points: ``batch_mean`` z0 = max(0, mean(g)) (default);
``class_means`` z0 = max(0, ½ (mean g | desirable + mean g | undesirable)) (the one class present if only one is);
``mismatched`` z0 = max(0, mean g over (x_i, c_{i+1}) — captions rolled by one in the batch, errors under no_grad).
z0 is estimated per micro-batch (not over accumulation) and averaged across processes. λ_D = λ_U = 1; β 1000
(code) / 5000 (paper).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .base import Objective, register

UTILITIES = ("sigmoid", "loss_averse", "risk_seeking")
REFERENCE_POINTS = ("batch_mean", "class_means", "mismatched")


def kto_utility_loss(u: torch.Tensor, utility: str) -> torch.Tensor:
    """Per-row loss before the λ weights, for u = β y (g - z0) [R]."""
    if utility == "sigmoid":
        return 1 - torch.sigmoid(u)
    if utility == "loss_averse":
        return -F.logsigmoid(u)
    if utility == "risk_seeking":
        return F.logsigmoid(-u)
    raise ValueError(f"unknown KTO utility {utility!r}; expected one of {UTILITIES}")


@register
class DiffusionKTO(Objective):
    name = "kto"
    pair_axis = "single"
    needs_reference = True

    def __init__(self, beta: float = 1000.0, utility: str = "sigmoid", reference_point: str = "batch_mean",
                 lambda_desirable: float = 1.0, lambda_undesirable: float = 1.0):
        if utility not in UTILITIES:
            raise ValueError(f"unknown KTO utility {utility!r}; expected one of {UTILITIES}")
        if reference_point not in REFERENCE_POINTS:
            raise ValueError(f"unknown KTO reference_point {reference_point!r}; expected one of {REFERENCE_POINTS}")
        if not (0 <= lambda_desirable < math.inf and 0 <= lambda_undesirable < math.inf):  # NaN fails too
            raise ValueError(f"lambda_desirable and lambda_undesirable must be finite numbers >= 0; got "
                             f"{lambda_desirable}, {lambda_undesirable}")
        if not 0 < beta < math.inf:  # a negative beta rewards the undesirable images
            raise ValueError(f"beta must be a finite number > 0; got {beta}")
        self.beta, self.utility, self.reference_point = beta, utility, reference_point
        self.lambda_desirable, self.lambda_undesirable = lambda_desirable, lambda_undesirable
        # (value, weight) -> the weighted mean of value over processes; the trainer sets accelerate's. Weighted by
        # each rank's rows so a rank whose micro-batch was all skipped bad samples (weight 0) does not pull z0
        # to 0, and still joins the collective (an absent rank would hang the others).
        self.cross_process_mean = lambda value, weight: value

    def empty_batch_collectives(self, device) -> None:
        """A micro-batch with no rows on this rank still takes part in the z0 reduction, with weight 0."""
        self.cross_process_mean(torch.zeros((), device=device), torch.zeros((), device=device))

    def prepare_batch(self, batch: dict) -> dict:
        """``mismatched``: append detached rows (x_i, c_{i+1}) whose rewards set the reference point."""
        if self.reference_point != "mismatched":
            return batch
        rows = len(batch["row_image"])
        out = dict(batch)
        out["row_image"] = batch["row_image"].repeat(2)
        out["row_text"] = torch.cat([batch["row_text"], batch["row_text"].roll(1)])
        out["row_group"] = batch["row_group"].repeat(2)
        out["row_detached"] = torch.cat([torch.zeros(rows, dtype=torch.bool), torch.ones(rows, dtype=torch.bool)])
        return out

    def reference_point_value(self, g: torch.Tensor, labels: torch.Tensor, g_mismatched: torch.Tensor | None):
        if self.reference_point == "batch_mean":
            z = g.mean()
        elif self.reference_point == "class_means":
            means = [g[labels == y].mean() for y in (1, -1) if (labels == y).any()]
            z = torch.stack(means).mean()
        else:
            z = g_mismatched.mean()
        weight = torch.tensor(float(len(g)), device=g.device)
        return self.cross_process_mean(z.detach(), weight).clamp(min=0)

    def row_loss(self, policy: torch.Tensor, ref: torch.Tensor | None, batch: dict):
        if ref is None:
            raise ValueError(f"{self.name} needs reference errors")
        labels = batch["labels"].to(policy.device)  # [R] in {+1, -1}
        g_all = ref - policy
        detached = batch.get("row_detached")
        if detached is not None:
            detached = detached.to(policy.device)
            g, g_mismatched = g_all[~detached], g_all[detached].detach()
        else:
            g, g_mismatched = g_all, None
        z0 = self.reference_point_value(g, labels, g_mismatched)
        u = self.beta * labels * (g - z0)
        weights = torch.where(labels > 0, self.lambda_desirable, self.lambda_undesirable)
        loss = (weights * kto_utility_loss(u, self.utility)).mean()
        desirable = labels > 0
        metrics = {"z0": float(z0), "implicit_acc": (u > 0).float().mean().item(),
                   "err_policy": policy.mean().item(), "err_ref": ref.mean().item()}
        # A class absent from this micro-batch has no reward (left out, not NaN: the update's mean is over the
        # micro-batches that have it).
        if desirable.any():
            metrics["reward_desirable"] = g[desirable].mean().item()
        if (~desirable).any():
            metrics["reward_undesirable"] = g[~desirable].mean().item()
        return loss, metrics


@register
class TKTO(DiffusionKTO):
    """TPO's KTO: rows (x, c_w) labelled desirable and (x, c_l) undesirable, sharing eps and t (pair_axis captions)."""

    name = "tkto"
    pair_axis = "captions"
