"""LoRA on the UNet through peft, and its export in the format diffusers' ``load_lora_weights`` reads."""

from __future__ import annotations

from pathlib import Path

from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

LORA_FILE = "pytorch_lora_weights.safetensors"


def attach_lora(unet, rank: int, alpha: float, target_modules: list[str]) -> list:
    """Freeze the UNet, add a LoRA adapter ("default"); return the trainable (LoRA) parameters.

    Gaussian init of A and zero init of B, so the adapted UNet starts equal to the base (policy == reference).
    """
    unet.requires_grad_(False)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                target_modules=list(target_modules)))
    params = [p for p in unet.parameters() if p.requires_grad]
    if not params:
        raise ValueError(f"no UNet module matched lora.target_modules={list(target_modules)}")
    return params


def save_lora(unet, out_dir: str | Path, pipeline_cls=StableDiffusionPipeline, is_main_process: bool = True) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` with the adapter metadata (rank, alpha, targets).

    Without the metadata a LoRA whose alpha differs from its rank reloads with the wrong scale.
    """
    layers = convert_state_dict_to_diffusers(get_peft_model_state_dict(unet))
    pipeline_cls.save_lora_weights(out_dir, unet_lora_layers=layers, is_main_process=is_main_process,
                                   unet_lora_adapter_metadata=unet.peft_config["default"].to_dict(),
                                   safe_serialization=True)
    return Path(out_dir) / LORA_FILE
