"""Image grids for people to look at: rows of images, upscaled without smoothing, each row titled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

TITLE_HEIGHT = 14


def save_grid(rows: list[np.ndarray], titles: list[str], path: str | Path, scale: int = 4) -> Path:
    """rows: each uint8 [K, H, W, 3] (K images side by side); titles: one line above each row."""
    if len(rows) != len(titles):
        raise ValueError(f"got {len(rows)} rows but {len(titles)} titles")
    k, h, w, _ = rows[0].shape
    width = k * w * scale
    sheet = Image.new("RGB", (width, len(rows) * (h * scale + TITLE_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (row, title) in enumerate(zip(rows, titles)):
        top = i * (h * scale + TITLE_HEIGHT)
        draw.text((2, top + 1), title[: width // 6], fill="black")
        strip = Image.fromarray(np.concatenate(list(row), axis=1)).resize((width, h * scale), Image.NEAREST)
        sheet.paste(strip, (0, top + TITLE_HEIGHT))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
