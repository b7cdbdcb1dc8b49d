"""The text-encoding options of objectives that may encode long captions sentence by sentence (sft, longalign)."""

from __future__ import annotations

from dataclasses import dataclass

from ..models.segment_encoding import DEFAULT_MAX_LENGTH, check_text_encoding
from .base import Options


@dataclass
class TextEncodingOptions(Options):
    # "truncate": CLIP's 77-token window; "segments": LongAlign's segment encoding (models/segment_encoding.py)
    text_encoding: str = "truncate"
    max_text_length: int = DEFAULT_MAX_LENGTH  # segments: rows of text states the captions are cut or padded to
    # segments: how captions are cut into sentences and what pads them: "diffalign" (every sentence keeps its own
    # end mark; . ? ! ; all split) or "authors" (LongAlign's code: . and ? split, each piece ends in "."; the filler
    # is the mean of the empty prompt's last 60 states). models/segment_encoding.py; images are sampled alike.
    segmenter: str = "diffalign"

    def check(self) -> None:
        super().check()
        check_text_encoding(self.text_encoding, self.max_text_length, self.segmenter)


class EncodesText:
    """Mixin: the trainer's view of TextEncodingOptions (objectives.base declares both with their defaults)."""

    @property
    def text_encoding(self) -> str:
        return self.options.text_encoding

    @property
    def max_text_length(self) -> int:
        return int(self.options.max_text_length)

    @property
    def segmenter(self) -> str:
        return self.options.segmenter
