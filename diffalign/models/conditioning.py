"""What a model family needs besides the noisy latent: text states, and for SDXL pooled text and size/crop ids.

One interface for the training core (core/step.py), so every objective runs on SD 1.x/2.x and SDXL through the
same code path:
    encode(input_ids)        -> (states [U, L, D],)  or, SDXL, (states [U, L, 2048], pooled [U, 1280])
    unet_kwargs(pooled, meta) -> the extra UNet arguments for R rows ({} for SD)
SDXL, as diffusers' SDXL pipelines and training scripts: the penultimate hidden states of both text encoders,
concatenated on the feature axis; the pooled (projected) output of the second; ``time_ids`` = (original height,
original width, crop top, crop left, target height, target width) per image (data/examples.paired_transform).
"""

from __future__ import annotations

import torch


class SDConditioner:
    kind = "sd"
    text_parts = ("",)  # what encode returns, as named in the encoding cache ("" = the states)

    def __init__(self, text_encoder):
        self.text_encoder = text_encoder

    @property
    def device(self):
        return self.text_encoder.device

    def encode(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """input_ids [U, 77] -> (last hidden states [U, 77, D],)."""
        return (self.text_encoder(input_ids.to(self.device))[0],)

    def unet_kwargs(self, pooled: torch.Tensor | None, meta: torch.Tensor) -> dict:
        return {}

    def dummy_unet_kwargs(self, n: int, device) -> dict:
        return {}


class SDXLConditioner(SDConditioner):
    kind = "sdxl"
    text_parts = ("", "pooled")

    def __init__(self, text_encoder, text_encoder_2):
        super().__init__(text_encoder)
        self.text_encoder_2 = text_encoder_2

    def encode(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """input_ids [U, 2, 77] (one row per tokenizer) -> (states [U, 77, D1 + D2], pooled [U, P])."""
        first = self.text_encoder(input_ids[:, 0].to(self.device), output_hidden_states=True)
        second = self.text_encoder_2(input_ids[:, 1].to(self.text_encoder_2.device), output_hidden_states=True)
        states = torch.cat([first.hidden_states[-2], second.hidden_states[-2].to(first.hidden_states[-2].device)],
                           dim=-1)
        return states, second.text_embeds.to(states.device)

    def unet_kwargs(self, pooled: torch.Tensor | None, meta: torch.Tensor) -> dict:
        """pooled [R, P] and meta [R, 6] of each row -> SDXL's added conditioning."""
        return {"added_cond_kwargs": {"text_embeds": pooled, "time_ids": meta.to(pooled.device, pooled.dtype)}}

    def dummy_unet_kwargs(self, n: int, device) -> dict:
        pooled = torch.zeros(n, self.text_encoder_2.config.projection_dim, device=device)
        return self.unet_kwargs(pooled, torch.zeros(n, 6, device=device))


def conditioner_for(parts) -> SDConditioner:
    """The conditioner of loaded components (models.loading.SDComponents)."""
    if getattr(parts, "kind", "sd") == "sdxl":
        return SDXLConditioner(parts.text_encoder, parts.text_encoder_2)
    return SDConditioner(parts.text_encoder)


def take_rows(kwargs: dict, index) -> dict:
    """The same UNet kwargs for a subset of rows (tensors indexed on dim 0, nested dicts followed)."""
    return {k: take_rows(v, index) if isinstance(v, dict) else v[index] if torch.is_tensor(v) else v
            for k, v in kwargs.items()}


def cast_floats(kwargs: dict, dtype: torch.dtype) -> dict:
    """UNet kwargs with floating tensors in ``dtype`` (a reference copy in another precision)."""
    return {k: cast_floats(v, dtype) if isinstance(v, dict) else
            v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v for k, v in kwargs.items()}
