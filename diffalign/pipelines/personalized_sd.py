"""A Stable Diffusion pipeline conditioned on a user (PPD, trained by ``--method ppd``).

    from diffalign.pipelines.personalized_sd import PersonalizedStableDiffusionPipeline
    pipe = PersonalizedStableDiffusionPipeline.from_pretrained("assets/toy-sd")
    pipe.load_user_adapter("outputs/toy-ppd")            # user_adapter.safetensors (+ a LoRA if it was trained)
    e = pipe.user_embedding(examples)                    # a few UserExample(caption, chosen, rejected) of a user
    image = pipe("a red circle", user_embedding=e).images[0]
    image = pipe("a red circle", user_embedding=e_a, mix_with=e_b, mix_weight=0.3).images[0]   # 70% a, 30% b
    image = pipe("a red circle", user_examples=examples).images[0]                              # embeds them first

Also usable as diffusers' ``custom_pipeline`` (point it at this file). Without a user the adapter is switched off:
the images are the base model's. The user tokens go to both classifier-free-guidance branches, so guidance
amplifies the caption while the user's taste acts in both.
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline

from diffalign.models.user_attention import load_user_adapter
from diffalign.models.user_encoders import build_user_encoder


class PersonalizedStableDiffusionPipeline(StableDiffusionPipeline):
    user_adapter = None
    _user_encoder = None
    _user_tokens = None  # [1, K, C] while a call runs

    def load_user_adapter(self, folder: str, lora: bool | None = None):
        """Attach the saved user adapter; also load the LoRA saved beside it (``lora=None``: if there is one)."""
        folder = Path(folder)
        self._user_encoder = None  # the new adapter's own encoder, built when first needed
        if lora or (lora is None and (folder / "pytorch_lora_weights.safetensors").is_file()):
            self.load_lora_weights(str(folder))
        self.user_adapter = load_user_adapter(self.unet, folder)
        return self.user_adapter

    def user_embedding(self, examples: list) -> torch.Tensor:
        """[E] embedding of one user from their examples, with the encoder the adapter was trained with."""
        if self.user_adapter is None:
            raise ValueError("load_user_adapter(folder) first")
        if self._user_encoder is None:
            self._user_encoder = build_user_encoder(self.user_adapter.encoder_spec, str(self.device))
        return self._user_encoder.encode_user(examples)

    def __call__(self, *args, user_embedding: torch.Tensor | None = None, user_examples: list | None = None,
                 mix_with: torch.Tensor | None = None, mix_weight: float = 0.0, user_scale: float | None = None,
                 **kwargs):
        """StableDiffusionPipeline's call, for one user: ``user_embedding`` [E] (or ``user_examples``), optionally
        mixed with another user's as ``(1 - mix_weight) · user_embedding + mix_weight · mix_with``.
        ``user_scale``: the user term's scale for this call (default: the adapter's, as trained); above 1 it
        strengthens the personalisation, as IP-Adapter's ``set_ip_adapter_scale`` does for an image prompt."""
        if user_scale is not None and user_embedding is None and user_examples is None:
            raise ValueError("user_scale needs a user (user_embedding or user_examples)")
        if user_examples is not None:
            if user_embedding is not None:
                raise ValueError("pass user_embedding or user_examples, not both")
            user_embedding = self.user_embedding(user_examples)
        if user_embedding is None:
            if mix_with is not None:
                raise ValueError("mix_with needs a user_embedding to mix with")
            if self.user_adapter is None:
                return super().__call__(*args, **kwargs)
            lora = getattr(self.unet, "_hf_peft_config_loaded", False)
            with self.user_adapter.disabled():  # the base model: placeholder tokens, dropped by every processor
                if lora:
                    self.unet.disable_adapters()  # a LoRA trained with the adapter is part of "the user", too
                try:
                    return self._call_with(torch.zeros(self.user_adapter.embed_dim), args, kwargs)
                finally:
                    if lora:
                        self.unet.enable_adapters()
        if self.user_adapter is None:
            raise ValueError("a user_embedding needs a user adapter: load_user_adapter(folder) first")
        user_embedding = torch.as_tensor(user_embedding, dtype=torch.float32).reshape(-1)
        if mix_with is not None:
            mix_with = torch.as_tensor(mix_with, dtype=torch.float32).reshape(-1)
            if mix_with.shape != user_embedding.shape:
                raise ValueError(f"mix_with has shape {tuple(mix_with.shape)}; the user_embedding's is "
                                 f"{tuple(user_embedding.shape)}")
            user_embedding = torch.lerp(user_embedding, mix_with, float(mix_weight))
        elif mix_weight:
            raise ValueError("mix_weight needs mix_with: the other user's embedding")
        if user_scale is None:
            return self._call_with(user_embedding, args, kwargs)
        trained_scale, self.user_adapter.scale = self.user_adapter.scale, float(user_scale)
        try:
            return self._call_with(user_embedding, args, kwargs)
        finally:
            self.user_adapter.scale = trained_scale

    def _call_with(self, embedding: torch.Tensor, args, kwargs):
        if embedding.shape != (self.user_adapter.embed_dim,):
            raise ValueError(f"a user embedding of this adapter has shape ({self.user_adapter.embed_dim},); got "
                             f"{tuple(embedding.shape)}")
        with torch.no_grad():
            weight = self.user_adapter.projector.proj.weight
            self._user_tokens = self.user_adapter(embedding[None].to(weight.device, weight.dtype))  # [1, K, C]
        try:
            return super().__call__(*args, **kwargs)
        finally:
            self._user_tokens = None

    def to(self, *args, **kwargs):
        """DiffusionPipeline.to, moving the user adapter with the UNet (it is not one of the UNet's modules)."""
        pipe = super().to(*args, **kwargs)
        if self.user_adapter is not None:
            self.user_adapter.to(device=self.unet.device, dtype=self.unet.dtype)
        return pipe

    def encode_prompt(self, *args, **kwargs):
        prompt_embeds, negative_prompt_embeds = super().encode_prompt(*args, **kwargs)
        if self._user_tokens is None:
            return prompt_embeds, negative_prompt_embeds
        with_user = lambda states: torch.cat(  # noqa: E731  [N, 77, C] -> [N, 77 + K, C]
            [states, self._user_tokens.to(states.dtype).expand(len(states), -1, -1)], dim=1)
        return with_user(prompt_embeds), (None if negative_prompt_embeds is None else with_user(negative_prompt_embeds))
