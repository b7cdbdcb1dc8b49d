"""The training data an objective needs, chosen by its ``pair_axis`` (objectives.base): dataset, sampler, collate."""

from __future__ import annotations

from ..config import DataConfig
from .captioned import CaptionedImages, collate_all_combinations, collate_caption_pairs, collate_captioned
from .feedback import FeedbackImages, collate_singles
from .pairs import PreferencePairs, collate_pairs
from .perturb import RulePerturber
from .prompts import TrainingPrompts, collate_prompts
from .user_pairs import UserPreferencePairs, collate_user_pairs
from .sampler import DesirableRatioSampler, EpochShuffle
from .stream import StreamCollate, StreamedExamples
from .tables import layout_of


def build_training_data(cfg: DataConfig, objective, tokenizer, seed: int, examples_per_update: int,
                        trust_remote_code: bool = False, rank: int = 0, processes: int = 1):
    """The data ``objective`` trains on, by its ``pair_axis`` (and PPD's ``examples_per_user``, KTO's
    ``desirable_ratio``, TPO's ``perturb_axes``/``perturber_model``: the objective contract declares them all).
    ``examples_per_update``: batch x accumulation x processes; epochs are trimmed to whole updates.
    ``trust_remote_code``: passed to the LLM perturber's model loading (model.trust_remote_code).

    Returns (dataset, sampler, collate): map-style, the sampler orders each epoch; streamed (``data.streaming``),
    the dataset is a stream.StreamedExamples that orders itself (sampler None) read by this process (``rank`` of
    ``processes``)."""
    pair_axis = objective.pair_axis
    streaming = wants_streaming(cfg, pair_axis, bool(objective.examples_per_user))
    if pair_axis == "images" and objective.examples_per_user:  # PPD: pairs with profiles of their users
        dataset = UserPreferencePairs(cfg, tokenizer, seed, objective.examples_per_user, objective.reversed_users)
        collate = collate_user_pairs
    elif pair_axis == "images":
        dataset, collate = PreferencePairs(cfg, tokenizer, seed, streaming), collate_pairs
    elif pair_axis == "single":
        dataset, collate = FeedbackImages(cfg, tokenizer, seed, streaming), collate_singles
    elif pair_axis == "captions":
        perturber = caption_perturber(objective, trust_remote_code)
        dataset = CaptionedImages(cfg, tokenizer, seed, perturber, streaming=streaming)
        collate = collate_caption_pairs
    elif pair_axis == "batch":  # SoftREPA: captioned images, each against every caption of its batch
        dataset = CaptionedImages(cfg, tokenizer, seed, negatives=False, streaming=streaming)
        collate = collate_all_combinations
    elif pair_axis == "captioned":  # supervised fine-tuning: each image under its own caption
        dataset = CaptionedImages(cfg, tokenizer, seed, negatives=False, caption_dropout=True, streaming=streaming)
        collate = collate_captioned
    elif pair_axis == "prompts":  # reward fine-tuning (LongAlign): prompts; the policy makes the images
        dataset, collate = TrainingPrompts(cfg, tokenizer, seed), collate_prompts
    else:
        raise ValueError(f"no training data for pair axis {pair_axis!r}")
    if streaming:
        stream = StreamedExamples(dataset, seed, cfg.shuffle_buffer, rank, processes, cfg.num_workers,
                                  objective.desirable_ratio)
        return stream, None, StreamCollate(collate)
    if objective.desirable_ratio is not None:
        sampler = DesirableRatioSampler(dataset.labels, objective.desirable_ratio, seed, multiple=examples_per_update)
    else:
        sampler = EpochShuffle(len(dataset), seed, multiple=examples_per_update)
    return dataset, sampler, collate


HUB_STREAMING_BYTES = 10 * 2**30  # data.streaming: null streams hub datasets larger than this


def wants_streaming(cfg: DataConfig, pair_axis: str, user_profiles: bool = False) -> bool:
    """data.streaming, or when null: hub datasets above HUB_STREAMING_BYTES (or of unknown size) stream, local
    tables do not. Prompt lists (reward fine-tuning) and PPD's pairs (``user_profiles``: each pair's profile is
    drawn from all of its user's rows) are read whole."""
    whole = {"prompts": "reward fine-tuning reads a list of prompts, read whole",
             "profiles": "PPD draws each pair's profile from all of its user's rows, which a stream has not read yet"}
    reason = whole["prompts"] if pair_axis == "prompts" else whole["profiles"] if user_profiles else None
    if reason:
        if cfg.streaming:
            raise ValueError(f"data.streaming: {reason}; set data.streaming: false")
        return False
    if cfg.streaming is not None:
        return cfg.streaming
    if layout_of(cfg.source, cfg.split).image_root is not None:  # a local file or folder
        return False
    size = hub_dataset_bytes(cfg.source)
    return size is None or size > HUB_STREAMING_BYTES


def hub_dataset_bytes(repo_id: str) -> int | None:
    """The total size of a hub dataset's files from the hub's listing (nothing is downloaded); None if unknown."""
    try:
        from huggingface_hub import HfApi

        info = HfApi().dataset_info(repo_id, files_metadata=True)
        return sum(s.size or 0 for s in info.siblings or [])
    except Exception:  # offline, private, rate-limited: stream, the safe choice for an unknown size
        return None


def caption_perturber(objective, trust_remote_code: bool = False):
    """TPO's negative captions: a local LLM (objective.perturber_model) or the rules over objective.perturb_axes."""
    if objective.perturber_model:
        from .perturb_llm import LLMPerturber

        return LLMPerturber(objective.perturber_model, axes=tuple(objective.perturb_axes),
                            trust_remote_code=trust_remote_code)
    return RulePerturber(tuple(objective.perturb_axes))
