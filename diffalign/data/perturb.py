"""Caption perturbation for TPO (Xian et al., 2025): a mismatched caption c_l for an image whose true caption is c_w.

The paper edits captions with an LLM along four principles; diffalign has a deterministic rule-based perturber
over the same four axes, and an optional LLM perturber (any local transformers text-generation model).

Axes (each replaces one phrase with another of the same class, so the result stays grammatical):
- ``content``: what is there — object nouns (circle → triangle, dog → cat) and counts (two → three);
- ``attribute``: how it looks — colours of objects, sizes, materials, styles;
- ``spatial``: where — position phrases move to the opposite side (at the top left → at the bottom right; a
  neighbouring position such as "on the left" would still hold for that image) and relations flip
  (left of → right of);
- ``context``: the surroundings — backgrounds (on a beige background → on a sky background), weather, time of
  day, places. A caption with no context gets one appended, so ``context`` always applies.
Both captions in the shape vocabulary (data.vocabulary, the toy world's grammar) and free text are covered;
vocabulary words are replaced only by vocabulary words, so a perturbed caption in it still reads. A perturbation
never returns its input.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from .vocabulary import BACKGROUND_COLOURS, LONG_WHERE, OBJECT_COLOURS, SHAPES, SHORT_WHERE, SIZE_RANGES, read_caption

AXES = ("content", "attribute", "spatial", "context")

# Each axis: classes of interchangeable phrases. A phrase is replaced by another member of its own class.
_CLASSES: dict[str, list[tuple[str, ...]]] = {
    "content": [
        tuple(SHAPES),
        ("dog", "cat", "horse", "bird", "cow", "sheep", "bear", "rabbit", "fox", "lion"),
        ("car", "bus", "bicycle", "boat", "train", "truck", "motorcycle", "airplane"),
        ("tree", "flower", "house", "tower", "bridge", "castle", "mountain", "lighthouse"),
        ("man", "woman", "child", "robot", "astronaut", "knight"),
        ("apple", "banana", "cake", "pizza", "cup", "bottle", "book", "chair", "table", "clock"),
        ("two", "three", "four", "five", "six"),
    ],
    "attribute": [
        tuple(OBJECT_COLOURS),
        ("pink", "brown", "silver", "golden", "cyan", "violet"),
        tuple(SIZE_RANGES),
        ("tiny", "huge", "big"),
        ("wooden", "metal", "glass", "plastic", "stone", "paper", "leather"),
        ("photo", "painting", "sketch", "cartoon", "watercolor", "oil painting", "3d render", "pixel art"),
    ],
    "spatial": [
        tuple(SHORT_WHERE.values()),
        tuple(LONG_WHERE.values()),
        ("left of", "right of", "above", "below", "behind", "in front of", "next to", "on top of"),
    ],
    "context": [
        tuple(f"on a {c} background" for c in BACKGROUND_COLOURS),
        tuple(f"background is {c}" for c in BACKGROUND_COLOURS),
        tuple(f"background of the picture is {c}" for c in BACKGROUND_COLOURS),
        ("sunny", "rainy", "snowy", "foggy", "cloudy", "stormy"),
        ("at night", "at dawn", "at sunset", "at noon", "in the morning", "in the evening"),
        ("on a beach", "in a forest", "in a city", "in a desert", "in a kitchen", "in a field", "on a street"),
    ],
}
# Spatial edits must contradict the image, and neighbouring positions do not ("on the left" still holds for a
# shape at the top left), so a position moves to the opposite side; the centre moves to a corner.
_MIRROR = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "center": None,
           "top left": "bottom right", "bottom right": "top left", "top right": "bottom left",
           "bottom left": "top right"}
_CORNERS = ("top left", "top right", "bottom left", "bottom right")
_OPPOSITES: dict[str, tuple[str, ...]] = {}
for _where in (SHORT_WHERE, LONG_WHERE):
    for _key, _phrase in _where.items():
        _OPPOSITES[_phrase] = (_where[_MIRROR[_key]],) if _MIRROR[_key] else tuple(_where[c] for c in _CORNERS)
_OPPOSITES |= {"left of": ("right of",), "right of": ("left of",), "above": ("below",), "below": ("above",),
               "behind": ("in front of",), "in front of": ("behind",), "on top of": ("below",)}

_APPENDED_CONTEXT = ("at night", "in the rain", "at sunset", "in the snow", "under a cloudy sky")


@dataclass(frozen=True)
class _Hit:
    start: int
    end: int
    phrase: str
    members: tuple[str, ...]


def _pattern(members: tuple[str, ...]) -> re.Pattern:
    words = sorted(members, key=len, reverse=True)  # longest first: "at the top left" before "at the top"
    return re.compile(r"(?<![a-z])(" + "|".join(re.escape(w) for w in words) + r")(?![a-z])")


_PATTERNS = {axis: [(_pattern(c), c) for c in classes] for axis, classes in _CLASSES.items()}


def _hits(caption: str, axis: str) -> list[_Hit]:
    """Non-overlapping phrases of ``axis`` in the caption (context phrases shadow the colours inside them)."""
    text = caption.lower()
    taken = [(h.start, h.end) for h in _raw_hits(text, "context")] if axis != "context" else []
    return [h for h in _raw_hits(text, axis) if not any(s < h.end and h.start < e for s, e in taken)]


def _raw_hits(text: str, axis: str) -> list[_Hit]:
    hits: list[_Hit] = []
    for pattern, members in _PATTERNS[axis]:
        for m in pattern.finditer(text):
            if not any(h.start < m.end() and m.start() < h.end for h in hits):
                hits.append(_Hit(m.start(), m.end(), m.group(1), members))
    return sorted(hits, key=lambda h: h.start)


def _fix_articles(text: str) -> str:
    return re.sub(r"\b(a|an) (\w)", lambda m: ("an " if m.group(2) in "aeiou" else "a ") + m.group(2), text)


def _append_context(caption: str, rng: np.random.Generator) -> str:
    """A caption without context gets one: a background in the shape vocabulary's grammar, a time/weather phrase
    otherwise."""
    try:
        read_caption(caption)
        in_vocabulary = True
    except ValueError:
        in_vocabulary = False
    if in_vocabulary:
        colour = list(BACKGROUND_COLOURS)[int(rng.integers(len(BACKGROUND_COLOURS)))]
        if caption.rstrip().endswith("."):  # sentence style: one more sentence
            return f"{caption.rstrip()} the background is {colour}."
        return f"{caption.rstrip()} on a {colour} background"
    extra = _APPENDED_CONTEXT[int(rng.integers(len(_APPENDED_CONTEXT)))]
    return caption.rstrip(" .") + " " + extra + ("." if caption.rstrip().endswith(".") else "")


def applicable_axes(caption: str) -> list[str]:
    """The axes that have something to change in this caption (context always does: one can be appended)."""
    return [a for a in AXES if a == "context" or _hits(caption, a)]


class RulePerturber:
    """Deterministic given the rng: ``perturb(caption, rng, axis=None) -> (perturbed, axis used)``."""

    def __init__(self, axes: tuple[str, ...] = AXES):
        unknown = set(axes) - set(AXES)
        if unknown or not axes:
            raise ValueError(f"unknown perturbation axes {sorted(unknown)}; expected some of {AXES}")
        self.axes = tuple(axes)

    def perturb(self, caption: str, rng: np.random.Generator, axis: str | None = None) -> tuple[str, str]:
        if axis is None:
            candidates = [a for a in self.axes if a in applicable_axes(caption)]
            axis = candidates[int(rng.integers(len(candidates)))] if candidates else "context"
        elif axis not in AXES:
            raise ValueError(f"unknown perturbation axis {axis!r}; expected one of {AXES}")
        hits = _hits(caption, axis)
        if not hits:
            if axis != "context":
                raise ValueError(f"caption {caption!r} has nothing to change along {axis!r}")
            return _append_context(caption, rng), axis
        hit = hits[int(rng.integers(len(hits)))]
        others = list(_OPPOSITES.get(hit.phrase) or [m for m in hit.members if m != hit.phrase])
        new = others[int(rng.integers(len(others)))]
        out = _fix_articles(caption[:hit.start] + new + caption[hit.end:])
        return out, axis
