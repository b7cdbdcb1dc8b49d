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

from dataclasses import dataclass

import torch

from .base import Objective, register
from .segments import EncodesText, TextEncodingOptions


def segment_length_for_sampling(method: str, objective_options: dict) -> int | None:
    """Rows of segment-encoded text a run's images should be sampled with (its ``max_text_length``) when it trained
    on segment encoding (``text_encoding: segments``, given or the method's default, as LongAlign's); None: the
    pipeline's own 77-token encoding."""
    from .base import get_objective

    objective = get_objective(method, **objective_options)  # cheap: config validation builds it too
    return objective.max_text_length if objective.text_encoding == "segments" else None


def segmenter_for_sampling(method: str, objective_options: dict) -> str:
    """The segmenter a run trained with (objectives/segments.py), for sampling its images the same way."""
    from .base import get_objective

    return get_objective(method, **objective_options).segmenter


@dataclass
class LongAlignOptions(TextEncodingOptions):
    reward_backbone: str = "pickscore"  # Denscore's CLIP-style scorer: pickscore | clipscore | hps
    reward_model: str | None = None  # its weights: hub id or folder (null: the backbone's default)
    # its image/text processor: hub id or folder (null: the backbone's default: pickscore's is
    # laion/CLIP-ViT-H-14-laion2B-s32B-b79K, clipscore's is reward_model's own); pickscore and clipscore only
    reward_processor: str | None = None
    omega: float = 0.3  # ω: how much of the caption's shared direction Denscore removes
    num_inference_steps: int = 50  # sampling steps of each training image
    guidance_scale: float = 7.5  # classifier-free guidance while sampling
    grad_every: int = 10  # the steps that keep their graph: every grad_every-th from a random start (50/10 = 5)
    text_encoding: str = "segments"  # the paper: long prompts sentence by sentence

    def check(self) -> None:
        super().check()
        from ..scorers.denscore import BACKBONES

        if self.reward_backbone not in BACKBONES:  # checked here, before any diffusion weights load
            raise ValueError(f"reward_backbone: expected one of {BACKBONES}; got {self.reward_backbone!r}")
        if self.reward_processor and self.reward_backbone == "hps":  # HPS preprocesses as its code, no processor
            raise ValueError(f"reward_processor applies to the pickscore and clipscore backbones, not hps; got "
                             f"{self.reward_processor!r}")
        if int(self.num_inference_steps) < 1 or int(self.grad_every) < 1:
            raise ValueError(f"num_inference_steps and grad_every must be >= 1; got {self.num_inference_steps}, "
                             f"{self.grad_every}")


@register
class LongAlign(EncodesText, Objective):
    Options = LongAlignOptions
    name = "longalign"
    summary = "LongAlign: reward fine-tuning with Denscore on (long) prompts, segment encoding. arXiv 2410.11817"
    pair_axis = "prompts"  # the data is prompts alone; the images are the policy's own samples
    needs_reference = False
    step_kind = "reward"  # trained through sampling and a reward (core/reward_step.py), not denoising errors

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options  # what core/reward_step.py reads
        self.num_inference_steps, self.guidance_scale, self.grad_every = (int(o.num_inference_steps),
                                                                          float(o.guidance_scale), int(o.grad_every))

    def reward_options(self) -> dict:
        o = self.options
        options = {"backbone": o.reward_backbone, "omega": float(o.omega), "segmenter": o.segmenter}
        if o.reward_model:  # HPS names its weight file "checkpoint"; the CLIP scorers "model"
            options["checkpoint" if o.reward_backbone == "hps" else "model"] = o.reward_model
        if o.reward_processor:
            options["processor"] = o.reward_processor
        return options

    def reward_loss(self, scores: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """scores [B] (Denscore, with gradient) -> (0.5 (1 - mean S), metrics)."""
        loss = 0.5 * (1.0 - scores.float().mean())
        return loss, {"reward": scores.detach().float().mean().item(),
                      "reward_min": scores.detach().float().min().item()}
