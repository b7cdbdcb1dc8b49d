"""Image grids for people to look at: rows of images, enlarged without smoothing (or shrunk to fit), each row
titled, never wider than MAX_WIDTH."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TITLE_HEIGHT = 14
# px: a sheet opens in any viewer (4 SD1.5 images at the old fixed 4x made an 8192-px-wide PNG)
MAX_WIDTH = 2048


def _row_size(k: int, h: int, w: int, max_scale: int) -> tuple[int, int, int]:
    """(width, height, PIL resampling) of a row of K images of h x w side by side: enlarged by the largest whole
    factor <= max_scale that keeps it within MAX_WIDTH (NEAREST: pixels stay crisp), or shrunk to MAX_WIDTH wide
    (LANCZOS: no aliasing) when even 1x is wider."""
    if max_scale < 1:
        raise ValueError(f"save_grid max_scale: expected an integer >= 1, got {max_scale}")
    scale = min(max_scale, MAX_WIDTH // (k * w))
    if scale >= 1:
        return k * w * scale, h * scale, Image.NEAREST
    return MAX_WIDTH, max(1, round(h * MAX_WIDTH / (k * w))), Image.LANCZOS


def save_grid(rows: list[np.ndarray], titles: list[str], path: str | Path, max_scale: int = 4) -> Path:
    """rows: each uint8 [K, H, W, 3] (K images side by side, the same K, H, W in every row); titles: one line above
    each row. ``max_scale``: the most each image is enlarged (the sheet's width caps it: see _row_size)."""
    if len(rows) != len(titles):
        raise ValueError(f"got {len(rows)} rows but {len(titles)} titles")
    k, h, w, _ = rows[0].shape
    width, height, resample = _row_size(k, h, w, max_scale)
    sheet = Image.new("RGB", (width, len(rows) * (height + TITLE_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (row, title) in enumerate(zip(rows, titles)):
        top = i * (height + TITLE_HEIGHT)
        draw.text((2, top + 1), title[: width // 6], fill="black")
        strip = Image.fromarray(np.concatenate(list(row), axis=1)).resize((width, height), resample)
        sheet.paste(strip, (0, top + TITLE_HEIGHT))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
