"""Sampling a diffusers pipeline on many (prompt, seed) cases, batched, reproducibly.

Each case has its own ``torch.Generator`` seeded with its seed, so an image depends only on (model, prompt, seed,
settings) — not on batch size or on which other cases share its batch. That is what makes "same seeds for every
model compared" meaningful.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from ..models.loading import default_t5_length

DEFAULT_STEPS = 25
DEFAULT_GUIDANCE = 5.0


def generate(
    pipe,
    prompts: list[str],
    seeds: list[int],
    num_inference_steps: int = DEFAULT_STEPS,
    guidance_scale: float = DEFAULT_GUIDANCE,
    batch_size: int = 64,
    progress: bool = True,
    guidance_rescale: float = 0.0,
    **pipe_kwargs,
) -> np.ndarray:
    """uint8 images [N, H, W, 3] for the N cases (prompts[i], seeds[i]). ``guidance_rescale``: diffusers' option
    (0 = plain CFG; only then left out of the call, so pipelines without the option still work). SD3/Flux prompts
    get ``max_sequence_length`` = the T5 length they train with here (models/loading.T5_LENGTH) unless given."""
    if len(prompts) != len(seeds):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds; pass one seed per prompt")
    if guidance_rescale:
        pipe_kwargs["guidance_rescale"] = guidance_rescale
    t5_length = default_t5_length(pipe)
    if t5_length is not None:  # SD3/Flux: the T5 length they train with here, not the pipeline's own default
        pipe_kwargs.setdefault("max_sequence_length", t5_length)
    pipe.set_progress_bar_config(disable=True)
    out = []
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc="sampling", disable=not progress):
        chunk = slice(start, start + batch_size)
        generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[chunk]]
        result = pipe(
            prompts[chunk], generator=generators, num_inference_steps=num_inference_steps,
            guidance_scale=guidance_scale, output_type="np", **pipe_kwargs,
        )
        out.append((result.images * 255).round().clip(0, 255).astype(np.uint8))
    return np.concatenate(out)


def cases(prompts: list[str], seeds_per_prompt: int, first_seed: int = 0) -> tuple[list[str], list[int]]:
    """Every prompt repeated with seeds first_seed .. first_seed + seeds_per_prompt - 1."""
    ps = [p for p in prompts for _ in range(seeds_per_prompt)]
    ss = [first_seed + k for _ in prompts for k in range(seeds_per_prompt)]
    return ps, ss
