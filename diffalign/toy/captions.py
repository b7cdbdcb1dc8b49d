"""The caption grammar: writing a caption from a spec, and reading a caption back into a spec.

Short captions ("a large red circle on the left on a beige background") describe one object; multi-object captions
have one sentence per object ("a red circle at the top left. a blue square in the center."), and the verbose
``long`` style ("furthermore, in the top left corner of the picture there is a red circle. ...") exceeds CLIP's
77-token window with five or more objects. :func:`parse` inverts every style, so the judge can score any caption.
"""

from __future__ import annotations

import numpy as np

from ..data.vocabulary import LONG_WHERE, SHORT_WHERE, read_caption
from .world import ObjectSpec, SceneSpec

_LONG_LEADS = ("", "also, ", "furthermore, ", "in addition, ", "besides that, ", "and ")


def _object_phrase(obj: ObjectSpec) -> str:
    words = ([obj.size] if obj.size else []) + [obj.colour, obj.shape]
    article = "an" if words[0][0] in "aeiou" else "a"
    return " ".join([article] + words)


def write(spec: SceneSpec, style: str = "short", rng: np.random.Generator | None = None) -> str:
    """Caption for ``spec``. ``style``: "short" (one clause per object) or "long" (verbose sentences)."""
    if style not in ("short", "long"):
        raise ValueError(f"unknown caption style {style!r}; expected 'short' or 'long'")
    if not spec.grid and style == "short":
        obj = spec.objects[0]
        text = _object_phrase(obj)
        if obj.position:
            text += " " + SHORT_WHERE[obj.position]
        if spec.background:
            text += f" on a {spec.background} background"
        return text
    sentences = []
    for i, obj in enumerate(spec.objects):
        if style == "short":
            where = " " + SHORT_WHERE[obj.position] if obj.position else ""
            sentences.append(f"{_object_phrase(obj)}{where}")
        else:
            lead = "" if i == 0 or rng is None else str(rng.choice(_LONG_LEADS))
            where = LONG_WHERE[obj.position] + " " if obj.position else ""
            sentences.append(f"{lead}{where}there is {_object_phrase(obj)}".strip())
    if spec.background:
        sentences.append(f"the background is {spec.background}" if style == "short" or spec.grid
                         else f"the whole background of the picture is {spec.background}")
    return ". ".join(sentences) + "."


def parse(caption: str) -> SceneSpec:
    """Read the stated attributes back from a caption written in any style of this grammar (the vocabulary's reader,
    ``data.vocabulary.read_caption``).

    Raises ValueError naming the caption when no object (colour + shape) can be found.
    """
    objects, background = read_caption(caption)
    return SceneSpec(tuple(ObjectSpec(*obj) for obj in objects), background)
