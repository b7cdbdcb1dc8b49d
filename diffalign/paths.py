"""Where the embedded assets live (the repository's ``assets/``; an editable install keeps them beside the code),
and how output folders are guarded."""

import json
import shutil
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = REPO_ROOT / "assets"
TOY_SD = ASSETS / "toy-sd"
TOY_DATA = ASSETS / "toy-data"
TOY_CLIP = ASSETS / "toy-clip"
TOY_FLOW = ASSETS / "toy-flow"  # the embedded SD3-shaped flow base (toy/pretrain_flow.py)
TOY_CLIP_LONG = ASSETS / "toy-clip-long"  # also trained on many-object scenes, sentence by sentence (LongAlign)
TOY_CLIP_LONG_ROBUST = ASSETS / "toy-clip-long-robust"  # toy-clip-long fine-tuned on adversarial renders (LongAlign)
# `diffalign toy pretrain` writes this file (its recipe) into the saved pipeline folder, so a toy base retrained
# anywhere is known as one: the trainer then ends with the toy world's before/after comparison.
TOY_MODEL_MARKER = "diffalign_toy_world.json"


def is_toy_model(pretrained: str | Path) -> bool:
    """True for a toy-world base: a folder with the pretrain marker (the embedded ``assets/toy-sd`` has one)."""
    return (Path(pretrained) / TOY_MODEL_MARKER).is_file()


def as_recorded(path: str | Path) -> str:
    """How a report records a model path: relative to the repository when inside it, so results files do not
    depend on where the checkout lives; anything else as given."""
    resolved = Path(path).resolve()
    return str(resolved.relative_to(REPO_ROOT)) if resolved.is_relative_to(REPO_ROOT) else str(path)


def refuse_overwrite(path: Path, overwrite: bool) -> None:
    """Raise unless ``path`` is absent/empty or the user passed --overwrite: user files are never replaced silently."""
    path = Path(path)
    if path.exists() and (path.is_file() or any(path.iterdir())) and not overwrite:
        raise FileExistsError(f"{path} already exists and is not empty; pass --overwrite to replace it")


def _is_run_folder(path: Path) -> bool:
    """A folder ``diffalign train`` wrote: its config.json (method and train sections) or its checkpoints/."""
    try:
        config = json.loads((path / "config.json").read_text())
        if isinstance(config, dict) and {"method", "train", "lora"} <= set(config):
            return True
    except (OSError, ValueError):
        pass
    return (path / "checkpoints").is_dir() and any((path / "checkpoints").glob("checkpoint_*"))


def _entries(path: Path) -> tuple[list[Path], str]:
    entries = sorted(path.iterdir()) if path.is_dir() else []
    names = [e.name + ("/" if e.is_dir() else "") for e in entries]
    return entries, ", ".join(names[:8]) + (f", ... ({len(names) - 8} more)" if len(names) > 8 else "")


def check_run_folder(path: Path) -> None:
    """FileExistsError unless ``--overwrite`` may empty ``path``: absent, empty, or a folder diffalign train wrote."""
    path = Path(path)
    if path.is_file():
        raise FileExistsError(f"output_dir {path} is a file, not a folder")
    entries, shown = _entries(path)
    if entries and not _is_run_folder(path):
        raise FileExistsError(f"--overwrite empties only a diffalign run folder (with the config.json or "
                              f"checkpoints/ of diffalign train); {path} holds {shown}: remove them yourself or "
                              "choose another output_dir")


def clear_run_folder(path: Path) -> list[str]:
    """``--overwrite``: remove everything an earlier run left in ``path`` (saying what first), so nothing of it can
    be mistaken for the new run's (a later ``--resume latest`` would otherwise continue the old checkpoints). A
    folder that is not a diffalign run's is refused, never emptied. Returns the names removed."""
    path = Path(path)
    check_run_folder(path)
    entries, shown = _entries(path)
    if not entries:
        return []
    print(f"diffalign train: --overwrite: removing {len(entries)} entries from {path}: {shown}", file=sys.stderr)
    for entry in entries:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    return [e.name for e in entries]
