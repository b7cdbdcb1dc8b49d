"""Where evaluation prompts come from.

- ``<name>:<set>``: a set of a registered source (``register_prompt_source``), e.g. the toy world's, registered by
  ``import diffalign.toy.plugin``: ``toy:attributes`` (the base-model table's set), ``toy:persona``, ``toy:long``,
  each its held-out side, or its training side with ``split="train"`` (reward fine-tuning's prompts);
- a ``.txt`` file: one prompt per line (blank lines are not prompts and are skipped);
- a ``.jsonl`` file: one JSON object per line with the prompt under ``column`` (default: "prompt", else "caption");
- anything else is a table (hub dataset id, local parquet file or folder; see data.tables) read at ``split`` and
  ``column``, e.g.
  ``yuvalkirstain/pickapic_v2`` with split ``test_unique`` and column ``caption``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

TEXT_KEYS = ("prompt", "caption")
# name -> read(set, split) -> prompts, for sources written "<name>:<set>"
SOURCES: dict[str, Callable[[str, str], list[str]]] = {}


def register_prompt_source(name: str, read: Callable[[str, str], list[str]]) -> None:
    """Make ``"<name>:<set>"`` a prompt source: ``read(set, split)`` returns its prompts (``split`` as given to
    ``load_prompts``; a source that splits its sets must reject a split it does not know, not fall back to one)."""
    if name in SOURCES:
        raise ValueError(f"prompt source {name!r} registered twice")
    SOURCES[name] = read


def _from_jsonl(path: Path, column: str | None) -> list[str]:
    prompts = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}, line {number}: not valid JSON ({err})") from err
        keys = (column,) if column else TEXT_KEYS
        key = next((k for k in keys if k in row), None)
        if key is None or not isinstance(row[key], str):
            raise ValueError(f"{path}, line {number}: expected a string under {' or '.join(map(repr, keys))}; "
                             f"got keys {sorted(row)}")
        prompts.append(row[key])
    return prompts


def _from_dataset(source: str, split: str, column: str | None) -> list[str]:
    from ..data.tables import open_table

    table = open_table(source, split)
    column = column or next((k for k in TEXT_KEYS if k in table.column_names), None)
    if column not in table.column_names:
        raise ValueError(f"{source} [{split}]: no prompt column {column!r}; columns are {table.column_names}")
    prompts = list(table[column])
    bad = next((i for i, p in enumerate(prompts) if not isinstance(p, str)), None)
    if bad is not None:
        raise ValueError(f"{source} [{split}], row {bad}: column {column!r} holds {prompts[bad]!r}, not a string")
    return prompts


def load_prompts(source: str, column: str | None = None, split: str = "test", limit: int | None = None) -> list[str]:
    """The prompts of ``source`` (see the module docstring), the first ``limit`` of them if given."""
    name, colon, rest = source.partition(":")
    if colon and name in SOURCES:
        prompts = SOURCES[name](rest, split)
    elif colon and name.isidentifier() and not rest.startswith("//") and not Path(source).exists():
        raise ValueError(f"{source}: no prompt source {name!r} is registered (registered: {sorted(SOURCES)}); a "
                         "source registers when its module is imported, the toy world's with `import "
                         "diffalign.toy.plugin`")
    elif Path(source).suffix == ".txt":
        prompts = [line.strip() for line in Path(source).read_text(encoding="utf-8").splitlines() if line.strip()]
    elif Path(source).suffix == ".jsonl":
        prompts = _from_jsonl(Path(source), column)
    else:
        prompts = _from_dataset(source, split, column)
    if not prompts:
        raise ValueError(f"no prompts in {source}")
    return prompts[:limit] if limit else prompts
