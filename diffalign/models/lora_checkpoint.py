"""LoRA-only accelerate checkpoints: save and restore the adapter weights, not the frozen base UNet.

Without these hooks every ``save_state`` writes the whole UNet (about 3.4 GB for SD1.5) although only the
adapter (a few MB) changes. Optimizer, scheduler and RNG states are still saved by accelerate as usual.
"""

from __future__ import annotations

from pathlib import Path

from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

ADAPTER_FILE = "unet_lora_adapter.safetensors"


def register_lora_checkpointing(accelerator, unet) -> None:
    """Make ``accelerator.save_state/load_state`` store only ``unet``'s LoRA weights for that model."""
    target = accelerator.unwrap_model(unet)

    def save(output_dir):
        if accelerator.is_main_process:
            state = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(target).items()}
            save_file(state, str(Path(output_dir) / ADAPTER_FILE))

    def load(input_dir):
        path = Path(input_dir) / ADAPTER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{input_dir} holds no {ADAPTER_FILE}: not a LoRA checkpoint of this run")
        result = set_peft_model_state_dict(target, load_file(str(path)))
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"{path}: keys that fit no adapter weight: {result.unexpected_keys[:5]}")

    _replace_model_state(accelerator, unet, save, load)


def register_frozen_unet_checkpointing(accelerator, unet) -> None:
    """Leave a fully frozen ``unet`` out of ``save_state``/``load_state`` (it is the base, unchanged; what trains
    is registered separately, e.g. SoftREPA's tokens)."""
    _replace_model_state(accelerator, unet, lambda output_dir: None, lambda input_dir: None)


def _replace_model_state(accelerator, unet, save, load) -> None:
    """accelerate hooks: for ``unet``, run ``save(dir)`` / ``load(dir)`` instead of its full state dict."""
    target = accelerator.unwrap_model(unet)

    def save_hook(models, weights, output_dir):
        for i, model in enumerate(models):
            if accelerator.unwrap_model(model) is target:
                save(output_dir)
                weights.pop(i)  # accelerate then skips writing this model's full state dict
                break

    def load_hook(models, input_dir):
        for i, model in enumerate(models):
            if accelerator.unwrap_model(model) is target:
                load(input_dir)
                models.pop(i)  # accelerate then does not load a full state dict into it
                break

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)
