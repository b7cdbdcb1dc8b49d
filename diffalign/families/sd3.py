"""SD3 / SD3.5 (``StableDiffusion3Pipeline`` + ``SD3Transformer2DModel``): rectified flow (families/flow.py) on text
states as the pipeline's ``encode_prompt`` builds them:

    CLIP-L, CLIP-G penultimate states [U, 77, Dl], [U, 77, Dg] -> concatenated [U, 77, Dl + Dg], zero-padded to
    the T5 width J; T5's last states [U, T, J] (zeros when the pipeline has no T5) joined on the sequence axis
    -> states [U, 77 + T, J];  pooled = the two CLIPs' projected outputs concatenated [U, Pl + Pg]
    (the transformer's ``pooled_projections``).

The caption ids are one row [77 + 77 (+ T)] (models/joint_tokenizer.py); T = model.max_sequence_length (77 by
default, as diffusers' SD3 LoRA script trains).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .flow import FlowMatching, LazyEncoder


class SD3Conditioner:
    kind = "sd3"
    text_parts = ("", "pooled")

    def __init__(self, clip_l, clip_g, t5: LazyEncoder | None, tokenizer, t5_length: int, joint_dim: int):
        self.clip_l, self.clip_g, self.t5, self.tokenizer = clip_l, clip_g, t5, tokenizer
        self.t5_length, self.joint_dim = t5_length, joint_dim

    @property
    def device(self):
        return self.clip_l.device

    def encode(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """input_ids [U, 77 + 77 (+ T)] -> (states [U, 77 + T, J], pooled [U, Pl + Pg])."""
        parts = self.tokenizer.split(input_ids.to(self.device))
        first = self.clip_l(parts[0], output_hidden_states=True)
        second = self.clip_g(parts[1], output_hidden_states=True)
        clip = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)  # [U, 77, Dl + Dg]
        clip = F.pad(clip, (0, self.joint_dim - clip.shape[-1]))  # [U, 77, J]
        if self.t5 is None:  # the pipeline's own stand-in for a dropped T5
            t5 = clip.new_zeros(len(clip), self.t5_length, self.joint_dim)
        else:
            t5 = self.t5.load()(parts[2])[0].to(clip.dtype)  # [U, T, J]
        pooled = torch.cat([first.text_embeds, second.text_embeds], dim=-1)  # [U, Pl + Pg]
        return torch.cat([clip, t5], dim=-2), pooled

    def unet_kwargs(self, pooled: torch.Tensor | None, meta) -> dict:
        return {"pooled_projections": pooled}


class SD3Family(FlowMatching):
    kind = "sd3"
    soft_tokens = True  # SoftREPA: per-block tokens in the joint blocks' text stream (models/soft_tokens_joint.py)

    @classmethod
    def unsupported(cls, objective, cfg) -> str | None:
        if objective.trains == "soft_tokens" and objective.starts_from_start_token(cls.kind):
            return ("objective.token_init: start_token is SD1.x's start (the authors' SD1.5 code); SD3's joint-block "
                    "tokens start N(0, 0.02²) in the T5 state space, as theirs: use token_init normal or reference")
        return super().unsupported(objective, cfg)

    def __init__(self, scheduler, vae_config, conditioner, transformer_config, timestep_sampling=None):
        super().__init__(scheduler, vae_config, conditioner, timestep_sampling)
        self.transformer_config = transformer_config

    @classmethod
    def from_parts(cls, parts, train_cfg=None, model_cfg=None) -> "SD3Family":
        config = parts.unet.config
        conditioner = SD3Conditioner(parts.text_encoder, parts.text_encoder_2, parts.text_encoder_3,
                                     parts.tokenizers, parts.max_sequence_length, config.joint_attention_dim)
        return cls(parts.noise_scheduler, parts.vae.config, conditioner, config, cls.sampling_of(train_cfg))

    @property
    def pipeline_class(self):
        from diffusers import StableDiffusion3Pipeline

        return StableDiffusion3Pipeline

    def predict(self, model, x_t, t, states, pooled_projections=None, **_) -> torch.Tensor:
        return model(hidden_states=x_t, timestep=self.model_timesteps(t, x_t.device), encoder_hidden_states=states,
                     pooled_projections=pooled_projections).sample

    def dummy_inputs(self, device) -> tuple:
        config = self.transformer_config
        x = torch.zeros(1, config.in_channels, config.patch_size, config.patch_size, device=device)  # one patch
        states = torch.zeros(1, 1, config.joint_attention_dim, device=device)
        pooled = torch.zeros(1, config.pooled_projection_dim, device=device)
        return x, torch.zeros(1, dtype=torch.long, device=device), states, {"pooled_projections": pooled}
