"""Loading the frozen and trainable parts of a Stable Diffusion pipeline (hub id or local diffusers folder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer


@dataclass
class SDComponents:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler  # the training-time forward process (betas and prediction_type of the model)


def load_sd_components(pretrained: str, revision: str | None = None, variant: str | None = None) -> SDComponents:
    """Each component from its subfolder, as diffusers' training scripts do. Safetensors weights are preferred."""
    local = Path(pretrained)
    if (local.exists() or pretrained.startswith((".", "/"))) and not (local / "model_index.json").is_file():
        raise FileNotFoundError(f"{pretrained} is not a diffusers pipeline folder (no model_index.json)")
    common = dict(revision=revision)
    return SDComponents(
        tokenizer=CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", **common),
        text_encoder=CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", variant=variant, **common),
        vae=AutoencoderKL.from_pretrained(pretrained, subfolder="vae", variant=variant, **common),
        unet=UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", variant=variant, **common),
        noise_scheduler=DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler", **common),
    )
