"""ε/v-prediction UNets (SD 1.x/2.x, SDXL): DDPM noising ``x_t = sqrt(ᾱ_t) x0 + sqrt(1 − ᾱ_t) ε``, the
scheduler's prediction type as the target (core/errors.target_for), t uniform on the training timesteps."""

from __future__ import annotations

import torch

from ..core.errors import target_for
from ..core.noise import group_noise
from ..models.conditioning import conditioner_for


class UnetFamily:
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]  # diffusers' SD/SDXL LoRA scripts

    def __init__(self, kind: str, scheduler, conditioner, vae_config, unet_config=None):
        """``scheduler``: the training forward process (DDPMScheduler of the model); ``unet_config``: for
        dummy_inputs (a step left without rows)."""
        self.kind, self.scheduler, self.conditioner = kind, scheduler, conditioner
        self.scaling, self.unet_config = vae_config.scaling_factor, unet_config

    @classmethod
    def from_parts(cls, parts, train_cfg=None, model_cfg=None) -> "UnetFamily":
        return cls(parts.kind, parts.noise_scheduler, conditioner_for(parts), parts.vae.config, parts.unet.config)

    @property
    def pipeline_class(self):
        from ..models.loading import pipeline_class

        return pipeline_class(self.kind)

    @staticmethod
    def unsupported(objective, cfg) -> str | None:
        # every method runs on UNets; SoftREPA's SD3 option would be silently ignored there
        default = type(objective.options).__dataclass_fields__["transformer_blocks"].default if \
            objective.trains == "soft_tokens" else None
        if default is not None and objective.transformer_blocks != default:
            return ("objective.transformer_blocks chooses SD3's joint blocks; on a UNet the tokens go to the down "
                    "blocks (SDXL: down and mid): remove the setting")
        return None

    def latents(self, sample: torch.Tensor) -> torch.Tensor:
        return sample.float() * self.scaling

    def draw(self, shape: tuple, generators: list, timestep_range=None):
        return group_noise(shape, generators, self.scheduler.config.num_train_timesteps, timestep_range)

    def noisy(self, x0, noise, t):
        return self.scheduler.add_noise(x0, noise, t)

    def target(self, x0, noise, t):
        return target_for(self.scheduler, x0, noise, t)

    def predict(self, model, x_t, t, states, **extra) -> torch.Tensor:
        return model(x_t, t, states, **extra).sample

    def dummy_inputs(self, device) -> tuple:
        config = self.unet_config
        side = 2 ** (len(config.block_out_channels) - 1)  # the smallest latent every down block can halve
        x = torch.zeros(1, config.in_channels, side, side, device=device)  # [1, C, s, s]
        states = torch.zeros(1, 77, config.cross_attention_dim, device=device)  # [1, 77, D]
        return x, torch.zeros(1, dtype=torch.long, device=device), states, self.conditioner.dummy_unet_kwargs(1, device)
