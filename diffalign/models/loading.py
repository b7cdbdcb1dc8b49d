"""Loading the frozen and trainable parts of a Stable Diffusion 1.x/2.x or SDXL pipeline (hub id or local diffusers
folder). Which one it is comes from the pipeline's ``model_index.json`` (``_class_name``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

SUPPORTED = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl"}


@dataclass
class SDComponents:
    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    noise_scheduler: DDPMScheduler  # the training-time forward process (betas and prediction_type of the model)
    kind: str = "sd"  # "sd" (1.x/2.x) or "sdxl"
    tokenizer_2: CLIPTokenizer | None = None  # SDXL's second tokenizer and text encoder (OpenCLIP bigG)
    text_encoder_2: CLIPTextModelWithProjection | None = None

    @property
    def tokenizers(self):
        """What the data tokenises with: one tokenizer, or the list of SDXL's two."""
        return [self.tokenizer, self.tokenizer_2] if self.kind == "sdxl" else self.tokenizer


def pipeline_kind(pretrained: str, revision: str | None = None) -> str:
    """"sd" or "sdxl", from the pipeline's model_index.json; a clear error for anything else."""
    local = Path(pretrained)
    if local.is_dir():
        index = local / "model_index.json"
    else:
        from huggingface_hub import hf_hub_download

        index = Path(hf_hub_download(pretrained, "model_index.json", revision=revision))
    name = json.loads(index.read_text()).get("_class_name")
    if name not in SUPPORTED:
        raise ValueError(f"{pretrained}: a {name} pipeline is not supported; diffalign trains "
                         f"{' and '.join(SUPPORTED)} models")
    return SUPPORTED[name]


def pipeline_class(kind: str):
    """The diffusers pipeline class of a kind ("sd" or "sdxl")."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    return StableDiffusionXLPipeline if kind == "sdxl" else StableDiffusionPipeline


def _check_pipeline_path(pretrained: str) -> None:
    local = Path(pretrained)
    if (local.exists() or pretrained.startswith((".", "/"))) and not (local / "model_index.json").is_file():
        raise FileNotFoundError(f"{pretrained} is not a diffusers pipeline folder (no model_index.json)")


def load_tokenizer(pretrained: str, revision: str | None = None):
    """The pipeline's tokenizer(s) alone (small): the data can be checked before the weights load. SDXL: a list
    of its two tokenizers."""
    _check_pipeline_path(pretrained)
    first = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", revision=revision)
    if pipeline_kind(pretrained, revision) == "sdxl":
        return [first, CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer_2", revision=revision)]
    return first


def load_sd_components(pretrained: str, revision: str | None = None, variant: str | None = None,
                       tokenizer=None, vae: str | None = None) -> SDComponents:
    """Each component from its subfolder, as diffusers' training scripts do. Safetensors weights are preferred.

    ``tokenizer``: what load_tokenizer returned, if already loaded. ``vae``: another VAE (hub id or folder) in
    place of the pipeline's, e.g. madebyollin/sdxl-vae-fp16-fix for SDXL in fp16.
    """
    _check_pipeline_path(pretrained)
    common = dict(revision=revision)
    tokenizers = tokenizer or load_tokenizer(pretrained, revision)
    kind = "sdxl" if isinstance(tokenizers, list) else "sd"
    second = {}
    if kind == "sdxl":
        second = dict(tokenizer_2=tokenizers[1], text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
            pretrained, subfolder="text_encoder_2", variant=variant, **common))
    return SDComponents(
        kind=kind, **second,
        tokenizer=tokenizers[0] if kind == "sdxl" else tokenizers,
        text_encoder=CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", variant=variant, **common),
        vae=AutoencoderKL.from_pretrained(vae) if vae else AutoencoderKL.from_pretrained(
            pretrained, subfolder="vae", variant=variant, **common),
        unet=UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", variant=variant, **common),
        noise_scheduler=DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler", **common),
    )
