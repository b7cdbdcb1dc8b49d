"""One interface for every scorer: ``scorer(images, prompts) -> tensor [B]`` (higher is better).

Scorers are created lazily by name from a registry (``create_scorer("pickscore", model=..., device=...)``), so
importing diffalign loads no weights. ``images`` may be PIL images, uint8 arrays [H, W, 3] or float tensors
[3, H, W] in [0, 1].
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from PIL import Image

from ..data.images import to_rgb

REGISTRY: dict[str, Callable] = {}


def register(name: str):
    def wrap(factory):
        if name in REGISTRY:
            raise ValueError(f"scorer {name!r} registered twice")
        REGISTRY[name] = factory
        return factory

    return wrap


def create_scorer(name: str, **options):
    if name not in REGISTRY:
        raise ValueError(f"unknown scorer {name!r}; expected one of {sorted(REGISTRY)} (a scorer registers when its "
                         "module is imported, the toy judge with `import diffalign.toy.plugin`)")
    return REGISTRY[name](**options)


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """torch.float16 or "float16" (as given on the command line) -> torch.float16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if not isinstance(getattr(torch, str(dtype), None), torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}; expected e.g. float32, float16, bfloat16")
    return getattr(torch, dtype)


def to_pil(image) -> Image.Image:
    if isinstance(image, Image.Image):
        return to_rgb(image)  # any mode: 16-bit scaled, alpha on white (not clipped, not dropped)
    if torch.is_tensor(image):
        image = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    return to_rgb(Image.fromarray(np.asarray(image, dtype=np.uint8)))  # [H, W, 4]: alpha on white


def differentiable_preprocess(pixels: torch.Tensor, size: int | None, crop: tuple[int, int] | None, mean, std,
                              mode: str = "shortest") -> torch.Tensor:
    """A CLIP preprocessing in torch, so a reward's gradient reaches the pixels [B, 3, H, W] (float, [0, 1]).

    ``mode`` "shortest": resize the shortest edge to ``size`` (aspect kept), then centre crop ``crop``;
    "longest" (HPS): resize the longest edge to ``size``, then pad to ``crop`` with black, centred (torchvision's
    centre crop with padding). Bicubic with antialiasing, like PIL's resampling; then ``(x - mean) / std``.
    """
    if mode not in ("shortest", "longest"):
        raise ValueError(f"preprocess mode: expected 'shortest' or 'longest'; got {mode!r}")
    x = pixels.float()
    h, w = x.shape[-2:]
    if size is not None:
        scale = size / (min(h, w) if mode == "shortest" else max(h, w))
        new = (round(h * scale), round(w * scale))
        if mode == "shortest":
            new = (max(size, new[0]), max(size, new[1]))
        if new != (h, w):
            x = torch.nn.functional.interpolate(x, size=new, mode="bicubic", align_corners=False, antialias=True)
    if crop is not None:
        ch, cw = crop
        h, w = x.shape[-2:]
        if ch > h or cw > w:  # pad: left/top get the smaller half, as torchvision
            pad_w, pad_h = max(cw - w, 0), max(ch - h, 0)
            x = torch.nn.functional.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
            h, w = x.shape[-2:]
        top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
        x = x[..., top:top + ch, left:left + cw]
    if mean is not None:
        x = (x - torch.tensor(mean, device=x.device)[:, None, None]) / torch.tensor(std, device=x.device)[:, None, None]
    return x


def batched(items: list, size: int):
    for start in range(0, len(items), size):
        yield items[start:start + size]


@torch.no_grad()
def cosine_in_batches(images: list, prompts: list[str], batch_size: int, embed) -> torch.Tensor:
    """Cosine [B] (float32) of each image with its own prompt.

    ``embed(pil_images, texts) -> (image features [b, D], text features [b, D])``, unnormalised.
    """
    if len(images) != len(prompts):
        raise ValueError(f"got {len(images)} images but {len(prompts)} prompts")
    out = []
    for chunk in batched(list(zip(images, prompts)), batch_size):
        ims, texts = zip(*chunk)
        img, txt = embed([to_pil(i) for i in ims], list(texts))
        img = torch.nn.functional.normalize(img.float(), dim=-1)
        txt = torch.nn.functional.normalize(txt.float(), dim=-1)
        out.append((img * txt).sum(-1).cpu())
    return torch.cat(out)
