"""Captioned images: for TPO (TDPO/TKTO), SoftREPA and supervised fine-tuning (SFT).

TPO: each image x with its true caption c_w and a perturbed caption c_l. The perturbed caption comes from a
``negative_caption`` column when the table has one, else from the perturber, seeded per (run seed, epoch, row) — so
each epoch sees a fresh, reproducible mismatch. Rows: (x_i | c_w_i) for all i, then (x_i | c_l_i); both rows of an
image share its noise group (the same eps and t), labels 1 then 0.
SFT: one row per image under its caption, replaced by the empty caption with probability data.caption_dropout;
the caption's text travels with its ids (segment encoding reads the text, not 77 ids).
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import DataConfig
from .examples import BadSample, TableExamples, paired_transform, without_skipped
from .pairs import PAIR_COLUMNS, checked_pair_label, decisive_rows, pair_labels, preferred_first
from .perturb import RulePerturber

CAPTIONED_COLUMNS = ("caption", "image")


class CaptionedImages(TableExamples):
    """Captioned images; a table of pairs is read as the preferred image of each decisive pair under its caption
    (no copy; ties, with no preferred image, are left out and counted in ``skipped_ties``)."""

    def __init__(self, cfg: DataConfig, tokenizer, seed: int = 0, perturber=None, negatives: bool = True,
                 caption_dropout: bool = False, streaming: bool = False):
        """``negatives``: give each image a perturbed caption (TPO); SoftREPA pairs images with the other
        captions of the batch instead, so it neither builds nor checks one. ``caption_dropout``: apply
        data.caption_dropout (SFT; TPO and SoftREPA need every caption)."""
        if negatives and caption_dropout:
            raise ValueError("caption pairs (TPO) need the true caption to perturb: no caption dropout with them")
        super().__init__(cfg, tokenizer, seed, streaming)
        self.negatives, self.caption_dropout = negatives, caption_dropout
        self.given_negatives = "negative_caption" in self.found_columns
        self.perturber = perturber or RulePerturber()  # every axis

    def required_columns(self) -> tuple[str, ...]:
        found = set(self.found_columns)
        self.from_pairs = not set(CAPTIONED_COLUMNS) <= found and set(PAIR_COLUMNS) <= found
        return PAIR_COLUMNS if self.from_pairs else CAPTIONED_COLUMNS

    def select(self) -> np.ndarray:
        if not self.from_pairs:
            return super().select()
        rows = decisive_rows(pair_labels(self.table["label_0"], self.cfg.source), drop_ties=True)
        self.skipped_ties = len(self.table) - len(rows)
        return rows

    def record(self, row: int) -> dict:
        record = self.table[row]
        return self.preferred(record) if self.from_pairs else record

    def expand(self, row: int, record: dict) -> list[tuple[int, dict]]:
        if not self.from_pairs:
            return [(row, record)]
        return [] if checked_pair_label(record, self.where(row)) == 0.5 else [(row, self.preferred(record))]

    @staticmethod
    def preferred(record: dict) -> dict:
        """A pair's record -> its preferred image under its caption (and negative_caption, when given)."""
        return {**{k: v for k, v in record.items() if k not in ("jpg_0", "jpg_1")},
                "image": record[preferred_first(record)[0]]}

    def negative(self, caption: str, record: dict, rng: np.random.Generator, where: str) -> str:
        if self.given_negatives:
            negative = record["negative_caption"]
            if not isinstance(negative, str) or not negative.strip() or negative.strip() == caption.strip():
                raise BadSample(f"{where}: negative_caption {negative!r} must be a non-empty caption that differs "
                                 f"from the caption {caption!r}")
            return negative
        return self.perturber.perturb(caption, rng)[0]

    def load_record(self, row: int, record: dict) -> dict:
        where, seed, rng = self.example(row)
        if self.caption_dropout:
            caption = self.caption_or_empty(record, rng, where)
        else:
            caption = record["caption"]
            if not isinstance(caption, str) or not caption.strip():
                raise BadSample(f"{where} column caption: a non-empty caption is needed; got {caption!r}")
        image = self.image(record, "image", where)
        pixels, meta = paired_transform([image], self.cfg.resolution, self.cfg.random_crop, self.cfg.random_flip,
                                        rng)
        example = {"pixels": pixels[0], "image_meta": meta[0], "input_ids": self.tokenize(caption), "seed": seed,
                   "caption": caption}
        if self.negatives:
            example["negative_ids"] = self.tokenize(self.negative(caption, record, rng, where))
        return example


def collate_caption_pairs(examples: list[dict]) -> dict:
    """-> rows layout (core.step): rows (x_i | c_w_i)_i then (x_i | c_l_i)_i, image i in noise group i."""
    examples, skipped = without_skipped(examples)
    if not examples:
        return {"rows": 0, "skipped": skipped}
    b = len(examples)
    image = torch.arange(b).repeat(2)  # [2B]
    return {"skipped": skipped, "pixels": torch.stack([e["pixels"] for e in examples]),
            "image_meta": torch.stack([e["image_meta"] for e in examples]), "image_group": torch.arange(b),
            "input_ids": torch.stack([e["input_ids"] for e in examples] + [e["negative_ids"] for e in examples]),
            "seeds": torch.tensor([e["seed"] for e in examples], dtype=torch.int64),
            "row_image": image, "row_text": torch.arange(2 * b), "row_group": image,
            "labels": torch.cat([torch.ones(b), -torch.ones(b)])}


def collate_all_combinations(examples: list[dict]) -> dict:
    """-> rows layout (core.step) for SoftREPA: every (image i, caption j), row i*B + j, all in ONE noise group
    (one shared eps and t, so the captions are all that differs between the rows of an image)."""
    examples, skipped = without_skipped(examples)
    if not examples:
        return {"rows": 0, "skipped": skipped}
    b = len(examples)
    return {"skipped": skipped, "pixels": torch.stack([e["pixels"] for e in examples]),
            "image_meta": torch.stack([e["image_meta"] for e in examples]),
            "image_group": torch.zeros(b, dtype=torch.long),
            "input_ids": torch.stack([e["input_ids"] for e in examples]),
            "seeds": torch.tensor([examples[0]["seed"]], dtype=torch.int64),
            "row_image": torch.arange(b).repeat_interleave(b), "row_text": torch.arange(b).repeat(b),
            "row_group": torch.zeros(b * b, dtype=torch.long)}


def collate_captioned(examples: list[dict]) -> dict:
    """-> rows layout (core.step) for SFT: row i = (x_i | c_i) in noise group i; ``captions`` [B] their text."""
    examples, skipped = without_skipped(examples)
    if not examples:
        return {"rows": 0, "skipped": skipped}
    b = len(examples)
    return {"skipped": skipped, "pixels": torch.stack([e["pixels"] for e in examples]),
            "image_meta": torch.stack([e["image_meta"] for e in examples]), "image_group": torch.arange(b),
            "input_ids": torch.stack([e["input_ids"] for e in examples]),
            "captions": [e["caption"] for e in examples],
            "seeds": torch.tensor([e["seed"] for e in examples], dtype=torch.int64),
            "row_image": torch.arange(b), "row_text": torch.arange(b), "row_group": torch.arange(b)}
