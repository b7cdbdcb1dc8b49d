"""Loading the frozen and trainable parts of a Stable Diffusion 1.x/2.x, SDXL, SD3/3.5 or Flux pipeline (hub id or
local diffusers folder). Which one it is comes from the pipeline's ``model_index.json`` (``_class_name``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

SUPPORTED = {"StableDiffusionPipeline": "sd", "StableDiffusionXLPipeline": "sdxl",
             "StableDiffusion3Pipeline": "sd3", "FluxPipeline": "flux"}
FLOW_KINDS = ("sd3", "flux")
# T5 tokens of a flow model's captions when model.max_sequence_length is null: diffusers' SD3 LoRA script trains
# with 77, its Flux script (and Flux-dev's pipeline) with 512.
T5_LENGTH = {"sd3": 77, "flux": 512}


def default_t5_length(pipe) -> int | None:
    """The T5 length a flow pipeline (or a subclass of one) trains with here when model.max_sequence_length is
    null (T5_LENGTH); None for a UNet pipeline. Sampling with it keeps a model's text stream as it trained: SD3's
    pipeline pads T5 to 256 by default, 179 more padding states than diffusers' SD3 LoRA script trains with."""
    kinds = [SUPPORTED[c.__name__] for c in type(pipe).__mro__ if c.__name__ in SUPPORTED]
    return T5_LENGTH.get(kinds[0]) if kinds else None


@dataclass
class SDComponents:
    """A pipeline's parts. ``unet`` is the denoiser: the UNet, or a flow model's transformer (SD3Transformer2DModel,
    FluxTransformer2DModel)."""

    tokenizer: CLIPTokenizer
    text_encoder: CLIPTextModel
    vae: AutoencoderKL
    unet: UNet2DConditionModel
    # the training-time forward process: DDPMScheduler (betas, prediction_type) or FlowMatchEulerDiscreteScheduler
    noise_scheduler: DDPMScheduler
    kind: str = "sd"  # "sd" (1.x/2.x), "sdxl", "sd3" or "flux"
    # SDXL's second tokenizer and text encoder (OpenCLIP bigG); SD3's CLIP-G; Flux's T5 (a families.flow.LazyEncoder)
    tokenizer_2: CLIPTokenizer | None = None
    text_encoder_2: CLIPTextModelWithProjection | None = None
    tokenizer_3: object | None = None  # SD3's T5 tokenizer and encoder (a LazyEncoder; None: the pipeline has none)
    text_encoder_3: object | None = None
    max_sequence_length: int = 77  # T5 tokens of a flow model's captions
    # SDXL: the pipeline's own setting (model_index.json), on for SDXL base: with no negative prompt its
    # unconditional half is zeros, not the encoded empty prompt. Unused for SD.
    force_zeros_for_empty_prompt: bool = True

    @property
    def tokenizers(self):
        """What the data tokenises with: one tokenizer, the list of SDXL's two, or a flow model's JointTokenizer."""
        if self.kind in FLOW_KINDS:
            return joint_tokenizer(self.kind, [self.tokenizer, self.tokenizer_2, self.tokenizer_3],
                                   self.max_sequence_length)
        return [self.tokenizer, self.tokenizer_2] if self.kind == "sdxl" else self.tokenizer


def joint_tokenizer(kind: str, tokenizers: list, max_sequence_length: int):
    """SD3: CLIP-L (77) + CLIP-G (77) + T5 (when present); Flux: CLIP-L (77) + T5 (models/joint_tokenizer.py)."""
    from .joint_tokenizer import JointTokenizer

    present = [t for t in tokenizers if t is not None]
    return JointTokenizer(present, [77] * (len(present) - 1) + [max_sequence_length]
                          if kind == "flux" or len(present) == 3 else [77] * len(present))

SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
SINGLE_FILE_TYPES = {"v1": "sd", "v2": "sd", "xl_base": "sdxl"}  # diffusers' infer_diffusers_model_type names


def is_single_file(pretrained: str) -> bool:
    return pretrained.endswith(SINGLE_FILE_SUFFIXES)


@lru_cache(maxsize=1)
def _single_file_pipeline(path: str, config: str | None):
    """A whole pipeline from one original-format checkpoint (A1111/ComfyUI style), through diffusers'
    ``from_single_file``; ``config``: a diffusers folder or hub id with the component configs (else inferred
    from the checkpoint, which needs the hub). Kept for the one training run that asks twice (tokenizer, weights)."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type, load_single_file_checkpoint

    if not Path(path).is_file():
        raise FileNotFoundError(f"model.pretrained: no such checkpoint file {path}")
    try:
        checkpoint = load_single_file_checkpoint(path)  # safetensors, or a .ckpt through weights_only loading
        model_type = infer_diffusers_model_type(checkpoint)
    except Exception as err:
        raise ValueError(f"{path}: not a readable Stable Diffusion checkpoint ({type(err).__name__}: {err})") from err
    kind = SINGLE_FILE_TYPES.get(model_type)
    if kind is None or "model.diffusion_model.input_blocks.0.0.weight" not in checkpoint:
        raise ValueError(f"{path}: a {model_type!r} checkpoint is not supported; diffalign trains SD 1.x/2.x "
                         "and SDXL base checkpoints")
    return kind, pipeline_class(kind).from_single_file(path, config=config)


def freeze_encoders(parts: SDComponents, device, dtype, replacement_vae: bool = False,
                    text_encoders_train: bool = False) -> None:
    """Frozen VAE and text encoder(s) on ``device`` in ``dtype`` (the training precision). SDXL's own VAE
    overflows in fp16, so it stays float32 unless a replacement VAE (e.g. the fp16-fix) was loaded.
    ``text_encoders_train``: they are about to be fully fine-tuned, so they keep their float32 weights (a round
    trip through ``dtype`` would round the starting point)."""
    from ..families.flow import LazyEncoder

    vae_dtype = torch.float32 if parts.kind == "sdxl" and not replacement_vae else dtype
    parts.vae.requires_grad_(False).eval().to(device, dtype=vae_dtype)
    for frozen in (parts.text_encoder, parts.text_encoder_2, parts.text_encoder_3):
        if isinstance(frozen, LazyEncoder):  # placed when (if ever) it loads
            frozen.place(device, dtype)
        elif frozen is not None:
            frozen.requires_grad_(False).eval().to(device, dtype=torch.float32 if text_encoders_train else dtype)


def cast_frozen_weights(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """The frozen parameters of ``model`` to ``dtype``; trained ones stay as they are (float32).

    diffusers' LoRA scripts keep the frozen UNet in the training precision and the adapter in float32. Under
    autocast the matmuls and convolutions then run as before (autocast casts float32 weights to ``dtype`` at
    every call anyway; only the norms' weights, which autocast computes in float32, are now ``dtype``-rounded),
    while the frozen copy takes half the memory and the per-call weight casts are gone.
    """
    for param in model.parameters():
        if not param.requires_grad and param.is_floating_point():
            param.data = param.data.to(dtype)


def pipeline_kind(pretrained: str, revision: str | None = None) -> str:
    """"sd" or "sdxl", from the pipeline's model_index.json; a clear error for anything else."""
    if is_single_file(pretrained):
        return _single_file_pipeline(pretrained, None)[0]
    name = _model_index(pretrained, revision).get("_class_name")
    if name not in SUPPORTED:
        raise ValueError(f"{pretrained}: a {name} pipeline is not supported; diffalign trains "
                         f"{', '.join(SUPPORTED)} models")
    return SUPPORTED[name]


def sampling_kind(pretrained: str) -> str | None:
    """pipeline_kind for sampling: None (not an error) for a pipeline diffalign does not train, which diffusers may
    still sample (`diffalign eval` compares any pipeline)."""
    try:
        return pipeline_kind(pretrained)
    except ValueError:
        return None


def _model_index(pretrained: str, revision: str | None = None) -> dict:
    """The pipeline folder's (or hub repo's) model_index.json."""
    local = Path(pretrained)
    if local.is_dir():
        index = local / "model_index.json"
    else:
        from huggingface_hub import hf_hub_download

        index = Path(hf_hub_download(pretrained, "model_index.json", revision=revision))
    return json.loads(index.read_text())


def pipeline_class(kind: str):
    """The diffusers pipeline class of a kind ("sd", "sdxl", "sd3" or "flux")."""
    import diffusers

    return getattr(diffusers, {v: k for k, v in SUPPORTED.items()}[kind])


# Names that end so are files a user meant, never hub ids (which may hold dots: "stable-diffusion-3.5-large").
FILE_SUFFIXES = (".safetensors", ".ckpt", ".bin", ".pt", ".pth", ".json", ".yaml", ".yml", ".txt")


def is_hub_id(name: str) -> bool:
    """``name`` or ``owner/name`` by huggingface_hub's repo id rules (one slash at most, [A-Za-z0-9._-], no
    leading ./, ../, / or ~), and not ending in a file suffix."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return not name.lower().endswith(FILE_SUFFIXES)


def _hub_failure(err: Exception, revision: str | None) -> str | None:
    """Why the hub has no pipeline under an id, in a few words; None for a failure of another kind."""
    from huggingface_hub.utils import (EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError,
                                       RevisionNotFoundError)  # where every huggingface_hub version exports them

    reasons = ((LocalEntryNotFoundError, "not in the local hub cache, and the hub cannot be reached (offline?)"),
               (RevisionNotFoundError, f"the hub repo has no revision {revision!r}"),
               (RepositoryNotFoundError, "no such hub repo (or a private/gated one: log in with `hf auth login`)"),
               (EntryNotFoundError, "the hub repo has no model_index.json: not a diffusers pipeline"))
    return next((reason for kind, reason in reasons if isinstance(err, kind)), None)  # first match: subclasses first


def check_pipeline_source(pretrained: str, revision: str | None = None, argument: str = "model.pretrained") -> None:
    """FileNotFoundError (one line, naming ``argument``) unless ``pretrained`` is a diffusers pipeline folder or a
    hub id with a pipeline (online, or in the local cache offline). A mistyped local path used to be taken for a hub
    id and end in a connection traceback from deep inside from_pretrained; a hub id is still tried on the hub."""
    local = Path(pretrained)  # as from_pretrained reads it: "~" unexpanded
    if local.exists():
        if not (local / "model_index.json").is_file():
            raise FileNotFoundError(f"{argument}: {pretrained} is not a diffusers pipeline folder "
                                    "(no model_index.json)")
        return
    if not is_hub_id(pretrained):
        raise FileNotFoundError(f"{argument}: {pretrained} is not a diffusers pipeline folder (no model_index.json): "
                                "no such folder, and not a hub id of the form owner/name")
    from huggingface_hub import hf_hub_download

    try:
        hf_hub_download(pretrained, "model_index.json", revision=revision)  # small, and from_pretrained reads it next
    except Exception as err:
        reason = _hub_failure(err, revision)
        if reason is None:
            raise
        raise FileNotFoundError(f"{argument}: {pretrained}: no such folder, and as a hub id: {reason}") from err


def _check_pipeline_path(pretrained: str, revision: str | None = None) -> None:
    if is_single_file(pretrained):
        return  # checked when read (_single_file_pipeline)
    check_pipeline_source(pretrained, revision)


def load_tokenizer(pretrained: str, revision: str | None = None, max_sequence_length: int | None = None):
    """The pipeline's tokenizer(s) alone (small): the data can be checked before the weights load. SDXL: a list
    of its two tokenizers; SD3/Flux: one JointTokenizer over theirs (T5 cut or padded to ``max_sequence_length``,
    null = T5_LENGTH of the kind)."""
    _check_pipeline_path(pretrained, revision)
    if is_single_file(pretrained):
        _, pipe = _single_file_pipeline(pretrained, None)
        return [pipe.tokenizer, pipe.tokenizer_2] if hasattr(pipe, "tokenizer_2") else pipe.tokenizer
    first = CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer", revision=revision)
    kind = pipeline_kind(pretrained, revision)
    if kind == "sdxl":
        return [first, CLIPTokenizer.from_pretrained(pretrained, subfolder="tokenizer_2", revision=revision)]
    if kind in FLOW_KINDS:
        from transformers import T5TokenizerFast

        index = _model_index(pretrained, revision)
        names = ("tokenizer_2", "tokenizer_3") if kind == "sd3" else ("tokenizer_2",)
        rest = [None if (index.get(name) or [None])[0] is None else
                (T5TokenizerFast if name == "tokenizer_3" or kind == "flux" else CLIPTokenizer).from_pretrained(
                    pretrained, subfolder=name, revision=revision) for name in names]
        return joint_tokenizer(kind, [first] + rest, max_sequence_length or T5_LENGTH[kind])
    return first


def load_sd_components(pretrained: str, revision: str | None = None, variant: str | None = None,
                       tokenizer=None, vae: str | None = None, max_sequence_length: int | None = None
                       ) -> SDComponents:
    """Each component from its subfolder, as diffusers' training scripts do. Safetensors weights are preferred.

    ``tokenizer``: what load_tokenizer returned, if already loaded. ``vae``: another VAE (hub id or folder) in
    place of the pipeline's, e.g. madebyollin/sdxl-vae-fp16-fix for SDXL in fp16.
    """
    _check_pipeline_path(pretrained, revision)
    if is_single_file(pretrained):
        return _components_of_single_file(pretrained, vae)
    common = dict(revision=revision)
    tokenizers = tokenizer or load_tokenizer(pretrained, revision, max_sequence_length)
    if pipeline_kind(pretrained, revision) in FLOW_KINDS:
        return _flow_components(pretrained, revision, variant, tokenizers, vae)
    kind = "sdxl" if isinstance(tokenizers, list) else "sd"
    second = {}
    if kind == "sdxl":
        second = dict(tokenizer_2=tokenizers[1], text_encoder_2=CLIPTextModelWithProjection.from_pretrained(
            pretrained, subfolder="text_encoder_2", variant=variant, **common),
            force_zeros_for_empty_prompt=bool(_model_index(pretrained, revision).get(
                "force_zeros_for_empty_prompt", True)))  # diffusers' default when the index omits it
    return SDComponents(
        kind=kind, **second,
        tokenizer=tokenizers[0] if kind == "sdxl" else tokenizers,
        text_encoder=CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", variant=variant, **common),
        vae=AutoencoderKL.from_pretrained(vae) if vae else AutoencoderKL.from_pretrained(
            pretrained, subfolder="vae", variant=variant, **common),
        unet=UNet2DConditionModel.from_pretrained(pretrained, subfolder="unet", variant=variant, **common),
        noise_scheduler=DDPMScheduler.from_pretrained(pretrained, subfolder="scheduler", **common),
    )


def _flow_components(pretrained: str, revision, variant, joint, vae: str | None) -> SDComponents:
    """SD3 / Flux parts, each from its subfolder as diffusers' SD3/Flux training scripts load them; the T5 encoder
    is a LazyEncoder, loaded only when a caption is encoded (never, with the encoding cache warm)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxTransformer2DModel, SD3Transformer2DModel
    from transformers import T5EncoderModel

    from ..families.flow import LazyEncoder

    kind = pipeline_kind(pretrained, revision)
    common = dict(revision=revision, variant=variant)

    def t5(subfolder):
        return LazyEncoder(lambda: T5EncoderModel.from_pretrained(pretrained, subfolder=subfolder, **common))

    if kind == "sd3":
        has_t5 = len(joint.tokenizers) == 3
        texts = dict(text_encoder=CLIPTextModelWithProjection.from_pretrained(pretrained, subfolder="text_encoder",
                                                                             **common),
                     text_encoder_2=CLIPTextModelWithProjection.from_pretrained(pretrained,
                                                                               subfolder="text_encoder_2", **common),
                     text_encoder_3=t5("text_encoder_3") if has_t5 else None,
                     tokenizer_2=joint.tokenizers[1], tokenizer_3=joint.tokenizers[2] if has_t5 else None)
        transformer = SD3Transformer2DModel.from_pretrained(pretrained, subfolder="transformer", **common)
    else:
        texts = dict(text_encoder=CLIPTextModel.from_pretrained(pretrained, subfolder="text_encoder", **common),
                     text_encoder_2=t5("text_encoder_2"), tokenizer_2=joint.tokenizers[1])
        transformer = FluxTransformer2DModel.from_pretrained(pretrained, subfolder="transformer", **common)
    return SDComponents(
        kind=kind, tokenizer=joint.tokenizers[0], **texts, max_sequence_length=joint.lengths[-1],
        vae=AutoencoderKL.from_pretrained(vae) if vae else AutoencoderKL.from_pretrained(
            pretrained, subfolder="vae", **common),
        unet=transformer,
        noise_scheduler=FlowMatchEulerDiscreteScheduler.from_pretrained(pretrained, subfolder="scheduler",
                                                                        revision=revision))


def _components_of_single_file(path: str, vae: str | None) -> SDComponents:
    kind, pipe = _single_file_pipeline(path, None)
    _single_file_pipeline.cache_clear()  # the components now belong to the run; don't keep a second reference
    second = dict(tokenizer_2=pipe.tokenizer_2, text_encoder_2=pipe.text_encoder_2,
                  force_zeros_for_empty_prompt=bool(pipe.config.force_zeros_for_empty_prompt)) \
        if kind == "sdxl" else {}
    return SDComponents(kind=kind, tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder,
                        vae=AutoencoderKL.from_pretrained(vae) if vae else pipe.vae, unet=pipe.unet,
                        noise_scheduler=DDPMScheduler.from_config(pipe.scheduler.config), **second)
