"""Opening a table of examples with `datasets`: a hub id, a local parquet file, or a folder of parquet files."""

from __future__ import annotations

from pathlib import Path


def open_table(source: str, split: str = "train"):
    """A ``datasets.Dataset``. Local parquet files/folders are read offline; anything else is a hub id."""
    from datasets import load_dataset

    path = Path(source)
    if path.is_file():
        if path.suffix != ".parquet":
            raise ValueError(f"{source}: expected a .parquet file (or a folder of them, or a hub dataset id)")
        return load_dataset("parquet", data_files=str(path), split="train")
    if path.is_dir():
        if not any(path.rglob("*.parquet")):
            raise ValueError(f"{source}: folder holds no .parquet files")
        # datasets infers the splits from file names (train-*.parquet, test-*.parquet, ...): take only ``split``.
        return load_dataset(str(path), split=split)
    if source.startswith((".", "/")) or source.endswith(".parquet"):
        raise FileNotFoundError(f"{source} does not exist")
    return load_dataset(source, split=split)


def require_columns(table, columns: list[str], source: str) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; found {table.column_names}")
