"""PPD: personalized preference fine-tuning (Dang et al., CVPR 2025, arXiv 2501.06655).

Diffusion-DPO over many users' pairs where the policy is conditioned on the pair's user:

    h_u = (m_ref(w) - m_θ(w | u)) - (m_ref(l) - m_θ(l | u)),      L = -log σ((β/2) h_u)

u = the user's embedding from k *other* examples of that user (``data/user_pairs.py``), injected as K user tokens
through decoupled cross-attention (``models/user_attention.py``); the reference is the base model (the user
adapter, and any LoRA, disabled). What trains is the user adapter (projector + added key/value projections) and,
with ``lora.enabled``, a LoRA on the UNet as well. Every other DPO option (link, β, ...) works as in ``dpo``.
"""

from __future__ import annotations

from .base import register
from .dpo import DiffusionDPO


@register
class PPD(DiffusionDPO):
    name = "ppd"
    trains = "user_adapter"

    def __init__(self, user_encoder: str = "clip_difference", user_encoder_model: str | None = None,
                 examples_per_user: int = 4, num_user_tokens: int = 4, user_scale: float = 1.0,
                 reversed_users: float = 0.0, **dpo_options):
        super().__init__(**dpo_options)
        from ..models.user_encoders import ENCODER_KINDS

        if user_encoder not in ENCODER_KINDS:
            raise ValueError(f"unknown user_encoder {user_encoder!r}; expected one of {ENCODER_KINDS}")
        if not user_encoder_model:
            raise ValueError("ppd needs objective.user_encoder_model: a CLIP (clip_difference) or vision-language "
                             "model (vlm), hub id or local folder (the toy world's: assets/toy-clip)")
        if examples_per_user < 1 or num_user_tokens < 1:
            raise ValueError(f"examples_per_user and num_user_tokens must be >= 1; got {examples_per_user}, "
                             f"{num_user_tokens}")
        self.encoder_spec = {"kind": user_encoder, "model": user_encoder_model}
        if not 0 <= reversed_users <= 1:
            raise ValueError(f"reversed_users is a probability in [0, 1]; got {reversed_users}")
        self.examples_per_user, self.num_user_tokens, self.user_scale = examples_per_user, num_user_tokens, user_scale
        self.reversed_users = reversed_users  # data/user_pairs.py: pairs shown as the user's reversed twin
