"""A Stable Diffusion pipeline for prompts of any length, through LongAlign's segment encoding.

    from diffalign.pipelines.long_prompt_sd import LongPromptStableDiffusionPipeline
    pipe = LongPromptStableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    image = pipe("a long prompt. with many sentences. ...", max_text_length=240).images[0]

Also usable as diffusers' ``custom_pipeline`` (point it at this file). Everything but the prompt encoding is
StableDiffusionPipeline's; see diffalign/models/segment_encoding.py for the encoding itself. The SDXL twin is
long_prompt_sdxl.py; both share ``SegmentPrompts`` (segment_prompts.py). ``long_prompt.as_long_prompt_pipeline(pipe)``
re-wraps any loaded SD or SDXL pipeline's components (evaluation and training's validation grids use it).
"""

from __future__ import annotations

from diffusers import StableDiffusionPipeline

from diffalign.pipelines.segment_prompts import SegmentPrompts


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
