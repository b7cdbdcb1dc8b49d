"""Converting Pick-a-Pic-style pairs into KTO's binary feedback: for each non-tied pair, the preferred image is
desirable (label 1) and the other undesirable (label 0). Ties carry no thumbs up or down and are left out
(counted). Written as parquet shards (``train-00000-of-N.parquet``) that ``data.source`` reads as a folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .tables import open_table, require_columns


def pairs_to_feedback(source: str, split: str, out: str | Path, rows_per_shard: int = 20_000) -> dict:
    from datasets import concatenate_datasets

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty; choose another output folder")
    table = open_table(source, split)
    require_columns(table, ["caption", "jpg_0", "jpg_1", "label_0"], source)
    labels = np.asarray(table["label_0"], dtype=np.float64)
    bad = np.flatnonzero(~np.isin(labels, (0.0, 0.5, 1.0)))
    if len(bad):
        raise ValueError(f"{source}: row {bad[0]} has label_0={labels[bad[0]]}; expected 0, 0.5 or 1")
    decided = table.select(np.flatnonzero(labels != 0.5))

    def side(record, preferred: bool) -> dict:
        first_wins = record["label_0"] == 1.0
        image = record["jpg_0"] if first_wins == preferred else record["jpg_1"]
        return {"caption": record["caption"], "image": image, "label": int(preferred)}

    keep = ["caption", "image", "label"]
    parts = [decided.map(lambda r, p=p: side(r, p), remove_columns=[c for c in decided.column_names if c not in keep])
             for p in (True, False)]
    feedback = concatenate_datasets(parts).select_columns(keep)
    out.mkdir(parents=True, exist_ok=True)
    shards = max(1, -(-len(feedback) // rows_per_shard))
    for i in range(shards):
        feedback.shard(shards, i, contiguous=True).to_parquet(str(out / f"train-{i:05d}-of-{shards:05d}.parquet"))
    return {"images": len(feedback), "ties_left_out": int((labels == 0.5).sum()), "shards": shards, "out": str(out)}
