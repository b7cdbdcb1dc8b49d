"""Rectified flow, shared by SD3/3.5 and Flux (diffusers' SD3/Flux training scripts; Esser et al., 2024):

    x_t = (1 − σ) x0 + σ ε,   target v = ε − x0,   m = mean over C, h, w of (v_θ(x_t, σ) − (ε − x0))²  (float32)

σ is drawn per noise group as diffusers' scripts draw it: u from ``training_utils.compute_density_for_timestep_
sampling`` (logit-normal mean 0, std 1 by default; "mode"; "uniform"), index = ⌊u · N⌋ into the scheduler's own
σ table (which holds its shift: SD3 3.0), σ = sigmas[index], and the transformer reads timesteps[index] = 1000 σ.
Both members of a pair share ε and the index (core/noise's seeded generators), as on UNets.
Latents: ``(z − shift_factor) · scaling_factor`` of a VAE posterior draw z.
"""

from __future__ import annotations

import torch
from diffusers.training_utils import compute_density_for_timestep_sampling


class LazyEncoder:
    """A frozen text encoder loaded on first use: with the encoding cache warm, T5-XXL (4.7B parameters) is never
    loaded at all. ``load()`` returns the module (frozen, eval, on its device and dtype); ``loaded`` says whether
    it ran."""

    def __init__(self, loader):
        self._loader, self._module, self._placement = loader, None, None

    @property
    def loaded(self) -> bool:
        return self._module is not None

    def place(self, device, dtype) -> None:
        """Frozen, eval, on ``device`` in ``dtype``: now if loaded, else when it loads."""
        self._placement = (device, dtype)
        if self._module is not None:
            self._module.requires_grad_(False).eval().to(device, dtype=dtype)

    def load(self):
        if self._module is None:
            self._module = self._loader()
            if self._placement is not None:
                self.place(*self._placement)
        return self._module


class FlowMatching:
    """What SD3 and Flux share; subclasses add the conditioner and the transformer call."""

    kind = "flow"
    # diffusers' SD3 / Flux LoRA scripts (train_dreambooth_lora_sd3.py / _flux.py): the joint attention's image and
    # context projections. Flux's script also adapts the feed-forwards; lora.target_modules can add them.
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]

    def __init__(self, scheduler, vae_config, conditioner, timestep_sampling: dict | None = None):
        self.conditioner = conditioner
        self.sigmas = scheduler.sigmas.detach().float().cpu().clone()  # [N], σ of each training index (shifted)
        self.timesteps = scheduler.timesteps.detach().float().cpu().clone()  # [N] = N · σ
        self.num_train_timesteps = len(self.sigmas)
        self.shift = vae_config.shift_factor or 0.0
        self.scaling = vae_config.scaling_factor
        self.sampling = {"weighting_scheme": "logit_normal", "logit_mean": 0.0, "logit_std": 1.0,
                         "mode_scale": 1.29, **(timestep_sampling or {})}

    @staticmethod
    def sampling_of(train_cfg) -> dict:
        if train_cfg is None:
            return {}
        return {"weighting_scheme": train_cfg.timestep_sampling, "logit_mean": train_cfg.logit_mean,
                "logit_std": train_cfg.logit_std, "mode_scale": train_cfg.mode_scale}

    # SoftREPA's per-block tokens need joint blocks that take the text stream as an argument (SD3's); Flux's
    # rotary position ids are built for the caption's length before the blocks run
    soft_tokens = False

    @classmethod
    def unsupported(cls, objective, cfg) -> str | None:
        """The methods and settings that cannot run on a flow transformer yet, and why."""
        if objective.noising == "ddim_inversion":
            return ("its DDIM inversion of x0 needs an inversion of the flow ODE, which diffalign does not implement "
                    "for flow models")
        if objective.step_kind == "reward":
            return ("LongAlign's reward fine-tuning samples and decodes through a UNet's DDIM chain with segment-"
                    "encoded CLIP text; SD3/Flux read 256-512 T5 tokens, the limit LongAlign works around")
        if objective.text_encoding == "segments":
            return ("segment encoding (objective.text_encoding: segments) splits captions over CLIP's 77-token window; "
                    "SD3/Flux read 256-512 T5 tokens: use objective.text_encoding: truncate")
        if objective.trains == "user_adapter":
            return "PPD's decoupled cross-attention is written for UNet cross-attention, not joint attention"
        if objective.trains == "soft_tokens" and not cls.soft_tokens:
            return ("SoftREPA's soft tokens run on UNets and SD3's joint blocks; Flux's rotary text positions are "
                    "fixed to the caption's length before its blocks run, so extra tokens have no position there")
        if cfg is not None and not cfg.lora.enabled and objective.trains == "unet":
            return "only LoRA training runs on flow transformers (lora.enabled: true)"
        if cfg is not None and (cfg.lora.text_encoder or cfg.train.text_encoder):
            return "text encoders do not train on flow transformers (lora.text_encoder and train.text_encoder: false)"
        if cfg is not None and cfg.train.timestep_range is not None:
            return ("train.timestep_range is a range of DDPM timesteps; flow models draw σ with "
                    "train.timestep_sampling")
        return None

    def latents(self, sample: torch.Tensor) -> torch.Tensor:
        return (sample.float() - self.shift) * self.scaling

    def draw(self, shape: tuple, generators: list, timestep_range=None):
        """(ε [G, C, h, w], index [G] long) from each group's generator: ε first, then u (as core/noise)."""
        eps = torch.stack([torch.randn(shape, generator=g) for g in generators])
        u = torch.cat([compute_density_for_timestep_sampling(batch_size=1, generator=g, **self.sampling)
                       for g in generators])
        return eps, (u * self.num_train_timesteps).long().clamp(0, self.num_train_timesteps - 1)

    def sigma(self, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """σ of schedule indices t [R] shaped to broadcast over ``like`` [R, C, h, w]."""
        return self.sigmas.to(like.device)[t.to(like.device)].view(-1, *([1] * (like.ndim - 1)))

    def noisy(self, x0, noise, t):
        sigma = self.sigma(t, x0)
        return (1.0 - sigma) * x0 + sigma * noise

    def target(self, x0, noise, t):
        return noise - x0

    def model_timesteps(self, t: torch.Tensor, device) -> torch.Tensor:
        return self.timesteps.to(device)[t.to(device)]  # [R] = 1000 σ
