"""Generating the evaluation images, with a cache so that a rerun (another scorer, a new adapter) only samples
what is missing.

Images are lossless PNGs under ``<cache>/<model name>-<fingerprint>-<settings hash>/<case hash>.png``; a case is
(prompt, seed) and its image depends on nothing else (one generator per case, see sampling.generate), so
cached and fresh images are interchangeable and the same seeds serve every model compared.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..models.loading import sampling_kind
from .models import ModelSpec, load_pipeline
from ..ranges import check_ranges, count, fraction, guidance, image_side
from ..models.segment_encoding import SEGMENTERS
from .sampling import generate

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SamplingSettings:
    num_inference_steps: int = 25
    guidance_scale: float = 5.0
    height: int | None = None  # None: the pipeline's default resolution
    width: int | None = None
    dtype: str = "float32"
    text_encoding: str = "clip"  # "clip": the pipeline's own (77 tokens, the rest cut); "segments": LongAlign's
    max_text_length: int = 240  # segment encoding: rows of text states (start + content tokens, then filler)
    segmenter: str = "diffalign"  # segment encoding: "diffalign" or "authors" (models/segment_encoding.py)
    # diffusers' guidance_rescale φ (Lin et al., 2024, eq. 15-16): pulls the guided prediction's std back toward the
    # conditional one; 0.7 is the paper's value for zero-terminal-SNR / v-prediction models, 0 is plain CFG.
    guidance_rescale: float = 0.0
    # SD3/Flux: T5 tokens per prompt. None: the length the adapters trained with (evaluate reads their run's
    # config.json), else the family's training default (models/loading.T5_LENGTH: SD3 77, Flux 512), never SD3's
    # pipeline default (256); a UNet pipeline has no T5 and refuses a value
    max_sequence_length: int | None = None

    def __post_init__(self):
        check_ranges(num_inference_steps=(count, self.num_inference_steps),
                     guidance_scale=(guidance, self.guidance_scale), guidance_rescale=(fraction, self.guidance_rescale),
                     height=(image_side, self.height), width=(image_side, self.width),
                     max_text_length=(count, self.max_text_length),
                     max_sequence_length=(count, self.max_sequence_length))
        if self.segmenter not in SEGMENTERS:
            raise ValueError(f"segmenter: expected one of {SEGMENTERS}; got {self.segmenter!r}")

    def for_kind(self, kind: str | None) -> "SamplingSettings":
        """These settings for a pipeline of ``kind`` (models/loading.SUPPORTED's values, None for another
        pipeline): a flow model's T5 length made concrete (so it is in the cache key); a T5 length for a UNet
        refused."""
        from ..models.loading import FLOW_KINDS, T5_LENGTH

        if kind is None:  # a pipeline diffalign does not train: sampled with its own defaults and what was given
            return self
        if kind not in FLOW_KINDS:
            if self.max_sequence_length is not None:
                raise ValueError(f"max_sequence_length ({self.max_sequence_length}) is the T5 length of SD3/Flux "
                                 f"prompts; a {kind} pipeline has no T5 encoder")
            return self
        return replace(self, max_sequence_length=self.max_sequence_length or T5_LENGTH[kind])

    def key(self) -> str:
        fields = asdict(self)
        # Plain CFG keeps the key it had before the option, so caches stay valid; at guidance_scale <= 1 diffusers
        # runs no CFG and the rescale changes nothing, so it shares plain CFG's images.
        if not fields["guidance_rescale"] or self.guidance_scale <= 1:
            del fields["guidance_rescale"]
        if fields["segmenter"] == "diffalign":  # the key it had before the option
            del fields["segmenter"]
        if fields["max_sequence_length"] is None:  # UNets (for_kind leaves flow models a concrete length)
            del fields["max_sequence_length"]
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]



def case_key(prompt: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}|{prompt}".encode()).hexdigest()[:20]


def _read_cached(path: Path) -> np.ndarray | None:
    """A cached image, or None (to sample it again) when the file is unreadable: a cache is disposable, and an
    image truncated by a full disk or a copy gone wrong must not end the evaluation (this code writes atomically)."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as err:  # PIL reports a truncated or corrupt PNG as any of these
        log.warning("cached image %s is unreadable (%s); sampling it again", path, err)
        return None


def images_for(spec: ModelSpec, prompts: list[str], seeds: list[int], settings: SamplingSettings,
               cache_root: Path | None, device: str = "cpu", batch_size: int = 16,
               progress: bool = True) -> tuple[np.ndarray, int]:
    """uint8 images [N, H, W, 3] of ``spec`` for the N cases, and how many came from the cache.

    ``cache_root=None`` disables the cache. The pipeline is only loaded when some case is missing.
    """
    settings = settings.for_kind(sampling_kind(spec.base))
    folder = cache_root / f"{spec.name}-{spec.fingerprint()}-{settings.key()}" if cache_root else None
    files = [folder / f"{case_key(p, s)}.png" for p, s in zip(prompts, seeds)] if folder else [None] * len(prompts)
    images = [_read_cached(f) if f is not None and f.is_file() else None for f in files]
    missing = [i for i, image in enumerate(images) if image is None]
    if missing:
        pipe = load_pipeline(spec, device, getattr(torch, settings.dtype))
        call = {k: v for k, v in (("height", settings.height), ("width", settings.width),
                                  ("max_sequence_length", settings.max_sequence_length)) if v}
        if settings.text_encoding == "segments":
            from ..pipelines.long_prompt import as_long_prompt_pipeline

            pipe = as_long_prompt_pipeline(pipe, settings.max_text_length, settings.segmenter)
        fresh = generate(pipe, [prompts[i] for i in missing], [seeds[i] for i in missing],
                         settings.num_inference_steps, settings.guidance_scale, batch_size=batch_size,
                         progress=progress, guidance_rescale=settings.guidance_rescale, **call)
        if folder:
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "model.json").write_text(json.dumps({**asdict(spec), "settings": asdict(settings)}, indent=2))
        for i, image in zip(missing, fresh):
            images[i] = image
            if folder:
                tmp = files[i].with_suffix(".tmp.png")
                Image.fromarray(image).save(tmp)
                tmp.replace(files[i])  # atomic: an interrupted run never leaves a half-written image behind
        del pipe
    return np.stack(images), len(prompts) - len(missing)
