"""What every objective is: a small class with a name, its needs, and a loss on per-sample errors.

``pair_axis`` says what the rows of a batch pair up over: ``"images"`` (two images, one caption: DPO, MaPO,
InPO), ``"captions"`` (one image, two captions: TPO), ``"single"`` (labelled single images: KTO), ``"batch"``
(all images against all captions: SoftREPA). The trainer reads these fields instead of branching on names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PairErrors:
    """Per-pair denoising errors [B] (float32) of the policy and, when the objective needs one, the reference."""

    policy_w: torch.Tensor
    policy_l: torch.Tensor
    ref_w: torch.Tensor | None = None
    ref_l: torch.Tensor | None = None

    @classmethod
    def from_stacked(cls, policy: torch.Tensor, ref: torch.Tensor | None = None) -> "PairErrors":
        """Split errors [2B] of a (winners, losers) batch."""
        pw, pl = policy.chunk(2)
        rw, rl = ref.chunk(2) if ref is not None else (None, None)
        return cls(pw, pl, rw, rl)


class Objective:
    name: str = ""
    needs_reference: bool = True
    pair_axis: str = "images"
    noising: str = "forward"  # "forward": x_t = add_noise(x0, eps, t); "ddim_inversion": InPO's inverted x_t
    inversion_options: dict = {}
    inversion_model: str = "policy"  # which UNet inverts (InPO): "policy" or "reference"

    def loss(self, errors: PairErrors, batch: dict | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    def prepare_batch(self, batch: dict) -> dict:
        """Add rows the objective needs beyond the data's (e.g. KTO's mismatched reference point); default none."""
        return batch

    def empty_batch_collectives(self, device) -> None:
        """Join, with no data, any cross-process reduction ``loss`` makes (a rank whose micro-batch was all
        skipped bad samples must not leave the others waiting). Default: the loss makes none."""

    def row_loss(self, policy: torch.Tensor, ref: torch.Tensor | None, batch: dict):
        """Loss from per-row errors [R]. Pair objectives see them split into (w, l) halves; others override."""
        return self.loss(PairErrors.from_stacked(policy, ref), batch)


REGISTRY: dict[str, type[Objective]] = {}


def register(cls: type[Objective]) -> type[Objective]:
    if cls.name in REGISTRY:
        raise ValueError(f"objective {cls.name!r} registered twice")
    REGISTRY[cls.name] = cls
    return cls


def get_objective(name: str, **options) -> Objective:
    """Build the objective registered as ``name`` with its options (unknown options raise TypeError)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; expected one of {sorted(REGISTRY)}")
    return REGISTRY[name](**options)


def implicit_accuracy(margin: torch.Tensor) -> torch.Tensor:
    """Fraction of pairs with a positive margin; ties count one half."""
    return (margin > 0).float().mean() + 0.5 * (margin == 0).float().mean()
