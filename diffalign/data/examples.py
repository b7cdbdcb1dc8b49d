"""What every table-backed training set shares: opening and checking the table, the rows in use, per-example
randomness from (run seed, epoch, row), image decoding, the shared crop/flip, and tokenisation."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image

from ..config import DataConfig
from ..core.noise import example_seed
from .images import WHITE, to_rgb
from .tables import open_table, require_columns


class BadSample(ValueError):
    """One example that cannot be used (undecodable or too small image, missing caption). With
    ``data.on_bad_sample=skip`` it is left out of its batch and counted; otherwise it stops the run."""


def decode_image(data, where: str, resolution: int | None = None, background=WHITE) -> Image.Image:
    """PNG/JPEG/TIFF/... bytes (or a datasets Image dict / PIL image) -> 8-bit RGB PIL image (``to_rgb``: alpha on
    ``background``, data.alpha_background); names the row when undecodable or smaller than ``resolution``."""
    try:
        if isinstance(data, dict):
            data = data.get("bytes")
        image = to_rgb(data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data)), background)
    except Exception as err:  # PIL raises several types for corrupt data
        raise BadSample(f"{where}: image could not be decoded ({type(err).__name__}: {err})") from err
    if resolution is not None and min(image.size) < resolution:
        raise BadSample(f"{where}: image is {image.width}x{image.height}, smaller than data.resolution={resolution} "
                        "(it would be upscaled); lower the resolution or skip it with data.on_bad_sample=skip")
    return image


def paired_transform(images: list[Image.Image], resolution: int, random_crop: bool, random_flip: bool,
                     rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Same relative resize/crop/flip for every image -> (pixels [K, 3, res, res] in [-1, 1], meta [K, 6]).

    Each image is resized (short side to ``resolution``) and cropped on its own, nothing stretched: the crop is
    drawn for the first image, and every other one is cropped at the same fraction of its own slack (its
    centre for a centre crop), with the same flip. Images of the first's size get exactly its crop.
    ``meta`` is SDXL's micro-conditioning per image, as diffusers' SDXL training scripts compute it:
    (original height, original width, crop top, crop left, target height, target width) of that image, the crop
    in its resized pixels and mirrored when flipped. SD 1.x/2.x ignore it.
    """
    out, meta = [], []
    first = _resized_size(images[0], resolution)
    left_max, top_max = first[0] - resolution, first[1] - resolution
    left = int(rng.integers(0, left_max + 1)) if random_crop else left_max // 2
    top = int(rng.integers(0, top_max + 1)) if random_crop else top_max // 2
    flip = random_flip and rng.random() < 0.5
    for im in images:
        size = _resized_size(im, resolution)
        x = _same_relative_offset(left, left_max, size[0] - resolution, random_crop)
        y = _same_relative_offset(top, top_max, size[1] - resolution, random_crop)
        meta.append([im.height, im.width, y, size[0] - x - resolution if flip else x, resolution, resolution])
        im = im.resize(size, Image.BICUBIC) if im.size != size else im
        im = im.crop((x, y, x + resolution, y + resolution))
        if flip:
            im = im.transpose(Image.FLIP_LEFT_RIGHT)
        arr = torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)
        out.append(arr / 127.5 - 1.0)
    return torch.stack(out), torch.tensor(meta, dtype=torch.float32)


def _resized_size(image: Image.Image, resolution: int) -> tuple[int, int]:
    """(width, height) with the short side scaled to ``resolution`` and the aspect kept (no side below it)."""
    scale = resolution / min(image.size)
    return max(resolution, round(image.width * scale)), max(resolution, round(image.height * scale))


def _same_relative_offset(drawn: int, drawn_slack: int, slack: int, random_crop: bool) -> int:
    """The crop offset, in an image with ``slack`` spare pixels, at the fraction of the slack where ``drawn`` sits
    in ``drawn_slack`` (``drawn`` itself when the slacks are equal); a centre crop (or nothing drawn) -> centre."""
    if not random_crop or drawn_slack == 0:
        return slack // 2
    return round(drawn / drawn_slack * slack)


class TableExamples(torch.utils.data.Dataset):
    """Base of the datasets: ``rows`` are the table rows in use (after any documented skips and ``max_pairs``)."""

    @staticmethod
    def open(cfg: DataConfig, columns: list[str]):
        table = open_table(cfg.source, cfg.split)
        require_columns(table, columns, cfg.source)
        return table

    def __init__(self, cfg: DataConfig, tokenizer, seed: int, table, rows: np.ndarray):
        if cfg.max_pairs is not None:
            rows = rows[: cfg.max_pairs]
        if len(rows) == 0:
            raise ValueError(f"{cfg.source} (split {cfg.split!r}): no examples to train on (the table has "
                             f"{len(table)} rows; data.max_pairs={cfg.max_pairs})")
        self.table, self.rows, self.cfg, self.tokenizer, self.seed = table, rows, cfg, tokenizer, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        try:
            return self.load(i)
        except BadSample as err:
            if self.cfg.on_bad_sample == "skip":
                return {"skipped": str(err)}  # the collate leaves it out and counts it
            raise

    def load(self, i: int) -> dict:
        raise NotImplementedError

    def image(self, record: dict, column: str, where: str) -> Image.Image:
        return decode_image(record[column], f"{where} column {column}", self.cfg.resolution, self.cfg.alpha_background)

    def example(self, i: int):
        """(row, record, where, seed, rng) of the i-th example in use.

        Per-example randomness from (seed, epoch, row): the same crop/flip/dropout/noise in any worker, batch size,
        accumulation or process layout.
        """
        row = int(self.rows[i])
        seed = example_seed(self.seed, self.epoch, row)
        return row, self.table[row], f"{self.cfg.source} row {row}", seed, np.random.default_rng(seed)

    def caption_or_empty(self, record: dict, rng: np.random.Generator, where: str = "") -> str:
        caption = record["caption"]
        if not isinstance(caption, str) or not caption.strip():
            raise BadSample(f"{where} column caption: {caption!r} is not a caption (empty captions are made by "
                            "data.caption_dropout, not stored)")
        return "" if rng.random() < self.cfg.caption_dropout else caption

    def tokenize(self, caption: str) -> torch.Tensor:
        """[77] token ids, padded/truncated to the tokenizer's window; [K, 77] when the model has K tokenizers
        (SDXL: 2)."""
        return token_ids(self.tokenizer, caption)


def token_ids(tokenizer, caption: str) -> torch.Tensor:
    """[77] ids of one caption, or [K, 77] for a list of K tokenizers (SDXL)."""
    if isinstance(tokenizer, (list, tuple)):
        return torch.stack([_token_ids(t, caption) for t in tokenizer])
    return _token_ids(tokenizer, caption)


def _token_ids(tokenizer, caption: str) -> torch.Tensor:
    return tokenizer(caption, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt").input_ids[0]


def without_skipped(examples: list[dict]) -> tuple[list[dict], int]:
    """The usable examples of a batch and how many were skipped as bad samples."""
    kept = [e for e in examples if "skipped" not in e]
    return kept, len(examples) - len(kept)
