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


def build_training_data(cfg: DataConfig, objective, tokenizer, seed: int, examples_per_update: int,
                        trust_remote_code: bool = False):
    """The data ``objective`` trains on, by its ``pair_axis`` (and PPD's ``examples_per_user``, KTO's
    ``desirable_ratio``, TPO's ``perturb_axes``/``perturber_model``: the objective contract declares them all).
    ``examples_per_update``: batch x accumulation x processes; epochs are trimmed to whole updates.
    ``trust_remote_code``: passed to the LLM perturber's model loading (model.trust_remote_code)."""
    pair_axis = objective.pair_axis
    if pair_axis == "images" and objective.examples_per_user:  # PPD: pairs with profiles of their users
        dataset = UserPreferencePairs(cfg, tokenizer, seed, objective.examples_per_user, objective.reversed_users)
        collate = collate_user_pairs
    elif pair_axis == "images":
        dataset, collate = PreferencePairs(cfg, tokenizer, seed), collate_pairs
    elif pair_axis == "single":
        dataset, collate = FeedbackImages(cfg, tokenizer, seed), collate_singles
    elif pair_axis == "captions":
        perturber = caption_perturber(objective, trust_remote_code)
        dataset, collate = CaptionedImages(cfg, tokenizer, seed, perturber), collate_caption_pairs
    elif pair_axis == "batch":  # SoftREPA: captioned images, each against every caption of its batch
        dataset, collate = CaptionedImages(cfg, tokenizer, seed, negatives=False), collate_all_combinations
    elif pair_axis == "captioned":  # supervised fine-tuning: each image under its own caption
        dataset = CaptionedImages(cfg, tokenizer, seed, negatives=False, caption_dropout=True)
        collate = collate_captioned
    elif pair_axis == "prompts":  # reward fine-tuning (LongAlign): prompts; the policy makes the images
        dataset, collate = TrainingPrompts(cfg, tokenizer, seed), collate_prompts
    else:
        raise ValueError(f"no training data for pair axis {pair_axis!r}")
    if objective.desirable_ratio is not None:
        sampler = DesirableRatioSampler(dataset.labels, objective.desirable_ratio, seed, multiple=examples_per_update)
    else:
        sampler = EpochShuffle(len(dataset), seed, multiple=examples_per_update)
    return dataset, sampler, collate


def caption_perturber(objective, trust_remote_code: bool = False):
    """TPO's negative captions: a local LLM (objective.perturber_model) or the rules over objective.perturb_axes."""
    if objective.perturber_model:
        from .perturb_llm import LLMPerturber

        return LLMPerturber(objective.perturber_model, axes=tuple(objective.perturb_axes),
                            trust_remote_code=trust_remote_code)
    return RulePerturber(tuple(objective.perturb_axes))
