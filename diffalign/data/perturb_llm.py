"""An optional LLM caption perturber for TPO: any local transformers text-generation model edits the caption along
one axis, as the paper does with an LLM. Outputs are validated (non-empty, different from the input, not runaway
long); after ``retries`` failed tries the rule-based perturber answers instead, and ``fallbacks`` counts how often.
"""

from __future__ import annotations

import numpy as np

from .perturb import AXES, RulePerturber

AXIS_INSTRUCTIONS = {
    "content": "change which objects are shown or how many of them (keep everything else)",
    "attribute": "change one object's colour, material, size or style (keep everything else)",
    "spatial": "change where an object is or how objects are placed relative to each other (keep everything else)",
    "context": "change the background, weather, lighting or place (keep the objects as they are)",
}


def _first_line(text: str) -> str:
    line = text.strip().split("\n")[0].strip()
    return line.strip('"').strip("'").strip()


class LLMPerturber:
    def __init__(self, model: str, device: str | int | None = None, max_new_tokens: int = 60, retries: int = 3,
                 axes: tuple[str, ...] = AXES, trust_remote_code: bool = False):
        """``model``: a local folder (or hub id) of a causal LM; remote code runs only if asked."""
        from transformers import pipeline

        self.generate = pipeline("text-generation", model=model, device=device, trust_remote_code=trust_remote_code)
        self.max_new_tokens, self.retries = max_new_tokens, retries
        self.fallback = RulePerturber(axes)
        self.fallbacks = 0

    @staticmethod
    def prompt(caption: str, axis: str) -> str:
        return (f"Rewrite the image caption so that it no longer matches the image: {AXIS_INSTRUCTIONS[axis]}. "
                f"Answer with the new caption only.\nCaption: {caption}\nNew caption:")

    @staticmethod
    def valid(caption: str, candidate: str) -> bool:
        norm = lambda s: " ".join(s.lower().split()).strip(" .")  # noqa: E731
        return bool(norm(candidate)) and norm(candidate) != norm(caption) and len(candidate) <= 3 * len(caption) + 40

    def perturb(self, caption: str, rng: np.random.Generator, axis: str | None = None) -> tuple[str, str]:
        axis = axis or self.fallback.axes[int(rng.integers(len(self.fallback.axes)))]
        prompt = self.prompt(caption, axis)
        for attempt in range(self.retries):
            out = self.generate(prompt, max_new_tokens=self.max_new_tokens, do_sample=attempt > 0,
                                return_full_text=False, pad_token_id=self.generate.tokenizer.eos_token_id)
            candidate = _first_line(out[0]["generated_text"])
            if self.valid(caption, candidate):
                return candidate, axis
        self.fallbacks += 1
        from .perturb import applicable_axes

        return self.fallback.perturb(caption, rng, axis if axis in applicable_axes(caption) else None)
