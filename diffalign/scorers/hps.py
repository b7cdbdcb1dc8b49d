"""HPS v2 / v2.1 (Wu et al., 2023): open_clip ViT-H-14 fine-tuned on human preferences.

score = cos(image embedding, prompt embedding) (≈ 0.25–0.33; papers' tables show ×100).
Preprocessing as the HPS code: resize the *longest* side to 224 (bicubic), pad to a square with black, CLIP
mean/std. The checkpoint (``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt``, its weights under "state_dict")
is a local file or is fetched from the hub repo ``xswu/HPSv2``; legacy files load with ``weights_only=True``.
The ``hpsv2`` wheel is not used: it pins old pytest/protobuf.
"""

from __future__ import annotations

from pathlib import Path

import open_clip
import torch

from ..models.checkpoints import load_state_dict
from .base import cosine_in_batches, register

HPS_FILES = {"v2": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _resolve(checkpoint: str | None, version: str) -> str:
    if checkpoint and Path(checkpoint).is_file():
        return checkpoint
    if version not in HPS_FILES:
        raise ValueError(f"unknown HPS version {version!r}; expected one of {sorted(HPS_FILES)}")
    from huggingface_hub import hf_hub_download

    return hf_hub_download("xswu/HPSv2", checkpoint or HPS_FILES[version])


@register("hps")
class HPS:
    def __init__(self, version: str = "v2.1", checkpoint: str | None = None, model_name: str = "ViT-H-14",
                 device: str = "cpu", batch_size: int = 32):
        self.model = open_clip.create_model(model_name, pretrained=None, device=device).eval()
        self.model.load_state_dict(load_state_dict(_resolve(checkpoint, version), key="state_dict"))
        size = self.model.visual.image_size
        self.preprocess = open_clip.image_transform(size, is_train=False, mean=CLIP_MEAN, std=CLIP_STD,
                                                    resize_mode="longest", interpolation="bicubic", fill_color=0)
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device, self.batch_size = device, batch_size

    def _embed(self, images: list, texts: list[str]):
        pixels = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        return self.model.encode_image(pixels), self.model.encode_text(self.tokenizer(texts).to(self.device))

    def __call__(self, images: list, prompts: list[str]) -> torch.Tensor:
        return cosine_in_batches(images, prompts, self.batch_size, self._embed)
