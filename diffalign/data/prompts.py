"""Prompts alone, for reward fine-tuning (LongAlign): the images are the policy's own samples.

``data.source`` is anything evaluation.prompt_sources reads: ``toy:<set>`` (its training side under
``data.split: train``), a ``.txt`` or ``.jsonl`` file, or a table (hub id, parquet) with a ``caption`` or
``prompt`` column (or the one ``data.columns.caption`` names). Each example carries its seed from (run seed, epoch,
row): the initial latent noise and the choice of which sampling steps keep their graph are reproducible in any
batch layout.
"""

from __future__ import annotations

import torch

from ..config import DataConfig
from ..core.noise import example_seed
from ..evaluation.prompt_sources import load_prompts
from .examples import token_ids


class TrainingPrompts(torch.utils.data.Dataset):
    def __init__(self, cfg: DataConfig, tokenizer, seed: int = 0):
        other = sorted(set(cfg.columns) - {"caption"})
        if other:
            raise ValueError(f"data.columns: reward fine-tuning reads one column, the prompt (data.columns.caption); "
                             f"got {other}")
        try:
            prompts = load_prompts(cfg.source, column=cfg.columns.get("caption"), split=cfg.split)
        except (ValueError, FileNotFoundError) as err:
            raise ValueError(f"data.source {cfg.source!r}: {err}") from err
        empty = next((i for i, p in enumerate(prompts) if not p.strip()), None)
        if empty is not None:
            raise ValueError(f"{cfg.source} [{cfg.split}], prompt {empty}: empty; reward fine-tuning needs a prompt "
                             "to score the image against")
        self.prompts = prompts[: cfg.max_pairs] if cfg.max_pairs is not None else prompts
        self.cfg, self.tokenizer, self.seed, self.epoch = cfg, tokenizer, seed, 0

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> dict:
        caption = self.prompts[i]
        return {"caption": caption, "input_ids": token_ids(self.tokenizer, caption),
                "seed": example_seed(self.seed, self.epoch, i)}


def collate_prompts(examples: list[dict]) -> dict:
    """-> captions [B] (str), input_ids [B, 77] (SDXL [B, 2, 77]), seeds [B]."""
    return {"captions": [e["caption"] for e in examples], "input_ids": torch.stack([e["input_ids"] for e in examples]),
            "seeds": torch.tensor([e["seed"] for e in examples], dtype=torch.long), "rows": len(examples)}
