"""Data parallelism for what trains outside the UNet's DDP wrapper (text encoders, PPD's adapter, soft tokens)."""

from __future__ import annotations

import torch
from accelerate import Accelerator


def average_gradients(accelerator: Accelerator, params) -> None:
    """Mean of each parameter's gradient over processes, in place: what DDP does for the UNet's parameters, for
    trained modules that are not part of it (PPD's user adapter). A no-op on one process."""
    if accelerator.num_processes == 1:
        return
    for p in params:
        if p.grad is not None:
            p.grad.copy_(accelerator.reduce(p.grad, reduction="mean"))


def broadcast_parameters(accelerator: Accelerator, params) -> None:
    """Every process takes process 0's values (what DDP does for its own module at wrap time)."""
    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        for p in params:
            torch.distributed.broadcast(p.data, src=0)


def prepare(accelerator: Accelerator, unet, optimizer, loader, scheduler):
    """accelerate's prepare; a UNet with nothing to train (PPD's adapter alone) gets device and mixed precision
    but no DDP, which refuses a module without trainable parameters."""
    if any(p.requires_grad for p in unet.parameters()):
        return accelerator.prepare(unet, optimizer, loader, scheduler)
    unet = accelerator.prepare_model(unet, evaluation_mode=True)
    return (unet, *accelerator.prepare(optimizer, loader, scheduler))
