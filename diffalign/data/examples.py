"""What every table-backed training set shares: opening and checking the table, the rows in use, per-example
randomness from (run seed, epoch, row), image decoding, the shared crop/flip, and tokenisation."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..config import DataConfig
from ..core.noise import example_seed
from .images import WHITE, to_rgb
from .tables import column_names, layout_of, open_table, require_columns


class BadSample(ValueError):
    """One example that cannot be used (undecodable or too small image, missing caption). With
    ``data.on_bad_sample=skip`` it is left out of its batch and counted; otherwise it stops the run."""


def decode_image(data, where: str, resolution: int | None = None, background=WHITE,
                 root: Path | None = None) -> Image.Image:
    """An image cell -> 8-bit RGB PIL image (``to_rgb``: alpha on ``background``, data.alpha_background); names the
    row when undecodable, missing or smaller than ``resolution``.

    A cell is encoded bytes (PNG/JPEG/TIFF/...), a datasets Image dict ({"bytes", "path"}; bytes None: read the
    path), a PIL image, a path string (a relative one starts at ``root``, the folder of the CSV/JSONL file) or a
    base64 data URI (how CSV and JSONL embed bytes)."""
    try:
        if isinstance(data, dict):
            data = data.get("bytes") or data.get("path")
        if isinstance(data, str) and data.startswith("data:"):  # a data URI: data:image/png;base64,<bytes>
            data = base64.b64decode(data.split(",", 1)[1], validate=True)
        if isinstance(data, str):
            path = Path(data)
            data = (path if path.is_absolute() or root is None else Path(root) / path).read_bytes()
        image = to_rgb(data if isinstance(data, Image.Image) else Image.open(io.BytesIO(data)), background)
    except Exception as err:  # PIL raises several types for corrupt data; a missing file OSError
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
    """Base of the table-backed datasets, map-style or streamed (``data.streaming``; stream.StreamedExamples
    then reads the rows and asks ``expand`` and ``load_record`` for the examples).

    An example id is a table row, or ``2 * row + j`` for views that make two examples of a row (a pair's preferred
    and rejected image); a streamed row is numbered ``shard << 32 | row in shard``. ``rows``: the example ids in
    use, after any documented skips and ``max_pairs`` (map-style only).
    """

    columns: tuple[str, ...] = ()  # what the method reads (after data.columns)

    def __init__(self, cfg: DataConfig, tokenizer, seed: int = 0, streaming: bool = False):
        self.cfg, self.tokenizer, self.seed, self.epoch, self.streaming = cfg, tokenizer, seed, 0, streaming
        self.image_root = layout_of(cfg.source, cfg.split).image_root
        self.table = open_table(cfg.source, cfg.split, streaming, cfg.columns)
        self.found_columns = column_names(self.table)
        require_columns(self.table, list(self.required_columns()), cfg.source)
        if streaming:
            return
        rows = self.select()
        if cfg.max_pairs is not None:
            rows = rows[: cfg.max_pairs]
        if len(rows) == 0:
            raise ValueError(f"{cfg.source} (split {cfg.split!r}): no examples to train on (the table has "
                             f"{len(self.table)} rows; data.max_pairs={cfg.max_pairs})")
        self.rows = rows

    def required_columns(self) -> tuple[str, ...]:
        return self.columns

    def select(self) -> np.ndarray:
        """Map-style: the example ids in use, from the label columns alone (no image is read)."""
        return np.arange(len(self.table))

    def expand(self, row: int, record: dict) -> list[tuple[int, dict]]:
        """Streaming: the examples (id, record) of one table row, [] for a row left out (a tie)."""
        return [(row, record)]

    def record(self, row: int) -> dict:
        """Map-style: the record of example ``row``."""
        return self.table[row]

    def label(self, record: dict) -> float:
        """An example's label before it is loaded (KTO's desirable ratio draws by it)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = int(self.rows[i])
        return self.load_or_skip(row, lambda: self.record(row))

    def load_or_skip(self, row: int, record) -> dict:
        """The example, or {"skipped": why} for a bad sample under data.on_bad_sample=skip (the collate leaves it out
        and counts it). ``record``: a callable, so a bad record raises inside the guard."""
        try:
            return self.load_record(row, record())
        except BadSample as err:
            if self.cfg.on_bad_sample == "skip":
                return {"skipped": str(err)}
            raise

    def load_record(self, row: int, record: dict) -> dict:
        raise NotImplementedError

    def image(self, record: dict, column: str, where: str) -> Image.Image:
        return decode_image(record[column], f"{where} column {column}", self.cfg.resolution, self.cfg.alpha_background,
                            self.image_root)

    def where(self, row: int) -> str:
        """The table row of an example id, for messages."""
        return f"{self.cfg.source} {row_name(row, self.streaming)}"

    def example(self, row: int):
        """(where, seed, rng) of example ``row``. Per-example randomness from (seed, epoch, example id): the same
        crop/flip/dropout/noise in any worker, batch size, accumulation or process layout."""
        seed = example_seed(self.seed, self.epoch, row)
        return self.where(row), seed, np.random.default_rng(seed)

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


SHARD_BITS = 32  # a streamed row's id: shard << 32 | row in its shard


def row_name(row: int, streaming: bool) -> str:
    """'row 12' (map-style) or 'shard 3 row 12' (streamed) for an example id of a one-example-per-row view."""
    if streaming:
        return f"shard {row >> SHARD_BITS} row {row & ((1 << SHARD_BITS) - 1)}"
    return f"row {row}"


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
