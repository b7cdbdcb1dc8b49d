"""LAION aesthetic predictor v2 (improved-aesthetic-predictor): an MLP on the L2-normalised CLIP ViT-L/14 image
embedding; the prompt is ignored. Score ≈ 1–10.

The head is the published one (``sac+logos+ava1-l14-linearMSE.pth``), a ``LinearMLPHead`` (see heads.py).
Loaded with ``weights_only=True`` or from safetensors.
"""

from __future__ import annotations

import torch
from torch import nn

from ..models.checkpoints import load_state_dict
from .base import batched, register, to_pil
from .clip_scores import CLIPSimilarity
from .heads import LinearMLPHead


@register("aesthetic")
class Aesthetic:
    def __init__(self, head: str, clip: str = "openai/clip-vit-large-patch14", device: str = "cpu",
                 dtype: torch.dtype | str = torch.float32, batch_size: int = 32):
        """``head``: path to the MLP weights (.pth or .safetensors); ``clip``: hub id or local CLIP folder."""
        self.clip = CLIPSimilarity(clip, None, device, dtype, batch_size)
        self.head = LinearMLPHead(self.clip.model.config.projection_dim).eval().to(device)  # float32
        self.head.load_state_dict(load_state_dict(head))

    @torch.no_grad()
    def __call__(self, images: list, prompts: list[str] | None = None) -> torch.Tensor:
        out = []
        for chunk in batched(list(images), self.clip.batch_size):
            feats = self.clip.image_features([to_pil(i) for i in chunk])
            out.append(self.head(nn.functional.normalize(feats.float(), dim=-1)).squeeze(-1).cpu())
        return torch.cat(out)
