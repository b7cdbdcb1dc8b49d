"""Validation grids during training: the current policy samples fixed prompts with fixed seeds."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDIMScheduler, StableDiffusionPipeline

from .toy.grid import save_grid


@torch.no_grad()
def validation_grid(parts, unet, prompts: list[str], out_path: Path, pretrained: str, seeds=(0, 1, 2, 3),
                    num_inference_steps: int = 25, guidance_scale: float = 5.0) -> Path:
    """One row per prompt, one column per seed, from the in-training UNet (adapters on)."""
    pipe = StableDiffusionPipeline(
        vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=unet,
        scheduler=DDIMScheduler.from_pretrained(pretrained, subfolder="scheduler"), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    was_training = unet.training
    unet.eval()
    rows = []
    device_type = next(unet.parameters()).device.type
    for prompt in prompts:
        generators = [torch.Generator().manual_seed(s) for s in seeds]
        # Autocast keeps a float32 UNet output from meeting an fp16 VAE (as diffusers' scripts do).
        with torch.autocast(device_type, enabled=parts.vae.dtype != torch.float32, dtype=parts.vae.dtype):
            images = pipe([prompt] * len(seeds), generator=generators, num_inference_steps=num_inference_steps,
                          guidance_scale=guidance_scale, output_type="np").images
        rows.append((images * 255).round().clip(0, 255).astype("uint8"))
    unet.train(was_training)
    return save_grid(rows, prompts, out_path)
