"""Binary feedback (``caption, image, label``; label 1 = desirable, 0 = undesirable) for Diffusion-KTO.

Each example is one image with its caption; rows are single images, each its own noise group, labels ±1.
A table of pairs (``caption, jpg_0, jpg_1, label_0``) is read as feedback on the fly, with no copy: each decisive
pair gives its preferred image as desirable and the other as undesirable (``convert.pair_to_feedback``, the rule
``diffalign data feedback`` exports with), example ids ``2 * row`` and ``2 * row + 1``.
"""

from __future__ import annotations

import numpy as np
import torch

from .convert import pair_to_feedback
from .examples import BadSample, TableExamples, paired_transform, row_name, without_skipped
from .pairs import PAIR_COLUMNS, checked_pair_label, decisive_rows, pair_labels

FEEDBACK_COLUMNS = ("caption", "image", "label")


class FeedbackImages(TableExamples):
    def required_columns(self) -> tuple[str, ...]:
        found = set(self.found_columns)
        self.from_pairs = not set(FEEDBACK_COLUMNS) <= found and set(PAIR_COLUMNS) <= found
        return PAIR_COLUMNS if self.from_pairs else FEEDBACK_COLUMNS

    def select(self) -> np.ndarray:
        if self.from_pairs:
            pairs = decisive_rows(pair_labels(self.table["label_0"], self.cfg.source), drop_ties=True)
            self.skipped_ties = len(self.table) - len(pairs)
            return np.stack([2 * pairs, 2 * pairs + 1], axis=1).ravel()  # preferred, rejected of each pair
        self.table_labels = np.asarray(self.table["label"], dtype=np.float64)
        bad = np.flatnonzero(~np.isin(self.table_labels, (0.0, 1.0)))
        if len(bad):
            raise ValueError(f"{self.cfg.source}: row {bad[0]} has label={self.table_labels[bad[0]]}; expected 1 "
                             "(desirable) or 0 (undesirable)")
        return np.arange(len(self.table_labels))

    def __init__(self, cfg, tokenizer, seed: int = 0, streaming: bool = False):
        super().__init__(cfg, tokenizer, seed, streaming)
        if streaming:
            return
        # [examples in use]: of a pair view, 1 for the preferred image (even id) and 0 for the other
        self.labels = 1.0 - self.rows % 2 if self.from_pairs else self.table_labels[self.rows]
        if not self.labels.any() or self.labels.all():
            raise ValueError(f"{cfg.source}: KTO needs both desirable and undesirable images; "
                             f"got {int(self.labels.sum())} desirable of {len(self.labels)}")

    def record(self, row: int) -> dict:
        if self.from_pairs:
            return pair_to_feedback(self.table[row // 2])[row % 2]
        return self.table[row]

    def expand(self, row: int, record: dict) -> list[tuple[int, dict]]:
        if self.from_pairs:
            label = checked_pair_label(record, self.where(2 * row))
            return [(2 * row + j, r) for j, r in enumerate(pair_to_feedback({**record, "label_0": label}))]
        if self.label(record) not in (0.0, 1.0):
            raise BadSample(f"{self.where(row)}: label={record['label']!r}; expected 1 (desirable) or 0 (undesirable)")
        return [(row, record)]

    def label(self, record: dict) -> float:
        try:
            return float(record["label"])
        except (TypeError, ValueError):
            return float("nan")

    def where(self, row: int) -> str:
        if self.from_pairs:
            image = "preferred" if row % 2 == 0 else "rejected"
            return f"{self.cfg.source} {row_name(row // 2, self.streaming)} ({image} image of the pair)"
        return super().where(row)

    def load_record(self, row: int, record: dict) -> dict:
        where, seed, rng = self.example(row)
        image = self.image(record, "image", where)
        pixels, meta = paired_transform([image], self.cfg.resolution, self.cfg.random_crop, self.cfg.random_flip,
                                        rng)
        return {"pixels": pixels[0], "image_meta": meta[0], "seed": seed,
                "input_ids": self.tokenize(self.caption_or_empty(record, rng, where)),
                "label": 1.0 if self.label(record) == 1 else -1.0}


def collate_singles(examples: list[dict]) -> dict:
    """-> rows layout (core.step): one row per image, its own caption and noise group; labels [B] in {+1, -1}."""
    examples, skipped = without_skipped(examples)
    if not examples:
        return {"rows": 0, "skipped": skipped}
    b = torch.arange(len(examples))
    return {"skipped": skipped, "pixels": torch.stack([e["pixels"] for e in examples]),
            "image_meta": torch.stack([e["image_meta"] for e in examples]), "image_group": b,
            "input_ids": torch.stack([e["input_ids"] for e in examples]),
            "seeds": torch.tensor([e["seed"] for e in examples], dtype=torch.int64),
            "row_image": b, "row_text": b, "row_group": b,
            "labels": torch.tensor([e["label"] for e in examples], dtype=torch.float32)}
