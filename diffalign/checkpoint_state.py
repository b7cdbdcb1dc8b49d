"""A training checkpoint's contents as safetensors and JSON files only: loading one never unpickles anything.

accelerate's ``save_state`` writes the optimizer, scheduler and RNG states with ``torch.save`` and loads custom
objects (``register_for_checkpointing``) with ``weights_only=False``, so a shared checkpoint could run code on
``--resume``. Here every state is split into tensors (safetensors) and plain values (JSON):

    <part>.safetensors         each trained component's state dict (``parts``: LoRA adapter, UNet, text encoders,
                               user adapter, soft tokens, EMA reference)
    optimizer.safetensors      the optimizer's tensors as ``state.<param index>.<key>``; its param groups and any
                               non-tensor state in the file's JSON metadata
    scheduler.json             the lr scheduler's state dict (LambdaLR: numbers and lists)
    scaler.json                fp16's grad scaler (only under fp16)
    rng_<rank>.safetensors     each process's torch CPU (and CUDA) generator; Python's and NumPy's in metadata

A folder holding any other kind of file (``*.pkl``, ``*.bin``, ``*.pt``: what accelerate or an older diffalign
wrote) is refused before anything in it is read.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

OPTIMIZER_FILE = "optimizer.safetensors"
SCHEDULER_FILE = "scheduler.json"
SCALER_FILE = "scaler.json"
SAFE_SUFFIXES = (".safetensors", ".json")
_META_KEY = "diffalign"  # the safetensors metadata entry holding a file's JSON part


class Stateful(Protocol):
    def state_dict(self) -> dict[str, torch.Tensor]: ...

    def load_state_dict(self, state: dict[str, torch.Tensor]): ...


class UnsafeCheckpoint(ValueError):
    """A checkpoint folder holds a file that only a pickle loader could read."""


def rng_file(rank: int) -> str:
    return f"rng_{rank}.safetensors"


def refuse_unsafe_files(folder: Path) -> None:
    """Raise UnsafeCheckpoint naming the first file that is neither safetensors nor JSON (nothing is read)."""
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file() and path.suffix not in SAFE_SUFFIXES:
            raise UnsafeCheckpoint(
                f"{path}: a checkpoint may hold only .safetensors and .json files; this one needs a pickle loader, "
                "which could run code, so diffalign does not load it (checkpoints of diffalign before 0.2 and "
                "accelerate's save_state are such files: restart the run, or resume from a checkpoint diffalign "
                "wrote)")


# --- JSON with tuples: optimizer hyperparameters such as AdamW's betas are tuples and must come back as tuples ---

def _to_json(value):
    if isinstance(value, tuple):
        return {"__tuple__": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_json(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"{type(value).__name__} {value!r} cannot be stored without pickle")


def _from_json(value):
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_from_json(v) for v in value["__tuple__"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def write_json(path: Path, value) -> None:
    Path(path).write_text(json.dumps(_to_json(value), indent=1))


def read_json(path: Path):
    return _from_json(json.loads(Path(path).read_text()))


def _save(path: Path, tensors: dict[str, torch.Tensor], meta=None) -> None:
    """Tensors (contiguous, detached) plus optional JSON ``meta`` in one safetensors file."""
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    metadata = {_META_KEY: json.dumps(_to_json(meta))} if meta is not None else None
    save_file(tensors, str(path), metadata=metadata)


def _load(path: Path) -> tuple[dict[str, torch.Tensor], object]:
    """(tensors on the CPU, the JSON meta or None); a missing or malformed file raises naming it."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(_META_KEY)
        return load_file(str(path)), (_from_json(json.loads(raw)) if raw is not None else None)
    except Exception as err:  # safetensors raises its own error types for a malformed header
        raise ValueError(f"{Path(path).name}: {type(err).__name__}: {err}") from err


# --- trained components -------------------------------------------------------------------------------------------

def save_parts(folder: Path, parts: dict[str, Stateful]) -> None:
    for name, part in parts.items():
        _save(Path(folder) / f"{name}.safetensors", part.state_dict())


def load_parts(folder: Path, parts: dict[str, Stateful]) -> None:
    for name, part in parts.items():
        tensors, _ = _load(Path(folder) / f"{name}.safetensors")
        part.load_state_dict(tensors)


# --- optimizer: {"state": {param index: {key: tensor or value}}, "param_groups": [...]} ----------------------------

def save_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    state = optimizer.state_dict()
    tensors, plain = {}, {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value
            else:
                plain.setdefault(str(index), {})[key] = value
    _save(path, tensors, {"param_groups": state["param_groups"], "plain_state": plain})


def load_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """Restore the moments and step counts; the hyperparameters (lr, betas, weight decay, ...) stay those the
    optimizer was built with from this run's config (``restore_schedule`` then sets each group's current lr)."""
    tensors, meta = _load(path)
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for index, values in meta["plain_state"].items():
        state.setdefault(int(index), {}).update(values)
    fresh = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    for group, hyper in zip(optimizer.param_groups, fresh):
        group.update(hyper)


def save_scheduler(path: Path, scheduler) -> None:
    write_json(path, scheduler.state_dict())


def load_scheduler(path: Path, scheduler, optimizer: torch.optim.Optimizer) -> None:
    """Restore the schedule's position; its peak lrs are this run's (the optimizer's ``initial_lr``), so a new
    train.lr accepted on resume really applies from the next update on."""
    state = read_json(path)
    inner = getattr(scheduler, "scheduler", scheduler)  # accelerate's AcceleratedScheduler wraps it
    state["base_lrs"] = [group["initial_lr"] for group in optimizer.param_groups]
    inner.load_state_dict(state)
    lambdas = getattr(inner, "lr_lambdas", None)
    if lambdas is None:  # not a LambdaLR (diffusers' schedulers all are): keep the saved rates
        return
    rates = [base * fn(inner.last_epoch) for base, fn in zip(inner.base_lrs, lambdas)]  # as LambdaLR.get_lr
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    inner._last_lr = rates


# --- random generators of one process ------------------------------------------------------------------------------

def save_rng(path: Path) -> None:
    version, python_state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors = {"torch": torch.get_rng_state(), "numpy_keys": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda.{i}"] = cuda_state
    _save(path, tensors, {"python": [version, list(python_state), gauss],
                          "numpy": [kind, int(pos), int(has_gauss), float(cached)]})


def load_rng(path: Path) -> None:
    tensors, meta = _load(path)
    version, python_state, gauss = meta["python"]
    random.setstate((version, tuple(python_state), gauss))
    kind, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, tensors["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda.")), key=lambda k: int(k[5:]))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
