"""Decide what trains (the objective's ``trains`` and the config) and set the UNet up for it.

The one place that reads lora.enabled, lora.text_encoder, train.text_encoder and train.ema_reference_decay to choose
components (components.py); the loop only iterates over them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

from ..config import Config
from ..models.conditioning import conditioner_for
from ..models.loading import cast_frozen_weights
from ..models.lora import TextEncoderLora
from .components import (Component, EmaReference, FullUnet, SoftTokens, TextEncoders, UnetLora, UserAdapter)


@dataclass
class Trained:
    """The components that train, in the optimizer's parameter order, and what the step reads of them."""

    components: list[Component]
    reference: torch.nn.Module | None = None  # a full fine-tune's frozen (or EMA) copy of the starting UNet
    trained_text: object | None = None  # models/trained_text.TrainedTextEncoders
    user_adapter: torch.nn.Module | None = None  # PPD's (models/user_attention.UserAdapter)
    extra: list[Component] = field(default_factory=list)  # no parameters of their own (the EMA reference)

    @property
    def params(self) -> list:
        return [p for c in self.components for p in c.params]

    @property
    def text_params(self) -> list:
        return [p for c in self.components for p in c.text_params]

    @property
    def all(self) -> list[Component]:
        return self.components + self.extra

    def outside_ddp(self) -> list:
        """Parameters trained outside the UNet's DDP wrapper (gradients averaged, start broadcast by hand)."""
        return [p for c in self.components if c.outside_ddp for p in c.params]

    def checkpoint_parts(self) -> dict:
        return {name: part for c in self.all for name, part in c.checkpoint_parts().items()}


def build_components(cfg: Config, objective, parts, accelerator: Accelerator, weight_dtype: torch.dtype,
                     dataset) -> Trained:
    """Attach what trains to ``parts.unet`` (in place) and return it; the frozen base is cast to the training
    precision. Parameter initialisation draws from torch's generator in a fixed order (the results depend on it)."""
    unet, device = parts.unet, accelerator.device
    if objective.trains == "soft_tokens":
        trained = Trained([SoftTokens(_soft_tokens(objective, parts).to(device))])
    elif objective.trains == "user_adapter":
        trained = _user_adapter(cfg, objective, parts, accelerator, weight_dtype, dataset)
    elif cfg.lora.enabled:
        text = None
        lora = UnetLora(unet, cfg.lora, parts.kind)
        if cfg.lora.text_encoder:  # as diffusers' --train_text_encoder: same rank and alpha
            encoders = [e for e in (parts.text_encoder, parts.text_encoder_2) if e is not None]
            text = lora.text_lora = TextEncoderLora(encoders, cfg.lora.rank, cfg.lora.alpha,
                                                    cfg.lora.text_encoder_target_modules)
        trained = Trained([lora] + ([TextEncoders(text, full=False)] if text else []), trained_text=text)
    else:
        trained = _full_fine_tune(cfg, objective, parts, accelerator, weight_dtype)
    if trained.trained_text is not None and cfg.train.gradient_checkpointing:
        for encoder in trained.trained_text.text_encoders:  # transformers checkpoints only in training mode
            encoder.activation_checkpointing_enable()  # (CLIP's dropouts are 0, so train() changes nothing else)
            encoder.train()
    # The frozen base in the training precision, what trains in float32 (a full fine-tune has nothing frozen). Not
    # under FSDP, which flattens each wrapped block's parameters into one tensor of one dtype.
    if weight_dtype != torch.float32 and accelerator.distributed_type != DistributedType.FSDP:
        cast_frozen_weights(unet, weight_dtype)
    if cfg.train.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if cfg.train.channels_last:
        unet.to(memory_format=torch.channels_last)
    unet.train()  # from_pretrained returns eval mode
    return trained


def _soft_tokens(objective, parts):
    from ..models.soft_tokens import attach_soft_tokens

    if parts.kind == "sd3":  # per-block tokens in the joint blocks' text stream (the authors' SD3 code)
        from ..models.soft_tokens_joint import attach_joint_soft_tokens

        return attach_joint_soft_tokens(parts.unet, objective.num_tokens, objective.transformer_blocks,
                                        timestep_buckets=objective.timestep_buckets)
    blocks = ("down", "mid") if parts.kind == "sdxl" else ("down",)  # SoftREPA: SD down; SDXL down + mid
    init = start_token_state(parts) if objective.starts_from_start_token(parts.kind) else None
    return attach_soft_tokens(parts.unet, objective.num_tokens, blocks, init=init,
                              timestep_buckets=objective.timestep_buckets)


def _user_adapter(cfg: Config, objective, parts, accelerator, weight_dtype, dataset) -> Trained:
    """PPD: the user adapter, plus a UNet LoRA with lora.enabled (else the UNet is the frozen reference itself)."""
    from ..models.user_attention import attach_user_adapter
    from ..models.user_encoders import build_user_encoder

    components: list[Component] = [UnetLora(parts.unet, cfg.lora, parts.kind)] if cfg.lora.enabled else []
    if not components:
        parts.unet.requires_grad_(False)
    encoder = build_user_encoder(objective.encoder_spec, str(accelerator.device), weight_dtype,
                                 trust_remote_code=cfg.model.trust_remote_code)
    adapter = attach_user_adapter(parts.unet, encoder.dim, objective.num_user_tokens, objective.user_scale,
                                  objective.encoder_spec).to(accelerator.device)
    return Trained(components + [UserAdapter(adapter, encoder, dataset)], user_adapter=adapter)


def _full_fine_tune(cfg: Config, objective, parts, accelerator, weight_dtype) -> Trained:
    """Every UNet weight (and with train.text_encoder every text-encoder weight); a method with a reference reads
    a frozen copy of the start (or, with train.ema_reference_decay, one that follows the policy)."""
    from ..models.text_encoder_full import FullTextEncoders

    unet = parts.unet
    components: list[Component] = [FullUnet(unet)]
    text = None
    if cfg.train.text_encoder:  # the reference reads a frozen starting copy of the encoder(s)
        text = FullTextEncoders(conditioner_for(parts), objective.needs_reference, weight_dtype, accelerator.autocast)
        components.append(TextEncoders(text, full=True))
    trained = Trained(components, trained_text=text)
    if objective.needs_reference:
        decay = cfg.train.ema_reference_decay
        reference = type(unet).from_config(unet.config)
        reference.load_state_dict(unet.state_dict())
        # An EMA reference stays float32: a (1 - decay) step rounds to nothing in fp16/bf16.
        reference.requires_grad_(False).eval().to(accelerator.device,
                                                  dtype=torch.float32 if decay is not None else weight_dtype)
        trained.reference = reference
        if decay is not None:
            trained.extra.append(EmaReference(reference, unet, decay))
    return trained


@torch.no_grad()
def start_token_state(parts) -> torch.Tensor:
    """[D]: the text states' first row (the start token) for the empty prompt, as the UNet reads them (SDXL: both
    encoders' penultimate states, concatenated)."""
    from ..data.examples import token_ids

    states = conditioner_for(parts).encode(token_ids(parts.tokenizers, "")[None])[0]  # [1, 77, D]
    return states[0, 0].float()
