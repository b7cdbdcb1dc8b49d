"""The toy shapes world: random scenes in the library's shape vocabulary (diffalign.data.vocabulary).

A scene is a background colour plus one or more coloured shapes. Geometry is stored in relative units of the
canvas side: an object's centre ``(x, y)`` in [0, 1] (y grows downwards, as in images) and its half-extent
``r`` (a circle's radius, half a square's side, half a triangle's base/height).

What a caption states is a *spec* (:class:`ObjectSpec`, :class:`SceneSpec`): ``None`` means "not stated", and the
scene sampler draws that attribute uniformly at random — which is exactly the freedom preference alignment acts on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..data.vocabulary import BACKGROUND_COLOURS, OBJECT_COLOURS, POSITIONS, SHAPES, SIZE_RANGES

CANVAS = 32  # pixels per side of every toy image

# Unstated sizes span both size words' ranges (data.vocabulary.SIZE_RANGES) and the gap between them.
SIZE_ANY = (0.09, 0.30)
SIZE_THRESHOLD = 0.19  # the judge calls a shape "large" above this half-extent

# The judge's tolerance: a stated side holds when the centre lies beyond these lines.
JUDGE_SIDE = 0.44  # left: x < 0.44, right: x > 0.56, likewise top/bottom
JUDGE_CENTER = 0.12  # center: |x - .5| and |y - .5| both below this

# Multi-object scenes place each object in its own cell of a 3x3 grid; cells are named like positions.
GRID_CELLS: dict[str, tuple[int, int]] = {
    "top left": (0, 0), "top": (1, 0), "top right": (2, 0),
    "left": (0, 1), "center": (1, 1), "right": (2, 1),
    "bottom left": (0, 2), "bottom": (1, 2), "bottom right": (2, 2),
}
MULTI_SIZE = (0.08, 0.12)


@dataclass(frozen=True)
class ObjectSpec:
    """What a caption says about one object; None = unstated."""

    colour: str
    shape: str
    size: str | None = None
    position: str | None = None


@dataclass(frozen=True)
class SceneSpec:
    """What a caption says about a scene; ``grid`` marks multi-object scenes laid out on the 3x3 grid."""

    objects: tuple[ObjectSpec, ...]
    background: str | None = None

    @property
    def grid(self) -> bool:
        return len(self.objects) > 1


@dataclass
class Shape:
    colour: str
    shape: str
    x: float
    y: float
    r: float


@dataclass
class Scene:
    background: str
    shapes: list[Shape] = field(default_factory=list)


def _uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(rng.uniform(lo, hi)) if hi > lo else float(lo)


def realise(spec: SceneSpec, rng: np.random.Generator) -> Scene:
    """Draw a concrete scene that satisfies ``spec``; unstated attributes are drawn uniformly."""
    background = spec.background or str(rng.choice(list(BACKGROUND_COLOURS)))
    shapes = []
    if spec.grid:
        for obj in spec.objects:
            col, row = GRID_CELLS[obj.position]  # multi-object specs always state a cell
            r = _uniform(rng, *MULTI_SIZE)
            jitter = 0.04
            x = (col + 0.5) / 3 + _uniform(rng, -jitter, jitter)
            y = (row + 0.5) / 3 + _uniform(rng, -jitter, jitter)
            shapes.append(Shape(obj.colour, obj.shape, x, y, r))
        return Scene(background, shapes)
    (obj,) = spec.objects
    r = _uniform(rng, *(SIZE_RANGES[obj.size] if obj.size else SIZE_ANY))
    x_lo, x_hi, y_lo, y_hi = POSITIONS[obj.position] if obj.position else (0.0, 1.0, 0.0, 1.0)
    # Keep the shape inside the canvas: the centre stays at least r from every edge.
    x = _uniform(rng, max(x_lo, r), min(x_hi, 1 - r))
    y = _uniform(rng, max(y_lo, r), min(y_hi, 1 - r))
    return Scene(background, [Shape(obj.colour, obj.shape, x, y, r)])


def sample_spec(
    rng: np.random.Generator,
    p_size: float = 0.5,
    p_position: float = 0.5,
    p_background: float = 0.5,
    n_objects: int = 1,
) -> SceneSpec:
    """A random caption spec. Single objects state colour and shape always, the rest with the given odds.

    Multi-object specs (n_objects > 1) state colour, shape and grid cell of every object, each in its own cell.
    """
    colour = lambda: str(rng.choice(list(OBJECT_COLOURS)))  # noqa: E731
    shape = lambda: str(rng.choice(SHAPES))  # noqa: E731
    background = str(rng.choice(list(BACKGROUND_COLOURS))) if rng.random() < p_background else None
    if n_objects == 1:
        size = str(rng.choice(list(SIZE_RANGES))) if rng.random() < p_size else None
        position = str(rng.choice(list(POSITIONS))) if rng.random() < p_position else None
        return SceneSpec((ObjectSpec(colour(), shape(), size, position),), background)
    cells = rng.choice(list(GRID_CELLS), size=n_objects, replace=False)
    objects = tuple(ObjectSpec(colour(), shape(), None, str(c)) for c in cells)
    return SceneSpec(objects, background)
