"""One micro-batch of reward fine-tuning (LongAlign): sample with the policy, decode, score, loss.

    prompts [B] -> text states (segment encoding or the 77-token window) and the empty prompt's
    x_T [B, C, h, w] ~ N(0, I) from each prompt's seed
    x_0 = DDIM + CFG over ``num_inference_steps``; the graph kept at every ``grad_every``-th step (random start)
    pixels = VAE.decode(x_0 / scaling) in [0, 1]  [B, 3, H, W]   (with gradient; the VAE's weights stay frozen)
    loss, metrics = objective.reward_loss(reward(pixels, prompts))

The same interface as core/step.TrainStep (``step(unet, batch) -> (loss, metrics)``), so the trainer's loop,
accumulation, clipping, checkpoints and LoRA export serve it unchanged.
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers import DDIMScheduler

from ..models.conditioning import SDConditioner
from ..models.segment_encoding import encode_prompts, encoder_pairs
from ..scorers.denscore import shared_direction
from .noise import seeded_generators
from .reward_sampling import grad_step_indices, sample_with_reward_grad


class RewardStep:
    def __init__(self, objective, parts, conditioner: SDConditioner, accelerator, resolution: int, reward):
        """``parts``: models.loading.SDComponents; ``reward``: a scorers/denscore.Denscore (its ``reward(pixels
        [B, 3, H, W] in [0, 1], prompts, shared) -> [B]`` has gradient); ``resolution``: the images' side in pixels.

        Denscore's shared direction v is the normalised mean caption vector of the *global* micro-batch (gathered
        over processes, as the authors' code): with one prompt, v would be that prompt's own vector and the
        text-relevant part of S would vanish, so a global micro-batch of one is refused."""
        self.objective, self.parts, self.conditioner, self.accelerator = objective, parts, conditioner, accelerator
        self.reward = reward
        self.scheduler = DDIMScheduler.from_config(parts.noise_scheduler.config)  # eta 0, the model's betas
        vae = parts.vae
        self.scaling = vae.config.scaling_factor
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        if resolution % factor:
            raise ValueError(f"data.resolution {resolution} is not a multiple of the VAE's factor {factor}")
        self.resolution, self.latent_side = resolution, resolution // factor
        self._uncond = None

    def flush(self) -> None:
        """Nothing pending (no encoding cache: the images are the policy's own samples)."""

    def summary(self) -> dict:
        return {}

    @torch.no_grad()
    def _encode(self, captions: list[str], input_ids: torch.Tensor | None):
        """-> (states [B, L, D], pooled [B, P] or None). L = 77 (truncate) or max_text_length (segments)."""
        if self.objective.text_encoding == "segments":
            return encode_prompts(captions, encoder_pairs(self.parts), self.objective.max_text_length,
                                  segmenter=self.objective.segmenter)
        if input_ids is None:
            from ..data.examples import token_ids

            tokenizers = [t for t, _ in encoder_pairs(self.parts)]
            input_ids = torch.stack([token_ids(tokenizers if len(tokenizers) > 1 else tokenizers[0], c)
                                     for c in captions])
        encoded = self.conditioner.encode(input_ids)
        return encoded[0], encoded[1] if len(encoded) > 1 else None

    def _unet_kwargs(self, pooled: torch.Tensor | None, n: int, device) -> dict:
        """SDXL's added conditioning for an uncropped square image of ``resolution`` ({} for SD)."""
        if pooled is None:
            return {}
        r = self.resolution
        meta = torch.tensor([[r, r, 0, 0, r, r]], dtype=torch.float32, device=device).expand(n, 6)
        return self.conditioner.unet_kwargs(pooled.to(device), meta)

    @torch.no_grad()
    def _shared_direction(self, captions: list[str]) -> torch.Tensor:
        """v [D] over every process's captions of this step (their caption vectors gathered)."""
        vectors = self.reward.caption_vectors(captions).to(self.accelerator.device)  # [B, D]
        everyone = self.accelerator.gather(vectors) if getattr(self.accelerator, "num_processes", 1) > 1 \
            else vectors  # [B x processes, D]
        if len(everyone) < 2:
            raise ValueError("longalign: Denscore needs at least 2 prompts per step across processes (its shared "
                             "direction is their mean; with one prompt the text-relevant part is 0); raise "
                             "train.batch_size")
        return shared_direction(everyone)

    def __call__(self, unet, batch: dict) -> tuple[torch.Tensor, dict]:
        device, o = self.accelerator.device, self.objective
        captions = batch["captions"]
        n = len(captions)
        text, pooled = self._encode(captions, batch.get("input_ids"))
        if self._uncond is None:  # the empty prompt, once
            states, pooled_empty = self._encode([""], None)
            if self.conditioner.kind == "sdxl" and self.parts.force_zeros_for_empty_prompt:
                # diffusers' SDXL pipeline samples with zeros for an absent negative prompt when the pipeline's
                # force_zeros_for_empty_prompt is on (SDXL base): train on what inference will do.
                states, pooled_empty = torch.zeros_like(states), torch.zeros_like(pooled_empty)
            self._uncond = states, pooled_empty
        uncond, uncond_pooled = self._uncond
        text, uncond = text.to(device), uncond.to(device).expand(n, -1, -1)
        if text.shape[1] != uncond.shape[1]:
            raise ValueError(f"text states have {text.shape[1]} rows but the empty prompt's {uncond.shape[1]}")
        channels = self.accelerator.unwrap_model(unet).config.in_channels
        generators = seeded_generators(batch["seeds"])
        latents = torch.stack([torch.randn(channels, self.latent_side, self.latent_side, generator=g)
                               for g in generators]).to(device)  # [B, C, h, w]
        rng = np.random.default_rng(int(batch["seeds"][0]))  # which steps keep their graph: reproducible per batch
        chosen = grad_step_indices(o.num_inference_steps, o.grad_every, rng)
        extra = self._unet_kwargs(pooled, n, device)
        # SDXL: the unconditional half's own pooled embedding (zeros or the empty prompt's, see above)
        uncond_extra = self._unet_kwargs(uncond_pooled.expand(n, -1), n, device) if extra else None
        x0 = sample_with_reward_grad(unet, self.scheduler, latents, text, uncond, o.guidance_scale,
                                     o.num_inference_steps, chosen, uncond_unet_kwargs=uncond_extra, **extra)
        vae = self.parts.vae
        pixels = vae.decode(x0.to(vae.dtype) / self.scaling).sample  # [B, 3, H, W] in about [-1, 1]
        pixels = (pixels.float() / 2 + 0.5).clamp(0, 1)
        loss, metrics = o.reward_loss(self.reward.reward(pixels, captions, self._shared_direction(captions)))
        metrics["grad_steps"] = len(chosen)
        return loss, metrics
