"""LAION aesthetic predictor v2 (improved-aesthetic-predictor): an MLP on the L2-normalised CLIP ViT-L/14 image
embedding; the prompt is ignored. Score ≈ 1–10.

The head is the published one (``sac+logos+ava1-l14-linearMSE.pth``), a ``LinearMLPHead`` (see heads.py).
Loaded with ``weights_only=True`` or from safetensors.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPModel, CLIPProcessor

from ..models.checkpoints import load_state_dict
from .base import batched, register, to_pil
from .heads import LinearMLPHead


@register("aesthetic")
class Aesthetic:
    def __init__(self, head: str, clip: str = "openai/clip-vit-large-patch14", device: str = "cpu",
                 batch_size: int = 32):
        """``head``: path to the MLP weights (.pth or .safetensors); ``clip``: hub id or local CLIP folder."""
        self.clip = CLIPModel.from_pretrained(clip).eval().to(device)
        self.processor = CLIPProcessor.from_pretrained(clip)
        self.head = LinearMLPHead(self.clip.config.projection_dim).eval().to(device)
        self.head.load_state_dict(load_state_dict(head))
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def __call__(self, images: list, prompts: list[str] | None = None) -> torch.Tensor:
        out = []
        for chunk in batched(list(images), self.batch_size):
            pixels = self.processor(images=[to_pil(i) for i in chunk], return_tensors="pt")["pixel_values"]
            feats = self.clip.get_image_features(pixel_values=pixels.to(self.device))
            feats = feats if torch.is_tensor(feats) else feats.pooler_output
            out.append(self.head(nn.functional.normalize(feats.float(), dim=-1)).squeeze(-1).cpu())
        return torch.cat(out)
