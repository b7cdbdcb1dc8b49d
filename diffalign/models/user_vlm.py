"""PPD's paper encoder: a vision-language model reads a user's examples; the embedding is its last hidden state.

Dang et al. feed each example's caption, preferred and dispreferred image to LLaVA-OneVision after a prompt asking
about the user's taste, and take the final layer's hidden state at the last position. Here: any transformers
image-text-to-text model (``AutoModelForImageTextToText`` + ``AutoProcessor``; hub id or local folder; remote code
only with ``trust_remote_code``). The prompt goes through the processor's chat template when it has one, else as
plain text with the processor's image token. Embeddings are cached per profile (the keys of its examples).
"""

from __future__ import annotations

import torch

from .user_examples import UserExample
from .vlm_prompt import interleaved_text

DEFAULT_PROMPT = ("Here are examples of one user's choices between two images made from the same caption. "
                  "Describe what this user prefers.")


class VLMUserEncoder:
    def __init__(self, model: str, device: str = "cpu", dtype: torch.dtype = torch.float32,
                 trust_remote_code: bool = False, prompt: str | None = None):
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(model, trust_remote_code=trust_remote_code)
        self.model = AutoModelForImageTextToText.from_pretrained(model, dtype=dtype,
                                                                 trust_remote_code=trust_remote_code)
        self.model.eval().to(device)
        self.device, self.prompt = device, prompt or DEFAULT_PROMPT
        config = self.model.config
        self.dim = getattr(config, "text_config", config).hidden_size
        self.spec = {"kind": "vlm", "model": str(model), "prompt": self.prompt}
        self._cache: dict[tuple, torch.Tensor] = {}

    def _text(self, examples: list[UserExample]) -> str:
        parts: list[dict] = [{"type": "text", "text": self.prompt}]
        for i, e in enumerate(examples, 1):
            parts += [{"type": "text", "text": f"\nExample {i}. Caption: {e.caption}\nPreferred: "},
                      {"type": "image"}, {"type": "text", "text": "\nNot preferred: "}, {"type": "image"}]
        return interleaved_text(self.processor, parts)

    @torch.no_grad()
    def encode_user(self, examples: list[UserExample]) -> torch.Tensor:
        if not examples:
            raise ValueError("a user embedding needs at least one example")
        key = tuple(e.key for e in examples) if all(e.key is not None for e in examples) else None
        if key is not None and key in self._cache:
            return self._cache[key]
        images = [im for e in examples for im in (e.chosen, e.rejected)]
        inputs = self.processor(text=self._text(examples), images=images, return_tensors="pt").to(self.device)
        out = self.model(**inputs, output_hidden_states=True)
        embedding = out.hidden_states[-1][0, -1].float().cpu()  # [hidden]: the last position of the last layer
        if key is not None:
            self._cache[key] = embedding
        return embedding
