"""Binary feedback (``caption, image, label``; label 1 = desirable, 0 = undesirable) for Diffusion-KTO.

Each example is one image with its caption; rows are single images, each its own noise group, labels ±1.
"""

from __future__ import annotations

import numpy as np
import torch

from ..config import DataConfig
from .examples import TableExamples, paired_transform, without_skipped

FEEDBACK_COLUMNS = ["caption", "image", "label"]


class FeedbackImages(TableExamples):
    def __init__(self, cfg: DataConfig, tokenizer, seed: int = 0):
        table = self.open(cfg, FEEDBACK_COLUMNS)
        labels = np.asarray(table["label"], dtype=np.float64)
        bad = np.flatnonzero(~np.isin(labels, (0.0, 1.0)))
        if len(bad):
            raise ValueError(f"{cfg.source}: row {bad[0]} has label={labels[bad[0]]}; expected 1 (desirable) "
                             "or 0 (undesirable)")
        super().__init__(cfg, tokenizer, seed, table, np.arange(len(labels)))
        self.labels = labels[self.rows]  # of the rows in use, in order
        if not self.labels.any() or self.labels.all():
            raise ValueError(f"{cfg.source}: KTO needs both desirable and undesirable images; "
                             f"got {int(self.labels.sum())} desirable of {len(self.labels)}")

    def load(self, i: int) -> dict:
        row, record, where, seed, rng = self.example(i)
        image = self.image(record, "image", where)
        pixels, meta = paired_transform([image], self.cfg.resolution, self.cfg.random_crop, self.cfg.random_flip,
                                        rng)
        return {"pixels": pixels[0], "image_meta": meta[0], "input_ids": self.tokenize(self.caption_or_empty(record, rng, where)), "seed": seed,
                "label": 1.0 if self.labels[i] == 1 else -1.0}


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
