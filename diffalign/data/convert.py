"""Converting Pick-a-Pic-style pairs into KTO's binary feedback: for each non-tied pair, the preferred image is
desirable (label 1) and the other undesirable (label 0), in that order. Ties carry no thumbs up or down and are
left out (counted). ``pair_to_feedback`` is the one rule; the toy data builder and ``pairs_to_feedback`` (parquet
shards, ``train-00000-of-N.parquet``, that ``data.source`` reads as a folder) both use it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

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


def pairs_to_feedback(source: str, split: str, out: str | Path, rows_per_shard: int = 20_000) -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose another output folder")
    table = open_table(source, split)
    require_columns(table, ["caption", "jpg_0", "jpg_1", "label_0"], source)
    labels = np.asarray(table["label_0"], dtype=np.float64)
    bad = np.flatnonzero(~np.isin(labels, (0.0, 0.5, 1.0)))
    if len(bad):
        raise ValueError(f"{source}: row {bad[0]} has label_0={labels[bad[0]]}; expected 0, 0.5 or 1")
    if (labels == 0.5).all():
        raise ValueError(f"{source}: every pair is a tie; there is no feedback to write")
    needed = ["caption", "jpg_0", "jpg_1", "label_0"] + [k for k in FEEDBACK_KEEP if k in table.column_names]
    feedback = table.select_columns(list(dict.fromkeys(needed))).map(
        _explode, batched=True, remove_columns=list(dict.fromkeys(needed)))
    out.mkdir(parents=True, exist_ok=True)
    shards = max(1, -(-len(feedback) // rows_per_shard))
    for i in range(shards):
        feedback.shard(shards, i, contiguous=True).to_parquet(str(out / f"train-{i:05d}-of-{shards:05d}.parquet"))
    return {"images": len(feedback), "ties_left_out": int((labels == 0.5).sum()), "shards": shards, "out": str(out)}
