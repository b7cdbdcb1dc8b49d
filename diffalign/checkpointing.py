"""Training checkpoints that a kill can never break and that never unpickle: written to a temporary folder, then
renamed; every file safetensors or JSON (checkpoint_state.py).

Layout under ``OUTPUT_DIR/checkpoints/``:
    checkpoint_<i>/              complete: the trained parts, optimizer, scheduler, RNG per rank (checkpoint_state.py),
                                 the run's ``config.json`` and ``progress.json`` = {"global_step": ...}, written last
    .incomplete-checkpoint_<i>/  a save in progress, or one a kill interrupted; never resumed from
``i`` counts saves in this output folder (it never restarts, so no save replaces another).

Why not accelerate's ``save_state``/``load_state``: they pickle (custom objects load with ``weights_only=False``:
a shared checkpoint could run code on ``--resume``), and ``automatic_checkpoint_naming`` deletes the oldest
checkpoint *before* writing the new one into its final name, so with ``total_limit=1`` a kill during the save
leaves no checkpoint at all. Here the old ones are pruned only after the new one is in place, and a folder gets its
final name only once every file (and the progress marker) is written.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator

from . import checkpoint_state as files

PROGRESS_FILE = "progress.json"
INCOMPLETE_PREFIX = ".incomplete-"
CONFIG_FILE = "config.json"


@dataclass
class TrainingState:
    """What a checkpoint holds besides the progress marker. ``parts``: each trained component by file stem
    (unwrapped modules or objects with state_dict/load_state_dict); ``config``: the run's config as a dict."""

    parts: dict[str, files.Stateful]
    optimizer: torch.optim.Optimizer
    scheduler: object
    config: dict = field(default_factory=dict)
    data: object = None  # streamed data's position (data/stream.StreamPositions; JSON, per process), else None


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, read-only): the earlier ones are untouched."""


class NonFiniteWeights(RuntimeError):
    """Trained weights hold NaN or inf: nothing is saved from them."""


def all_finite(tensors) -> bool:
    """Whether every floating-point tensor is free of NaN and inf: one device sync for any number of tensors."""
    flags = [torch.isfinite(t).all() for t in tensors if t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def check_finite(parts: dict[str, files.Stateful]) -> None:
    """Raise NonFiniteWeights naming the part, the first bad tensor and how many there are."""
    for name, part in parts.items():
        if all_finite(part.state_dict().values()):
            continue
        bad = [k for k, v in part.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise NonFiniteWeights(f"{name}: {len(bad)} weight tensor(s) hold NaN or inf (first: {bad[0]}); "
                                   "refusing to save them")


class BrokenCheckpoint(RuntimeError):
    """A checkpoint marked complete failed to load."""


def _index(path: Path) -> int | None:
    """``i`` of checkpoint_<i> or .incomplete-checkpoint_<i>; None for any other name."""
    name = path.name.removeprefix(INCOMPLETE_PREFIX)
    tail = name.removeprefix("checkpoint_")
    return int(tail) if name.startswith("checkpoint_") and tail.isdigit() else None


def complete_checkpoints(out: Path) -> list[Path]:
    """The complete checkpoints of a run, oldest first."""
    found = [p for p in (Path(out) / "checkpoints").glob("checkpoint_*")
             if _index(p) is not None and (p / PROGRESS_FILE).is_file()]
    return sorted(found, key=_index)


def incomplete_checkpoints(out: Path) -> list[Path]:
    """Saves that never finished (the process was killed while writing them)."""
    return sorted((Path(out) / "checkpoints").glob(INCOMPLETE_PREFIX + "checkpoint_*"), key=lambda p: _index(p) or 0)


def _next_index(out: Path) -> int:
    root = Path(out) / "checkpoints"
    used = [_index(p) for p in root.glob("*")] if root.is_dir() else []
    used = [i for i in used if i is not None]
    return max(used) + 1 if used else 0


def save_checkpoint(accelerator: Accelerator, out: Path, global_step: int, total_limit: int | None,
                    state: TrainingState) -> Path:
    """Save the full training state at ``global_step`` (optimizer steps done); returns the final folder.

    Every rank writes its part (its RNG state) into the temporary folder; the main process writes the rest, the
    progress marker last, renames the folder, then prunes complete checkpoints beyond ``total_limit`` and stale
    incomplete ones. Collective: every process must call it at the same step. Non-finite weights are refused on
    every rank alike (they are replicated) before anything is written.
    """
    check_finite(state.parts)
    root = Path(out) / "checkpoints"
    index = _next_index(out)  # the same on every rank: computed before anyone writes this save
    accelerator.wait_for_everyone()
    final, temporary = root / f"checkpoint_{index}", root / f"{INCOMPLETE_PREFIX}checkpoint_{index}"
    error = None
    try:
        temporary.mkdir(parents=True, exist_ok=True)
        files.save_rng(temporary / files.rng_file(accelerator.process_index))
        if state.data is not None:
            files.write_json(temporary / data_file(accelerator.process_index), state.data.state_dict())
        if accelerator.is_main_process:
            files.save_parts(temporary, state.parts)
            files.save_optimizer(temporary / files.OPTIMIZER_FILE, state.optimizer)
            files.save_scheduler(temporary / files.SCHEDULER_FILE, state.scheduler)
            if accelerator.scaler is not None:
                files.write_json(temporary / files.SCALER_FILE, accelerator.scaler.state_dict())
            files.write_json(temporary / CONFIG_FILE, state.config)
    except (OSError, TypeError) as err:  # a full or read-only disk; a state JSON cannot hold
        error = err
    # Every process learns whether all wrote their part (a failure on one must not leave the others at a barrier);
    # then the partial save is removed and every process raises alike. The complete checkpoints stay.
    if not _all_ranks(accelerator, error is None):
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(temporary, ignore_errors=True)
        reason = (getattr(error, "strerror", None) or error) if error is not None else "failed on another process"
        raise CheckpointWriteError(f"could not write checkpoint {final} ({reason}); the partial save was removed, "
                                   f"the complete checkpoints under {root} are intact") from error
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker = temporary / PROGRESS_FILE
        marker.write_text(json.dumps({"global_step": global_step, "accelerator_step": accelerator.step,
                                      "num_processes": accelerator.num_processes}))
        _fsync_tree(temporary)
        os.replace(temporary, final)  # atomic on POSIX within one file system
        keep = complete_checkpoints(out)
        if total_limit:
            for old in keep[:-total_limit]:
                shutil.rmtree(old)
        for stale in incomplete_checkpoints(out):
            shutil.rmtree(stale, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def data_file(rank: int) -> str:
    return f"data_{rank}.json"


def load_data_position(path: Path, position) -> None:
    """A streamed run's cursors; a checkpoint of a map-style run (no such file) cannot continue a stream."""
    from .config import ConfigError

    if not path.is_file():
        raise ConfigError(f"{path.parent} was saved by a run that read its data map-style (no {path.name}); resume "
                          "it with data.streaming: false")
    try:
        position.load_state_dict(files.read_json(path))
    except ValueError as err:
        raise ConfigError(f"{path.parent}: {err}") from err


def _fsync_tree(folder: Path) -> None:
    """Flush the files to disk before the rename makes them 'complete' (a power loss must not reorder them)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def checkpoint_config(path: Path) -> dict:
    """The config a checkpoint was saved with ({} when it has none)."""
    config = Path(path) / CONFIG_FILE
    return files.read_json(config) if config.is_file() else {}


def load_checkpoint(accelerator: Accelerator, path: Path, state: TrainingState) -> int:
    """Restore a checkpoint; returns its global step. Raises UnsafeCheckpoint for a folder with a file that only
    a pickle loader reads (before reading anything), BrokenCheckpoint naming the folder and the cause otherwise."""
    path = Path(path)
    progress = path / PROGRESS_FILE
    if path.name.startswith(INCOMPLETE_PREFIX) or not progress.is_file():
        raise FileNotFoundError(f"{path} is not a complete diffalign checkpoint (no {PROGRESS_FILE}; an interrupted "
                                "save leaves such a folder)")
    files.refuse_unsafe_files(path)
    try:
        marker = json.loads(progress.read_text())
        saved_processes = marker.get("num_processes", 1)
        if saved_processes != accelerator.num_processes:
            from .config import ConfigError

            raise ConfigError(f"checkpoint {path} was saved by {saved_processes} process(es), this run has "
                              f"{accelerator.num_processes}: the data order and RNG states are per process; resume "
                              f"with {saved_processes}")
        files.load_parts(path, state.parts)
        files.load_optimizer(path / files.OPTIMIZER_FILE, state.optimizer)
        files.load_scheduler(path / files.SCHEDULER_FILE, state.scheduler, state.optimizer)
        if accelerator.scaler is not None:
            accelerator.scaler.load_state_dict(files.read_json(path / files.SCALER_FILE))
        files.load_rng(path / files.rng_file(accelerator.process_index))
        if state.data is not None:
            load_data_position(path / data_file(accelerator.process_index), state.data)
        accelerator.step = int(marker.get("accelerator_step", 0))
        return int(marker["global_step"])
    except Exception as err:  # missing, truncated or corrupt files: several exception types
        from .config import ConfigError

        if isinstance(err, ConfigError):
            raise
        if "number of parameter groups" in str(err):  # torch's Optimizer.load_state_dict: a setting, not damage
            raise ConfigError(f"checkpoint {path} holds an optimizer with another number of parameter groups: "
                              "train.text_encoder_lr (a text encoder's own group) was set or unset since it was "
                              "saved; resume with the setting it was saved with") from err
        raise BrokenCheckpoint(f"checkpoint {path} is broken and cannot be loaded ({type(err).__name__}: {err})"
                               ) from err


def resume(accelerator: Accelerator, out: Path, how: str, state: TrainingState, check=None) -> int:
    """Load a checkpoint; returns the optimizer steps already done.

    ``latest``: the newest complete checkpoint, and a clear error if it is broken; ``latest-valid``: the newest one
    that loads, reporting each broken one skipped (the fallback happens only when asked); else a folder.
    ``check(path)``: called before a checkpoint loads (the config comparison); what it raises stops the resume.
    """
    check = check or (lambda path: None)
    if how in ("latest", "latest-valid"):
        found = complete_checkpoints(out)
        if accelerator.is_main_process:
            for stale in incomplete_checkpoints(out):
                print(f"diffalign train: ignoring {stale} (a save that was interrupted)", file=sys.stderr)
        if not found:
            raise FileNotFoundError(f"--resume {how}: no complete checkpoint under {Path(out) / 'checkpoints'}")
    else:  # one folder: loaded like the newest of "latest" (every process agrees on whether it loaded)
        found = [Path(how)]
    for path in reversed(found):
        # Every rank loads its own files (its RNG state); they must agree on whether this checkpoint loaded, or one
        # rank would fall back while another trains on (or raises and leaves the others waiting).
        error = None
        check(path)
        try:
            step = load_checkpoint(accelerator, path, state)
        except BrokenCheckpoint as err:
            error, step = err, -1
        loaded_everywhere = _all_ranks(accelerator, error is None)
        if loaded_everywhere:
            return step
        error = error or BrokenCheckpoint(f"checkpoint {path} is broken on another process")
        if how != "latest-valid":
            advice = (". Pass --resume latest-valid to fall back to the newest checkpoint that loads, or --resume "
                      "PATH") if how == "latest" else ""
            raise BrokenCheckpoint(f"{error}{advice}") from error
        if accelerator.is_main_process:
            print(f"diffalign train: {error}; falling back to the previous checkpoint", file=sys.stderr)
    raise BrokenCheckpoint(f"--resume latest-valid: none of the {len(found)} checkpoints under "
                           f"{Path(out) / 'checkpoints'} loads")


def _all_ranks(accelerator: Accelerator, ok: bool) -> bool:
    """True when ``ok`` holds on every process (a min-reduction; no collective with one process)."""
    if accelerator.num_processes == 1:
        return ok
    flag = torch.tensor([1.0 if ok else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() == accelerator.num_processes)
