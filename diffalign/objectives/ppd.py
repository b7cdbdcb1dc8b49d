"""PPD: personalized preference fine-tuning (Dang et al., CVPR 2025, arXiv 2501.06655).

Diffusion-DPO over many users' pairs where the policy is conditioned on the pair's user:

    h_u = (m_ref(w) - m_θ(w | u)) - (m_ref(l) - m_θ(l | u)),      L = -log σ((β/2) h_u)

u = the user's embedding from k *other* examples of that user (``data/user_pairs.py``), injected as K user tokens
through decoupled cross-attention (``models/user_attention.py``); the reference is the base model (the user
adapter, and any LoRA, disabled). What trains is the user adapter (projector + added key/value projections) and,
with ``lora.enabled``, a LoRA on the UNet as well. Every other DPO option (link, β, ...) works as in ``dpo``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .base import register
from .dpo import DiffusionDPO, DPOOptions


@dataclass
class PPDOptions(DPOOptions):
    user_encoder: str = "clip_difference"  # clip_difference (a CLIP's chosen-minus-rejected embeddings) | vlm
    user_encoder_model: str | None = None  # its weights: hub id or local folder (the toy world's: assets/toy-clip)
    examples_per_user: int = 4  # k: each pair's user is embedded from k other decisive pairs of that user
    num_user_tokens: int = 4  # user tokens appended to the text states in decoupled cross-attention
    user_scale: float = 1.0  # the user term's scale in cross-attention, trained at
    reversed_users: float = 0.0  # share of pairs shown as their user's reversed twin (data/user_pairs.py)
    # the user term's scale when the toy world's end-of-run comparison samples (null: as trained)
    comparison_user_scale: float | None = None

    def check(self) -> None:
        super().check()
        from ..models.user_encoders import ENCODER_KINDS

        if self.user_encoder not in ENCODER_KINDS:
            raise ValueError(f"unknown user_encoder {self.user_encoder!r}; expected one of {ENCODER_KINDS}")
        if not self.user_encoder_model:
            raise ValueError("ppd needs objective.user_encoder_model: a CLIP (clip_difference) or vision-language "
                             "model (vlm), hub id or local folder (the toy world's: assets/toy-clip)")
        if self.examples_per_user < 1 or self.num_user_tokens < 1:
            raise ValueError(f"examples_per_user and num_user_tokens must be >= 1; got {self.examples_per_user}, "
                             f"{self.num_user_tokens}")
        if not 0 <= self.reversed_users <= 1:
            raise ValueError(f"reversed_users is a probability in [0, 1]; got {self.reversed_users}")
        scale = self.comparison_user_scale
        if scale is not None and not 0 <= scale < math.inf:
            raise ValueError(f"comparison_user_scale must be a finite number >= 0 (or null: as trained); got {scale}")


@register
class PPD(DiffusionDPO):
    Options = PPDOptions
    name = "ppd"
    summary = "PPD: per-user DPO through a user adapter (image pairs with a user_id). arXiv 2501.06655"
    trains = "user_adapter"

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        self.encoder_spec = {"kind": o.user_encoder, "model": o.user_encoder_model}
        self.num_user_tokens, self.user_scale = o.num_user_tokens, o.user_scale

    @property
    def examples_per_user(self) -> int:
        return self.options.examples_per_user

    @property
    def reversed_users(self) -> float:
        return self.options.reversed_users  # data/user_pairs.py: pairs shown as the user's reversed twin
