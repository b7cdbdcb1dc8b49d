"""Random captioned renders of the toy world: the ground-truth data the base model is pretrained on."""

from __future__ import annotations

import numpy as np
import torch

from .captions import write
from .render import render
from .world import realise, sample_spec


def captioned_renders(
    rng: np.random.Generator, n: int, multi_fraction: float = 0.15, long_fraction: float = 0.3
) -> tuple[list[str], np.ndarray]:
    """n (caption, image) pairs: images uint8 [n, CANVAS, CANVAS, 3].

    Single-object captions state size/position/background half the time each; ``multi_fraction`` of the scenes
    hold 2-4 objects on the 3x3 grid; ``long_fraction`` of the captions use the verbose style.
    """
    captions, images = [], []
    for _ in range(n):
        n_objects = int(rng.integers(2, 5)) if rng.random() < multi_fraction else 1
        spec = sample_spec(rng, n_objects=n_objects)
        captions.append(write(spec, "long" if rng.random() < long_fraction else "short", rng))
        images.append(render(realise(spec, rng)))
    return captions, np.stack(images)


def to_model_range(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> float32 [N, 3, H, W] in [-1, 1], the range the VAE expects."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def caption_corpus(n: int = 20000, seed: int = 0) -> list[str]:
    """Captions in every phrasing the world writes (short and long styles, one to four objects) plus every prompt
    set's captions: what the toy models' small tokenizers are built from (models/small_tokenizers.py)."""
    from .prompts import prompt_set

    rng = np.random.default_rng(seed)
    captions = [write(sample_spec(rng, n_objects=int(rng.integers(1, 5))), "long" if rng.random() < 0.5 else "short",
                      rng) for _ in range(n)]
    return captions + [p for name in ("persona", "attributes", "long") for split in ("train", "heldout")
                       for p in prompt_set(name, split)]
