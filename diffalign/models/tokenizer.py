"""An offline CLIP tokenizer: transformers' ``CLIPTokenizer`` built from the BPE merges file open_clip ships.

CLIP's vocabulary is fully determined by its merges: the 256 byte symbols, the same with the end-of-word
marker ``</w>``, one entry per merge (the first 48,894 merges), then ``<|startoftext|>`` and ``<|endoftext|>`` —
49,408 entries. Building it this way needs no hub download and reproduces openai/clip-vit-large-patch14's
tokenizer (the one Stable Diffusion 1.x uses), including its padding with ``<|endoftext|>``.
"""

from __future__ import annotations

import gzip
import json
import tempfile
from functools import lru_cache
from pathlib import Path

from transformers import CLIPTokenizer

N_MERGES = 49152 - 256 - 2  # merges CLIP uses, as in its reference tokenizer
MAX_LENGTH = 77


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
        range(ord("®"), ord("ÿ") + 1)
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def open_clip_bpe_path() -> Path:
    from open_clip.tokenizer import default_bpe

    return Path(default_bpe())


def write_vocab_files(out_dir: str | Path, bpe_path: str | Path | None = None) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` derived from the gzipped BPE merges file; returns their paths."""
    bpe_path = Path(bpe_path) if bpe_path else open_clip_bpe_path()
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]  # line 0 is a version header
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_file, merges_file = out_dir / "vocab.json", out_dir / "merges.txt"
    vocab_file.write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}, ensure_ascii=False))
    merges_file.write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return vocab_file, merges_file


def build_clip_tokenizer(bpe_path: str | Path | None = None) -> CLIPTokenizer:
    """A transformers CLIPTokenizer (max length 77, padded with <|endoftext|>) built offline."""
    with tempfile.TemporaryDirectory() as tmp:
        write_vocab_files(tmp, bpe_path)
        # from_pretrained reads vocab.json + merges.txt in every transformers version (its __init__ arguments differ).
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=MAX_LENGTH, pad_token="<|endoftext|>")
