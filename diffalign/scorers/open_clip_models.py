"""CLIP models from open_clip as cosine scorers (HPS is one; ``clipscore`` can use any).

``OpenClipSimilarity(model_name, pretrained)``: ``pretrained`` is an open_clip tag (e.g. "laion2b_s34b_b79k"),
a local weight file (loaded safely: safetensors or ``weights_only=True``), or None (random weights, for tests).
The preprocessing is the model's own unless a subclass sets another.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from ..models.checkpoints import load_state_dict
from .base import as_dtype, cosine_in_batches, differentiable_preprocess


class OpenClipSimilarity:
    def __init__(self, model_name: str, pretrained: str | None = None, device: str = "cpu",
                 dtype: torch.dtype | str = torch.float32, batch_size: int = 32, state_key: str | None = None):
        """``state_key``: the entry of a legacy checkpoint dict that holds the weights (HPS: "state_dict")."""
        tag = pretrained if pretrained and not Path(pretrained).is_file() else None
        self.model = open_clip.create_model(model_name, pretrained=tag, device=device).eval()
        if pretrained and tag is None:
            self.model.load_state_dict(load_state_dict(pretrained, key=state_key))
        self.dtype = as_dtype(dtype)
        self.model.to(dtype=self.dtype)
        self.preprocess = open_clip.image_transform(self.model.visual.image_size, is_train=False,
                                                    **self._preprocess_options())
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device, self.batch_size = device, batch_size

    def _preprocess_options(self) -> dict:
        cfg = self.model.visual.preprocess_cfg
        return {"mean": cfg.get("mean"), "std": cfg.get("std"), "resize_mode": cfg.get("resize_mode"),
                "interpolation": cfg.get("interpolation")}

    @torch.no_grad()
    def embed_images(self, images: list) -> torch.Tensor:
        """[b, D] unnormalised image embeddings of PIL images."""
        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device, self.dtype)
        return self.model.encode_image(pixels)

    def pixel_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] float in [0, 1] -> [B, D] unnormalised image embeddings, with gradient to the pixels
        (the same resize mode, crop/pad and mean/std as ``self.preprocess``, in torch)."""
        options = self._preprocess_options()
        size = self.model.visual.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        mode = options.get("resize_mode") or "shortest"
        if mode not in ("shortest", "longest"):
            raise ValueError(f"reward gradients support open_clip resize modes 'shortest' and 'longest'; this model "
                             f"uses {mode!r}")
        values = differentiable_preprocess(pixels.to(self.device), min(size) if mode == "shortest" else max(size),
                                           size, options.get("mean") or open_clip.OPENAI_DATASET_MEAN,
                                           options.get("std") or open_clip.OPENAI_DATASET_STD, mode)
        return self.model.encode_image(values.to(self.dtype))

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """[b, D] unnormalised text embeddings."""
        return self.model.encode_text(self.tokenizer(texts).to(self.device))

    def _embed(self, images: list, texts: list[str]):
        return self.embed_images(images), self.embed_texts(texts)

    def cosine(self, images: list, prompts: list[str]) -> torch.Tensor:
        """Cosine similarity [B] of each image with its own prompt, in float32."""
        return cosine_in_batches(images, prompts, self.batch_size, self._embed)
