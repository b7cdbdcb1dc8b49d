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

    def check(self) -> None:
        super().check()
        check_text_encoding(self.text_encoding, self.max_text_length)


class EncodesText:
    """Mixin: the trainer's view of TextEncodingOptions (objectives.base declares both with their defaults)."""

    @property
    def text_encoding(self) -> str:
        return self.options.text_encoding

    @property
    def max_text_length(self) -> int:
        return int(self.options.max_text_length)
