"""HPS v2 / v2.1 (Wu et al., 2023): open_clip ViT-H-14 fine-tuned on human preferences.

score = cos(image embedding, prompt embedding) (≈ 0.25–0.33; papers' tables show ×100).
Preprocessing as the HPS code: resize the *longest* side to 224 (bicubic), pad to a square with black, CLIP
mean/std. The checkpoint (``HPS_v2_compressed.pt`` / ``HPS_v2.1_compressed.pt``, its weights under "state_dict")
is a local file or is fetched from the hub repo ``xswu/HPSv2``; legacy files load with ``weights_only=True``.
The ``hpsv2`` wheel is not used: it pins old pytest/protobuf.
"""

from __future__ import annotations


import torch

from ..models.checkpoints import local_or_hub_file
from .base import register
from .open_clip_models import OpenClipSimilarity

HPS_FILES = {"v2": "HPS_v2_compressed.pt", "v2.1": "HPS_v2.1_compressed.pt"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@register("hps")
class HPS(OpenClipSimilarity):
    def __init__(self, version: str = "v2.1", checkpoint: str | None = None, model_name: str = "ViT-H-14",
                 **kwargs):
        """``checkpoint``: local HPS file, or a file name in the hub repo xswu/HPSv2 (default: the version's)."""
        if version not in HPS_FILES:
            raise ValueError(f"unknown HPS version {version!r}; expected one of {sorted(HPS_FILES)}")
        weights = local_or_hub_file(checkpoint, "xswu/HPSv2", HPS_FILES[version])
        super().__init__(model_name, weights, state_key="state_dict", **kwargs)

    def _preprocess_options(self) -> dict:
        return {"mean": CLIP_MEAN, "std": CLIP_STD, "resize_mode": "longest", "interpolation": "bicubic",
                "fill_color": 0}

    def __call__(self, images: list, prompts: list[str]) -> torch.Tensor:
        return self.cosine(images, prompts)
