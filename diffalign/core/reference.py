"""The reference model, entered through a context manager.

LoRA training: the reference is the same UNet with its adapters switched off; they are switched back on in a
``finally`` so an exception inside can never leave the policy silently disabled.
Full fine-tuning: the reference is a frozen copy, passed in.
PPD: the user adapter is switched off too (``also_disable``: objects with a ``disabled()`` context), with or
without a LoRA beside it.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager


@contextmanager
def reference_unet(policy, frozen_copy=None, also_disable=()):
    """Yield the module that computes reference errors; run its forward under ``torch.no_grad()``."""
    if frozen_copy is not None:
        yield frozen_copy
        return
    has_lora = getattr(policy, "_hf_peft_config_loaded", False)
    if not has_lora and not also_disable:
        raise ValueError("the policy UNet has no adapters: pass the frozen reference copy for full fine-tuning")
    with ExitStack() as stack:
        for adapter in also_disable:
            stack.enter_context(adapter.disabled())
        if has_lora:
            policy.disable_adapters()
            stack.callback(policy.enable_adapters)
        yield policy
