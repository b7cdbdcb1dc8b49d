"""SoftREPA's contrastive loss (Lee et al., 2025) — the loss alone; the trainer integration is not built yet.

B images and their B captions, every (image i, caption j) combination denoised at one shared t and noise, so
E[i, j] = m_θ(x_i, c_j) (the per-sample denoising error) differs only by the caption:

    logit(i, j) = s · exp(-E[i, j] / τ)                 s = 4, τ = 0.07
    L = mean_i CE(logit(i, ·), target i)  +  λ · mean_i E[i, i]          λ = 10

The first term asks each image to be denoised best under its own caption; the second keeps the matched error low.
"""

from __future__ import annotations

import torch


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
