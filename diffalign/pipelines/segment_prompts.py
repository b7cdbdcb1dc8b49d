"""The mixin both long-prompt pipelines (long_prompt_sd.py, long_prompt_sdxl.py) inherit, in its own file so that
neither pipeline file imports the other."""

from __future__ import annotations

import torch

from diffalign.models.segment_encoding import DEFAULT_MAX_LENGTH, encode_prompts, encoder_pairs


class SegmentPrompts:
    """What both long-prompt pipelines share: ``max_text_length`` for one call, and segment-encoded prompts."""

    max_text_length: int = DEFAULT_MAX_LENGTH
    segmenter: str = "diffalign"  # how prompts are cut and padded (models/segment_encoding.py)

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
        states, pooled = encode_prompts(prompts, encoders, self.max_text_length, segmenter=self.segmenter)
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
