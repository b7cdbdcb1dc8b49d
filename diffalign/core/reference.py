"""The reference model, entered through a context manager.

LoRA training: the reference is the same UNet with its adapters switched off; they are switched back on in a
``finally`` so an exception inside can never leave the policy silently disabled.
Full fine-tuning: the reference is a frozen copy, passed in.
"""

from __future__ import annotations

from contextlib import contextmanager


@contextmanager
def reference_unet(policy, frozen_copy=None):
    """Yield the module that computes reference errors; run its forward under ``torch.no_grad()``."""
    if frozen_copy is not None:
        yield frozen_copy
        return
    if not getattr(policy, "_hf_peft_config_loaded", False):
        raise ValueError("the policy UNet has no adapters: pass the frozen reference copy for full fine-tuning")
    policy.disable_adapters()
    try:
        yield policy
    finally:
        policy.enable_adapters()
