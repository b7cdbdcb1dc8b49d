"""Resume only the run a checkpoint belongs to: compare its config.json with this run's config, field by field.

A resume that silently continued another run (other lr, seed or data) would report success on a mixture of two
jobs. Fields that change the math must match, unless the user accepts the change by name
(``--resume-accept train.lr``); an accepted change really applies from the next update on (the optimizer and the
lr schedule take their hyperparameters from this run's config, checkpoint_state.load_optimizer/load_scheduler) and
is recorded in the summary and the model card.
"""

from __future__ import annotations

from .config import ConfigError

# Never change the math: where output goes, how often to log/save/validate, speed/memory switches that compute
# the same values, the end-of-run comparison.
FREE = {"output_dir", "overwrite", "train.checkpoint_every", "train.checkpoints_total_limit", "train.log_every",
        "train.validation_every", "train.report_to", "train.max_nonfinite_updates", "train.gradient_checkpointing",
        "train.channels_last", "train.compile", "train.fused_adamw", "data.num_workers", "data.cache_encodings",
        "data.cache_dir", "data.on_bad_sample"}
FREE_PREFIXES = ("eval.",)
FREE.add("objective.comparison_user_scale")  # PPD: only the end-of-run comparison samples with it
# Another model or another set of trained weights: a checkpoint of it cannot be continued, accepted or not.
FIXED = {"method", "model.pretrained", "model.revision", "model.variant", "model.vae", "lora.enabled", "lora.rank",
         "lora.target_modules", "lora.text_encoder", "lora.text_encoder_target_modules", "train.text_encoder",
         "train.optimizer", "train.ema_reference_decay",
         # The micro-batch bookkeeping (accelerate's step counter, the data position) and the fp16 grad scaler's
         # presence are restored as saved: these cannot change mid-run either.
         "train.batch_size", "train.grad_accum", "train.mixed_precision",
         # streamed data resumes from cursors into blocks of this size, a map-style run from its step
         "data.streaming", "data.shuffle_buffer",
         # SoftREPA: the tokens' shape [K, m, J] and their bucket table
         "objective.num_tokens", "objective.timestep_buckets", "objective.transformer_blocks"}
# Paths that may be written relative to where a run started: compared (and saved) resolved.
PATH_KEYS = ("model.pretrained", "model.vae", "data.source", "data.cache_dir")
# Objective options added after checkpoints were written, with what those checkpoints ran with: such a checkpoint
# resumes freely when this run uses the same, and names that value when it does not.
LEGACY_OBJECTIVE_VALUES = {"objective.inversion": "diffalign", "objective.reference_point_rule": "diffalign",
                           "objective.segmenter": "diffalign",
                           "objective.reward_processor": None,  # None: the backbone's default processor
                           "objective.transformer_blocks": 5}  # SoftREPA's SD3 blocks (unused on UNets)
# Schedules whose lr does not depend on train.max_steps: extending such a run changes nothing already decided.
_STEP_FREE_SCHEDULES = ("constant", "constant_with_warmup")


def run_config(config: dict, objective_options: dict) -> dict:
    """The config a checkpoint records: the objective's options resolved (defaults included, so a default written
    out or changed between versions is compared as the value it is) and local paths made absolute."""
    from pathlib import Path

    resolved = {**config, "objective": dict(objective_options)}
    for dotted in PATH_KEYS:
        section, key = dotted.split(".")
        value = resolved[section].get(key)
        if isinstance(value, str) and Path(value).exists():
            resolved[section] = {**resolved[section], key: str(Path(value).resolve())}
    return resolved


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1e-3}} -> {"train.lr": 1e-3} (the objective's options too: objective.beta)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _same(a, b) -> bool:
    """Equal, with lists and tuples alike (JSON has no tuples) and 5e3 == 5000."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def _defaults() -> dict:
    """Every config field's default, flattened (the objective's options excepted: they are resolved per method)."""
    import dataclasses

    from .config import Config

    return {k: v for k, v in flatten(dataclasses.asdict(Config())).items() if not k.startswith("objective.")}


def _free(key: str, current: dict) -> bool:
    if key in FREE or key.startswith(FREE_PREFIXES):
        return True
    return key == "train.max_steps" and current.get("train.lr_scheduler") in _STEP_FREE_SCHEDULES


def check_resume_config(saved: dict, current: dict, accepted: set[str], where: str) -> dict[str, list]:
    """Changes between a checkpoint's config and this run's, as {key: [saved, now]}, after refusing any that
    change the math unless listed in ``accepted`` (and any FIXED one regardless). ``where``: the checkpoint."""
    if not saved:
        raise ConfigError(f"{where} has no config.json: diffalign cannot tell which run it belongs to")
    old, new = flatten(saved), flatten(current)
    method_options = {k for k in new if k.startswith("objective.")}
    old.update({k: v for k, v in LEGACY_OBJECTIVE_VALUES.items() if k in method_options and k not in old})
    defaults = _defaults()
    # A field a newer version added (absent from the checkpoint) at its default changes nothing the run did.
    changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new))
               if not _same(old.get(k), new.get(k)) and not _free(k, new)
               and not (k not in old and k in defaults and _same(new.get(k), defaults[k]))}
    unknown = sorted(set(accepted) - set(changed))
    if unknown:
        raise ConfigError(f"--resume-accept {', '.join(unknown)}: not a difference between {where} and this run "
                          f"(differences: {', '.join(changed) or 'none'})")
    listed = "; ".join(f"{k}: {v[0]!r} in the checkpoint, {v[1]!r} now" for k, v in changed.items())
    fixed = [k for k in changed if k in FIXED]
    if fixed:
        raise ConfigError(f"{where} belongs to a different run ({listed}); {', '.join(fixed)} cannot change on "
                          "resume. Start a new run in another output_dir (or with --overwrite)")
    refused = [k for k in changed if k not in accepted]
    if refused:
        raise ConfigError(f"{where} was saved with another config ({listed}). Resume with the same settings, or "
                          f"accept the change(s) with --resume-accept {','.join(refused)}")
    return changed
