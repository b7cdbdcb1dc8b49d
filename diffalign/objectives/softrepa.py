"""SoftREPA (Lee et al., 2025): soft text tokens trained with a contrastive denoising loss (``--method softrepa``).

B images and their B captions, every (image i, caption j) combination denoised at one shared t and noise, so
E[i, j] = m_θ(x_i, c_j) (the per-sample denoising error) differs only by the caption:

    logit(i, j) = s · exp(-E[i, j] / τ)                 s = 4, τ = 0.07
    L = mean_i CE(logit(i, ·), target i)  +  λ · mean_i E[i, i]          λ = 10

The first term asks each image to be denoised best under its own caption; the second keeps the matched error low.
"""

from __future__ import annotations

import torch

from .base import Objective, register


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


@register
class SoftREPA(Objective):
    """Rows: every (image i, caption j) of a batch of B captioned images, one shared noise and t (pair_axis
    "batch", B^2 UNet rows). Trains only the soft tokens (models/soft_tokens.py); no reference."""

    name = "softrepa"
    pair_axis = "batch"
    needs_reference = False
    trains = "soft_tokens"

    def __init__(self, num_tokens: int = 4, scale: float = 4.0, temperature: float = 0.07,
                 matched_weight: float = 10.0, timestep_buckets: int = 0, token_init: str = "reference"):
        """``timestep_buckets``: N > 0 adds a per-bucket embedding of the timestep to the tokens (the paper's
        option: 100); 0 = the same tokens at every t. ``token_init``: ``start_token`` (every token starts as the
        empty prompt's start-token state: in distribution, at the text states' scale), ``normal`` (N(0, 0.02²)),
        or ``reference`` (the authors' code: start_token for SD1.x/2.x, normal for SDXL). Tokens that start equal
        get equal gradients (cross-attention treats its keys alike) and stay equal: in effect one token."""
        if int(num_tokens) < 1 or temperature <= 0 or int(timestep_buckets) < 0:
            raise ValueError(f"num_tokens must be >= 1, temperature > 0 and timestep_buckets >= 0; got {num_tokens}, "
                             f"{temperature}, {timestep_buckets}")
        if token_init not in TOKEN_INITS:
            raise ValueError(f"token_init: expected one of {TOKEN_INITS}; got {token_init!r}")
        self.token_init = token_init
        self.num_tokens, self.scale, self.temperature = int(num_tokens), scale, temperature
        self.timestep_buckets = int(timestep_buckets)
        self.matched_weight = matched_weight

    def starts_from_start_token(self, model_kind: str) -> bool:
        """Whether the tokens start as the empty prompt's start-token state for a model of ``model_kind``."""
        return self.token_init == "start_token" or (self.token_init == "reference" and model_kind == "sd")

    def row_loss(self, policy: torch.Tensor, ref: torch.Tensor | None, batch: dict):
        b = int(round(len(policy) ** 0.5))
        return softrepa_loss(policy.view(b, b), self.scale, self.temperature, self.matched_weight)
