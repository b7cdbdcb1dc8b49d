"""Flux (``FluxPipeline`` + ``FluxTransformer2DModel``): rectified flow (families/flow.py) with the pipeline's
conditioning and packing, as diffusers' Flux training scripts call the transformer:

    states = T5's last states [U, T, J] (``encoder_hidden_states``); pooled = CLIP-L's pooled output [U, 768]
    latents [R, C, h, w] packed 2×2 into tokens [R, hw/4, 4C] (``FluxPipeline._pack_latents``), with ``img_ids``
    [hw/4, 3] (row, column) and ``txt_ids`` zeros [T, 3]; the prediction unpacked back to [R, C, h, w];
    timestep = σ (the schedule's 1000 σ / 1000); ``guidance`` = model.guidance for every row when the transformer
    has a guidance embedding (Flux-dev: 3.5, diffusers' script default), none otherwise (Flux-schnell).

The caption ids are one row [77 + T] (models/joint_tokenizer.py); T = model.max_sequence_length (512 by default,
as Flux-dev's pipeline and training script).
"""

from __future__ import annotations

import torch

from .flow import FlowMatching, LazyEncoder


class FluxConditioner:
    kind = "flux"
    text_parts = ("", "pooled")

    def __init__(self, clip, t5: LazyEncoder, tokenizer):
        self.clip, self.t5, self.tokenizer = clip, t5, tokenizer

    @property
    def device(self):
        return self.clip.device

    def encode(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [U, 77 + T] -> (T5 states [U, T, J], CLIP pooled [U, P])."""
        clip_ids, t5_ids = self.tokenizer.split(input_ids.to(self.device))
        pooled = self.clip(clip_ids, output_hidden_states=False).pooler_output  # [U, P]
        states = self.t5.load()(t5_ids, output_hidden_states=False)[0]  # [U, T, J]
        return states.to(pooled.dtype), pooled

    def unet_kwargs(self, pooled: torch.Tensor | None, meta) -> dict:
        return {"pooled_projections": pooled}


class FluxFamily(FlowMatching):
    kind = "flux"

    def __init__(self, scheduler, vae_config, conditioner, transformer_config, guidance: float = 3.5,
                 timestep_sampling=None):
        super().__init__(scheduler, vae_config, conditioner, timestep_sampling)
        self.transformer_config = transformer_config
        self.guidance = guidance if transformer_config.guidance_embeds else None
        self.vae_factor = 2 ** (len(vae_config.block_out_channels) - 1)  # pixels per latent cell

    @classmethod
    def from_parts(cls, parts, train_cfg=None, model_cfg=None) -> "FluxFamily":
        conditioner = FluxConditioner(parts.text_encoder, parts.text_encoder_2, parts.tokenizers)
        guidance = model_cfg.guidance if model_cfg is not None else 3.5
        return cls(parts.noise_scheduler, parts.vae.config, conditioner, parts.unet.config, guidance,
                   cls.sampling_of(train_cfg))

    @property
    def pipeline_class(self):
        from diffusers import FluxPipeline

        return FluxPipeline

    def predict(self, model, x_t, t, states, pooled_projections=None, **_) -> torch.Tensor:
        from diffusers import FluxPipeline

        rows, channels, height, width = x_t.shape
        packed = FluxPipeline._pack_latents(x_t, rows, channels, height, width)  # [R, hw/4, 4C]
        img_ids = FluxPipeline._prepare_latent_image_ids(rows, height // 2, width // 2, x_t.device, x_t.dtype)
        txt_ids = torch.zeros(states.shape[1], 3, device=x_t.device, dtype=x_t.dtype)
        guidance = None if self.guidance is None else torch.full((rows,), self.guidance, device=x_t.device)
        out = model(hidden_states=packed, timestep=self.model_timesteps(t, x_t.device) / 1000, guidance=guidance,
                    pooled_projections=pooled_projections, encoder_hidden_states=states, txt_ids=txt_ids,
                    img_ids=img_ids).sample
        return FluxPipeline._unpack_latents(out, height * self.vae_factor, width * self.vae_factor, self.vae_factor)

    def dummy_inputs(self, device) -> tuple:
        config = self.transformer_config
        x = torch.zeros(1, config.in_channels // 4, 2, 2, device=device)  # one packed token
        states = torch.zeros(1, 1, config.joint_attention_dim, device=device)
        pooled = torch.zeros(1, config.pooled_projection_dim, device=device)
        return x, torch.zeros(1, dtype=torch.long, device=device), states, {"pooled_projections": pooled}
