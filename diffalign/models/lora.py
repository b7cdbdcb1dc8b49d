"""LoRA on the UNet (and optionally the text encoders) through peft, and its export in the format diffusers'
``load_lora_weights`` reads."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from diffusers import StableDiffusionPipeline
from diffusers.utils import convert_state_dict_to_diffusers
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from .trained_text import TEXT_ENCODER_NAMES, TrainedTextEncoders

LORA_FILE = "pytorch_lora_weights.safetensors"


def _lora_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA weight file (safetensors, or a torch pickle read with weights_only), as diffusers would
    read them; ValueError naming the file when it cannot be read at all."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # safetensors and torch.load each raise their own kinds for a corrupt file
        reason = next(iter(str(err).splitlines()), "").split(". ")[0]  # torch.load's advice runs on for lines
        raise ValueError(f"{path}: not a readable LoRA weight file ({type(err).__name__}: {reason})") from err
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)} if isinstance(state, dict) else {}


def check_lora_file(path: str | Path) -> None:
    """ValueError unless ``path`` holds LoRA tensors, all finite. diffusers loads either kind without a word: a file
    with no tensors as the base model itself, NaN/inf weights (a training run that diverged) as images of noise, and
    an evaluation would score those as the adapter's."""
    path = Path(path)
    tensors = _lora_tensors(path)
    if not tensors:
        raise ValueError(f"{path}: a LoRA file with no tensors (an interrupted or empty export?)")
    bad = sorted(k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all())
    if bad:
        raise ValueError(f"{path}: {len(bad)} of {len(tensors)} LoRA tensors hold NaN/inf values (first: {bad[0]}); "
                         "did the training run that wrote it diverge?")


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


def load_lora_into(unet, path: str | Path) -> None:
    """Start ``unet``'s LoRA adapter ("default", attached with the same rank and targets) from an exported LoRA:
    ``pytorch_lora_weights.safetensors`` (or its folder) as ``save_lora`` writes it, in diffusers' or PEFT's key
    names. Its text-encoder weights, if any, are not read. ValueError naming the file on any mismatch."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    from .lora_checkpoint import LoraAdapterState

    path = Path(path)
    path = path / LORA_FILE if path.is_dir() else path
    if not path.is_file():
        raise ValueError(f"lora.init_from: {path} does not exist")
    tensors = _lora_tensors(path)
    prefix = next((p for p in ("unet.", "transformer.") if any(k.startswith(p) for k in tensors)), None)
    if prefix is None:
        raise ValueError(f"lora.init_from: {path} holds no unet.* or transformer.* LoRA weights")
    state = convert_unet_state_dict_to_peft({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    try:
        LoraAdapterState(unet).load_state_dict({k.replace(".default.", "."): v for k, v in state.items()})
    except ValueError as err:
        raise ValueError(f"lora.init_from {path}: {err}") from err


class TextEncoderLora(TrainedTextEncoders):
    """LoRA adapters on a model's text encoder(s) (SD: one; SDXL: two), as diffusers' ``--train_text_encoder``.

    The reference's text states are the same encoders' with the adapters off (``disabled()``, back on in a
    ``finally``).
    """

    def __init__(self, text_encoders: list, rank: int, alpha: float, target_modules: list[str]):
        super().__init__(text_encoders)
        for encoder in self.text_encoders:
            encoder.requires_grad_(False)
            encoder.add_adapter(LoraConfig(r=rank, lora_alpha=alpha, init_lora_weights="gaussian",
                                           target_modules=list(target_modules)))
            trained = [p for p in encoder.parameters() if p.requires_grad]
            if not trained:
                raise ValueError(f"no text encoder module matched lora.text_encoder_target_modules="
                                 f"{list(target_modules)}")
            for p in trained:  # trained in float32 even when the frozen encoder runs in fp16/bf16
                p.data = p.data.float()
            self.params += trained

    @contextmanager
    def disabled(self):
        for encoder in self.text_encoders:
            encoder.disable_adapters()
        try:
            yield self
        finally:
            for encoder in self.text_encoders:
                encoder.enable_adapters()

    def encode(self, conditioner, input_ids: torch.Tensor, reference: bool = False) -> tuple[torch.Tensor, ...]:
        if not reference:
            return conditioner.encode(input_ids)
        with self.disabled():
            return conditioner.encode(input_ids)

    def encoder_state(self, encoder) -> dict[str, torch.Tensor]:
        return get_peft_model_state_dict(encoder)

    def load_encoder_state(self, name: str, encoder, state: dict[str, torch.Tensor]) -> None:
        from peft.utils import set_peft_model_state_dict

        expected = get_peft_model_state_dict(encoder)
        if set(state) != set(expected):
            raise ValueError(f"{name} LoRA checkpoint keys do not match this run's adapter "
                             f"(missing {sorted(set(expected) - set(state))[:3]}, "
                             f"unexpected {sorted(set(state) - set(expected))[:3]})")
        set_peft_model_state_dict(encoder, state)


def save_lora(unet, out_dir: str | Path, pipeline_cls=StableDiffusionPipeline, is_main_process: bool = True,
              text_lora: TextEncoderLora | None = None) -> Path:
    """Write ``pytorch_lora_weights.safetensors`` with the adapter metadata (rank, alpha, targets); with
    ``text_lora``, the text encoders' adapters too (``text_encoder.*``/``text_encoder_2.*`` keys, which
    ``load_lora_weights`` loads into the pipeline's text encoders). ``unet``: the denoiser; a flow pipeline's
    (SD3, Flux: ``pipeline_cls.transformer_name``) is saved as ``transformer.*`` in PEFT's names, as diffusers'
    SD3/Flux LoRA scripts save it.

    Without the metadata a LoRA whose alpha differs from its rank reloads with the wrong scale.
    """
    peft_layers = get_peft_model_state_dict(unet)
    denoiser = "transformer" if hasattr(pipeline_cls, "transformer_name") else "unet"
    layers = peft_layers if denoiser == "transformer" else convert_state_dict_to_diffusers(peft_layers)
    if any(".lora_A." in k or ".lora_B." in k for k in layers):
        # diffusers renames only the attention projections (to_q/k/v/out.0); with other targets (conv1, ff.net.0.proj,
        # proj_in...) the dict would mix two formats, and load_lora_weights picks the format from the first key
        # alone, silently dropping the other kind. Such a LoRA is saved all in PEFT's format, which it loads as is.
        layers = peft_layers
    extra = {}
    if text_lora is not None:
        for name, encoder in zip(TEXT_ENCODER_NAMES, text_lora.text_encoders):
            layers_te = convert_state_dict_to_diffusers(get_peft_model_state_dict(encoder))
            # diffusers renames only q/k/v/out_proj; any other target (fc1, fc2) keeps PEFT's names, and a dict of
            # those alone is one diffusers' text-encoder loader cannot recognise. Its generic names load for all.
            extra[f"{name}_lora_layers"] = {k.replace(".lora_A.", ".lora_linear_layer.down.")
                                            .replace(".lora_B.", ".lora_linear_layer.up."): v
                                            for k, v in layers_te.items()}
            extra[f"{name}_lora_adapter_metadata"] = encoder.peft_config["default"].to_dict()
    pipeline_cls.save_lora_weights(out_dir, is_main_process=is_main_process, safe_serialization=True,
                                   **{f"{denoiser}_lora_layers": layers,
                                      f"{denoiser}_lora_adapter_metadata": unet.peft_config["default"].to_dict()},
                                   **extra)
    return Path(out_dir) / LORA_FILE
