"""Toy preference data, made the way Pick-a-Pic was: two base-model samples per prompt, a rater picks one.

Raters are personas (``personas.py``) choosing with Bradley–Terry noise. Three views are written as parquet files
that ``datasets.load_dataset("parquet", data_files=...)`` reads:
- Pick-a-Pic v2 schema (``caption, jpg_0, jpg_1, label_0, label_1, has_label, are_different, user_id, ranking_id,
  model_0, model_1, image_0_uid, image_1_uid, best_image_uid``; images as PNG bytes), plus ``persona``;
- binary feedback (``caption, image, label``) for KTO: the chosen image of each non-tied pair is desirable (1),
  the rejected one undesirable (0); ties carry no verdict and are left out (the count is returned);
- multi-user: the same schema, each pair labelled by one of several personas, ``user_id`` = persona index.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data.convert import pair_to_feedback
from ..data.images import png_bytes
from ..evaluation.sampling import cases, generate
from .personas import TASTES, bradley_terry_label
from .prompts import prompt_set
from .scoring import judge

PERSONA_IDS = {name: i for i, name in enumerate(TASTES)}  # user_id of each persona


@dataclass
class PairPool:
    """Two base-model samples of each caption: images_* uint8 [N, H, W, 3], seeds_* the seeds that made them."""

    captions: list[str]
    images_0: np.ndarray
    images_1: np.ndarray
    seeds_0: list[int]
    seeds_1: list[int]


def sample_pair_pool(pipe, n_pairs: int, seed: int = 0, prompts: list[str] | None = None, **gen_kwargs) -> PairPool:
    """Sample ``n_pairs`` pairs on training-split persona prompts (or ``prompts``), cycling through them."""
    prompts = prompts or prompt_set("persona", "train")
    rng = np.random.default_rng(seed)
    captions = [prompts[i] for i in rng.permutation(np.arange(n_pairs) % len(prompts))]
    seeds_0 = [seed * 1_000_003 + 2 * i for i in range(n_pairs)]
    seeds_1 = [s + 1 for s in seeds_0]
    images = generate(pipe, captions + captions, seeds_0 + seeds_1, **gen_kwargs)
    return PairPool(captions, images[:n_pairs], images[n_pairs:], seeds_0, seeds_1)


def label_pool(pool: PairPool, raters: list[str], seed: int = 0) -> list[dict]:
    """Pick-a-Pic rows for every pair of ``pool``, pair i rated by persona ``raters[i]``."""
    if len(raters) != len(pool.captions):
        raise ValueError(f"need one rater per pair: {len(pool.captions)} pairs, {len(raters)} raters")
    rng = np.random.default_rng(seed)
    rows = []
    for i, (caption, rater) in enumerate(zip(pool.captions, raters)):
        s0 = judge(pool.images_0[i], caption).personas[rater]
        s1 = judge(pool.images_1[i], caption).personas[rater]
        label_0, label_1 = bradley_terry_label(s0, s1, rng)
        uid_0, uid_1 = f"toy-{pool.seeds_0[i]}", f"toy-{pool.seeds_1[i]}"
        rows.append({
            "caption": caption, "jpg_0": png_bytes(pool.images_0[i]), "jpg_1": png_bytes(pool.images_1[i]),
            "label_0": label_0, "label_1": label_1, "has_label": True, "are_different": True,
            "user_id": PERSONA_IDS[rater], "persona": rater, "ranking_id": i, "model_0": "toy-sd",
            "model_1": "toy-sd", "image_0_uid": uid_0, "image_1_uid": uid_1,
            "best_image_uid": "" if label_0 == 0.5 else (uid_0 if label_0 == 1 else uid_1),
        })
    return rows


def feedback_rows(pair_rows: list[dict]) -> tuple[list[dict], int]:
    """Binary-feedback view of Pick-a-Pic rows: (rows of caption/image/label/user_id, number of ties left out)."""
    rows = [f for r in pair_rows for f in pair_to_feedback(r)]
    return rows, sum(r["label_0"] == 0.5 for r in pair_rows)


def write_parquet(rows: list[dict], path: str | Path) -> Path:
    from datasets import Dataset

    if not rows:
        raise ValueError(f"refusing to write an empty dataset to {path}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Dataset.from_list(rows).to_parquet(str(path))
    return path


def build_toy_data(pipe, out_dir: str | Path, n_pairs: int = 2400, persona: str = "bold",
                   multi_personas: tuple[str, ...] = ("bold", "subtle", "warm", "skyward"),
                   n_feedback_pairs: int = 1200, seed: int = 0, **gen_kwargs) -> dict[str, object]:
    """Sample one pool of pairs and write the three views under ``out_dir``; returns paths and counts."""
    for p in (persona, *multi_personas):
        if p not in TASTES:
            raise ValueError(f"unknown persona {p!r}; expected one of {sorted(TASTES)}")
    pool = sample_pair_pool(pipe, n_pairs, seed, **gen_kwargs)
    out_dir = Path(out_dir)
    single = label_pool(pool, [persona] * n_pairs, seed)
    multi = label_pool(pool, [multi_personas[i % len(multi_personas)] for i in range(n_pairs)], seed + 1)
    feedback, ties = feedback_rows(single[:n_feedback_pairs])
    return {
        "pairs": write_parquet(single, out_dir / f"pairs_{persona}.parquet"),
        "multiuser": write_parquet(multi, out_dir / "pairs_multiuser.parquet"),
        "feedback": write_parquet(feedback, out_dir / f"feedback_{persona}.parquet"),
        "n_pairs": n_pairs,
        "ties_in_pairs": sum(r["label_0"] == 0.5 for r in single),
        "ties_left_out_of_feedback": ties,
    }
