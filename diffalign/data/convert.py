"""Converting Pick-a-Pic-style pairs into KTO's binary feedback, written as parquet shards
(``train-00000-of-N.parquet``) that ``data.source`` reads as a folder. Training needs no such copy: KTO reads a
table of pairs as this feedback on the fly (feedback.py, with ``pair_to_feedback``); the export is for other tools
and for the per-image labelling below.

Per pair (the default): for each non-tied pair, the preferred image is desirable (label 1) and the other
undesirable (label 0), in that order; ties carry no thumbs up or down and are left out (counted). Every verdict is
one row, so an image shown in several pairs appears once per pair, and can be both. ``pair_to_feedback`` is the
one rule; the toy data builder uses it too.

Per image (``per_image=True``, the Diffusion-KTO authors' labelling): one row per unique image (``image_0_uid`` /
``image_1_uid``), desirable if it won at least once (the authors' default policy, ``gt_label_wi_l``: an image that
both won and lost is desirable), undesirable if it only lost. Images seen only in ties have no verdict and are
left out (counted). Each row takes its caption, bytes and user from the image's first pair.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .pairs import PAIR_COLUMNS, pair_labels
from .tables import open_table, require_columns

FEEDBACK_KEEP = ("caption", "user_id")  # columns carried over from the pair, when present


def pair_to_feedback(record: dict) -> list[dict]:
    """One Pick-a-Pic row -> [desirable, undesirable] feedback rows, or [] for a tie."""
    if record["label_0"] == 0.5:
        return []
    chosen, rejected = ("jpg_0", "jpg_1") if record["label_0"] == 1 else ("jpg_1", "jpg_0")
    kept = {k: record[k] for k in FEEDBACK_KEEP if k in record}
    return [{**kept, "image": record[chosen], "label": 1}, {**kept, "image": record[rejected], "label": 0}]


def _explode(batch: dict) -> dict:
    """datasets batched map: each pair row becomes its feedback rows."""
    out: dict[str, list] = {}
    for i in range(len(batch["label_0"])):
        for row in pair_to_feedback({k: v[i] for k, v in batch.items()}):
            for k, v in row.items():
                out.setdefault(k, []).append(v)
    return out


def image_verdicts(labels: np.ndarray, uid_0: list, uid_1: list) -> dict:
    """Per unique image uid, in order of first appearance: {uid: [wins, losses, row, side]} (side 0 or 1, of its
    first pair). Ties count for neither."""
    verdicts: dict = {}
    for row, (label, a, b) in enumerate(zip(labels, uid_0, uid_1)):
        for side, uid in ((0, a), (1, b)):
            counts = verdicts.setdefault(uid, [0, 0, row, side])
            if label != 0.5:
                won = (label == 1) == (side == 0)
                counts[0 if won else 1] += 1
    return verdicts


def _per_image(table, source: str, labels: np.ndarray, needed: list[str]):
    """(feedback table, counts): one row per image with a verdict (see the module docstring)."""
    require_columns(table, ["image_0_uid", "image_1_uid"], source + " (--per-image needs each image's uid)")
    verdicts = image_verdicts(labels, table["image_0_uid"], table["image_1_uid"])
    kept = [(uid, v) for uid, v in verdicts.items() if v[0] + v[1] > 0]
    rows, sides = [v[2] for _, v in kept], [v[3] for _, v in kept]
    label = [int(v[0] > 0) for _, v in kept]

    def pick(batch: dict, indices: list[int]) -> dict:
        out = {k: batch[k] for k in FEEDBACK_KEEP if k in batch}
        out["image"] = [batch["jpg_1" if sides[i] else "jpg_0"][j] for j, i in enumerate(indices)]
        out["label"] = [label[i] for i in indices]
        out["image_uid"] = [kept[i][0] for i in indices]
        out["wins"], out["losses"] = [kept[i][1][0] for i in indices], [kept[i][1][1] for i in indices]
        return out

    picked = table.select_columns(needed).select(rows)
    feedback = picked.map(pick, batched=True, with_indices=True, remove_columns=needed)
    counts = {"desirable": sum(label), "undesirable": len(label) - sum(label),
              "won_and_lost": sum(1 for _, v in kept if v[0] and v[1]),
              "tie_only_images_left_out": len(verdicts) - len(kept)}
    if not counts["desirable"] or not counts["undesirable"]:
        raise ValueError(f"{source}: per image, {counts['desirable']} desirable and {counts['undesirable']} "
                         f"undesirable images; KTO needs both")
    return feedback, counts


def pairs_to_feedback(source: str, split: str, out: str | Path, rows_per_shard: int = 20_000,
                      per_image: bool = False) -> dict:
    """Write the feedback table of ``source``'s pairs to the new folder ``out``; returns the counts."""
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose another output folder")
    table = open_table(source, split)
    require_columns(table, list(PAIR_COLUMNS), source)
    labels = pair_labels(table["label_0"], source)
    if (labels == 0.5).all():
        raise ValueError(f"{source}: every pair is a tie; there is no feedback to write")
    needed = list(dict.fromkeys(list(PAIR_COLUMNS)
                                + [k for k in FEEDBACK_KEEP if k in table.column_names]))
    counts = {}
    if per_image:
        feedback, counts = _per_image(table, source, labels, needed)
    else:
        feedback = table.select_columns(needed).map(_explode, batched=True, remove_columns=needed)
    out.mkdir(parents=True, exist_ok=True)
    shards = max(1, -(-len(feedback) // rows_per_shard))
    for i in range(shards):
        feedback.shard(shards, i, contiguous=True).to_parquet(str(out / f"train-{i:05d}-of-{shards:05d}.parquet"))
    return {"images": len(feedback), **counts, "ties_left_out": int((labels == 0.5).sum()), "shards": shards,
            "out": str(out)}
