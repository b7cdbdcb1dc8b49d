"""CLIP-similarity scorers on transformers' CLIPModel: PickScore and CLIPScore.

Both embed the image and the prompt, L2-normalise, and take the cosine c; they differ only in the last step:
- PickScore (Kirstain et al., 2023): ``logit_scale.exp() · c`` (≈ 21–23 for SD images); model
  ``yuvalkirstain/PickScore_v1`` with the processor of ``laion/CLIP-ViT-H-14-laion2B-s32B-b79K``
  (short side resized to 224 bicubic, centre crop, CLIP mean/std — the processor's own settings).
- CLIPScore (torchmetrics convention): ``max(100 · c, 0)``; any CLIP checkpoint, default ViT-L/14.
Weights load from a hub id or a local folder, safetensors preferred; no remote code.

``pixel_features`` is the differentiable twin of ``embed_images`` for reward fine-tuning (LongAlign): float
pixels [B, 3, H, W] in [0, 1] go through the processor's own resize / centre crop / normalisation written in torch
(bicubic with antialiasing, as PIL's resampling), so the reward's gradient reaches the generator.
"""

from __future__ import annotations

import torch
from transformers import CLIPModel, CLIPProcessor

from .base import as_dtype, cosine_in_batches, differentiable_preprocess, register
from .open_clip_models import OpenClipSimilarity


def clip_pixel_values(pixels: torch.Tensor, image_processor) -> torch.Tensor:
    """[B, 3, H, W] in [0, 1] -> a CLIPImageProcessor's pixel values (shortest edge, centre crop, mean/std),
    differentiably. Equal to the processor on uint8 images up to resampling."""
    ip = image_processor
    size = ip.size.get("shortest_edge") or min(ip.size["height"], ip.size["width"])
    return differentiable_preprocess(pixels, size if ip.do_resize else None,
                                     (ip.crop_size["height"], ip.crop_size["width"]) if ip.do_center_crop else None,
                                     ip.image_mean if ip.do_normalize else None, ip.image_std, mode="shortest")


def _check_source(name: str, what: str) -> None:
    """FileNotFoundError naming ``name`` unless it is an existing path or could be a hub id: a mistyped local folder
    would otherwise end in huggingface_hub's repo-id validation error (absolute paths) or a hub lookup."""
    from pathlib import Path

    from ..models.loading import is_hub_id

    if not Path(name).exists() and not is_hub_id(name):
        raise FileNotFoundError(f"CLIP {what} {name}: no such folder, and not a hub id of the form owner/name")


def _embedding(output) -> torch.Tensor:
    """transformers < 5 returns the projected embedding; >= 5 an output object holding it as pooler_output."""
    return output if torch.is_tensor(output) else output.pooler_output


class CLIPSimilarity:
    def __init__(self, model: str, processor: str | None = None, device: str = "cpu",
                 dtype: torch.dtype | str = torch.float32, batch_size: int = 32):
        _check_source(model, "model")
        _check_source(processor or model, "processor")
        self.dtype = as_dtype(dtype)
        self.model = CLIPModel.from_pretrained(model, dtype=self.dtype, use_safetensors=None).eval().to(device)
        self.processor = CLIPProcessor.from_pretrained(processor or model)
        self.device, self.batch_size = device, batch_size

    def image_features(self, images: list) -> torch.Tensor:
        """Projected, unnormalised image embeddings [b, D] of PIL images."""
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return _embedding(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))

    @torch.no_grad()
    def embed_images(self, images: list) -> torch.Tensor:
        """[b, D] unnormalised image embeddings of PIL images."""
        return self.image_features(images)

    def pixel_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] float in [0, 1] -> [B, D] unnormalised image embeddings, with gradient to the pixels."""
        values = clip_pixel_values(pixels.to(self.device), self.processor.image_processor)
        return _embedding(self.model.get_image_features(pixel_values=values.to(self.dtype)))

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """[b, D] unnormalised text embeddings (77 tokens, the rest cut)."""
        inputs = self.processor(text=texts, padding=True, truncation=True, max_length=77, return_tensors="pt")
        return _embedding(self.model.get_text_features(input_ids=inputs["input_ids"].to(self.device),
                                                       attention_mask=inputs["attention_mask"].to(self.device)))

    def _embed(self, images: list, texts: list[str]):
        inputs = self.processor(images=images, text=texts, padding=True, truncation=True, max_length=77,
                                return_tensors="pt")
        img = self.model.get_image_features(pixel_values=inputs["pixel_values"].to(self.device, self.dtype))
        txt = self.model.get_text_features(input_ids=inputs["input_ids"].to(self.device),
                                           attention_mask=inputs["attention_mask"].to(self.device))
        return _embedding(img), _embedding(txt)

    def cosine(self, images: list, prompts: list[str]) -> torch.Tensor:
        """Cosine similarity [B] of each image with its own prompt, in float32."""
        return cosine_in_batches(images, prompts, self.batch_size, self._embed)


@register("pickscore")
class PickScore(CLIPSimilarity):
    def __init__(self, model: str = "yuvalkirstain/PickScore_v1",
                 processor: str = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", **kwargs):
        super().__init__(model, processor, **kwargs)

    def __call__(self, images: list, prompts: list[str]) -> torch.Tensor:
        return self.model.logit_scale.detach().exp().float().cpu() * self.cosine(images, prompts)


@register("clipscore")
class CLIPScore:
    """``model``: a transformers CLIP (hub id or folder), or ``open_clip:<model name>`` with ``pretrained`` an
    open_clip tag or weight file (e.g. model="open_clip:ViT-H-14", pretrained="laion2b_s32b_b79k")."""

    def __init__(self, model: str = "openai/clip-vit-large-patch14", processor: str | None = None,
                 pretrained: str | None = None, **kwargs):
        if model.startswith("open_clip:"):
            if processor:  # open_clip models bring their own preprocessing: a processor would go unused
                raise ValueError(f"clipscore processor {processor!r}: open_clip models ({model}) take none")
            self.clip = OpenClipSimilarity(model[len("open_clip:"):], pretrained, **kwargs)
        else:
            self.clip = CLIPSimilarity(model, processor, **kwargs)

    def __call__(self, images: list, prompts: list[str]) -> torch.Tensor:
        return torch.clamp(100 * self.clip.cosine(images, prompts), min=0)
