"""Multi-user preference pairs for PPD: each pair with a profile of *other* examples of the same user.

A table in the Pick-a-Pic v2 schema with ``user_id`` (Pick-a-Pic v2 has it; the toy world's
``pairs_multiuser.parquet``). Every example is a pair as in ``pairs.py`` plus ``profile_rows`` [k]: k other
decisive (non-tied) pairs of its user, drawn from (run seed, epoch, row) — so a pair never conditions on itself, and
each epoch shows it with another profile of the same user. Users with fewer than k + 1 decisive pairs cannot give a
pair a profile without it; their pairs are left out and counted (``skipped_few_examples``).

``reversed_users`` (PPD's ``objective.reversed_users``): the probability that a pair is shown as the user's
*reversed twin* — a virtual user who made every choice the other way: the pair's images swap, and so does every
profile example (for the CLIP-difference encoder its embedding is exactly the negated one). Without it, the
personas most users share pull a user-independent shift into the adapter and a minority taste (the toy's
``subtle``) is left with the base model; with it, no shift is preferred on average, so every effect has to come
through the user embedding.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from ..config import DataConfig
from ..models.user_encoders import UserEncoder
from ..models.user_examples import UserExample
from .examples import BadSample, decode_image, without_skipped
from .pairs import PreferencePairs, collate_pairs


class TableUserExample(UserExample):
    """A table row as a user example whose images decode only when an encoder asks for them (a cached key
    never decodes)."""

    def __init__(self, dataset: "UserPreferencePairs", row: int, reversed_choice: bool = False):
        record = dataset.table[row]
        chosen, rejected = ("jpg_0", "jpg_1") if (dataset.labels[row] == 1.0) != reversed_choice else ("jpg_1", "jpg_0")
        self._dataset, self._record, self._where = dataset, record, f"{dataset.cfg.source} row {row}"
        self._columns = (chosen, rejected)
        # Not UserExample.__init__: it would set chosen/rejected, hiding the lazy properties below.
        self.caption = record["caption"]
        self.key = f"{dataset.cfg.source}#{row}" + (":reversed" if reversed_choice else "")

    @cached_property
    def chosen(self):
        return self._decode(self._columns[0])

    @cached_property
    def rejected(self):
        return self._decode(self._columns[1])

    def _decode(self, column: str):
        return decode_image(self._record[column], f"{self._where} column {column}",
                            background=self._dataset.cfg.alpha_background, root=self._dataset.image_root)


class UserPreferencePairs(PreferencePairs):
    def __init__(self, cfg: DataConfig, tokenizer, seed: int = 0, examples_per_user: int = 4,
                 reversed_users: float = 0.0):
        super().__init__(cfg, tokenizer, seed)  # map-style: profiles are drawn from all of a user's rows
        if not 0 <= reversed_users <= 1:
            raise ValueError(f"reversed_users is a probability; got {reversed_users}")
        self.reversed_users = reversed_users
        if "user_id" not in self.found_columns:
            raise ValueError(f"{cfg.source}: PPD needs a user_id column (Pick-a-Pic v2 has one; map yours with "
                             f"data.columns.user_id); columns are {self.found_columns}")
        if examples_per_user < 1:
            raise ValueError(f"examples_per_user must be >= 1; got {examples_per_user}")
        self.k = examples_per_user
        users = np.asarray(self.table["user_id"])
        decisive = self.rows[self.labels[self.rows] != 0.5]
        self.user_rows = {u: decisive[users[decisive] == u] for u in np.unique(users[decisive])}
        enough = {u for u, rows in self.user_rows.items() if len(rows) > self.k}
        keep = np.array([r for r in self.rows if users[r] in enough], dtype=np.int64)
        self.skipped_few_examples = len(self.rows) - len(keep)
        self.skipped_users = len({users[r] for r in self.rows} - enough)
        if len(keep) == 0:
            raise ValueError(f"{cfg.source}: no user has more than {self.k} decisive pairs, so no pair can get a "
                             f"profile of {self.k} other examples (lower objective.examples_per_user)")
        self.rows, self.users = keep, users
        self.skipped_profile_examples = 0  # undecodable profile images left out (data.on_bad_sample: skip)

    def load_record(self, row: int, record: dict) -> dict:
        example = super().load_record(row, record)
        others = self.user_rows[self.users[row]]
        others = others[others != row]
        rng = np.random.default_rng([self.seed, self.epoch, row, 0x50504400])  # its own stream: "PPD"
        example["profile_rows"] = torch.from_numpy(rng.choice(others, size=self.k, replace=False))  # [k]
        example["user_id"] = int(self.users[row]) if np.issubdtype(self.users.dtype, np.integer) else -1
        example["reversed"] = bool(rng.random() < self.reversed_users)
        if example["reversed"]:  # the user's "reversed twin": every choice the other way, the pair's included
            example["pixels"], example["image_meta"] = example["pixels"].flip(0), example["image_meta"].flip(0)
        return example

    def user_example(self, row: int, reversed_choice: bool = False) -> UserExample:
        return TableUserExample(self, int(row), reversed_choice)

    @torch.no_grad()
    def user_embeddings(self, profile_rows: torch.Tensor, encoder: UserEncoder,
                        reversed_users: torch.Tensor | None = None) -> torch.Tensor:
        """[B, k] table rows (and [B] bool: the reversed twin's) -> [B, E] user embeddings (float32)."""
        flags = reversed_users.tolist() if reversed_users is not None else [False] * len(profile_rows)
        return torch.stack([self._embed_profile(rows.tolist(), flip, encoder) for rows, flip in zip(profile_rows, flags)])

    def _embed_profile(self, rows: list[int], flip: bool, encoder: UserEncoder) -> torch.Tensor:
        """With ``data.on_bad_sample: skip``, a profile example whose image cannot be decoded is left out (counted
        in ``skipped_profile_examples``) and the user is embedded from the rest; otherwise it stops the run."""
        examples = [self.user_example(r, flip) for r in rows]
        if self.cfg.on_bad_sample != "skip":
            return encoder.encode_user(examples)
        usable = []
        for example in examples:
            try:
                example.chosen, example.rejected  # noqa: B018  (decode now: a bad image raises here)
                usable.append(example)
            except BadSample:
                self.skipped_profile_examples += 1
        if not usable:
            raise BadSample(f"{self.cfg.source}: no image of profile rows {rows} could be decoded")
        return encoder.encode_user(usable)


def collate_user_pairs(examples: list[dict]) -> dict:
    """``collate_pairs`` plus profile_rows [B, k] and user_id [B]."""
    batch = collate_pairs(examples)
    kept, _ = without_skipped(examples)
    if kept:
        batch["profile_rows"] = torch.stack([e["profile_rows"] for e in kept])
        batch["user_id"] = torch.tensor([e["user_id"] for e in kept])
        batch["reversed_users"] = torch.tensor([e["reversed"] for e in kept])
    return batch
