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


def _check_pipeline_path(pretrained: str) -> None:
    local = Path(pretrained)
    if (local.exists() or pretrained.startswith((".", "/"))) and not (local / "model_index.json").is_file():
        raise FileNotFoundError(f"{pretrained} is not a diffusers pipeline folder (no model_index.json)")


def load_tokenizer(pretrained: str, revision: str | None = None) -> CLIPTokenizer:
    """The pipeline's tokenizer alone (small): the data can be checked before the weights load."""
    _check_pipeline_path(pretrained)
    return CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", revision=revision)


def load_sd_components(pretrained: str, revision: str | None = None, variant: str | None = None,
                       tokenizer: CLIPTokenizer | None = None) -> SDComponents:
    """Each component from its subfolder, as diffusers' training scripts do. Safetensors weights are preferred."""
    _check_pipeline_path(pretrained)
    common = dict(revision=revision)
    return SDComponents(
        tokenizer=tokenizer or load_tokenizer(pretrained, revision),
        text_encoder=CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", variant=variant, **common),
        vae=AutoencoderKL.from_pretrained(pretrained, subfolder="vae", variant=variant, **common),
        unet=UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", variant=variant, **common),
        noise_scheduler=DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler", **common),
    )
