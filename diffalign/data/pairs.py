"""Preference pairs in the Pick-a-Pic v2 schema, as training examples.

Each example is the preferred image first and the rejected second, with the *same* resize, crop and flip applied
to both, plus the tokenised caption (replaced by the empty caption with probability ``caption_dropout``).
"""

from __future__ import annotations

import numpy as np
import torch

from .examples import BadSample, TableExamples, paired_transform, without_skipped

PAIR_COLUMNS = ("caption", "jpg_0", "jpg_1", "label_0")
PAIR_LABELS = (0.0, 0.5, 1.0)  # label_0: 1 = jpg_0 preferred, 0 = jpg_1, 0.5 = a tie


def pair_labels(values, source: str, first_row: int = 0) -> np.ndarray:
    """label_0 values (numbers, or numeric strings as webdataset .txt files hold them) -> float64 [N]; raises naming
    the first row that is not 0, 0.5 or 1."""
    try:
        labels = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        labels = np.array([_number(v) for v in values], dtype=np.float64)
    bad = np.flatnonzero(~np.isin(labels, PAIR_LABELS))
    if len(bad):
        row = first_row + int(bad[0])
        raise ValueError(f"{source}: row {row} has label_0={values[bad[0]]!r}; expected 0, 0.5 or 1")
    return labels


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")  # reported by pair_labels with the row


def checked_pair_label(record: dict, where: str) -> float:
    """One streamed row's label_0 as a number; a BadSample naming the row when it is not 0, 0.5 or 1."""
    label = _number(record["label_0"])
    if label not in PAIR_LABELS:
        raise BadSample(f"{where}: label_0={record['label_0']!r}; expected 0, 0.5 or 1")
    return label


def decisive_rows(labels: np.ndarray, drop_ties: bool) -> np.ndarray:
    """Row indices in use: all, or those not tied (label_0 != 0.5)."""
    return np.flatnonzero(labels != 0.5) if drop_ties else np.arange(len(labels))


def preferred_first(record: dict) -> tuple[str, str]:
    """(preferred column, rejected column) of a pair; a tie keeps the stored order."""
    return ("jpg_0", "jpg_1") if _number(record["label_0"]) >= 0.5 else ("jpg_1", "jpg_0")


class PreferencePairs(TableExamples):
    """Pick-a-Pic-style pairs. ``skipped_ties`` counts the tied pairs left out (when ``drop_ties``; map-style: the
    stream counts its own as it reads)."""

    columns = PAIR_COLUMNS

    def select(self) -> np.ndarray:
        self.labels = pair_labels(self.table["label_0"], self.cfg.source)  # [rows] (PPD reads them by row)
        keep = decisive_rows(self.labels, self.cfg.drop_ties)
        self.skipped_ties = len(self.labels) - len(keep)
        if len(keep) == 0:
            raise ValueError(f"{self.cfg.source}: no pairs left ({len(self.labels)} rows, {self.skipped_ties} ties "
                             "dropped)")
        return keep

    def expand(self, row: int, record: dict) -> list[tuple[int, dict]]:
        label = checked_pair_label(record, self.where(row))
        return [] if self.cfg.drop_ties and label == 0.5 else [(row, record)]

    def load_record(self, row: int, record: dict) -> dict:
        where, seed, rng = self.example(row)
        first, second = preferred_first(record)
        images = [self.image(record, first, where), self.image(record, second, where)]
        pixels, meta = paired_transform(images, self.cfg.resolution, self.cfg.random_crop, self.cfg.random_flip,
                                        rng)
        ids = self.tokenize(self.caption_or_empty(record, rng, where))
        # pixels [2, 3, res, res] (w, l); meta [2, 6]; input_ids [77] ([2, 77] for SDXL); seed: the noise seed
        return {"pixels": pixels, "image_meta": meta, "input_ids": ids, "seed": seed}


def collate_pairs(examples: list[dict]) -> dict:
    """-> the rows layout of core.step: pixels [2B, 3, H, W] ordered (w_1..w_B, l_1..l_B), input_ids [B, 77],
    seeds [B]; rows i and B + i are pair i's two images under its caption, in noise group i."""
    examples, skipped = without_skipped(examples)
    if not examples:
        return {"rows": 0, "skipped": skipped}
    pixels = torch.stack([e["pixels"] for e in examples])  # [B, 2, 3, H, W]
    meta = torch.stack([e["image_meta"] for e in examples])  # [B, 2, 6]
    b = len(examples)
    pair = torch.arange(b).repeat(2)  # [2B]: 0..B-1, 0..B-1
    return {"pixels": torch.cat([pixels[:, 0], pixels[:, 1]]), "image_meta": torch.cat([meta[:, 0], meta[:, 1]]),
            "image_group": pair,
            "input_ids": torch.stack([e["input_ids"] for e in examples]),
            "seeds": torch.tensor([e["seed"] for e in examples], dtype=torch.int64),
            "row_image": torch.arange(2 * b), "row_text": pair, "row_group": pair, "skipped": skipped}
