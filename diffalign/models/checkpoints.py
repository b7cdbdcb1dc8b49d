"""Loading weight files safely: safetensors first; legacy .pt/.bin/.ckpt only through ``weights_only=True``.

A legacy file that needs arbitrary pickled objects is refused with an error that says so, instead of running
whatever code the pickle carries.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file

LEGACY_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def load_state_dict(path: str | Path, key: str | None = None) -> dict[str, torch.Tensor]:
    """Tensors from a .safetensors file, or from a legacy torch file loaded with ``weights_only=True``.

    ``key``: take this entry of a legacy checkpoint's top-level dict (e.g. HPS's "state_dict") when present.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no weight file at {path}")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    if path.suffix not in LEGACY_SUFFIXES:
        raise ValueError(f"{path}: expected .safetensors or a legacy {'/'.join(LEGACY_SUFFIXES)} file")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise ValueError(f"{path} holds pickled Python objects, not only tensors; refusing to load it "
                         f"(weights_only=True). Convert it to safetensors from a trusted environment. ({err})") from err
    if key is not None and isinstance(state, dict) and key in state:
        state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a dict of tensors, got {type(state).__name__}")
    return state


def local_or_hub_file(checkpoint: str | None, repo_id: str, default_name: str) -> str:
    """``checkpoint`` if it is a local file, else that file name (or ``default_name``) from the hub repo."""
    if checkpoint and Path(checkpoint).is_file():
        return checkpoint
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, checkpoint or default_name)
