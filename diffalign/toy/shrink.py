"""`diffalign toy shrink-vocab`: cut a toy model's CLIP vocabulary to the toy world's words.

The toy text towers were built with CLIP's full 49,408-entry vocabulary, whose embedding table is most of their
size (12.6 MB of a 13 MB text encoder at width 64) although the world writes 45 words. The cut keeps every entry the
world's captions use (models/small_tokenizers.shrink_clip_vocabulary), so on any toy caption the encoder's outputs
are bit-identical to the full one's (``check_same_outputs`` asserts it on the corpus); other words tokenize into
smaller pieces. Works on a diffusers pipeline folder (``text_encoder/`` + ``tokenizer/``) or a CLIP folder
(``CLIPModel`` + its processor).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from ..models.small_tokenizers import shrink_clip_vocabulary
from .samples import caption_corpus


def shrink_vocabulary(model_dir: str | Path, out_dir: str | Path, corpus_size: int = 20000) -> dict:
    """Write ``model_dir`` with its CLIP vocabulary cut to ``out_dir``; returns sizes and the check's case count."""
    from transformers import CLIPModel, CLIPProcessor, CLIPTextModel, CLIPTokenizer

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    corpus = caption_corpus(corpus_size)
    pipeline = (model_dir / "model_index.json").is_file()
    shutil.copytree(model_dir, out_dir)
    if pipeline:
        tokenizer = CLIPTokenizer.from_pretrained(model_dir, subfolder="tokenizer")
        model = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
    else:
        processor = CLIPProcessor.from_pretrained(model_dir)
        tokenizer, model = processor.tokenizer, CLIPModel.from_pretrained(model_dir)
    before = sum(p.numel() for p in model.parameters())
    model, small = shrink_clip_vocabulary(model, tokenizer, corpus)
    if pipeline:
        model.save_pretrained(out_dir / "text_encoder", safe_serialization=True)
        shutil.rmtree(out_dir / "tokenizer")
        small.save_pretrained(out_dir / "tokenizer")
        reloaded = CLIPTextModel.from_pretrained(out_dir, subfolder="text_encoder")
        original = CLIPTextModel.from_pretrained(model_dir, subfolder="text_encoder")
    else:
        model.save_pretrained(out_dir, safe_serialization=True)
        for stale in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt"):
            (out_dir / stale).unlink(missing_ok=True)
        processor.tokenizer = small
        processor.save_pretrained(out_dir)
        reloaded, original = CLIPModel.from_pretrained(out_dir).text_model, CLIPModel.from_pretrained(model_dir).text_model
    cases = check_same_outputs(original.eval(), tokenizer, reloaded.eval(), small, corpus)
    return {"parameters_before": before, "parameters_after": sum(p.numel() for p in model.parameters()),
            "vocabulary": len(small), "captions_checked": cases}


@torch.no_grad()
def check_same_outputs(original, tokenizer, shrunk, small, captions: list[str], batch: int = 512) -> int:
    """AssertionError unless both give the same last states and pooled output, bit for bit, on every caption (as
    each tokenizer pads and cuts them to 77); returns the number checked."""
    unique = sorted(set(captions))
    for start in range(0, len(unique), batch):
        chunk = unique[start:start + batch]
        ids = [t(chunk, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
               for t in (tokenizer, small)]
        a, b = original(ids[0]), shrunk(ids[1])
        if not (torch.equal(a.last_hidden_state, b.last_hidden_state) and torch.equal(a.pooler_output,
                                                                                     b.pooler_output)):
            raise AssertionError(f"outputs differ on captions {start}..{start + len(chunk)}")
    return len(unique)
