"""Preference pairs in the Pick-a-Pic v2 schema, as training examples.

Each example is the preferred image first and the rejected second, with the *same* resize, crop and flip applied
to both, plus the tokenised caption (replaced by the empty caption with probability ``caption_dropout``).
"""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ..config import DataConfig
from ..core.noise import example_seed
from .tables import open_table, require_columns

PAIR_COLUMNS = ["caption", "jpg_0", "jpg_1", "label_0"]


def decode_image(data, where: str) -> Image.Image:
    """PNG/JPEG bytes (or a datasets Image dict / PIL image) -> RGB PIL image; names the row when undecodable."""
    try:
        if isinstance(data, Image.Image):
            return data.convert("RGB")
        if isinstance(data, dict):
            data = data.get("bytes")
        return Image.open(io.BytesIO(data)).convert("RGB")
    except Exception as err:  # PIL raises several types for corrupt data
        raise ValueError(f"{where}: image could not be decoded ({type(err).__name__}: {err})") from err


def paired_transform(images: list[Image.Image], resolution: int, random_crop: bool, random_flip: bool,
                     rng: np.random.Generator) -> torch.Tensor:
    """Same resize/crop/flip for every image -> float tensor [len(images), 3, res, res] in [-1, 1]."""
    out = []
    first = images[0]
    scale = resolution / min(first.size)
    size = (max(resolution, round(first.width * scale)), max(resolution, round(first.height * scale)))
    left_max, top_max = size[0] - resolution, size[1] - resolution
    left = int(rng.integers(0, left_max + 1)) if random_crop else left_max // 2
    top = int(rng.integers(0, top_max + 1)) if random_crop else top_max // 2
    flip = random_flip and rng.random() < 0.5
    for im in images:
        im = im.resize(size, Image.BICUBIC) if im.size != size else im
        im = im.crop((left, top, left + resolution, top + resolution))
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        arr = torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)
        out.append(arr / 127.5 - 1.0)
    return torch.stack(out)


class PreferencePairs(torch.utils.data.Dataset):
    """Pick-a-Pic-style pairs. ``skipped_ties`` counts the tied pairs left out (when ``drop_ties``)."""

    def __init__(self, cfg: DataConfig, tokenizer, seed: int = 0):
        table = open_table(cfg.source, cfg.split)
        require_columns(table, PAIR_COLUMNS, cfg.source)
        labels = np.asarray(table["label_0"], dtype=np.float64)
        bad = np.flatnonzero(~np.isin(labels, (0.0, 0.5, 1.0)))
        if len(bad):
            raise ValueError(f"{cfg.source}: row {bad[0]} has label_0={labels[bad[0]]}; expected 0, 0.5 or 1")
        keep = np.flatnonzero(labels != 0.5) if cfg.drop_ties else np.arange(len(labels))
        self.skipped_ties = len(labels) - len(keep)
        if cfg.max_pairs is not None:
            keep = keep[: cfg.max_pairs]
        if len(keep) == 0:
            raise ValueError(f"{cfg.source}: no pairs left ({len(labels)} rows, {self.skipped_ties} ties dropped)")
        self.table, self.rows, self.labels = table, keep, labels
        self.cfg, self.tokenizer, self.seed = cfg, tokenizer, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = int(self.rows[i])
        record = self.table[row]
        where = f"{self.cfg.source} row {row}"
        # Per-example randomness from (seed, epoch, row): the same crop/flip/dropout/noise in any worker,
        # batch size, accumulation or process layout.
        seed = example_seed(self.seed, self.epoch, row)
        rng = np.random.default_rng(seed)
        first, second = ("jpg_0", "jpg_1") if self.labels[row] >= 0.5 else ("jpg_1", "jpg_0")
        images = [decode_image(record[first], f"{where} column {first}"),
                  decode_image(record[second], f"{where} column {second}")]
        pixels = paired_transform(images, self.cfg.resolution, self.cfg.random_crop, self.cfg.random_flip, rng)
        caption = record["caption"] or ""
        if rng.random() < self.cfg.caption_dropout:
            caption = ""
        ids = self.tokenizer(caption, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids[0]
        # pixels [2, 3, res, res] (w, l); input_ids [77]; seed: the example's noise seed
        return {"pixels": pixels, "input_ids": ids, "seed": seed}


def collate_pairs(examples: list[dict]) -> dict:
    """-> pixels [2B, 3, H, W] ordered (w_1..w_B, l_1..l_B); input_ids [B, 77]; seeds [B] int64."""
    pixels = torch.stack([e["pixels"] for e in examples])  # [B, 2, 3, H, W]
    return {"pixels": torch.cat([pixels[:, 0], pixels[:, 1]]),
            "input_ids": torch.stack([e["input_ids"] for e in examples]),
            "seeds": torch.tensor([e["seed"] for e in examples], dtype=torch.int64)}
