"""What trains, as small components the loop treats alike.

Each component owns its parameters, says whether they train inside the UNet's data-parallel wrapper or outside it
(then their gradients are averaged by hand and their starting values broadcast), holds its part of a checkpoint,
and exports itself. Hooks the loop calls on every component:

    params                      what the optimizer trains (``text_params``: those with train.text_encoder_lr)
    outside_ddp                 True: not parameters of the prepared UNet (gradients averaged by hand)
    checkpoint_parts()          {file stem: state_dict/load_state_dict object} (checkpointing.py)
    prepare_batch(batch)        add what this component reads to a batch (PPD: each pair's user embedding)
    after_update()              after each optimizer step (the EMA reference follows the policy)
    export(out) -> dict         write the result for diffusers; returns summary entries
    summary() -> dict           counts to report (PPD's skipped users)

``build_components`` decides what trains from the objective's ``trains`` and the config; nothing else does.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..models.lora import TextEncoderLora, attach_lora, load_lora_into, save_lora
from ..models.lora_checkpoint import ADAPTER_PART, LoraAdapterState
from ..models.loading import pipeline_class


class Component:
    params: list = []
    text_params: list = []
    outside_ddp: bool = False

    def checkpoint_parts(self) -> dict:
        return {}

    def prepare_batch(self, batch: dict) -> None:
        pass

    def after_update(self) -> None:
        pass

    def export(self, out: Path) -> dict:
        return {}

    def summary(self) -> dict:
        return {}


class UnetLora(Component):
    """A LoRA on the UNet (and, exported in the same file, a LoRA on the text encoders when ``text_lora``)."""

    def __init__(self, unet, lora_cfg, kind: str, text_lora: TextEncoderLora | None = None):
        self.unet, self.kind, self.text_lora = unet, kind, text_lora
        self.params = attach_lora(unet, lora_cfg.rank, lora_cfg.alpha, lora_cfg.target_modules)
        if lora_cfg.init_from:  # continue an earlier LoRA (an online round); the reference stays the base
            load_lora_into(unet, lora_cfg.init_from)

    def checkpoint_parts(self) -> dict:
        return {ADAPTER_PART: LoraAdapterState(self.unet)}  # the adapter, never the frozen base

    def export(self, out: Path) -> dict:
        return {"lora": str(save_lora(self.unet, out, pipeline_class(self.kind), text_lora=self.text_lora))}


class FullUnet(Component):
    """Every UNet weight trains; saved in the pipeline's layout as ``unet/``."""

    def __init__(self, unet):
        self.unet, self.params = unet, list(unet.parameters())

    def checkpoint_parts(self) -> dict:
        return {"unet": self.unet}

    def export(self, out: Path) -> dict:
        self.unet.save_pretrained(Path(out) / "unet", safe_serialization=True)
        return {"unet": str(Path(out) / "unet")}


class TextEncoders(Component):
    """Trained text encoder(s): a LoRA (exported with the UNet's LoRA) or all weights (``text_encoder[_2]/``)."""

    outside_ddp = True

    def __init__(self, trained, full: bool):
        self.trained, self.full = trained, full
        self.params = self.text_params = trained.params

    def checkpoint_parts(self) -> dict:
        return {"text_encoders": self.trained}

    def export(self, out: Path) -> dict:
        return {"text_encoders": [str(f) for f in self.trained.save(out)]} if self.full else {}


class EmaReference(Component):
    """A full fine-tune's reference that follows the policy: reference <- d * reference + (1 - d) * policy."""

    def __init__(self, reference: torch.nn.Module, policy: torch.nn.Module, decay: float):
        self.reference, self.policy, self.decay = reference, policy, decay

    def checkpoint_parts(self) -> dict:
        return {"ema_reference": self.reference}  # the moving reference is training state

    @torch.no_grad()
    def after_update(self) -> None:
        ref_params = list(self.reference.parameters())
        policy_params = [p.detach().to(r.dtype) for p, r in zip(self.policy.parameters(), ref_params)]
        torch._foreach_lerp_(ref_params, policy_params, 1.0 - self.decay)


class UserAdapter(Component):
    """PPD's user adapter: decoupled cross-attention on each pair's user embedding (models/user_attention.py)."""

    outside_ddp = True

    def __init__(self, adapter, encoder, dataset):
        self.adapter, self.encoder, self.dataset = adapter, encoder, dataset
        self.params = list(adapter.parameters())

    def checkpoint_parts(self) -> dict:
        return {"user_adapter": self.adapter}

    def prepare_batch(self, batch: dict) -> None:
        if "profile_rows" in batch:  # each pair's user, embedded from other examples of that user
            batch["user_embedding"] = self.dataset.user_embeddings(batch["profile_rows"], self.encoder,
                                                                   batch["reversed_users"])

    def export(self, out: Path) -> dict:
        from ..models.user_attention import save_user_adapter

        return {"user_adapter": str(save_user_adapter(self.adapter, out))}

    def summary(self) -> dict:
        return {"pairs_of_users_with_too_few_examples": self.dataset.skipped_few_examples,
                "users_with_too_few_examples": self.dataset.skipped_users,
                "profile_examples_skipped": self.dataset.skipped_profile_examples}


class SoftTokens(Component):
    """SoftREPA's soft text tokens: in the UNet's cross-attention (models/soft_tokens.py) or in SD3's joint blocks
    (models/soft_tokens_joint.py)."""

    outside_ddp = True

    def __init__(self, tokens):
        self.tokens, self.params = tokens, list(tokens.parameters())

    def checkpoint_parts(self) -> dict:
        return {"soft_tokens": self.tokens}

    def export(self, out: Path) -> dict:
        from ..models.soft_tokens import save_soft_tokens

        return {"soft_tokens": str(save_soft_tokens(self.tokens, out))}
