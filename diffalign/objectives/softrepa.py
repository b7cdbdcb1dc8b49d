"""SoftREPA (Lee et al., 2025): soft text tokens trained with a contrastive denoising loss (``--method softrepa``).

B images and their B captions, every (image i, caption j) combination denoised at one shared t and noise, so
E[i, j] = m_θ(x_i, c_j) (the per-sample denoising error) differs only by the caption:

    logit(i, j) = s · exp(-E[i, j] / τ)                 s = 4, τ = 0.07
    L = mean_i CE(logit(i, ·), target i)  +  λ · mean_i E[i, i]          λ = 10

The first term asks each image to be denoised best under its own caption; the second keeps the matched error low.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .base import Objective, Options, register


def softrepa_loss(errors: torch.Tensor, scale: float = 4.0, temperature: float = 0.07,
                  matched_weight: float = 10.0) -> tuple[torch.Tensor, dict]:
    """errors [B, B] (row i: image i under captions 0..B-1) -> (loss, metrics)."""
    if errors.ndim != 2 or errors.shape[0] != errors.shape[1]:
        raise ValueError(f"softrepa needs a square [B, B] error matrix; got {tuple(errors.shape)}")
    logits = scale * torch.exp(-errors / temperature)  # [B, B]
    target = torch.arange(len(errors), device=errors.device)
    contrastive = torch.nn.functional.cross_entropy(logits, target)
    matched = errors.diagonal().mean()
    accuracy = (logits.argmax(dim=1) == target).float().mean().item()
    return contrastive + matched_weight * matched, {"contrastive": contrastive.item(), "matched_error": matched.item(),
                                                    "caption_accuracy": accuracy}


TOKEN_INITS = ("reference", "start_token", "normal")


@dataclass
class SoftREPAOptions(Options):
    num_tokens: int = 4  # soft tokens appended to the text states in the chosen blocks' cross-attention
    scale: float = 4.0  # the logits' scale: logits = scale · exp(-errors / temperature)
    temperature: float = 0.07  # the errors' temperature in the logits
    matched_weight: float = 10.0  # weight of the matched pairs' denoising error beside the contrastive term
    # N > 0 adds a per-bucket embedding of the timestep to the tokens (the paper's option: 100); 0 = the same
    # tokens at every t
    timestep_buckets: int = 0
    # start_token (every token starts as the empty prompt's start-token state: in distribution, at the text states'
    # scale), normal (N(0, 0.02²)), or reference (the authors' code: start_token for SD1.x/2.x, normal for SDXL).
    # Tokens that start equal get equal gradients and stay equal: in effect one token.
    token_init: str = "reference"
    # SD3 only: the first K joint blocks get their own tokens (models/soft_tokens_joint.py); the authors' SD3 run
    # uses 5 of SD3-Medium's 24
    transformer_blocks: int = 5

    def check(self) -> None:
        super().check()
        if int(self.num_tokens) < 1 or not 0 < self.temperature < math.inf or int(self.timestep_buckets) < 0 \
                or int(self.transformer_blocks) < 1:
            raise ValueError(f"num_tokens and transformer_blocks must be >= 1, temperature > 0 and timestep_buckets "
                             f">= 0; got {self.num_tokens}, {self.transformer_blocks}, {self.temperature}, "
                             f"{self.timestep_buckets}")
        if self.token_init not in TOKEN_INITS:
            raise ValueError(f"token_init: expected one of {TOKEN_INITS}; got {self.token_init!r}")


@register
class SoftREPA(Objective):
    Options = SoftREPAOptions
    name = "softrepa"
    summary = "SoftREPA: soft text tokens trained contrastively on captioned images. arXiv 2503.08250"
    pair_axis = "batch"
    needs_reference = False
    trains = "soft_tokens"

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options  # what the trainer's components read
        self.num_tokens, self.timestep_buckets = int(o.num_tokens), int(o.timestep_buckets)
        self.transformer_blocks = int(o.transformer_blocks)

    def starts_from_start_token(self, model_kind: str) -> bool:
        """Whether the tokens start as the empty prompt's start-token state for a model of ``model_kind``."""
        init = self.options.token_init
        return init == "start_token" or (init == "reference" and model_kind == "sd")

    def row_loss(self, policy: torch.Tensor, ref: torch.Tensor | None, batch: dict):
        b = int(round(len(policy) ** 0.5))
        o = self.options
        return softrepa_loss(policy.view(b, b), o.scale, o.temperature, o.matched_weight)
