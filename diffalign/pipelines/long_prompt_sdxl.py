"""An SDXL pipeline for prompts of any length, through LongAlign's segment encoding.

    from diffalign.pipelines.long_prompt_sdxl import LongPromptStableDiffusionXLPipeline
    pipe = LongPromptStableDiffusionXLPipeline.from_pretrained("stabilityai/stable-diffusion-xl-base-1.0")
    image = pipe("a long prompt. with many sentences. ...", max_text_length=240).images[0]

Also usable as diffusers' ``custom_pipeline``. Both text encoders encode each sentence (penultimate states,
concatenated, as SDXL conditions); the pooled embedding is the mean of the second encoder's pooled embeddings over
the sentences (diffalign/models/segment_encoding.py). With no negative prompt and ``force_zeros_for_empty_prompt``
(SDXL base's setting) the unconditional embeddings are zeros, as in StableDiffusionXLPipeline. ``prompt_2`` is not
supported: both encoders read the same sentences.
"""

from __future__ import annotations

import torch
from diffusers import StableDiffusionXLPipeline

from diffalign.pipelines.segment_prompts import SegmentPrompts


class LongPromptStableDiffusionXLPipeline(SegmentPrompts, StableDiffusionXLPipeline):
    def encode_prompt(self, prompt, prompt_2=None, device=None, num_images_per_prompt=1,
                      do_classifier_free_guidance=True, negative_prompt=None, negative_prompt_2=None,
                      prompt_embeds=None, negative_prompt_embeds=None, pooled_prompt_embeds=None,
                      negative_pooled_prompt_embeds=None, lora_scale=None, clip_skip=None):
        if prompt_2 is not None or negative_prompt_2 is not None:
            raise ValueError("LongPromptStableDiffusionXLPipeline encodes one prompt with both encoders; "
                             "prompt_2 / negative_prompt_2 are not supported")
        self._refuse_clip_skip(clip_skip)
        device = device or self._execution_device
        if prompt_embeds is None:
            prompt_embeds, pooled_prompt_embeds = self._segments([prompt] if isinstance(prompt, str) else list(prompt),
                                                                 device)
        if do_classifier_free_guidance and negative_prompt_embeds is None:
            if negative_prompt is None and self.config.force_zeros_for_empty_prompt:
                negative_prompt_embeds = torch.zeros_like(prompt_embeds)
                negative_pooled_prompt_embeds = torch.zeros_like(pooled_prompt_embeds)
            else:
                negative_prompt_embeds, negative_pooled_prompt_embeds = self._segments(
                    self._negatives(negative_prompt, len(prompt_embeds)), device)
        repeat = lambda x: None if x is None else x.repeat_interleave(num_images_per_prompt, dim=0)  # noqa: E731
        return (repeat(prompt_embeds), repeat(negative_prompt_embeds), repeat(pooled_prompt_embeds),
                repeat(negative_pooled_prompt_embeds))
