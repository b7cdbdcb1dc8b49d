"""The optimizer and learning-rate schedule of a run (train.optimizer, train.lr_scheduler)."""

from __future__ import annotations

import torch
from diffusers.optimization import get_scheduler

from ..config import Config, ConfigError


def make_optimizer(cfg: Config, params: list, text_params: list = ()) -> torch.optim.Optimizer:
    """train.optimizer: ``adamw`` (torch's fused kernel with train.fused_adamw); ``adamw_8bit`` (bitsandbytes); ``adafactor`` (transformers', with a fixed lr:
    no relative step or parameter scaling, as Diffusion-DPO's SDXL training uses it).

    ``text_params`` (a trained text encoder's, also in ``params``) get their own group at train.text_encoder_lr
    when that is set; the lr scheduler scales every group's peak alike."""
    t = cfg.train
    if text_params and t.text_encoder_lr is not None:
        text_ids = {id(p) for p in text_params}
        params = [{"params": [p for p in params if id(p) not in text_ids]},
                  {"params": list(text_params), "lr": t.text_encoder_lr}]
    if t.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=t.lr, weight_decay=t.weight_decay, scale_parameter=False, relative_step=False,
                         warmup_init=False)
    optimizer_cls, fused = torch.optim.AdamW, {"fused": True} if t.fused_adamw else {}
    if t.optimizer == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ConfigError("train.optimizer adamw_8bit needs bitsandbytes: pip install bitsandbytes") from err
        optimizer_cls = bnb.optim.AdamW8bit
    return optimizer_cls(params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.weight_decay,
                         eps=t.adam_eps, **fused)


def make_scheduler(cfg: Config, optimizer: torch.optim.Optimizer, num_processes: int):
    """diffusers' schedule by name. accelerate steps the scheduler once per process per optimizer step, hence the
    num_processes factor."""
    return get_scheduler(cfg.train.lr_scheduler, optimizer,
                         num_warmup_steps=cfg.train.warmup_steps * num_processes,
                         num_training_steps=cfg.train.max_steps * num_processes)
