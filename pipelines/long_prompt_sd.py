"""A Stable Diffusion pipeline for prompts of any length, through LongAlign's segment encoding.

    from pipelines.long_prompt_sd import LongPromptStableDiffusionPipeline
    pipe = LongPromptStableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    image = pipe("a long prompt. with many sentences. ...", max_text_length=240).images[0]

Also usable as diffusers' ``custom_pipeline`` (point it at this file). Everything but the prompt encoding is
StableDiffusionPipeline's; see diffalign/models/segment_encoding.py for the encoding itself.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionPipeline

from diffalign.models.segment_encoding import DEFAULT_MAX_LENGTH, encode_prompts


class LongPromptStableDiffusionPipeline(StableDiffusionPipeline):
    max_text_length: int = DEFAULT_MAX_LENGTH

    def __call__(self, *args, max_text_length: int | None = None, **kwargs):
        """StableDiffusionPipeline's call; ``max_text_length``: rows of text states (default 240)."""
        if max_text_length is not None:
            self.max_text_length = max_text_length
        return super().__call__(*args, **kwargs)

    def _segments(self, prompts: list[str], device) -> torch.Tensor:
        states, _ = encode_prompts(prompts, [(self.tokenizer, self.text_encoder)], self.max_text_length)
        return states.to(device, self.text_encoder.dtype)  # [N, max_text_length, D]

    def encode_prompt(self, prompt, device, num_images_per_prompt, do_classifier_free_guidance, negative_prompt=None,
                      prompt_embeds=None, negative_prompt_embeds=None, lora_scale=None, clip_skip=None):
        if prompt_embeds is None:
            prompt_embeds = self._segments([prompt] if isinstance(prompt, str) else list(prompt), device)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            negative = negative_prompt or ""
            negatives = [negative] * len(prompt_embeds) if isinstance(negative, str) else list(negative)
            negative_prompt_embeds = self._segments(negatives, device)
        prompt_embeds = prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        if negative_prompt_embeds is not None:
            negative_prompt_embeds = negative_prompt_embeds.repeat_interleave(num_images_per_prompt, dim=0)
        return prompt_embeds, negative_prompt_embeds
