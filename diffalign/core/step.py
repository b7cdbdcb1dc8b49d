"""One micro-batch of an image-pair objective: latents, shared noise, policy and reference errors, loss.

Shapes: pixels [2B, 3, H, W] ordered (w_1..w_B, l_1..l_B); input_ids [B, 77]; seeds [B] (one per pair).
The policy runs once over all 2B rows; the reference (when the objective needs one) runs once more under
``torch.no_grad()`` on the same inputs, as the adapters-disabled policy (LoRA) or the frozen copy (full fine-tune).
"""

from __future__ import annotations

import torch

from ..objectives.base import Objective, PairErrors
from .errors import noisy_latents_and_target, per_sample_errors
from .noise import pair_noise, sample_latents, seeded_generators
from .reference import reference_unet


class TrainStep:
    def __init__(self, objective: Objective, vae, text_encoder, noise_scheduler, frozen_reference, accelerator):
        self.objective, self.vae, self.text_encoder = objective, vae, text_encoder
        self.noise_scheduler, self.frozen_reference, self.accelerator = noise_scheduler, frozen_reference, accelerator
        self.scaling = vae.config.scaling_factor

    @torch.no_grad()
    def _inputs(self, batch: dict):
        device, dtype = self.accelerator.device, self.vae.dtype
        generators = seeded_generators(batch["seeds"])  # one per pair: VAE sample, eps and t all come from it
        posterior = self.vae.encode(batch["pixels"].to(device, dtype)).latent_dist
        x0 = sample_latents(posterior, generators, repeats=2).float() * self.scaling  # [2B, C, h, w]
        text = self.text_encoder(batch["input_ids"].to(device))[0]  # [B, 77, D]
        text = torch.cat([text, text])  # [2B, 77, D]: w and l share the caption
        noise, t = pair_noise(x0, generators, self.noise_scheduler.config.num_train_timesteps)
        x_t, target = noisy_latents_and_target(self.noise_scheduler, x0, noise, t)
        return x_t, t, text, target

    def __call__(self, unet, batch: dict) -> tuple[torch.Tensor, dict]:
        x_t, t, text, target = self._inputs(batch)  # float32; the prepared UNet autocasts under mixed precision
        policy = per_sample_errors(unet, x_t, t, text, target)  # [2B] float32
        ref = None
        if self.objective.needs_reference:
            # The unwrapped module has no autocast wrapper of its own, so enter accelerate's explicitly.
            with torch.no_grad(), self.accelerator.autocast(), \
                    reference_unet(self.accelerator.unwrap_model(unet), self.frozen_reference) as r:
                ref = per_sample_errors(r, x_t.to(r.dtype), t, text.to(r.dtype), target)
        return self.objective.loss(PairErrors.from_stacked(policy, ref), batch)
