"""The step of each ``step_kind``, built with what it reads: ``build_step(...)(unet, batch) -> (loss, metrics)``.

    denoising   core/step.TrainStep: per-sample errors of policy and reference (through the encoding cache when
                data.cache_encodings), the objective's row_loss, train.empty_prompt_anchor's term
    reward      core/reward_step.RewardStep: sample with the policy, decode, score with the frozen reward model

Both expose ``flush()`` (write pending cache entries, before a checkpoint) and ``summary()`` (their counters).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
from accelerate import Accelerator

from ..config import Config
from ..core.step import TrainStep
from ..families import family_for
from ..models.conditioning import conditioner_for
from ..models.segment_encoding import encoder_pairs

logger = logging.getLogger(__name__)


class DenoisingStep(TrainStep):
    """TrainStep with its encoding cache's bookkeeping."""

    def __init__(self, *args, cache=None, **kwargs):
        super().__init__(*args, cache=cache, **kwargs)
        self.cache = cache

    def flush(self) -> None:
        if self.cache is not None:
            self.cache.flush()

    def summary(self) -> dict:
        if self.cache is None:
            return {}
        return {"encoding_cache": {"directory": str(self.cache.directory), "hits": self.cache.hits,
                                   "misses": self.cache.misses, "encoder_calls": self.encoders.calls}}


def denoising_step(cfg: Config, objective, parts, accelerator: Accelerator, trained, weight_dtype):
    cache = open_encoding_cache(cfg, weight_dtype, accelerator.process_index) if cfg.data.cache_encodings else None
    family = family_for(parts, cfg.train, cfg.model)
    return DenoisingStep(objective, parts.vae, family, trained.reference, accelerator,
                         cache=cache, user_adapter=trained.user_adapter, timestep_range=cfg.train.timestep_range,
                         text_source=text_source(cfg, objective, parts, accelerator, trained, family.conditioner))


def text_source(cfg: Config, objective, parts, accelerator: Accelerator, trained, conditioner):
    """Where the step's text states come from (core/text_sources.py); None: the frozen encoders (the step's
    default, through the encoding cache). config.validate has refused the combinations that cannot work (a trained
    or segment-encoded text with the cache, segments with a trained text encoder)."""
    from ..core.text_sources import SegmentText, TrainedText

    if trained.trained_text is not None:
        source = TrainedText(trained.trained_text, conditioner)
        if cfg.train.empty_prompt_anchor:  # before any resume: it records the starting encoder's states
            from ..data.examples import token_ids

            if parts.kind == "sdxl" and parts.force_zeros_for_empty_prompt:
                logger.warning("train.empty_prompt_anchor on an SDXL model with force_zeros_for_empty_prompt: its "
                               "pipeline feeds zeros, not the empty prompt's states, to the unconditional branch, "
                               "so the anchor holds states the pipeline does not use")
            source.anchor_empty_prompt(token_ids(parts.tokenizers, ""), cfg.train.empty_prompt_anchor)
        return source
    if objective.text_encoding == "segments":
        return SegmentText(encoder_pairs(parts), objective.max_text_length, accelerator.device, objective.segmenter)
    return None


def reward_step(cfg: Config, objective, parts, accelerator: Accelerator, trained, weight_dtype):
    """Reward fine-tuning's step with its frozen reward model on the training device."""
    from ..core.reward_step import RewardStep
    from ..scorers import create_scorer

    if cfg.train.gradient_checkpointing:
        # The reward backpropagates through VAE.decode at full resolution: its activations, not the UNet's,
        # dominate memory at 512/1024 px. Checkpointing recomputes them (the VAE stays frozen).
        parts.vae.enable_gradient_checkpointing()
    reward = create_scorer("denscore", device=str(accelerator.device), **objective.reward_options())
    return RewardStep(objective, parts, conditioner_for(parts), accelerator, cfg.data.resolution, reward)


STEP_BUILDERS = {"denoising": denoising_step, "reward": reward_step}


def build_step(cfg: Config, objective, parts, accelerator: Accelerator, trained, weight_dtype):
    return STEP_BUILDERS[objective.step_kind](cfg, objective, parts, accelerator, trained, weight_dtype)


def open_encoding_cache(cfg: Config, dtype: torch.dtype, process_index: int = 0):
    """The encoding cache of this model, data and transform (data/encoding_cache.py)."""
    from ..data.encoding_cache import EncodingCache, default_cache_root, encoders_fingerprint

    d = cfg.data
    source = Path(d.source)
    files = sorted(source.rglob("*.parquet")) if source.is_dir() else [source] if source.is_file() else []
    identity = {"source": str(source.resolve()) if files else d.source, "split": d.split,
                "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files],
                "resolution": d.resolution, "random_crop": d.random_crop, "random_flip": d.random_flip,
                "vae": cfg.model.vae}
    if d.random_crop:
        logger.warning("data.cache_encodings with data.random_crop: every crop is a new view, so the cache "
                       "rarely hits; turn random_crop off to gain from it")
    root = Path(d.cache_dir) if d.cache_dir else default_cache_root()
    fingerprint = encoders_fingerprint(cfg.model.pretrained, cfg.model.revision, cfg.model.variant, dtype, identity)
    return EncodingCache(root / fingerprint, writer=f"rank{process_index}")
