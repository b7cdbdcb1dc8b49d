"""User encoders for PPD: a few of a user's (caption, preferred, dispreferred) examples -> one embedding [E].

    encoder = build_user_encoder({"kind": "clip_difference", "model": "assets/toy-clip"})
    e = encoder.encode_user([UserExample(caption, chosen_image, rejected_image), ...])      # [E] float32

Two kinds:
- ``clip_difference`` (this file, light, CPU-friendly): with f the L2-normalised CLIP image embedding,
  d_i = f(chosen_i) - f(rejected_i) and ``e = mean_i d_i / mean_i ||d_i||``. Its direction is what the user's
  choices have in common; its norm (in [0, 1]) is how consistent they are (1: every choice moves the same way).
  Any transformers CLIPModel folder or hub id: ``openai/clip-vit-large-patch14`` for real images,
  ``assets/toy-clip`` (``diffalign toy clip``) for the toy world. Per-example differences are cached by key.
- ``vlm`` (``user_vlm.py``): the paper's encoder, a vision-language model reading the examples after a profile
  prompt; the last layer's hidden state at the last position.
Examples of a pair with a tie carry no preference: the data layer never passes them.
"""

from __future__ import annotations

from typing import Protocol

import torch

from .user_examples import UserExample
from .user_vlm import VLMUserEncoder

ENCODER_KINDS = ("clip_difference", "vlm")


class UserEncoder(Protocol):
    dim: int
    spec: dict  # how to build it again (saved with a user adapter): {"kind": ..., "model": ...}

    def encode_user(self, examples: list[UserExample]) -> torch.Tensor:
        """[dim] float32 embedding of one user from their examples (order does not matter)."""


def _embedding(output) -> torch.Tensor:
    return output if torch.is_tensor(output) else output.pooler_output  # transformers >= 5: an output object


class ClipDifferenceEncoder:
    def __init__(self, model: str, device: str = "cpu", dtype: torch.dtype = torch.float32, batch_size: int = 64):
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(model, dtype=dtype).eval().to(device)
        self.processor = CLIPProcessor.from_pretrained(model)
        self.device, self.dtype, self.batch_size = device, dtype, batch_size
        self.dim = self.model.config.projection_dim
        self.spec = {"kind": "clip_difference", "model": str(model)}
        self._differences: dict[str, torch.Tensor] = {}  # key -> d_i [dim]

    @torch.no_grad()
    def image_features(self, images: list) -> torch.Tensor:
        """L2-normalised image embeddings [N, dim] (float32, CPU) of PIL images."""
        out = []
        for start in range(0, len(images), self.batch_size):
            pixels = self.processor(images=images[start:start + self.batch_size], return_tensors="pt").pixel_values
            f = _embedding(self.model.get_image_features(pixel_values=pixels.to(self.device, self.dtype)))
            out.append(torch.nn.functional.normalize(f.float(), dim=-1).cpu())
        return torch.cat(out)

    def differences(self, examples: list[UserExample]) -> torch.Tensor:
        """d_i = f(chosen_i) - f(rejected_i) [k, dim]; cached by example key, so a table row is embedded once."""
        fresh: dict[int, torch.Tensor] = {}
        missing = [e for e in examples if e.key is None or e.key not in self._differences]
        if missing:
            f = self.image_features([e.chosen for e in missing] + [e.rejected for e in missing])  # [2m, dim]
            for j, e in enumerate(missing):
                fresh[id(e)] = f[j] - f[len(missing) + j]
                if e.key is not None:
                    self._differences[e.key] = fresh[id(e)]
        return torch.stack([fresh[id(e)] if id(e) in fresh else self._differences[e.key] for e in examples])

    def encode_user(self, examples: list[UserExample]) -> torch.Tensor:
        if not examples:
            raise ValueError("a user embedding needs at least one example")
        d = self.differences(examples)  # [k, dim]
        return d.mean(0) / d.norm(dim=-1).mean().clamp_min(1e-8)


def build_user_encoder(spec: dict, device: str = "cpu", dtype: torch.dtype = torch.float32,
                       trust_remote_code: bool = False) -> UserEncoder:
    """The encoder a spec names: {"kind": "clip_difference" | "vlm", "model": hub id or local folder, ...}."""
    kind, model = spec.get("kind"), spec.get("model")
    if kind not in ENCODER_KINDS:
        raise ValueError(f"user encoder kind {kind!r}; expected one of {ENCODER_KINDS}")
    if not model:
        raise ValueError(f"user encoder {kind!r} needs a model (a hub id or a local folder); got {model!r}")
    if kind == "clip_difference":
        return ClipDifferenceEncoder(model, device, dtype)
    return VLMUserEncoder(model, device, dtype, trust_remote_code=trust_remote_code,
                          prompt=spec.get("prompt"))
