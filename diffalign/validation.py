"""Validation grids during training: the current policy samples fixed prompts with fixed seeds."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler, StableDiffusionPipeline

from .evaluation.grid import save_grid
from .evaluation.sampling import generate


def sampling_pipeline(parts, unet, scheduler):
    """A diffusers pipeline (SD, SDXL, SD3 or Flux, as ``parts.kind``) around the in-training denoiser and the
    frozen parts (a flow model's T5 loaded now if the encoding cache kept it unloaded)."""
    from .families.flow import LazyEncoder
    from .models.loading import FLOW_KINDS, pipeline_class

    if parts.kind in FLOW_KINDS:
        def loaded(encoder):
            return encoder.load() if isinstance(encoder, LazyEncoder) else encoder

        flow = dict(transformer=unet, scheduler=scheduler, vae=parts.vae, text_encoder=parts.text_encoder,
                    tokenizer=parts.tokenizer, text_encoder_2=loaded(parts.text_encoder_2),
                    tokenizer_2=parts.tokenizer_2)
        if parts.kind == "sd3":
            flow.update(text_encoder_3=loaded(parts.text_encoder_3), tokenizer_3=parts.tokenizer_3)
        return pipeline_class(parts.kind)(**flow)
    common = dict(vae=parts.vae, text_encoder=parts.text_encoder, tokenizer=parts.tokenizer, unet=unet,
                  scheduler=scheduler)
    if getattr(parts, "kind", "sd") == "sdxl":
        return pipeline_class("sdxl")(text_encoder_2=parts.text_encoder_2, tokenizer_2=parts.tokenizer_2,
                                      add_watermarker=False, force_zeros_for_empty_prompt=getattr(
                                          parts, "force_zeros_for_empty_prompt", True), **common)
    return StableDiffusionPipeline(safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                                   **common)


@torch.no_grad()
def validation_grid(parts, unet, prompts: list[str], out_path: Path, pretrained: str, resolution: int,
                    seeds=(0, 1, 2, 3), num_inference_steps: int = 25, guidance_scale: float = 5.0,
                    max_text_length: int | None = None, guidance_rescale: float = 0.0,
                    segmenter: str = "diffalign") -> Path:
    """One row per prompt, one column per seed of ``resolution`` x ``resolution`` px images, from the in-training
    UNet (adapters on). ``max_text_length``: encode the prompts by segments (LongAlign trained with
    ``text_encoding: segments``), else the 77-token window."""
    from .models.loading import FLOW_KINDS

    flow = getattr(parts, "kind", "sd") in FLOW_KINDS
    # UNets sample with DDIM, flow models with their own (flow-matching Euler) scheduler, each a fresh copy
    scheduler = (FlowMatchEulerDiscreteScheduler if flow else DDIMScheduler).from_pretrained(pretrained,
                                                                                            subfolder="scheduler")
    pipe = sampling_pipeline(parts, unet, scheduler)
    extra = {"height": resolution, "width": resolution}  # not the pipeline's default: the base's full size
    if flow:
        extra["max_sequence_length"] = parts.max_sequence_length  # the T5 length it trained with
    if max_text_length is not None:
        from .pipelines.long_prompt import as_long_prompt_pipeline

        pipe = as_long_prompt_pipeline(pipe, max_text_length, segmenter)
    was_training = unet.training
    unet.eval()
    device_type = next(unet.parameters()).device.type
    cases_prompts = [p for p in prompts for _ in seeds]
    cases_seeds = [s for _ in prompts for s in seeds]
    # Autocast keeps a float32 UNet output from meeting an fp16 VAE (as diffusers' scripts do).
    with torch.autocast(device_type, enabled=parts.vae.dtype != torch.float32, dtype=parts.vae.dtype):
        images = generate(pipe, cases_prompts, cases_seeds, num_inference_steps, guidance_scale, progress=False,
                          guidance_rescale=guidance_rescale, **extra)
    rows = [images[i * len(seeds):(i + 1) * len(seeds)] for i in range(len(prompts))]
    unet.train(was_training)
    return save_grid(rows, prompts, out_path)
