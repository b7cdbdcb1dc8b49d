"""A closed vocabulary of simple shape scenes, and the reader of captions written in it.

The words name colours, shapes, sizes and positions; each maps to what it denotes, in relative units of the canvas
side: an object's centre ``(x, y)`` in [0, 1] (y grows downwards, as in images) and its half-extent ``r``.
Captions state one object in a clause ("a large red circle on the left on a beige background") or several in
sentences ("a red circle at the top left. the background is sky."); the long style places objects with longer
phrases ("in the top left corner of the picture there is a red circle.").

The rule-based caption perturber (data.perturb) edits captions within this vocabulary, so an edited caption still
reads; the toy shapes world (diffalign.toy) draws, captions and judges its scenes with it.
"""

from __future__ import annotations

import re

# Object colours and background colours are disjoint palettes so the judge can read pixels back unambiguously.
OBJECT_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "purple": (140, 60, 180),
    "orange": (245, 135, 25),
}
BACKGROUND_COLOURS: dict[str, tuple[int, int, int]] = {
    "white": (245, 245, 245),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
    "beige": (225, 200, 160),
    "peach": (250, 185, 150),
    "sky": (150, 200, 240),
}
SHAPES = ("circle", "square", "triangle")

# Size words: ranges of the half-extent r (fraction of the canvas side).
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.09, 0.14), "large": (0.24, 0.30)}

# Single-object position words: the range of the centre they demand, as (x_lo, x_hi, y_lo, y_hi).
POSITIONS: dict[str, tuple[float, float, float, float]] = {
    "left": (0.0, 0.38, 0.0, 1.0),
    "right": (0.62, 1.0, 0.0, 1.0),
    "top": (0.0, 1.0, 0.0, 0.38),
    "bottom": (0.0, 1.0, 0.62, 1.0),
    "center": (0.42, 0.58, 0.42, 0.58),
    "top left": (0.0, 0.38, 0.0, 0.38),
    "top right": (0.62, 1.0, 0.0, 0.38),
    "bottom left": (0.0, 0.38, 0.62, 1.0),
    "bottom right": (0.62, 1.0, 0.62, 1.0),
}

# The phrases that state a position: in short captions, and in the long style.
SHORT_WHERE = {
    "left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
    "center": "in the center", "top left": "at the top left", "top right": "at the top right",
    "bottom left": "at the bottom left", "bottom right": "at the bottom right",
}
LONG_WHERE = {
    "left": "on the left side of the picture", "right": "on the right side of the picture",
    "top": "at the top of the picture", "bottom": "at the bottom of the picture",
    "center": "in the very center of the picture", "top left": "in the top left corner of the picture",
    "top right": "in the top right corner of the picture", "bottom left": "in the bottom left corner of the picture",
    "bottom right": "in the bottom right corner of the picture",
}
_SENTENCE_SPLIT = re.compile(r"[.;?!]")


def _find(words: list[str], vocabulary) -> str | None:
    hits = [w for w in words if w in vocabulary]
    return hits[0] if hits else None


def _position(words: list[str]) -> str | None:
    if "center" in words or "middle" in words:
        return "center"
    vertical = _find(words, ("top", "bottom"))
    horizontal = _find(words, ("left", "right"))
    parts = [p for p in (vertical, horizontal) if p]
    return " ".join(parts) if parts else None


def read_caption(caption: str) -> tuple[list[tuple[str, str, str | None, str | None]], str | None]:
    """The attributes a caption in any style of this vocabulary states: one (colour, shape, size, position) per object
    (size and position None where unstated), and the background colour (None where unstated).

    Raises ValueError naming the caption when no object (a colour and a shape in one sentence) can be found, or when
    it names a background outside the vocabulary.
    """
    objects: list[tuple[str, str, str | None, str | None]] = []
    background = None
    for sentence in _SENTENCE_SPLIT.split(caption.lower()):
        bg_match = re.search(r"(?:on an? (\w+) background|background (?:of the picture )?is (\w+))", sentence)
        if bg_match:
            background = bg_match.group(1) or bg_match.group(2)
            sentence = sentence[: bg_match.start()] + sentence[bg_match.end():]
        words = re.findall(r"[a-z]+", sentence)
        colour, shape = _find(words, OBJECT_COLOURS), _find(words, SHAPES)
        if colour and shape:
            objects.append((colour, shape, _find(words, SIZE_RANGES), _position(words)))
    if not objects:
        raise ValueError(f"caption {caption!r} names no object of the shape vocabulary (a colour and a shape)")
    if background is not None and background not in BACKGROUND_COLOURS:
        raise ValueError(f"caption {caption!r} names unknown background {background!r}")
    return objects, background
