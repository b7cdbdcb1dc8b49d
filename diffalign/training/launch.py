"""The accelerator of a run, and the launch settings a run cannot work under (checked before any model loads)."""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import DistributedType, ProjectConfiguration

from ..config import Config, ConfigError


def make_accelerator(cfg: Config) -> Accelerator:
    # accelerate keeps one process-wide state; a second run in the same Python process (the Python API, a
    # notebook, the tests) with other precision settings would be refused. The process group is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    out = Path(cfg.output_dir)
    report_to = None if cfg.train.report_to == "none" else cfg.train.report_to
    return Accelerator(
        gradient_accumulation_steps=cfg.train.grad_accum,
        mixed_precision=cfg.train.mixed_precision,
        log_with=report_to,
        dynamo_backend="inductor" if cfg.train.compile else None,
        # Checkpoint naming and pruning are diffalign's own (checkpointing.py): atomic, pruned after the save.
        project_config=ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "logs")),
    )


def check_launch(cfg: Config, accelerator: Accelerator, resuming: bool) -> None:
    """ConfigError for a setting this launch cannot run."""
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "fp16":  # accelerate would run no autocast
        raise ConfigError("train.mixed_precision: fp16 needs a GPU (accelerate has no fp16 autocast on CPU); "
                          "use bf16 or no")
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if cfg.train.text_encoder and sharded:
        # The encoders train outside the prepared UNet: FSDP/DeepSpeed would neither shard them nor clip them with it.
        raise ConfigError(f"train.text_encoder runs under plain data parallelism only (multi-GPU DDP), not "
                          f"{accelerator.distributed_type.value}: the text encoders train outside the UNet's wrapper")
    if sharded and (cfg.train.checkpoint_every or resuming):
        # Their sharded optimizer states exist only in their own pickled formats, which diffalign never loads.
        raise ConfigError(f"train.checkpoint_every / --resume: checkpoints run under one process or multi-GPU DDP, "
                          f"not {accelerator.distributed_type.value} (its sharded states are pickle files, which "
                          "diffalign does not load); set train.checkpoint_every 0 or use DDP")
