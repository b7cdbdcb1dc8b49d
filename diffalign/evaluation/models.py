"""The models an evaluation compares: the base, and the base plus each adapter.

An adapter is what diffalign's trainer writes (and what diffusers loads): a LoRA folder or file
(``pytorch_lora_weights.safetensors``), or a full fine-tune's folder with a ``unet/`` subfolder. Each model has a
fingerprint of everything that decides its images, so cached generations are reused only for the same weights.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch

from ..models.trained_text import TEXT_ENCODER_NAMES

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


@dataclass(frozen=True)
class ModelSpec:
    name: str  # shown in reports; "base" for the base model
    base: str  # hub id or local diffusers folder
    adapter: str | None = None  # LoRA folder/file, or a folder with unet/ (full fine-tune)
    lora_scale: float = 1.0

    def fingerprint(self) -> str:
        """Hash of the base's identity and the adapter's weight bytes: a retrained adapter gets a new cache."""
        h = hashlib.sha256(f"{self.base}|{self.lora_scale}".encode())
        for path in _weight_files(self.base):  # local base: size and mtime (hashing GBs on every run is too slow)
            stat = path.stat()
            h.update(f"{path.name}|{stat.st_size}|{stat.st_mtime_ns}".encode())
        if self.adapter:
            for path in _adapter_files(self.adapter):
                h.update(path.name.encode())
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 24), b""):
                        h.update(block)
        return h.hexdigest()[:16]


def _weight_files(path: str) -> list[Path]:
    p = Path(path)
    if p.is_file():
        return [p]
    if not p.is_dir():
        return []  # a hub id: its name (in the hash) identifies it
    return sorted(f for f in p.rglob("*") if f.suffix in WEIGHT_SUFFIXES and f.is_file())


def _adapter_files(path: str) -> list[Path]:
    """Only what loading reads: the unet/ (and text_encoder/, text_encoder_2/) folders of a full fine-tune, else
    the top-level LoRA weight file(s) — not the checkpoints or reports a training folder also holds."""
    p = Path(path)
    if p.is_file():
        return [p]
    if (p / "unet").is_dir():
        return [f for name in ("unet",) + TEXT_ENCODER_NAMES for f in _weight_files(str(p / name))]
    files = sorted(f for f in p.glob("*") if f.suffix in WEIGHT_SUFFIXES and f.is_file())
    if not files:
        raise FileNotFoundError(f"adapter folder {p} holds no weight file (e.g. pytorch_lora_weights.safetensors) "
                                "and no unet/ folder")
    return files


def parse_adapter(text: str, base: str) -> ModelSpec:
    """``PATH``, ``NAME=PATH`` or ``NAME=PATH@SCALE`` (a LoRA scale) -> ModelSpec."""
    name, _, rest = text.rpartition("=") if "=" in text else ("", "", text)
    path, _, scale = rest.partition("@")
    if not Path(path).exists():
        raise FileNotFoundError(f"adapter {path!r} not found (expected a LoRA folder/file or a folder with unet/)")
    name = name or Path(path).resolve().name
    if name == "base":
        raise ValueError("the name 'base' is reserved for the base model; name the adapter NAME=PATH")
    return ModelSpec(name, base, path, float(scale) if scale else 1.0)


def _is_lora(adapter: Path) -> bool:
    """What load_pipeline loads with load_lora_weights: not a full fine-tune, PPD user adapter or soft tokens."""
    return adapter.is_file() or not any((adapter / name).exists()
                                        for name in ("unet", "user_adapter.json", "soft_tokens.json"))


def check_adapter_weights(spec: ModelSpec) -> None:
    """Refuse, before anything is sampled, a LoRA whose files hold no tensors or NaN/inf ones (see check_lora_file)."""
    from ..models.lora import check_lora_file  # imports peft and diffusers' pipelines: only when needed

    if spec.adapter and _is_lora(Path(spec.adapter)):
        for path in _adapter_files(spec.adapter):
            check_lora_file(path)


def trained_t5_length(specs: list[ModelSpec]) -> int | None:
    """The T5 length (``model.max_sequence_length``) the adapters among ``specs`` trained with, read from the
    config.json their training run wrote beside them; None when none says. Adapters that disagree are refused:
    every model of one comparison is sampled with the same settings."""
    import json

    lengths = {}
    for spec in specs:
        saved = Path(spec.adapter) / "config.json" if spec.adapter else None
        if saved is not None and saved.is_file():
            length = json.loads(saved.read_text()).get("model", {}).get("max_sequence_length")
            if length is not None:
                lengths[spec.name] = length
    if len(set(lengths.values())) > 1:
        raise ValueError(f"the adapters trained with different T5 lengths ({lengths}); compare them in separate "
                         "evaluations or choose one with --max-sequence-length")
    return next(iter(lengths.values()), None)


def load_pipeline(spec: ModelSpec, device: str = "cpu", dtype: torch.dtype = torch.float32):
    """A diffusers pipeline of the base with the adapter applied the way a user would load it."""
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    pipe = DiffusionPipeline.from_pretrained(spec.base, dtype=dtype)
    if spec.adapter:
        adapter = Path(spec.adapter)
        if (adapter / "unet").is_dir():  # a full fine-tune, with its text encoder(s) when they trained too
            pipe.unet = UNet2DConditionModel.from_pretrained(adapter / "unet", dtype=dtype)
            for name in TEXT_ENCODER_NAMES:
                if (adapter / name).is_dir():
                    setattr(pipe, name, type(getattr(pipe, name)).from_pretrained(adapter / name, dtype=dtype))
        elif (adapter / "user_adapter.json").is_file():  # PPD: its images depend on a user, which eval has none of
            raise ValueError(f"{adapter} is a PPD user adapter: its images depend on a user. Measure it with "
                             "experiments/ppd_personas.py, or sample with diffalign.pipelines.personalized_sd")
        elif (adapter / "soft_tokens.json").is_file():  # SoftREPA
            from ..models.soft_tokens import load_soft_tokens

            load_soft_tokens(pipe.transformer if hasattr(pipe, "transformer") else pipe.unet, adapter)  # SD3: joint
        else:
            pipe.load_lora_weights(str(adapter), adapter_name="evaluated")  # not "eval": that is a Module method
            if spec.lora_scale != 1.0:
                pipe.set_adapters(["evaluated"], adapter_weights=[spec.lora_scale])
    return pipe.to(device)
