"""Small offline tokenizers for small models: a CLIP tokenizer cut down to the BPE merges a corpus uses, and a
T5-style (SentencePiece unigram) tokenizer trained on a corpus. Both load with transformers' own classes.

Why: CLIP's full vocabulary has 49,408 entries, so even a 64-wide text encoder spends 12.6 MB on its embedding
table. A model that only ever reads a closed vocabulary (the toy world's) needs the merges that build its words:
BPE merges the lowest-ranked pair present at each step, so dropping merges that never fire on the corpus changes
no corpus word's tokens; any other word still tokenizes, into smaller pieces (all 512 byte symbols are kept).
"""

from __future__ import annotations

import gzip
import json
import re
import tempfile
from pathlib import Path

from .tokenizer import MAX_LENGTH, N_MERGES, _bytes_to_unicode, open_clip_bpe_path

_WORD = re.compile(r"[a-z]+|[0-9]|[^\sa-z0-9]+")  # CLIP's pre-tokenisation, restricted to lower-case text


def _clip_merges(bpe_path: str | Path | None = None) -> list[tuple[str, str]]:
    lines = gzip.open(Path(bpe_path) if bpe_path else open_clip_bpe_path()).read().decode("utf-8").split("\n")
    return [tuple(m.split()) for m in lines[1:N_MERGES + 1]]


def _merges_used(word: str, ranks: dict) -> list[tuple[str, str]]:
    """The merges BPE applies to one word (CLIP: characters, the last with ``</w>``), in order."""
    byte_map = _bytes_to_unicode()
    symbols = [byte_map[b] for b in word.encode("utf-8")]
    symbols[-1] += "</w>"
    used = []
    while len(symbols) > 1:
        pairs = {(a, b) for a, b in zip(symbols, symbols[1:])}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        used.append(best)
        merged, i = [], 0
        while i < len(symbols):
            if i + 1 < len(symbols) and (symbols[i], symbols[i + 1]) == best:
                merged.append(symbols[i] + symbols[i + 1])
                i += 2
            else:
                merged.append(symbols[i])
                i += 1
        symbols = merged
    return used


def build_small_clip_tokenizer(corpus: list[str], bpe_path: str | Path | None = None):
    """A CLIPTokenizer (77 positions, padded with ``<|endoftext|>``) whose merges are those the corpus's words use,
    kept in CLIP's order: the corpus tokenizes to the same token strings as with full CLIP (other ids)."""
    from transformers import CLIPTokenizer

    merges = _clip_merges(bpe_path)
    ranks = {m: i for i, m in enumerate(merges)}
    words = {w for text in corpus for w in _WORD.findall(text.lower())}
    used = {m for w in sorted(words) for m in _merges_used(w, ranks)}
    kept = [m for m in merges if m in used]
    symbols = list(_bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in kept]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    with tempfile.TemporaryDirectory() as tmp:
        Path(tmp, "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False))
        Path(tmp, "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in kept) + "\n",
                                           encoding="utf-8")
        return CLIPTokenizer.from_pretrained(tmp, model_max_length=MAX_LENGTH, pad_token="<|endoftext|>")


def build_t5_tokenizer(corpus: list[str], vocab_size: int = 256, max_length: int = MAX_LENGTH):
    """A T5TokenizerFast with a unigram (SentencePiece-style) vocabulary trained on ``corpus``: lower-cased,
    ``▁``-marked word starts, ``</s>`` appended, ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, as T5's own."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import T5TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(corpus, trainers.UnigramTrainer(vocab_size=vocab_size, unk_token="<unk>",
                                                            special_tokens=["<pad>", "</s>", "<unk>"]))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return T5TokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                           extra_ids=0, model_max_length=max_length)


def shrink_clip_vocabulary(model, full_tokenizer, corpus: list[str]):
    """(the model with its token embedding cut to ``build_small_clip_tokenizer(corpus)``'s entries, that tokenizer).

    ``model``: a CLIPTextModel(WithProjection) or CLIPModel read by ``full_tokenizer`` (CLIP's full vocabulary).
    Each kept entry keeps its embedding row, so every corpus text gives exactly the states it gave before; the start,
    end and padding ids in the config follow the new vocabulary (CLIP pools at the first end token). Save and reload
    the model: CLIP's text transformer reads the end token's id from the config when it is built."""
    import torch

    small = build_small_clip_tokenizer(corpus)
    full = full_tokenizer.get_vocab()
    order = sorted(small.get_vocab().items(), key=lambda item: item[1])
    rows = torch.tensor([full[token] for token, _ in order])  # [V_small] old id of each new id
    # a CLIPModel holds its text tower as text_model; CLIPTextModel(WithProjection) is one (transformers 5)
    embeddings = getattr(model, "text_model", model).embeddings
    old = embeddings.token_embedding
    new = torch.nn.Embedding(len(rows), old.embedding_dim)
    new.weight.data = old.weight.data[rows].clone()
    embeddings.token_embedding = new
    config = getattr(model.config, "text_config", model.config)
    config.vocab_size = len(rows)
    config.bos_token_id, config.eos_token_id = small.bos_token_id, small.eos_token_id
    config.pad_token_id = small.pad_token_id
    return model, small
