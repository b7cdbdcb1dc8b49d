"""Where an experiment's result goes: ``NAME.json`` (everything measured) and ``NAME.md`` (its table) under one
folder, the table also printed. Shared by the experiments that keep both (guidance_sweep, attribute_learnability,
reward_fragility)."""

from __future__ import annotations

import json
from pathlib import Path


def write_results(out: str | Path, name: str, result: dict, markdown: str) -> Path:
    """Write out/NAME.json and out/NAME.md, print the table; returns the folder."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(result, indent=2))
    (out / f"{name}.md").write_text(markdown + "\n")
    print(markdown)
    return out
