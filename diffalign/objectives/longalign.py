"""LongAlign reward fine-tuning (Liu et al., ICLR 2025): ``--method longalign``.

The policy samples an image for each training prompt (DDIM with classifier-free guidance, core/reward_sampling.py:
the graph is kept at every ``grad_every``-th step from a random start), the VAE decodes it, and Denscore
(scorers/denscore.py) scores it against the prompt; the loss pushes the score up:

    S_b = ⟨t̄_b − η_b v, f_b⟩ + ω · η_b ⟨v, f_b⟩                (Denscore of image b; v, η over the batch)
    L   = 0.5 · (1 − mean_b S_b)

With ω < 1 (0.3 in the paper) the reward's text-independent part counts less, so the LoRA learns to follow the
prompt more than to please the scorer in general. No reference model; the LoRA is the only thing that trains.
``text_encoding``: "segments" (the paper: long prompts sentence by sentence, models/segment_encoding.py) or
"truncate" (CLIP's 77-token window, as plain Stable Diffusion).
"""

from __future__ import annotations

import torch

from ..models.segment_encoding import DEFAULT_MAX_LENGTH, check_text_encoding
from .base import Objective, register


def segment_length_for_sampling(method: str, objective_options: dict) -> int | None:
    """Rows of segment-encoded text a run's images should be sampled with (its ``max_text_length``) when it trained
    on segment encoding (``text_encoding: segments``, given or the method's default, as LongAlign's); None: the
    pipeline's own 77-token encoding."""
    from .base import get_objective

    objective = get_objective(method, **objective_options)  # cheap: config validation builds it too
    return objective.max_text_length if getattr(objective, "text_encoding", None) == "segments" else None


@register
class LongAlign(Objective):
    name = "longalign"
    pair_axis = "prompts"  # the data is prompts alone; the images are the policy's own samples
    needs_reference = False
    step_kind = "reward"  # trained through sampling and a reward (core/reward_step.py), not denoising errors

    def __init__(self, reward_backbone: str = "pickscore", reward_model: str | None = None, omega: float = 0.3,
                 num_inference_steps: int = 50, guidance_scale: float = 7.5, grad_every: int = 10,
                 text_encoding: str = "segments", max_text_length: int = DEFAULT_MAX_LENGTH):
        """``reward_backbone``: Denscore's CLIP-style scorer (pickscore, clipscore, hps); ``reward_model``: its
        weights (hub id or folder; None = the backbone's default). ``grad_every``: the sampling steps that keep
        their graph are every grad_every-th from a random start (50 / 10 = 5 steps, as the paper)."""
        from ..scorers.denscore import BACKBONES

        if reward_backbone not in BACKBONES:  # checked here, before any diffusion weights load
            raise ValueError(f"reward_backbone: expected one of {BACKBONES}; got {reward_backbone!r}")
        check_text_encoding(text_encoding, max_text_length)
        if int(num_inference_steps) < 1 or int(grad_every) < 1:
            raise ValueError(f"num_inference_steps and grad_every must be >= 1; got {num_inference_steps}, "
                             f"{grad_every}")
        self.reward_backbone, self.reward_model, self.omega = reward_backbone, reward_model, float(omega)
        self.num_inference_steps, self.guidance_scale = int(num_inference_steps), float(guidance_scale)
        self.grad_every, self.text_encoding, self.max_text_length = int(grad_every), text_encoding, int(max_text_length)

    def reward_options(self) -> dict:
        options = {"backbone": self.reward_backbone, "omega": self.omega}
        if self.reward_model:  # HPS names its weight file "checkpoint"; the CLIP scorers "model"
            options["checkpoint" if self.reward_backbone == "hps" else "model"] = self.reward_model
        return options

    def reward_loss(self, scores: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """scores [B] (Denscore, with gradient) -> (0.5 (1 - mean S), metrics)."""
        loss = 0.5 * (1.0 - scores.float().mean())
        return loss, {"reward": scores.detach().float().mean().item(),
                      "reward_min": scores.detach().float().min().item()}
