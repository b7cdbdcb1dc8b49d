"""`diffalign cache`: fill the encoding cache (data/encoding_cache.py) before training, with only the frozen encoders.

    diffalign cache --config configs/sd15/dpo_pickapic.yaml          # same arguments as train
    accelerate launch diffalign/train.py --config configs/sd15/dpo_pickapic.yaml --data.cache_encodings true

It walks every epoch the run will see (max_steps x batch x accumulation / examples), so per-epoch views (random
flip, caption dropout, TPO's caption perturbations) are cached too, and training then calls no encoder. Training
without this step fills the same cache during its first epoch.
"""

from __future__ import annotations

import math
import sys

import torch
from tqdm.auto import tqdm

from .config import Config, ConfigError
from .data.encoding_cache import FrozenEncoders
from .data.examples import without_skipped
from .data.factory import build_training_data
from .families import family_for
from .models.loading import freeze_encoders, load_sd_components, load_tokenizer
from .objectives import get_objective


def fill_encoding_cache(cfg: Config, processes: int = 1) -> dict:
    """Encode every example view of the run; returns counts (entries added, reused, bad samples skipped)."""
    from .training.steps import open_encoding_cache

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(cfg.train.mixed_precision, torch.float32)
    if device.type == "cpu" and dtype == torch.float16:
        dtype = torch.float32  # as accelerate on CPU: fp16 mixed precision is unavailable there
    objective = get_objective(cfg.method, **cfg.objective)
    tokenizer = load_tokenizer(cfg.model.pretrained, cfg.model.revision, cfg.model.max_sequence_length)
    per_update = cfg.train.batch_size * cfg.train.grad_accum * processes
    dataset, _, collate = build_training_data(cfg.data, objective, tokenizer, cfg.train.seed, per_update,
                                              cfg.model.trust_remote_code)
    # The same components, dtypes and conditioning as train.py, so the entries are the ones training would make.
    parts = load_sd_components(cfg.model.pretrained, cfg.model.revision, cfg.model.variant, tokenizer,
                               vae=cfg.model.vae, max_sequence_length=cfg.model.max_sequence_length)
    freeze_encoders(parts, device, dtype, replacement_vae=bool(cfg.model.vae))
    cache = open_encoding_cache(cfg, dtype)
    encoders = FrozenEncoders(parts.vae, family_for(parts, cfg.train, cfg.model).conditioner, cache)
    updates_per_epoch = max(1, len(dataset) // per_update)
    epochs = math.ceil(cfg.train.max_steps / updates_per_epoch)
    skipped = 0
    batch_size = cfg.train.batch_size
    for epoch in range(epochs):
        dataset.epoch = epoch
        for start in tqdm(range(0, len(dataset), batch_size), desc=f"encode epoch {epoch + 1}/{epochs}"):
            examples = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            skipped += len(examples) - len(without_skipped(examples)[0])
            batch = collate(examples)
            if batch.get("rows") == 0:
                continue
            encoders.posterior(batch["pixels"])
            encoders.text(batch["input_ids"])
    cache.flush()
    return {"directory": str(cache.directory), "epochs": epochs, "encoded": cache.misses, "already_cached": cache.hits,
            "bad_samples_skipped": skipped}


def main(argv: list[str] | None = None) -> int:
    from .train import build_config, parse_args

    try:
        args, overrides = parse_args(argv)
        result = fill_encoding_cache(build_config(args, overrides + [("data.cache_encodings", "true")]))
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"diffalign cache: {err}", file=sys.stderr)
        return 2
    print(f"cached in {result['directory']}: {result['encoded']} new, {result['already_cached']} already there, "
          f"over {result['epochs']} epoch(s)" + (f"; {result['bad_samples_skipped']} bad samples skipped"
                                                 if result["bad_samples_skipped"] else ""))
    return 0
