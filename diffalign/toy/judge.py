"""The programmatic judge: reads a toy image back and scores it against a caption.

Reading (:func:`read_image`): every pixel takes its nearest palette colour; the background is the most common
background colour on the border; object pixels of each colour are split into 4-connected components; each
component's shape is the template (circle/square/triangle, fitted to its bounding box) with the best IoU.

Scoring (:func:`attribute_checks`, combined in ``scoring.judge``): the fraction of the caption's stated attributes that hold — colour, shape, size,
position per object, and the background. Per-attribute outcomes are returned too, so sets of images can report
colour/shape/size/position/background fidelity separately.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..data.images import to_rgb
from .render import shape_mask
from .world import (
    BACKGROUND_COLOURS, CANVAS, GRID_CELLS, JUDGE_CENTER, JUDGE_SIDE, OBJECT_COLOURS, SHAPES, SIZE_THRESHOLD,
    SceneSpec,
)

_OBJ_NAMES = list(OBJECT_COLOURS)
_BG_NAMES = list(BACKGROUND_COLOURS)
_PALETTE = np.array(list(OBJECT_COLOURS.values()) + list(BACKGROUND_COLOURS.values()), dtype=np.float32)  # [P, 3]
_MAX_COLOUR_DISTANCE = 90.0  # a pixel farther than this from every palette colour belongs to nothing
MIN_AREA = 3  # pixels; smaller specks are noise, not objects


@dataclass
class Component:
    """One connected blob of an object colour. Geometry in relative units, like the world's shapes."""

    colour: str
    area: int
    x: float
    y: float
    r: float
    shape: str


@dataclass
class Reading:
    background: str
    background_rgb: np.ndarray  # [3] mean colour of the border
    components: list[Component]  # sorted by area, largest first

    @property
    def main(self) -> Component | None:
        return self.components[0] if self.components else None


def as_array(image) -> np.ndarray:
    """PIL image, uint8 array [H, W, 3], or float array/tensor [3, H, W] in [0, 1] -> uint8 [CANVAS, CANVAS, 3]."""
    if isinstance(image, Image.Image):
        image = np.asarray(to_rgb(image))  # any mode: 16-bit scaled, alpha on white
    elif hasattr(image, "detach"):  # torch tensor [3, H, W] in [0, 1]
        image = (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = np.clip(np.rint(image * 255 if image.max() <= 1.0 else image), 0, 255).astype(np.uint8)
    if image.shape[:2] != (CANVAS, CANVAS):
        image = np.asarray(Image.fromarray(image).resize((CANVAS, CANVAS), Image.BILINEAR))
    return image


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean mask, each as an int array [N, 2] of (row, col)."""
    seen = np.zeros_like(mask)
    found = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        queue, pixels = deque([start]), []
        while queue:
            r, c = queue.popleft()
            pixels.append((r, c))
            for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
                if 0 <= nr < mask.shape[0] and 0 <= nc < mask.shape[1] and mask[nr, nc] and not seen[nr, nc]:
                    seen[nr, nc] = True
                    queue.append((nr, nc))
        found.append(np.array(pixels))
    return found


def _classify_shape(pixels: np.ndarray, x: float, y: float, rx: float, ry: float) -> str:
    blob = np.zeros((CANVAS, CANVAS), dtype=bool)
    blob[pixels[:, 0], pixels[:, 1]] = True

    def iou(shape: str) -> float:
        template = shape_mask(shape, x, y, rx, CANVAS, ry=ry)
        return (blob & template).sum() / max((blob | template).sum(), 1)

    return max(SHAPES, key=iou)


def read_image(image) -> Reading:
    img = as_array(image).astype(np.float32)  # [H, W, 3]
    dist = np.linalg.norm(img[:, :, None, :] - _PALETTE[None, None], axis=-1)  # [H, W, P]
    label = dist.argmin(-1)
    near = dist.min(-1) <= _MAX_COLOUR_DISTANCE
    border = np.concatenate([img[0], img[-1], img[1:-1, 0], img[1:-1, -1]])  # [4*(S-1), 3]
    bg_dist = np.linalg.norm(border[:, None, :] - _PALETTE[None, len(_OBJ_NAMES):], axis=-1)
    background = _BG_NAMES[np.bincount(bg_dist.argmin(-1), minlength=len(_BG_NAMES)).argmax()]
    components = []
    for k, colour in enumerate(_OBJ_NAMES):
        for pixels in _components((label == k) & near):
            if len(pixels) < MIN_AREA:
                continue
            rows, cols = pixels[:, 0], pixels[:, 1]
            x = (cols.min() + cols.max() + 1) / 2 / CANVAS
            y = (rows.min() + rows.max() + 1) / 2 / CANVAS
            rx = (cols.max() - cols.min() + 1) / 2 / CANVAS
            ry = (rows.max() - rows.min() + 1) / 2 / CANVAS
            shape = _classify_shape(pixels, x, y, rx, ry)
            components.append(Component(colour, len(pixels), x, y, max(rx, ry), shape))
    components.sort(key=lambda c: -c.area)
    return Reading(background, border.mean(0), components)


def _position_holds(position: str, c: Component) -> bool:
    if position == "center":
        return abs(c.x - 0.5) < JUDGE_CENTER and abs(c.y - 0.5) < JUDGE_CENTER
    checks = {"left": c.x < JUDGE_SIDE, "right": c.x > 1 - JUDGE_SIDE,
              "top": c.y < JUDGE_SIDE, "bottom": c.y > 1 - JUDGE_SIDE}
    return all(checks[word] for word in position.split())


def _cell(c: Component) -> tuple[int, int]:
    return min(int(c.x * 3), 2), min(int(c.y * 3), 2)


ATTRIBUTES = ("colour", "shape", "size", "position", "background")  # what a caption can state and the judge checks


def attribute_checks(spec: SceneSpec, reading: Reading) -> dict[str, list[bool]]:
    """For each attribute kind, the outcome of every stated instance of it (empty list = never stated)."""
    checks: dict[str, list[bool]] = {k: [] for k in ATTRIBUTES}
    if spec.background:
        checks["background"].append(reading.background == spec.background)
    for obj in spec.objects:
        if spec.grid:
            # Multi-object: the blob of the stated colour nearest the stated cell stands for this object.
            same = [c for c in reading.components if c.colour == obj.colour]
            cx, cy = GRID_CELLS[obj.position]
            target = min(same, key=lambda c: (c.x - (cx + .5) / 3) ** 2 + (c.y - (cy + .5) / 3) ** 2, default=None)
            checks["colour"].append(target is not None)
            checks["shape"].append(target is not None and target.shape == obj.shape)
            checks["position"].append(target is not None and _cell(target) == (cx, cy))
            continue
        # Single object: the dominant blob is the object; its colour must be the stated one.
        main = reading.main
        checks["colour"].append(main is not None and main.colour == obj.colour)
        checks["shape"].append(main is not None and main.shape == obj.shape)
        if obj.size:
            checks["size"].append(main is not None and (main.r > SIZE_THRESHOLD) == (obj.size == "large"))
        if obj.position:
            checks["position"].append(main is not None and _position_holds(obj.position, main))
    return checks
