"""Prompt sets of the toy world and their fixed train / held-out split.

Every caption belongs to exactly one side of the split, decided by a hash of its text (stable across runs,
machines and Python versions), so preference data built from training prompts never contains an evaluation prompt.
Sets:
- ``attributes``: single objects stating colour, shape, size and position (and a background half the time) —
  the base model's quality table.
- ``persona``: colour + shape (+ background in half) and nothing else — size, position and (often) background are
  left to the model, which is where personas' tastes act.
- ``long``: multi-object scenes (5-6 objects) in the verbose style, most over CLIP's 77 tokens.
"""

from __future__ import annotations

import itertools
import zlib

import numpy as np

from .captions import write
from .world import BACKGROUND_COLOURS, OBJECT_COLOURS, POSITIONS, SHAPES, SIZE_RANGES, ObjectSpec, SceneSpec, sample_spec

HELDOUT_EVERY = 5  # one caption in five is held out


def is_heldout(caption: str) -> bool:
    return zlib.crc32(caption.encode("utf-8")) % HELDOUT_EVERY == 0


def _persona_captions() -> list[str]:
    out = []
    for colour, shape in itertools.product(OBJECT_COLOURS, SHAPES):
        out.append(write(SceneSpec((ObjectSpec(colour, shape),))))
        for bg in BACKGROUND_COLOURS:
            out.append(write(SceneSpec((ObjectSpec(colour, shape),), bg)))
    return out


def _attribute_captions() -> list[str]:
    out = []
    backgrounds = itertools.cycle(BACKGROUND_COLOURS)
    combos = itertools.product(OBJECT_COLOURS, SHAPES, SIZE_RANGES, POSITIONS)
    for i, (colour, shape, size, pos) in enumerate(combos):
        background = next(backgrounds) if i % 2 else None  # every other caption states a background
        out.append(write(SceneSpec((ObjectSpec(colour, shape, size, pos),), background)))
    return out


def long_scene(rng: np.random.Generator) -> tuple[SceneSpec, str]:
    """A 5-6-object scene and its caption in the verbose style (the ``long`` set's kind)."""
    spec = sample_spec(rng, n_objects=int(rng.integers(5, 7)))
    return spec, write(spec, "long", rng)


def _long_captions(n: int = 400, seed: int = 1234) -> list[str]:
    rng = np.random.default_rng(seed)
    return [long_scene(rng)[1] for _ in range(n)]


_SETS = {"persona": _persona_captions, "attributes": _attribute_captions, "long": _long_captions}


def prompt_set(name: str, split: str = "heldout") -> list[str]:
    """Captions of set ``name`` ("persona", "attributes", "long") on one side of the split ("train"/"heldout")."""
    if name not in _SETS:
        raise ValueError(f"unknown toy prompt set {name!r}; expected one of {sorted(_SETS)}")
    if split not in ("train", "heldout"):
        raise ValueError(f"unknown split {split!r}; expected 'train' or 'heldout'")
    return [c for c in _SETS[name]() if is_heldout(c) == (split == "heldout")]
