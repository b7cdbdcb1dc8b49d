"""A UNet LoRA's part of a training checkpoint: the adapter weights, never the frozen base UNet.

Saving the whole UNet each time would write about 3.4 GB for SD1.5 although only the adapter (a few MB) changes.
``checkpoint_state.save_parts`` writes ``state_dict()`` as ``unet_lora_adapter.safetensors``.
"""

from __future__ import annotations

import torch
from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

ADAPTER_PART = "unet_lora_adapter"  # the checkpoint file's stem


class LoraAdapterState:
    """state_dict()/load_state_dict() of ``unet``'s LoRA weights in PEFT's key format (``unet``: unwrapped)."""

    def __init__(self, unet: torch.nn.Module):
        self.unet = unet

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(get_peft_model_state_dict(self.unet))

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        current = self.state_dict()
        expected = set(current)
        if set(state) != expected:  # another rank or target list: a different run, not damage
            missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
            raise ValueError(f"the checkpoint's LoRA has other weights than this run's (missing {missing[:3]}, "
                             f"unexpected {extra[:3]}): lora.rank or lora.target_modules differ")
        for key, value in state.items():
            if value.shape != current[key].shape:
                raise ValueError(f"the checkpoint's LoRA weight {key} is {tuple(value.shape)}, this run's is "
                                 f"{tuple(current[key].shape)}: lora.rank differs")
        set_peft_model_state_dict(self.unet, state)
