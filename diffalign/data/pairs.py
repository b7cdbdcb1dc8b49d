"""Preference pairs in the Pick-a-Pic v2 schema, as training examples.

Each example is the preferred image first and the rejected second, with the *same* resize, crop and flip applied
to both, plus the tokenised caption (replaced by the empty caption with probability ``caption_dropout``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import DataConfig
from .examples import TableExamples, paired_transform, without_skipped

PAIR_COLUMNS = ["caption", "jpg_0", "jpg_1", "label_0"]


class PreferencePairs(TableExamples):
    """Pick-a-Pic-style pairs. ``skipped_ties`` counts the tied pairs left out (when ``drop_ties``)."""

    def __init__(self, cfg: DataConfig, tokenizer, seed: int = 0):
        table = self.open(cfg, PAIR_COLUMNS)
        labels = np.asarray(table["label_0"], dtype=np.float64)
        bad = np.flatnonzero(~np.isin(labels, (0.0, 0.5, 1.0)))
        if len(bad):
            raise ValueError(f"{cfg.source}: row {bad[0]} has label_0={labels[bad[0]]}; expected 0, 0.5 or 1")
        keep = np.flatnonzero(labels != 0.5) if cfg.drop_ties else np.arange(len(labels))
        self.skipped_ties = len(labels) - len(keep)
        if len(keep) == 0:
            raise ValueError(f"{cfg.source}: no pairs left ({len(labels)} rows, {self.skipped_ties} ties dropped)")
        self.labels = labels
        super().__init__(cfg, tokenizer, seed, table, keep)

    def load(self, i: int) -> dict:
        row, record, where, seed, rng = self.example(i)
        first, second = ("jpg_0", "jpg_1") if self.labels[row] >= 0.5 else ("jpg_1", "jpg_0")
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
