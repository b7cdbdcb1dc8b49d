"""Any image Pillow opens -> 8-bit RGB: high-bit-depth values scaled, transparency composited (training data and
scorers alike)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

WHITE = (255, 255, 255)
# The 8-, 16- and 32-bit integer ranges: the brightest value of each maps to 255.
_INTEGER_RANGES = (255, 65535, 2**31 - 1)


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 [H, W, 3] -> lossless PNG bytes (what the tables this package writes hold)."""
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def to_rgb(image: Image.Image, background=WHITE) -> Image.Image:
    """A PIL image in any mode Pillow opens -> 8-bit RGB, with any transparency composited on ``background``.

    Pillow's own ``convert("RGB")`` clips 16/32-bit and float values to 0..255 (a 16-bit PNG turns white) and drops
    alpha (transparent pixels show whatever colour they hold, often black); this scales and composites instead.
    """
    if image.mode == "La":  # premultiplied; Pillow converts it to nothing but LA
        image = image.convert("LA")
    if image.mode in ("I", "F") or image.mode.startswith("I;16"):
        image = _high_depth_to_8bit(image)
    if {"A", "a"} & set(image.getbands()) or "transparency" in image.info:  # alpha band, palette/colour-key tRNS
        canvas = Image.new("RGBA", image.size, (*background, 255))
        return Image.alpha_composite(canvas, image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _high_depth_to_8bit(image: Image.Image) -> Image.Image:
    """I;16* / I / F [H, W] -> L (LA where a transparency value is set), the values scaled from their range."""
    values = np.nan_to_num(np.asarray(image, dtype=np.float64))
    full = _full_scale(image.mode, values)
    gray = Image.fromarray(np.rint(np.clip(values, 0, full) * 255 / full).astype(np.uint8))  # 65535 -> v / 257
    if "transparency" not in image.info:
        return gray
    alpha = np.where(values == image.info["transparency"], 0, 255).astype(np.uint8)
    return Image.merge("LA", (gray, Image.fromarray(alpha)))


def _full_scale(mode: str, values: np.ndarray) -> float:
    """The value that maps to 255. I;16 images are 16-bit by their file. I and F carry no bit depth (Pillow makes
    them from L, I;16 and 32-bit TIFFs): the smallest integer range that holds the brightest value, and for F
    also [0, 1], float images' usual range. (So an I/F image darker than 1/255 of its true range is misread.)"""
    if mode.startswith("I;16"):
        return 65535
    ranges = ((1.0,) if mode == "F" else ()) + _INTEGER_RANGES
    brightest = values.max(initial=0)
    return next((r for r in ranges if brightest <= r), ranges[-1])
