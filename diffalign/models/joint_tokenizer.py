"""Several tokenizers read as one: a caption's ids for every text encoder of a model, end to end in one row.

Flow transformers condition on more than one text encoder, each with its own window: SD3 on CLIP-L (77), CLIP-G (77)
and T5 (``max_sequence_length``); Flux on CLIP-L (77, pooled only) and T5. The data layer stores one id row per
caption (data/examples.token_ids) and the encoding cache hashes it, so the windows are concatenated:

    ids [L_1 + L_2 + ...]   split back by ``split(ids [U, sum L]) -> [ids_1 [U, L_1], ids_2 [U, L_2], ...]``

Each part is padded and cut exactly as the diffusers pipeline pads and cuts it (padding="max_length", truncation).
"""

from __future__ import annotations

import torch


class JointIds:
    def __init__(self, input_ids: torch.Tensor):
        self.input_ids = input_ids  # [n, sum of the windows]


class JointTokenizer:
    def __init__(self, tokenizers: list, lengths: list[int]):
        self.tokenizers, self.lengths = list(tokenizers), [int(n) for n in lengths]
        self.model_max_length = sum(self.lengths)

    def __call__(self, text, **_ignored) -> JointIds:
        """``text``: a caption or a list of them -> ids [n, sum L] (the callers' padding arguments are the parts')."""
        parts = [t(text, padding="max_length", max_length=n, truncation=True, return_tensors="pt").input_ids
                 for t, n in zip(self.tokenizers, self.lengths)]
        return JointIds(torch.cat(parts, dim=-1))

    def split(self, ids: torch.Tensor) -> list[torch.Tensor]:
        """ids [..., sum L] -> one [..., L_k] per tokenizer."""
        if ids.shape[-1] != self.model_max_length:
            raise ValueError(f"token ids of width {ids.shape[-1]}; this model's tokenizers give {self.model_max_length}"
                             f" ({' + '.join(map(str, self.lengths))})")
        return list(torch.split(ids, self.lengths, dim=-1))
