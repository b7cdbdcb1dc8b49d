"""What every objective is: a small class with a name, its needs, and a loss on per-sample errors.

``pair_axis`` says what the rows of a batch pair up over: ``"images"`` (two images, one caption: DPO, MaPO,
InPO), ``"captions"`` (one image, two captions: TPO), ``"single"`` (labelled single images: KTO), ``"batch"``
(all images against all captions: SoftREPA). The trainer reads these fields instead of branching on names.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

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


def _local_mean(value: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """One process: the weighted mean of a single value is that value."""
    return value


@dataclass
class Options:
    """An objective's options, the config's ``objective:`` section: each field typed, with its default and a comment
    that documents it (``--print-config`` shows them). config.validate checks the types; ``check`` the ranges."""

    def check(self) -> None:
        """Raise ValueError naming an option whose value is out of its range."""


class Objective:
    """The contract the trainer reads: every capability is declared here with its default (no probing).

    One loss entry point per ``step_kind``: ``row_loss`` (denoising: per-row errors of the policy and reference)
    or ``reward_loss`` (reward fine-tuning: scores of the policy's own samples).
    """

    Options: type[Options] = Options  # this objective's options dataclass
    name: str = ""
    summary: str = ""  # one line for --help: what it trains on, its paper
    needs_reference: bool = True  # denoising errors of a reference model (the adapter-free or frozen start) too
    pair_axis: str = "images"  # what a batch's rows pair up over: images, captions, single, batch, captioned, prompts
    trains: str = "unet"  # what trains: "unet" (a LoRA or all weights), "user_adapter" (PPD), "soft_tokens" (SoftREPA)
    step_kind: str = "denoising"  # "denoising": row_loss on per-sample errors; "reward": sample, score, reward_loss
    text_encoding: str = "truncate"  # "truncate": CLIP's 77 tokens; "segments": sentence by sentence (LongAlign)
    max_text_length: int = 77  # rows of text states under segment encoding
    segmenter: str = "diffalign"  # how segment encoding cuts and pads captions (objectives/segments.py)
    examples_per_user: int | None = None  # PPD: a pair's user is embedded from this many of the user's other pairs
    reversed_users: float = 0.0  # PPD: share of pairs shown as their user's reversed twin (data/user_pairs.py)
    noising: str = "forward"  # "forward": x_t = add_noise(x0, eps, t); "ddim_inversion": InPO's inverted x_t
    inversion_options: dict = {}
    inversion_model: str = "policy"  # which UNet inverts (InPO): "policy" or "reference"
    # (value, weight) -> the weight-averaged value over processes (scalars); the trainer hands the real one in with
    # bind_processes. An objective whose loss needs a statistic of the whole global batch (KTO's reference point)
    # calls it; with one process it is the value itself.
    weighted_mean_over_processes = staticmethod(_local_mean)
    # What the data factory reads (data/factory.py), declared for every objective; the ones that own such an option
    # read it from their Options.
    desirable_ratio: float | None = None  # single images: share of desirable draws (None: a plain shuffle)
    perturb_axes: tuple[str, ...] = ()  # caption pairs: which attribute kinds the rule perturber changes
    perturber_model: str | None = None  # caption pairs: a local text-generation model instead of the rules

    def __init__(self, **options):
        """``options``: the fields of ``Options`` (an unknown one is a TypeError); their ranges are checked."""
        self.options = self.Options(**options)
        self.options.check()

    @classmethod
    def option_names(cls) -> list[str]:
        return [f.name for f in fields(cls.Options)]

    def bind_processes(self, weighted_mean) -> None:
        """Receive the trainer's cross-process weighted mean (see ``weighted_mean_over_processes``)."""
        self.weighted_mean_over_processes = weighted_mean

    def loss(self, errors: PairErrors, batch: dict | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """A pair objective's loss on split errors; ``row_loss`` calls it."""
        raise NotImplementedError

    def prepare_batch(self, batch: dict) -> dict:
        """Add rows the objective needs beyond the data's (e.g. KTO's mismatched reference point); default none."""
        return batch

    def empty_batch_collectives(self, device) -> None:
        """Join, with no data, any cross-process reduction ``row_loss`` makes (a rank whose micro-batch was all
        skipped bad samples must not leave the others waiting). Default: the loss makes none."""

    def row_loss(self, policy: torch.Tensor, ref: torch.Tensor | None, batch: dict):
        """Denoising step's loss from per-row errors [R]. Pair objectives see them split into (w, l) halves
        (``loss``); others override."""
        return self.loss(PairErrors.from_stacked(policy, ref), batch)

    def reward_loss(self, scores: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Reward step's loss from the reward of each sampled image [B] (step_kind "reward")."""
        raise NotImplementedError


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
