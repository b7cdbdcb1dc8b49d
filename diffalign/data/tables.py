"""Opening a table of examples with `datasets`, whatever its layout, as a map-style ``Dataset`` or, streaming, as an
``IterableDataset`` read as its rows arrive.

Layouts (``layout_of``):
    hub dataset id                          ``yuvalkirstain/pickapic_v2`` (any layout the hub serves)
    parquet file or folder of them          ``pairs.parquet``, ``data/`` (splits from file names: train-*.parquet)
    CSV / TSV / JSONL file or folder        image columns hold paths (relative to the file's folder) or bytes
    imagefolder folder                      ``metadata.csv`` / ``metadata.jsonl`` beside the images; a column
                                            ``file_name`` becomes ``image``, ``jpg_0_file_name`` becomes ``jpg_0``
    webdataset tar shards (file or folder)  ``<key>.jpg_0.jpg``, ``<key>.caption.txt`` ...: the extension is dropped
                                            from the column names (``jpg_0.jpg`` -> ``jpg_0``)

``columns`` (data.columns) maps the names a method reads to the table's own, ``{"caption": "text"}``. Image
columns are read undecoded (bytes or a path): ``examples.decode_image`` decodes them and names the row when one
is bad. Nothing here reads a row (a streamed CSV or JSONL file: its first rows, for the column names).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TABLE_SUFFIXES = {".parquet": "parquet", ".csv": "csv", ".tsv": "csv", ".jsonl": "json", ".json": "json",
                  ".tar": "webdataset"}
METADATA_FILES = ("metadata.csv", "metadata.jsonl")


@dataclass
class Layout:
    """How ``datasets`` reads a source: ``builder`` (a packaged builder or the source itself), its keyword
    arguments, and ``image_root``, the folder relative image paths start from (None for a hub id)."""

    builder: str
    kwargs: dict
    image_root: Path | None
    name: str  # in messages: "parquet folder", "imagefolder", ...


def layout_of(source: str, split: str = "train") -> Layout:
    """The layout of ``source``; a clear error for a path that does not exist or holds nothing readable."""
    path = Path(source)
    if path.is_file():
        builder = TABLE_SUFFIXES.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"{source}: expected a {', '.join(TABLE_SUFFIXES)} file, a folder of them, an "
                             "imagefolder (metadata.csv/.jsonl), webdataset .tar shards or a hub dataset id")
        extra = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        return Layout(builder, {"data_files": {split: str(path)}, **extra}, path.parent, f"{path.suffix[1:]} file")
    if path.is_dir():
        if any((path / name).is_file() or any(path.glob(f"*/{name}")) for name in METADATA_FILES):
            return Layout("imagefolder", {"data_dir": str(path)}, path, "imagefolder")
        tars = sorted(str(p) for p in path.rglob("*.tar"))
        if tars:
            return Layout("webdataset", {"data_files": {split: tars}}, path, "webdataset folder")
        kinds = sorted({p.suffix.lower() for p in path.rglob("*") if p.suffix.lower() in TABLE_SUFFIXES})
        if not kinds:
            raise ValueError(f"{source}: folder holds no .parquet, .csv, .jsonl or .tar files and no "
                             f"{' / '.join(METADATA_FILES)}")
        # datasets infers the splits from the file names (train-*.parquet, test-*.csv, ...)
        return Layout(str(path), {}, path, f"{'/'.join(k[1:] for k in kinds)} folder")
    if source.startswith((".", "/", "~")) or Path(source).suffix.lower() in TABLE_SUFFIXES:
        raise FileNotFoundError(f"{source} does not exist")
    return Layout(source, {}, None, "hub dataset")


def open_table(source: str, split: str = "train", streaming: bool = False, columns: dict | None = None):
    """A ``datasets.Dataset`` (an ``IterableDataset`` when ``streaming``) with ``columns`` renamed to the names the
    methods read and image columns left undecoded. ``columns``: {name read: the table's column}."""
    from datasets.exceptions import DatasetGenerationError

    layout = layout_of(source, split)
    try:
        table = _load(layout, split, streaming)
    except DatasetGenerationError as err:  # datasets' wrapper hides the cause (bad parquet, no schema, ...)
        cause = err.__cause__ or err.__context__ or err
        raise ValueError(f"{source}: not a readable table ({type(cause).__name__}: {cause})") from err
    except ValueError as err:
        if "corresponds to no data" in str(err):  # datasets' words for a table with no rows
            raise ValueError(f"{source} (split {split!r}): no examples to train on (the table has 0 rows)") from err
        if "Unknown split" in str(err) or "Bad split" in str(err):
            raise ValueError(f"{source}: no split {split!r} ({err})") from err
        if source in str(err):
            raise
        raise ValueError(f"{source}: not a readable table ({type(err).__name__}: {err})") from err
    if streaming and getattr(table, "features", None) is None:  # CSV/JSON streams infer columns from a first row
        table = table._resolve_features()
    table = _drop_extensions(table) if layout.builder == "webdataset" else table
    table = rename_columns(table, columns or {}, source)
    return _undecoded_images(table)


def _load(layout: Layout, split: str, streaming: bool):
    from datasets import load_dataset

    return load_dataset(layout.builder, split=split, streaming=streaming, **layout.kwargs)


def column_names(table) -> list[str]:
    """The columns of a Dataset or IterableDataset (a streamed one may know them only from its features)."""
    names = table.column_names
    if names is None and getattr(table, "features", None) is not None:
        names = list(table.features)
    return list(names or [])


def _drop_extensions(table):
    """webdataset columns are named by the file's extension after the key: ``jpg_0.jpg`` -> ``jpg_0``,
    ``caption.txt`` -> ``caption`` (kept as is when two would get the same name)."""
    names = column_names(table)
    stems = [n.split(".", 1)[0] if not n.startswith("__") else n for n in names]
    renames = {n: s for n, s in zip(names, stems) if n != s and stems.count(s) == 1 and s not in names}
    return table.rename_columns(renames) if renames else table


def rename_columns(table, columns: dict, source: str):
    """data.columns {name read: table column} applied; a mapped column the table lacks is named with those found."""
    if not columns:
        return table
    names = column_names(table)
    missing = {ours: theirs for ours, theirs in columns.items() if theirs not in names}
    if missing:
        ours, theirs = next(iter(missing.items()))
        raise ValueError(f"{source}: data.columns maps {ours!r} to column {theirs!r}, which the table does not have; "
                         f"its columns: {names}")
    renames = {theirs: ours for ours, theirs in columns.items() if theirs != ours}
    clash = [ours for theirs, ours in renames.items() if ours in names and ours not in renames]
    if clash:
        raise ValueError(f"{source}: data.columns maps a column onto {clash[0]!r}, which the table already has; map "
                         f"that one elsewhere too (e.g. {clash[0]}_original) or leave it out of data.columns")
    return table.rename_columns(renames)


def _undecoded_images(table):
    """Image features (imagefolder, webdataset, hub tables) read as {"bytes", "path"}: decode_image decodes them
    and names the row when one is bad. A feature-only change: no copy of the table is written."""
    from datasets import Image

    features = getattr(table, "features", None) or {}
    for name, feature in features.items():
        if isinstance(feature, Image) and feature.decode:
            table = table.cast_column(name, Image(decode=False))
    return table


def require_columns(table, columns: list[str], source: str) -> None:
    found = column_names(table)
    missing = [c for c in columns if c not in found]
    if missing:
        raise ValueError(f"{source}: missing column(s) {missing}; found {found} (map yours to these names with "
                         "data.columns, e.g. data.columns.caption=text)")
