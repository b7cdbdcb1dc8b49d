"""diffalign's training entry: config -> components -> loop -> LoRA (+ the toy before/after comparison).

    accelerate launch diffalign/train.py --method mapo                    # embedded toy default, CPU, minutes
    accelerate launch diffalign/train.py --config configs/sd15/dpo_pickapic.yaml --train.lr 1e-5
    python -m diffalign.train --method dpo        |        diffalign train --method dpo

Unknown ``--section.key value`` arguments are dotted config overrides, validated before any model loads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (accelerate launch diffalign/train.py): make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from accelerate.logging import get_logger
from accelerate.state import PartialState
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from diffalign.checkpoint_state import UnsafeCheckpoint
from diffalign.checkpointing import (BrokenCheckpoint, NonFiniteWeights, TrainingState, all_finite, check_finite,
                                     checkpoint_config, resume as resume_from, save_checkpoint)
from diffalign.config import Config, ConfigError, dotted_overrides, load_config
from diffalign.data.factory import build_training_data
from diffalign.families import family_class
from diffalign.models.loading import FLOW_KINDS, freeze_encoders, load_sd_components, load_tokenizer, pipeline_kind
from diffalign.objectives import get_objective
from diffalign.paths import REPO_ROOT, check_run_folder, clear_run_folder, is_toy_model, refuse_overwrite
import diffalign.toy.plugin  # noqa: F401  (the entry point registers the toy world: prompt sets "toy:<set>", scorer "toy")
from diffalign.resume_check import check_resume_config, run_config
from diffalign.training.build import Trained, build_components
from diffalign.training.feed import make_feed
from diffalign.training.distributed import average_gradients, broadcast_parameters, prepare
from diffalign.training.launch import check_launch, make_accelerator
from diffalign.training.optim import make_optimizer, make_scheduler
from diffalign.training.steps import build_step
from diffalign.update_metrics import UpdateMetrics, is_metric_value

TOY_CONFIGS = REPO_ROOT / "configs" / "toy"


logger = get_logger(__name__)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    parser = argparse.ArgumentParser(prog="diffalign train", description=__doc__, epilog=_methods_epilog(),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", help="objective name; alone, it runs the embedded toy default for it")
    parser.add_argument("--config", help="YAML config file (default: configs/toy/<method>.yaml)")
    parser.add_argument("--resume", help="'latest', 'latest-valid' (skip broken checkpoints) or a checkpoint folder")
    parser.add_argument("--resume-accept", default="", metavar="KEY[,KEY...]",
                        help="with --resume: config fields that may differ from the checkpoint's (e.g. train.lr); "
                             "the new values apply from the next update and are recorded in summary.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="empty output_dir first (only a diffalign run folder; what it removes is listed)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the full resolved config, every field documented, and exit (no model loads)")
    args, rest = parser.parse_known_args(argv)
    return args, dotted_overrides(rest)


def _methods_epilog() -> str:
    """--help's list of methods, one line each (the objectives' own summaries)."""
    from diffalign.objectives import REGISTRY

    width = max(map(len, REGISTRY))
    lines = [f"  {name:<{width}}  {REGISTRY[name].summary}" for name in sorted(REGISTRY)]
    return ("methods (--method NAME; configs/toy/NAME.yaml is its embedded default):\n" + "\n".join(lines) +
            "\n\nEvery config key and its documentation: --method NAME --print-config")


def build_config(args: argparse.Namespace, overrides: list[tuple[str, str]]) -> Config:
    path = args.config
    if path is None:
        if not args.method:
            raise ConfigError("pass --method NAME (toy default) or --config FILE.yaml")
        path = TOY_CONFIGS / f"{args.method}.yaml"
        if not path.is_file():
            raise ConfigError(f"no embedded default for method {args.method!r} ({path} is missing)")
    if args.method:
        overrides = [("method", args.method)] + overrides
    if args.overwrite:
        overrides = overrides + [("overwrite", "true")]
    return load_config(path, overrides)


class NonFiniteTraining(RuntimeError):
    """Too many non-finite updates in a row (see train.max_nonfinite_updates)."""


def train(cfg: Config, resume: str | None = None, resume_accept: tuple[str, ...] = ()) -> dict:
    """Run one training job; returns a summary (also written to ``output_dir/summary.json``).

    ``resume``: 'latest', 'latest-valid' or a checkpoint folder; ``resume_accept``: config fields that may differ
    from the checkpoint's (resume_check.py)."""
    out = Path(cfg.output_dir)
    check_output_dir(cfg, resume, resume_accept)
    accelerator = make_accelerator(cfg)
    clear_output_dir(cfg, accelerator, resume)
    check_launch(cfg, accelerator, bool(resume))
    set_seed(cfg.train.seed)
    objective = get_objective(cfg.method, **cfg.objective)
    dataset, sampler, collate, parts, weight_dtype = load_inputs(cfg, objective, accelerator)
    trained = build_components(cfg, objective, parts, accelerator, weight_dtype, dataset)
    feed = make_feed(cfg, accelerator, dataset, sampler, collate)
    optimizer = make_optimizer(cfg, trained.params, trained.text_params)
    lr_scheduler = make_scheduler(cfg, optimizer, accelerator.num_processes)
    unet, optimizer, loader, lr_scheduler = prepare(accelerator, parts.unet, optimizer,
                                                    feed.loader if feed.prepared_by_accelerate else None, lr_scheduler)
    feed.loader = loader or feed.loader
    broadcast_parameters(accelerator, trained.outside_ddp())  # nothing else makes every rank start from rank 0's
    state = TrainingState(trained.checkpoint_parts(), optimizer, lr_scheduler,
                          run_config(dataclasses.asdict(cfg), dataclasses.asdict(objective.options)), feed.position)
    step_fn = build_step(cfg, objective, parts, accelerator, trained, weight_dtype)
    global_step, resumed = resume_run(accelerator, out, resume, resume_accept, state)
    if accelerator.is_main_process and accelerator.trackers == [] and cfg.train.report_to != "none":
        accelerator.init_trackers("diffalign", config={"method": cfg.method, **cfg.objective})
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))

    bar = tqdm(total=cfg.train.max_steps, initial=global_step, desc=f"train {cfg.method}",
               disable=not accelerator.is_local_main_process)
    start, history, update_metrics, guard = time.time(), [], UpdateMetrics(), NonFiniteGuard(cfg.train)
    skipped_samples = ties_dropped = 0
    # an exhausted run resumed at max_steps reads nothing
    batches = feed.batches(global_step) if global_step < cfg.train.max_steps else iter(())
    for epoch, batch in batches:
        skipped_samples += batch.get("skipped", 0)
        ties_dropped += batch.pop("ties_dropped", 0)  # streamed data counts its ties as it reads them
        for component in trained.all:
            component.prepare_batch(batch)
        with accelerator.accumulate(unet):
            loss, metrics = step_fn(unet, batch)
            if metrics:  # none from a micro-batch whose examples were all skipped (its loss is a zero dummy)
                update_metrics.add({**metrics, "loss": loss.item()})
            accelerator.backward(loss)
            finite, grad_norm = apply_update(accelerator, cfg, loss, trained, optimizer, lr_scheduler,
                                             global_step)
        if not accelerator.sync_gradients:
            continue
        for component in trained.all if finite else ():
            component.after_update()  # e.g. the EMA reference follows the policy
        if guard.record(finite, global_step + 1):  # the last finite weights, resumable
            save_checkpoint(accelerator, out, global_step, cfg.train.checkpoints_total_limit, state)
            raise NonFiniteTraining(guard.message(global_step + 1, out))
        global_step += 1
        bar.update(1)
        metrics = update_metrics.reduce(accelerator.num_processes)  # over micro-batches and ranks
        history.append(log_update(cfg, accelerator, bar, metrics, grad_norm, guard.total, lr_scheduler, epoch,
                                  global_step))
        if cfg.train.validation_every and global_step % cfg.train.validation_every == 0 \
                and accelerator.is_main_process:
            _validate(cfg, parts, accelerator.unwrap_model(unet), out, global_step)
        if cfg.train.checkpoint_every and global_step % cfg.train.checkpoint_every == 0:
            step_fn.flush()
            save_checkpoint(accelerator, out, global_step, cfg.train.checkpoints_total_limit, state)
        if global_step >= cfg.train.max_steps:
            break
    getattr(batches, "close", lambda: None)()  # a stream's workers stop now
    bar.close()
    train_seconds = time.time() - start
    step_fn.flush()
    accelerator.wait_for_everyone()

    summary = {"method": cfg.method, "steps": global_step, "train_seconds": round(train_seconds, 1),
               "examples_seen": global_step * cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes,
               "nonfinite_skipped": guard.total,
               "bad_samples_skipped": int(accelerator.reduce(torch.tensor(skipped_samples, device=accelerator.device),
                                                             reduction="sum")),
               "ties_dropped": getattr(dataset, "skipped_ties", 0) + int(accelerator.reduce(
                   torch.tensor(ties_dropped, device=accelerator.device), reduction="sum")),
               "examples_available": len(dataset) if feed.position is None else None,  # a stream's size is unread
               "first_metrics": history[0] if history else {}, "final_metrics": _mean_tail(history),
               "resumed": resumed, **step_fn.summary(), **{k: v for c in trained.all for k, v in c.summary().items()}}
    check_finite(state.parts)  # nothing non-finite is exported (every rank: the weights are replicated)
    if accelerator.is_main_process:
        for component in trained.all:
            summary.update(component.export(out))
        finish(cfg, summary, out)
    accelerator.end_training()
    return summary


def check_output_dir(cfg: Config, resume: str | None, resume_accept: tuple[str, ...]) -> None:
    """User files are never replaced silently; --resume and --overwrite exclude each other."""
    if resume and cfg.overwrite:
        raise ConfigError("--resume continues the run in output_dir and --overwrite would empty it: pass one of them")
    if resume_accept and not resume:
        raise ConfigError("--resume-accept lists config changes accepted on --resume; no --resume given")
    if not resume:
        refuse_overwrite(Path(cfg.output_dir), cfg.overwrite)
    if not resume and cfg.overwrite:
        check_run_folder(Path(cfg.output_dir))  # on every process: a refusal must not leave the others waiting


def clear_output_dir(cfg: Config, accelerator, resume: str | None) -> None:
    """--overwrite: the main process empties the earlier run's folder (paths.clear_run_folder) before any rank
    writes into it."""
    if not resume and cfg.overwrite:
        if accelerator.is_main_process:
            clear_run_folder(Path(cfg.output_dir))
        accelerator.wait_for_everyone()


def load_inputs(cfg: Config, objective, accelerator):
    """(dataset, sampler, collate, SD components, weight dtype). The data first: a wrong column or an empty table
    is reported before gigabytes of weights load."""
    try:
        tokenizer = load_tokenizer(cfg.model.pretrained, cfg.model.revision, cfg.model.max_sequence_length)
        kind = pipeline_kind(cfg.model.pretrained, cfg.model.revision)
    except ValueError as err:  # an unsupported pipeline type or an unreadable checkpoint file
        raise ConfigError(str(err)) from err
    family = family_class(kind)
    check_family(cfg, objective, kind, family)
    per_update = cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes
    try:
        dataset, sampler, collate = build_training_data(cfg.data, objective, tokenizer, cfg.train.seed, per_update,
                                                        cfg.model.trust_remote_code, accelerator.process_index,
                                                        accelerator.num_processes)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    parts = load_sd_components(cfg.model.pretrained, cfg.model.revision, cfg.model.variant, tokenizer,
                               vae=cfg.model.vae, max_sequence_length=cfg.model.max_sequence_length)
    # pixels per latent cell (SD: 8); flow transformers read 2x2 latent patches, so twice that
    vae_factor = 2 ** (len(parts.vae.config.block_out_channels) - 1) * (2 if kind in FLOW_KINDS else 1)
    for key, side in (("data.resolution", cfg.data.resolution),
                      ("eval.validation_resolution", cfg.eval.validation_resolution)):
        if side is not None and side % vae_factor:
            raise ConfigError(f"{key}: expected a multiple of {vae_factor} for this model (its VAE's factor"
                              f"{', times its 2x2 patches' if kind in FLOW_KINDS else ''}), got {side}")
    steps_of_model = parts.noise_scheduler.config.num_train_timesteps
    if cfg.train.timestep_range is not None and cfg.train.timestep_range[1] > steps_of_model:
        raise ConfigError(f"train.timestep_range {cfg.train.timestep_range}: the model has {steps_of_model} training "
                          f"timesteps, so high must be <= {steps_of_model}")
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    freeze_encoders(parts, accelerator.device, weight_dtype, replacement_vae=bool(cfg.model.vae),
                    text_encoders_train=cfg.train.text_encoder)
    return dataset, sampler, collate, parts, weight_dtype


def check_family(cfg: Config, objective, kind: str, family) -> None:
    """Before any weights load: the method and settings run on this model family (families/), and lora.target_modules
    left null becomes the family's own (recorded so in the run's config)."""
    reason = family.unsupported(objective, cfg)
    if reason:
        raise ConfigError(f"{cfg.method} on a {kind} model ({cfg.model.pretrained}): {reason}")
    if kind not in FLOW_KINDS and cfg.model.max_sequence_length is not None:
        raise ConfigError(f"model.max_sequence_length is the T5 length of SD3/Flux captions; {cfg.model.pretrained} "
                          f"is a {kind} model (77 CLIP tokens): remove it")
    if cfg.lora.target_modules is None:
        cfg.lora.target_modules = list(family.lora_targets)


def resume_run(accelerator, out: Path, resume: str | None, resume_accept, state: TrainingState):
    """(optimizer steps done, {"from_step", "accepted_changes": {key: [saved, now]}}); (0, None) without --resume."""
    changes: dict[str, list] = {}
    if not resume:
        return 0, None

    def same_run(path: Path) -> None:  # before a checkpoint loads: the config it was saved with
        changes.clear()  # latest-valid may fall back: only the checkpoint that loads counts
        changes.update(check_resume_config(checkpoint_config(path), state.config, set(resume_accept), str(path)))

    step = resume_from(accelerator, out, resume, state, check=same_run)
    if changes:
        logger.warning("resumed at step %d with accepted config changes: %s", step, changes)
    return step, {"from_step": step, "accepted_changes": changes}


def apply_update(accelerator, cfg: Config, loss: torch.Tensor, trained: Trained, optimizer, lr_scheduler,
                 global_step: int) -> tuple[bool, float | None]:
    """On the micro-batch that completes an update: average what trains outside DDP, clip, and step unless the
    loss or gradient is non-finite; then check the new weights. Returns (finite, the gradient norm)."""
    finite, grad_norm = True, None
    if accelerator.sync_gradients:
        average_gradients(accelerator, trained.outside_ddp())  # as DDP does for the UNet's own parameters
        # The norm is the same on every rank (gradients are reduced), so all ranks skip together.
        limit = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else float("inf")
        norm = accelerator.clip_grad_norm_(trained.params, limit)
        if norm is not None:  # DeepSpeed clips internally and returns None
            grad_norm = float(norm)
            finite = bool(torch.isfinite(norm)) and bool(torch.isfinite(loss.detach()))
    if finite:
        optimizer.step()
        # A finite gradient can still step the weights to inf (a huge lr): stop before they are used.
        if accelerator.sync_gradients and not all_finite(trained.params):
            raise NonFiniteWeights(f"step {global_step + 1}: the update made trained weights NaN or inf (train.lr "
                                   f"{cfg.train.lr:g}); nothing is saved from them. Lower train.lr; the newest "
                                   f"checkpoint under {Path(cfg.output_dir) / 'checkpoints'}, if any, holds the "
                                   "finite weights before")
    elif accelerator.scaler is not None:
        # fp16: optimizer.step() is what calls the grad scaler's update(); without it the scaler stays "unscaled"
        # and the next clip_grad_norm_ raises. update() also lowers the scale after an inf.
        accelerator.scaler.update()
    lr_scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return finite, grad_norm


class NonFiniteGuard:
    """Counts updates skipped for a non-finite loss or gradient; ``record`` is True once
    train.max_nonfinite_updates of them come in a row."""

    def __init__(self, train_cfg):
        self.limit, self.run, self.total = train_cfg.max_nonfinite_updates, 0, 0

    def record(self, finite: bool, step: int) -> bool:
        self.run = 0 if finite else self.run + 1
        self.total += 0 if finite else 1
        if self.run:
            logger.warning("step %d: non-finite loss or gradient; update skipped (%d in a row, %d in all)", step,
                           self.run, self.total)
        return self.run >= self.limit

    def message(self, step: int, out: Path) -> str:
        return (f"{self.run} optimizer steps in a row had a non-finite loss or gradient (last at step {step}); "
                f"stopped. The weights before them are saved in {out / 'checkpoints'}. Lower train.lr, check the "
                "data, or raise train.max_nonfinite_updates.")


def log_update(cfg: Config, accelerator, bar, metrics: dict, grad_norm, nonfinite_total: int, lr_scheduler,
               epoch: int, global_step: int) -> dict:
    """This update's metrics with its gradient norm, lr(s) and counters; shown and logged every log_every."""
    if grad_norm is not None:
        metrics["grad_norm"] = grad_norm
    lrs = lr_scheduler.get_last_lr()
    metrics.update(nonfinite_skipped=nonfinite_total, lr=lrs[0], epoch=epoch)
    if len(lrs) > 1:  # train.text_encoder_lr's own group
        metrics["text_encoder_lr"] = lrs[1]
    if global_step % cfg.train.log_every == 0 or global_step == cfg.train.max_steps:
        # the loss (absent when every micro-batch was skipped) and the objective's headline metric, if any
        shown = {"loss": f"{metrics.get('loss', float('nan')):.4f}"}
        for key in ("reward", "implicit_acc", "caption_accuracy"):
            if key in metrics:
                shown[key] = f"{metrics[key]:.3f}"
                break
        bar.set_postfix(shown)
        accelerator.log(metrics, step=global_step)
    return metrics


def finish(cfg: Config, summary: dict, out: Path) -> None:
    """On the main process after export: the toy world's before/after comparison (toy bases only, eval.enabled),
    the model card and summary.json."""
    if cfg.eval.enabled and is_toy_model(cfg.model.pretrained):
        from diffalign.toy.compare import compare_run

        summary["comparison"] = compare_run(cfg, out)
    from diffalign.model_card import write_model_card

    write_model_card(cfg, summary, out)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))


def _validate(cfg: Config, parts, unet, out: Path, step: int) -> None:
    from diffalign.objectives.longalign import segment_length_for_sampling, segmenter_for_sampling
    from diffalign.validation import validation_grid

    prompts = cfg.eval.validation_prompts
    if not prompts and is_toy_model(cfg.model.pretrained):
        from diffalign.toy.prompts import prompt_set

        prompts = prompt_set("persona")[:4]
    if prompts:
        e = cfg.eval  # the side it trains at unless set (the pipeline would sample at the base model's full size)
        validation_grid(parts, unet, prompts, out / "validation" / f"step_{step:06d}.png", cfg.model.pretrained,
                        e.validation_resolution or cfg.data.resolution,
                        num_inference_steps=e.validation_steps or e.num_inference_steps,
                        guidance_scale=e.guidance_scale,
                        max_text_length=segment_length_for_sampling(cfg.method, cfg.objective),  # as it trained
                        segmenter=segmenter_for_sampling(cfg.method, cfg.objective),
                        guidance_rescale=e.guidance_rescale)


def _mean_tail(history: list[dict], n: int = 20) -> dict:
    tail = history[-n:]
    keys = {k for h in tail for k in h if is_metric_value(h[k])}
    return {k: sum(h[k] for h in tail if k in h) / max(1, sum(k in h for h in tail)) for k in sorted(keys)}


def main(argv: list[str] | None = None) -> int:
    try:
        args, overrides = parse_args(argv)
        cfg = build_config(args, overrides)
        if args.print_config:
            from diffalign.config_docs import describe

            print(describe(cfg), end="")
            return 0
        accept = tuple(k.strip() for k in args.resume_accept.split(",") if k.strip())
        summary = train(cfg, resume=args.resume, resume_accept=accept)
    except (ConfigError, NonFiniteTraining, NonFiniteWeights, BrokenCheckpoint, UnsafeCheckpoint) as err:
        print(f"diffalign train: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a missing or existing path, a full or read-only disk: the path and the reason
        print(f"diffalign train: {err}", file=sys.stderr)
        return 2
    if PartialState().is_main_process:  # one report, not one per rank
        comparison = summary.get("comparison")
        if comparison:
            print(comparison["text"])
        if summary.get("bad_samples_skipped"):
            print(f"{summary['bad_samples_skipped']} bad samples skipped (data.on_bad_sample=skip)")
        print(f"saved to {cfg.output_dir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
