"""Opening a table of examples with `datasets`: a hub id, a local parquet file, or a folder of parquet files."""

from __future__ import annotations

from pathlib import Path


def open_table(source: str, split: str = "train"):
    """A ``datasets.Dataset``. Local parquet files/folders are read offline; anything else is a hub id."""
    from datasets.exceptions import DatasetGenerationError

    try:
        return _load(source, split)
    except DatasetGenerationError as err:  # datasets' wrapper hides the cause (bad parquet, no schema, ...)
        cause = err.__cause__ or err.__context__ or err
        raise ValueError(f"{source}: not a readable table ({type(cause).__name__}: {cause})") from err
    except ValueError as err:
        if "corresponds to no data" in str(err):  # datasets' words for a table with no rows
            raise ValueError(f"{source} (split {split!r}): no examples to train on (the table has 0 rows)") from err
        if source in str(err):
            raise
        raise ValueError(f"{source}: not a readable table ({type(err).__name__}: {err})") from err


def _load(source: str, split: str):
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
