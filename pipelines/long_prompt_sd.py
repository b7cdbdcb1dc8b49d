"""A Stable Diffusion pipeline for prompts of any length, through LongAlign's segment encoding.

    from pipelines.long_prompt_sd import LongPromptStableDiffusionPipeline
    pipe = LongPromptStableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    image = pipe("a long prompt. with many sentences. ...", max_text_length=240).images[0]

Also usable as diffusers' ``custom_pipeline`` (point it at this file). Everything but the prompt encoding is
StableDiffusionPipeline's; see diffalign/models/segment_encoding.py for the encoding itself. The SDXL twin is
pipelines/long_prompt_sdxl.py; both share ``SegmentPrompts``. ``as_long_prompt_pipeline(pipe)`` re-wraps any loaded
SD or SDXL pipeline's components (evaluation and training's validation grids use it).
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from diffalign.models.segment_encoding import DEFAULT_MAX_LENGTH, encode_prompts, encoder_pairs


class SegmentPrompts:
    """What both long-prompt pipelines share: ``max_text_length`` for one call, and segment-encoded prompts."""

    max_text_length: int = DEFAULT_MAX_LENGTH

    def __call__(self, *args, max_text_length: int | None = None, **kwargs):
        """The pipeline's call; ``max_text_length``: rows of text states for this call (default: the attribute)."""
        kept = self.max_text_length
        if max_text_length is not None:
            self.max_text_length = max_text_length
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self.max_text_length = kept

    def _segments(self, prompts: list[str], device) -> tuple[torch.Tensor, torch.Tensor | None]:
        """-> states [N, max_text_length, D] (SDXL: both encoders' features) and pooled [N, P] (SDXL) or None."""
        encoders = encoder_pairs(self)
        states, pooled = encode_prompts(prompts, encoders, self.max_text_length)
        dtype = encoders[-1][1].dtype
        return states.to(device, dtype), None if pooled is None else pooled.to(device, dtype)

    def _negatives(self, negative_prompt, n: int) -> list[str]:
        negative = negative_prompt or ""
        negatives = [negative] * n if isinstance(negative, str) else list(negative)
        if len(negatives) != n:
            raise ValueError(f"negative_prompt has {len(negatives)} entries for {n} prompts")
        return negatives

    @staticmethod
    def _refuse_clip_skip(clip_skip) -> None:
        if clip_skip is not None:
            raise ValueError("segment encoding uses the encoders' fixed layers; clip_skip is not supported")


class LongPromptStableDiffusionPipeline(SegmentPrompts, StableDiffusionPipeline):
    def encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None,
                      prompt_embeds=None, negative_prompt_embeds=None, lora_scale=None, clip_skip=None):
        self._refuse_clip_skip(clip_skip)
        if prompt_embeds is None:
            prompt_embeds, _ = self._segments([prompt] if isinstance(prompt, str) else list(prompt), device)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative_prompt_embeds, _ = self._segments(self._negatives(negative_prompt, len(prompt_embeds)), device)
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds


def as_long_prompt_pipeline(pipe, max_text_length: int = DEFAULT_MAX_LENGTH):
    """The same components in the long-prompt pipeline of their kind (SD or SDXL)."""
    if hasattr(pipe, "text_encoder_2"):
        from pipelines.long_prompt_sdxl import LongPromptStableDiffusionXLPipeline

        long = LongPromptStableDiffusionXLPipeline(**pipe.components)
        long.register_to_config(force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt)
    else:
        long = LongPromptStableDiffusionPipeline(**pipe.components)
    long.max_text_length = max_text_length
    return long
