"""Where the embedded assets live (the repository's ``assets/``; an editable install keeps them beside the code)."""

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
ASSETS = REPO_ROOT / "assets"
TOY_SD = ASSETS / "toy-sd"
TOY_DATA = ASSETS / "toy-data"
TOY_CLIP = ASSETS / "toy-clip"
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
