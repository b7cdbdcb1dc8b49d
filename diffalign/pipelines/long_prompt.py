"""Any loaded SD or SDXL pipeline's components in the long-prompt pipeline of their kind.

    from diffalign.pipelines.long_prompt import as_long_prompt_pipeline
    pipe = as_long_prompt_pipeline(StableDiffusionPipeline.from_pretrained(...), max_text_length=240)

Evaluation (``text_encoding: segments``) and training's validation grids use it. It lives apart from the two
pipeline files because diffusers' ``custom_pipeline`` wants exactly one pipeline class in each.
"""

from __future__ import annotations

from diffalign.models.segment_encoding import DEFAULT_MAX_LENGTH
from diffalign.pipelines.long_prompt_sd import LongPromptStableDiffusionPipeline
from diffalign.pipelines.long_prompt_sdxl import LongPromptStableDiffusionXLPipeline


def as_long_prompt_pipeline(pipe, max_text_length: int = DEFAULT_MAX_LENGTH, segmenter: str = "diffalign"):
    """The same components in the long-prompt pipeline of their kind (SD or SDXL); ``segmenter``: "diffalign" or
    "authors" (models/segment_encoding.py)."""
    if hasattr(pipe, "text_encoder_2"):
        long = LongPromptStableDiffusionXLPipeline(**pipe.components)
        long.register_to_config(force_zeros_for_empty_prompt=pipe.config.force_zeros_for_empty_prompt)
    else:
        long = LongPromptStableDiffusionPipeline(**pipe.components)
    long.max_text_length, long.segmenter = max_text_length, segmenter
    return long
