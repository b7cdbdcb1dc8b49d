"""The text of a prompt that interleaves text and images, for any transformers image-text-to-text processor."""

from __future__ import annotations


def interleaved_text(processor, parts: list[dict]) -> str:
    """``parts``: [{"type": "text", "text": ...} or {"type": "image"}, ...] -> the processor's chat template applied
    (a generation prompt added) when it has one, else the plain text with its image token in each image's place."""
    if getattr(processor, "chat_template", None):
        return processor.apply_chat_template([{"role": "user", "content": parts}], add_generation_prompt=True)
    token = getattr(processor, "image_token", "<image>")
    return "".join(p["text"] if p["type"] == "text" else token for p in parts)
