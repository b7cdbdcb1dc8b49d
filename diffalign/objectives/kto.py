"""Diffusion-KTO (Li et al., NeurIPS 2024, arXiv 2404.04465): unpaired thumbs up / down; and TKTO (TPO's KTO on
(image, true caption) desirable vs (image, perturbed caption) undesirable).

Per row (image x, caption c, label y = +1 desirable / -1 undesirable), with its own noise and t:

    g = m_ref(x, c) - m_θ(x, c)                    (implicit reward, per-sample errors in float32)
    z0 = reference point (detached)
    L = λ_y · (1 - U(β · y · (g - z0)))   for the sigmoid utility U = σ (paper default; no ½ on β)

Utilities (h = U(u), loss λ_y · (1 - h), as the authors' code reports it): ``sigmoid`` h = σ(u) (loss
λ(1 - σ(u))); ``loss_averse`` h = log σ(u) (loss λ(1 - log σ(u))); ``risk_seeking`` h = -log σ(-u) (loss
λ(1 + log σ(-u)); their ``risk_seeking_3``). Reference points: ``batch_mean`` z0 = max(0, mean(g)) (default);
``class_means`` z0 = ½ (mean g | desirable + mean g | undesirable); ``mismatched`` z0 = mean g over (x_i, c_{i-1})
— captions rolled by one in the batch, errors under no_grad. z0 is estimated per micro-batch (not over
accumulation) and averaged across processes. ``reference_point_rule`` says how (see KTOLossOptions):
``diffalign`` clamps every z0 at 0, uses the one class present when a micro-batch has only one, and weighs each
process by its rows; ``authors`` (train_kto_sd_v1.5.py's ``bce_offset``) clamps the batch mean only, counts an
absent class as 0 (its sum over count + 1e-6) and weighs every process alike. λ_D = λ_U = 1; β 1000 (code) / 5000
(paper).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .base import Objective, Options, register
from .caption_pairs import CaptionPairs, CaptionPerturbOptions

UTILITIES = ("sigmoid", "loss_averse", "risk_seeking")
REFERENCE_POINTS = ("batch_mean", "class_means", "mismatched")
REFERENCE_POINT_RULES = ("diffalign", "authors")


def kto_utility_loss(u: torch.Tensor, utility: str) -> torch.Tensor:
    """Per-row loss 1 - h(u) before the λ weights, for u = β y (g - z0) [R] (the authors' form: their reported
    loss values; a constant offset changes no gradient)."""
    if utility == "sigmoid":
        return 1 - torch.sigmoid(u)
    if utility == "loss_averse":
        return 1 - F.logsigmoid(u)
    if utility == "risk_seeking":
        return 1 + F.logsigmoid(-u)
    raise ValueError(f"unknown KTO utility {utility!r}; expected one of {UTILITIES}")


@dataclass
class KTOLossOptions(Options):
    beta: float = 1000.0  # β (no ½): u = β · label · (g - z0)
    utility: str = "sigmoid"  # sigmoid | loss_averse | risk_seeking
    reference_point: str = "batch_mean"  # z0: batch_mean (clamped at 0) | class_means | mismatched (captions rolled)
    # How z0 is formed: "diffalign" (every z0 clamped at 0; class_means over the classes present; processes
    # weighted by their rows, so one left with few rows by skipped bad samples weighs little) or "authors" (their
    # bce_offset: only the batch mean clamped; an absent class counts as 0; every process weighs the same). Both
    # agree for batch_mean whenever every process has the same number of rows.
    reference_point_rule: str = "diffalign"
    lambda_desirable: float = 1.0  # λ_D: weight of the desirable rows' loss
    lambda_undesirable: float = 1.0  # λ_U: weight of the undesirable rows' loss

    def check(self) -> None:
        super().check()
        if self.utility not in UTILITIES:
            raise ValueError(f"unknown KTO utility {self.utility!r}; expected one of {UTILITIES}")
        if self.reference_point_rule not in REFERENCE_POINT_RULES:
            raise ValueError(f"unknown KTO reference_point_rule {self.reference_point_rule!r}; expected one of "
                             f"{REFERENCE_POINT_RULES}")
        if self.reference_point not in REFERENCE_POINTS:
            raise ValueError(f"unknown KTO reference_point {self.reference_point!r}; expected one of "
                             f"{REFERENCE_POINTS}")
        if not (0 <= self.lambda_desirable < math.inf and 0 <= self.lambda_undesirable < math.inf):  # NaN too
            raise ValueError(f"lambda_desirable and lambda_undesirable must be finite numbers >= 0; got "
                             f"{self.lambda_desirable}, {self.lambda_undesirable}")
        if not 0 < self.beta < math.inf:  # a negative beta rewards the undesirable images
            raise ValueError(f"beta must be a finite number > 0; got {self.beta}")


@dataclass
class KTOOptions(KTOLossOptions):
    # the sampler's share of desirable draws, as the paper's (data/sampler.py); null = a plain shuffle of the data
    desirable_ratio: float | None = 0.8

    def check(self) -> None:
        super().check()
        if self.desirable_ratio is not None and not 0 < self.desirable_ratio < 1:
            raise ValueError(f"desirable_ratio must be in (0, 1) or null; got {self.desirable_ratio}")


@register
class DiffusionKTO(Objective):
    Options = KTOOptions
    name = "kto"
    summary = "Diffusion-KTO on thumbs up/down (caption, image, label). arXiv 2404.04465"
    pair_axis = "single"
    needs_reference = True

    @property
    def desirable_ratio(self) -> float | None:
        return self.options.desirable_ratio

    def empty_batch_collectives(self, device) -> None:
        """A micro-batch with no rows on this rank still takes part in the z0 reduction, with weight 0."""
        self.weighted_mean_over_processes(torch.zeros((), device=device), torch.zeros((), device=device))

    def prepare_batch(self, batch: dict) -> dict:
        """``mismatched``: append detached rows (x_i, c_{i-1}) whose rewards set the reference point (as the authors'
        ``torch.roll(·, 1, 0)``: row i takes the previous row's caption)."""
        if self.options.reference_point != "mismatched":
            return batch
        rows = len(batch["row_image"])
        out = dict(batch)
        out["row_image"] = batch["row_image"].repeat(2)
        out["row_text"] = torch.cat([batch["row_text"], batch["row_text"].roll(1)])
        out["row_group"] = batch["row_group"].repeat(2)
        out["row_detached"] = torch.cat([torch.zeros(rows, dtype=torch.bool), torch.ones(rows, dtype=torch.bool)])
        return out

    def reference_point_value(self, g: torch.Tensor, labels: torch.Tensor, g_mismatched: torch.Tensor | None):
        """z0 over every process (one collective, also on a process whose rows were all skipped: weight 0)."""
        point = self.options.reference_point
        if self.options.reference_point_rule == "authors":
            return self._authors_reference_point(g, labels, g_mismatched)
        if point == "batch_mean":
            z = g.mean()
        elif point == "class_means":
            means = [g[labels == y].mean() for y in (1, -1) if (labels == y).any()]
            z = torch.stack(means).mean()
        else:
            z = g_mismatched.mean()
        weight = torch.tensor(float(len(g)), device=g.device)
        # Weighted by each rank's rows, so a rank whose micro-batch was all skipped bad samples (weight 0) does not
        # pull z0 to 0, and still joins the collective (an absent rank would hang the others).
        return self.weighted_mean_over_processes(z.detach(), weight).clamp(min=0)

    def _authors_reference_point(self, g, labels, g_mismatched) -> torch.Tensor:
        """train_kto_sd_v1.5.py's ``bce_offset`` none / sigmoid / original: a mean over processes with equal weights
        (accelerate's reduce "mean"); class means as sum / (count + 1e-6), so an absent class is 0; clamped at 0 for
        the batch mean only. Their two class reductions are one here: ½ (mean_r a_r + mean_r b_r) = mean_r ½(a_r + b_r).
        A process with no rows (never the case in their code) has weight 0."""
        point = self.options.reference_point
        if point == "batch_mean":
            z = g.mean()
        elif point == "class_means":
            desirable = labels > 0
            z = 0.5 * (g[desirable].sum() / (desirable.sum() + 1e-6) + g[~desirable].sum() / ((~desirable).sum() + 1e-6))
        else:
            z = g_mismatched.mean()
        weight = torch.tensor(1.0 if len(g) else 0.0, device=g.device)
        z0 = self.weighted_mean_over_processes(z.detach(), weight)
        return z0.clamp(min=0) if point == "batch_mean" else z0

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
        u = self.options.beta * labels * (g - z0)
        weights = torch.where(labels > 0, self.options.lambda_desirable, self.options.lambda_undesirable)
        loss = (weights * kto_utility_loss(u, self.options.utility)).mean()
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


@dataclass
class TKTOOptions(KTOLossOptions, CaptionPerturbOptions):
    pass


@register
class TKTO(CaptionPairs, DiffusionKTO):
    """TPO's KTO: rows (x, c_w) labelled desirable and (x, c_l) undesirable, sharing eps and t (pair_axis captions)."""

    Options = TKTOOptions
    desirable_ratio = None  # caption pairs are drawn by a plain shuffle
    name = "tkto"
    summary = "TKTO: KTO over true/perturbed captions of captioned images (caption, image). arXiv 2509.25771"
    pair_axis = "captions"
