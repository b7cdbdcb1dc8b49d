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
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from diffusers.optimization import get_scheduler
from tqdm.auto import tqdm

from diffalign.checkpoint_state import UnsafeCheckpoint
from diffalign.checkpointing import (BrokenCheckpoint, NonFiniteWeights, TrainingState, all_finite, check_finite,
                                     checkpoint_config, resume as resume_from, save_checkpoint)
from diffalign.config import Config, ConfigError, load_config
from diffalign.core.step import TrainStep
from diffalign.data.factory import build_training_data
from diffalign.models.segment_encoding import encoder_pairs
from diffalign.models.conditioning import conditioner_for
from diffalign.models.loading import (cast_frozen_weights, freeze_encoders, load_sd_components, load_tokenizer,
                                     pipeline_class)
from diffalign.models.lora import TextEncoderLora, attach_lora, save_lora
from diffalign.models.lora_checkpoint import ADAPTER_PART, LoraAdapterState
from diffalign.models.soft_tokens import attach_soft_tokens, save_soft_tokens
from diffalign.models.text_encoder_full import FullTextEncoders
from diffalign.models.user_attention import attach_user_adapter, save_user_adapter
from diffalign.models.user_encoders import build_user_encoder
from diffalign.objectives import get_objective
from diffalign.paths import REPO_ROOT, clear_run_folder, is_toy_model, refuse_overwrite
from diffalign.resume_check import check_resume_config
from diffalign.update_metrics import UpdateMetrics, is_metric_value

TOY_CONFIGS = REPO_ROOT / "configs" / "toy"


logger = get_logger(__name__)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    parser = argparse.ArgumentParser(prog="diffalign train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", help="objective name; alone, it runs the embedded toy default for it")
    parser.add_argument("--config", help="YAML config file (default: configs/toy/<method>.yaml)")
    parser.add_argument("--resume", help="'latest', 'latest-valid' (skip broken checkpoints) or a checkpoint folder")
    parser.add_argument("--resume-accept", default="", metavar="KEY[,KEY...]",
                        help="with --resume: config fields that may differ from the checkpoint's (e.g. train.lr); "
                             "the new values apply from the next update and are recorded in summary.json")
    parser.add_argument("--overwrite", action="store_true",
                        help="empty output_dir first (only a diffalign run folder; what it removes is listed)")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    while rest:
        key = rest.pop(0)
        if not key.startswith("--") or not rest:
            raise ConfigError(f"expected '--section.key value' overrides; got {key!r}")
        overrides.append((key[2:], rest.pop(0)))
    return args, overrides


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


def make_optimizer(cfg: Config, params: list, text_params: list = ()) -> torch.optim.Optimizer:
    """train.optimizer: ``adamw``; ``adamw_8bit`` (bitsandbytes); ``adafactor`` (transformers', with a fixed lr:
    no relative step or parameter scaling, as Diffusion-DPO's SDXL training uses it).

    ``text_params`` (a trained text encoder's, also in ``params``) get their own group at train.text_encoder_lr
    when that is set; the lr scheduler scales every group's peak alike."""
    t = cfg.train
    if text_params and t.text_encoder_lr is not None:
        text_ids = {id(p) for p in text_params}
        params = [{"params": [p for p in params if id(p) not in text_ids]},
                  {"params": list(text_params), "lr": t.text_encoder_lr}]
    if t.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        return Adafactor(params, lr=t.lr, weight_decay=t.weight_decay, scale_parameter=False, relative_step=False,
                         warmup_init=False)
    optimizer_cls = torch.optim.AdamW
    if t.optimizer == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as err:
            raise ConfigError("train.optimizer adamw_8bit needs bitsandbytes: pip install bitsandbytes") from err
        optimizer_cls = bnb.optim.AdamW8bit
    return optimizer_cls(params, lr=t.lr, betas=(t.adam_beta1, t.adam_beta2), weight_decay=t.weight_decay,
                         eps=t.adam_eps)


@torch.no_grad()
def ema_update(reference: torch.nn.Module, policy: torch.nn.Module, decay: float) -> None:
    """reference <- decay * reference + (1 - decay) * policy, parameter by parameter (full fine-tuning)."""
    ref_params = list(reference.parameters())
    policy_params = [p.detach().to(r.dtype) for p, r in zip(policy.parameters(), ref_params)]
    torch._foreach_lerp_(ref_params, policy_params, 1.0 - decay)


def average_gradients(accelerator: Accelerator, params) -> None:
    """Mean of each parameter's gradient over processes, in place: what DDP does for the UNet's parameters, for
    trained modules that are not part of it (PPD's user adapter). A no-op on one process."""
    if accelerator.num_processes == 1:
        return
    for p in params:
        if p.grad is not None:
            p.grad.copy_(accelerator.reduce(p.grad, reduction="mean"))


def broadcast_parameters(accelerator: Accelerator, params) -> None:
    """Every process takes process 0's values (what DDP does for its own module at wrap time)."""
    if accelerator.num_processes == 1:
        return
    with torch.no_grad():
        for p in params:
            torch.distributed.broadcast(p.data, src=0)


class NonFiniteTraining(RuntimeError):
    """Too many non-finite updates in a row (see train.max_nonfinite_updates)."""


def train(cfg: Config, resume: str | None = None, resume_accept: tuple[str, ...] = ()) -> dict:
    """Run one training job; returns a summary (also written to ``output_dir/summary.json``).

    ``resume``: 'latest', 'latest-valid' or a checkpoint folder; ``resume_accept``: config fields that may differ
    from the checkpoint's (resume_check.py)."""
    out = Path(cfg.output_dir)
    if resume and cfg.overwrite:
        raise ConfigError("--resume continues the run in output_dir and --overwrite would empty it: pass one of them")
    if resume_accept and not resume:
        raise ConfigError("--resume-accept lists config changes accepted on --resume; no --resume given")
    if not resume:
        refuse_overwrite(out, cfg.overwrite)
    accelerator = make_accelerator(cfg)
    if not resume and cfg.overwrite:
        if accelerator.is_main_process:
            clear_run_folder(out)
        accelerator.wait_for_everyone()
    if accelerator.device.type == "cpu" and accelerator.mixed_precision == "fp16":  # accelerate would run no autocast
        raise ConfigError("train.mixed_precision: fp16 needs a GPU (accelerate has no fp16 autocast on CPU); "
                          "use bf16 or no")
    set_seed(cfg.train.seed)
    if cfg.train.text_encoder and accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        # The encoders train outside the prepared UNet: FSDP/DeepSpeed would neither shard them nor clip them with it.
        raise ConfigError(f"train.text_encoder runs under plain data parallelism only (multi-GPU DDP), not "
                          f"{accelerator.distributed_type.value}: the text encoders train outside the UNet's wrapper")
    sharded = accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)
    if sharded and (cfg.train.checkpoint_every or resume):
        # Their sharded optimizer states exist only in their own pickled formats, which diffalign never loads.
        raise ConfigError(f"train.checkpoint_every / --resume: checkpoints run under one process or multi-GPU DDP, "
                          f"not {accelerator.distributed_type.value} (its sharded states are pickle files, which "
                          "diffalign does not load); set train.checkpoint_every 0 or use DDP")
    objective = get_objective(cfg.method, **cfg.objective)

    # The data first: a wrong column or an empty table is reported before gigabytes of weights load.
    try:
        tokenizer = load_tokenizer(cfg.model.pretrained, cfg.model.revision)
    except ValueError as err:  # an unsupported pipeline type or an unreadable checkpoint file
        raise ConfigError(str(err)) from err
    per_update = cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes
    try:
        dataset, sampler, collate = build_training_data(cfg.data, objective.pair_axis, tokenizer, cfg.train.seed,
                                                        per_update, cfg.model.trust_remote_code,
                                                        getattr(objective, "examples_per_user", None),
                                                        getattr(objective, "reversed_users", 0.0))
    except ValueError as err:
        raise ConfigError(str(err)) from err
    parts = load_sd_components(cfg.model.pretrained, cfg.model.revision, cfg.model.variant, tokenizer,
                               vae=cfg.model.vae)
    vae_factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)  # pixels per latent cell (SD: 8)
    if cfg.data.resolution % vae_factor:
        raise ConfigError(f"data.resolution: expected a multiple of the VAE's factor {vae_factor}, got "
                          f"{cfg.data.resolution}")
    steps_of_model = parts.noise_scheduler.config.num_train_timesteps
    if cfg.train.timestep_range is not None and cfg.train.timestep_range[1] > steps_of_model:
        raise ConfigError(f"train.timestep_range {cfg.train.timestep_range}: the model has {steps_of_model} training "
                          f"timesteps, so high must be <= {steps_of_model}")
    weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(accelerator.mixed_precision, torch.float32)
    freeze_encoders(parts, accelerator.device, weight_dtype, replacement_vae=bool(cfg.model.vae),
                    text_encoders_train=cfg.train.text_encoder)
    unet = parts.unet
    reference = soft_tokens = user_adapter = trained_text = None
    trains = getattr(objective, "trains", "unet")  # what the objective trains: the UNet, or SoftREPA's tokens
    if trains == "soft_tokens":
        blocks = ("down", "mid") if parts.kind == "sdxl" else ("down",)  # SoftREPA: SD down; SDXL down + mid
        init = start_token_state(parts) if objective.starts_from_start_token(parts.kind) else None
        soft_tokens = attach_soft_tokens(unet, objective.num_tokens, blocks, init=init,
                                         timestep_buckets=objective.timestep_buckets).to(accelerator.device)
        params = list(soft_tokens.parameters())
    elif trains == "user_adapter":  # PPD: the user adapter, plus a LoRA with lora.enabled
        params = attach_lora(unet, cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules) if cfg.lora.enabled \
            else []
        if not params:
            unet.requires_grad_(False)  # adapter only: the UNet is the (frozen) reference itself
        user_encoder = build_user_encoder(objective.encoder_spec, str(accelerator.device), weight_dtype,
                                          trust_remote_code=cfg.model.trust_remote_code)
        user_adapter = attach_user_adapter(unet, user_encoder.dim, objective.num_user_tokens, objective.user_scale,
                                           objective.encoder_spec).to(accelerator.device)
        params += list(user_adapter.parameters())
    elif cfg.lora.enabled:
        params = attach_lora(unet, cfg.lora.rank, cfg.lora.alpha, cfg.lora.target_modules)
        if cfg.lora.text_encoder:  # as diffusers' --train_text_encoder: same rank and alpha
            encoders = [e for e in (parts.text_encoder, parts.text_encoder_2) if e is not None]
            trained_text = TextEncoderLora(encoders, cfg.lora.rank, cfg.lora.alpha,
                                           cfg.lora.text_encoder_target_modules)
    else:
        params = list(unet.parameters())
        if cfg.train.text_encoder:  # every text-encoder weight; the reference reads a frozen starting copy
            trained_text = FullTextEncoders(conditioner_for(parts), objective.needs_reference, weight_dtype,
                                            accelerator.autocast)
        if objective.needs_reference:  # full fine-tune: the reference is a frozen copy of the start
            reference = type(unet).from_config(unet.config)
            reference.load_state_dict(unet.state_dict())
            # An EMA reference stays float32: a (1 - decay) step rounds to nothing in fp16/bf16.
            ref_dtype = torch.float32 if cfg.train.ema_reference_decay is not None else weight_dtype
            reference.requires_grad_(False).eval().to(accelerator.device, dtype=ref_dtype)
    if trained_text is not None:
        params += trained_text.params
        if cfg.train.gradient_checkpointing:  # transformers checkpoints only in training mode
            for encoder in trained_text.text_encoders:  # (CLIP's dropouts are 0, so train() changes nothing else)
                encoder.activation_checkpointing_enable()
                encoder.train()
    # The frozen base in the training precision, what trains in float32. Not under FSDP, which flattens each
    # wrapped block's parameters into one tensor of one dtype.
    if weight_dtype != torch.float32 and (trains != "unet" or cfg.lora.enabled) and \
            accelerator.distributed_type != DistributedType.FSDP:
        cast_frozen_weights(unet, weight_dtype)
    if cfg.train.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if cfg.train.channels_last:
        unet.to(memory_format=torch.channels_last)
    unet.train()  # from_pretrained returns eval mode

    workers = cfg.data.num_workers
    # Workers decode and transform ahead of the step; pinned memory makes the copy to a GPU asynchronous. Not
    # persistent: each epoch's workers must copy the dataset with its new ``epoch`` (the per-example seeds).
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler,
                                         collate_fn=collate, drop_last=True, num_workers=workers,
                                         pin_memory=accelerator.device.type == "cuda",
                                         prefetch_factor=4 if workers else None)
    optimizer = make_optimizer(cfg, params, trained_text.params if trained_text is not None else [])
    # accelerate steps the scheduler once per process per optimizer step, hence the num_processes factor.
    lr_scheduler = get_scheduler(cfg.train.lr_scheduler, optimizer,
                                 num_warmup_steps=cfg.train.warmup_steps * accelerator.num_processes,
                                 num_training_steps=cfg.train.max_steps * accelerator.num_processes)
    if any(p.requires_grad for p in unet.parameters()):
        unet, optimizer, loader, lr_scheduler = accelerator.prepare(unet, optimizer, loader, lr_scheduler)
    else:  # a frozen UNet (PPD's adapter alone): device and mixed precision, no DDP (which refuses it)
        unet = accelerator.prepare_model(unet, evaluation_mode=True)
        optimizer, loader, lr_scheduler = accelerator.prepare(optimizer, loader, lr_scheduler)
    # Trained, but not in the UNet's DDP. SoftREPA's tokens: each rank contrasts its own micro-batch (its B images x
    # B captions at its own t), and the ranks average the tokens' gradients, as the authors' DDP script does.
    outside_ddp = [m for m in (soft_tokens, user_adapter, trained_text) if m is not None]
    for module in outside_ddp:  # nothing else makes every rank start from rank 0's weights
        broadcast_parameters(accelerator, module.parameters())
    # What a checkpoint holds (checkpointing.py): the trained parts only, never the frozen base UNet.
    trained = {"soft_tokens": soft_tokens, "user_adapter": user_adapter, "text_encoders": trained_text,
               "ema_reference": reference if cfg.train.ema_reference_decay is not None else None}
    if cfg.lora.enabled and trains != "soft_tokens":
        trained[ADAPTER_PART] = LoraAdapterState(accelerator.unwrap_model(unet))
    elif trains == "unet":
        trained["unet"] = accelerator.unwrap_model(unet)
    state = TrainingState({k: v for k, v in trained.items() if v is not None}, optimizer, lr_scheduler,
                          dataclasses.asdict(cfg))
    cache = open_encoding_cache(cfg, weight_dtype, accelerator.process_index) if cfg.data.cache_encodings else None
    if getattr(objective, "step_kind", "denoising") == "reward":  # LongAlign: sample, decode, score
        if cfg.train.gradient_checkpointing:
            # The reward backpropagates through VAE.decode at full resolution: its activations, not the UNet's,
            # dominate memory at 512/1024 px. Checkpointing recomputes them (the VAE stays frozen).
            parts.vae.enable_gradient_checkpointing()
        step_fn = make_reward_step(objective, parts, accelerator, cfg.data.resolution)
    else:
        step_fn = TrainStep(objective, parts.vae, conditioner_for(parts), parts.noise_scheduler, reference,
                            accelerator, cache, user_adapter, trained_text, cfg.train.timestep_range,
                            segment_encoders=encoder_pairs(parts))  # read when the objective encodes by segments
        if cfg.train.empty_prompt_anchor:  # before resume_from below: it records the starting encoder's states
            from diffalign.data.examples import token_ids

            if parts.kind == "sdxl" and parts.force_zeros_for_empty_prompt:
                logger.warning("train.empty_prompt_anchor on an SDXL model with force_zeros_for_empty_prompt: its "
                               "pipeline feeds zeros, not the empty prompt's states, to the unconditional branch, "
                               "so the anchor holds states the pipeline does not use")
            step_fn.anchor_empty_prompt(token_ids(parts.tokenizers, ""), cfg.train.empty_prompt_anchor)

    updates_per_epoch = len(loader) // cfg.train.grad_accum  # exact: the sampler trims epochs to whole updates
    changes: dict[str, list] = {}

    def same_run(path: Path) -> None:  # before a checkpoint loads: the config it was saved with
        changes.update(check_resume_config(checkpoint_config(path), state.config, set(resume_accept), str(path)))

    global_step = resume_from(accelerator, out, resume, state, check=same_run) if resume else 0
    if changes:
        logger.warning("resumed at step %d with accepted config changes: %s", global_step, changes)
    global_step_at_start = global_step
    first_epoch, done_in_epoch = divmod(global_step, updates_per_epoch)
    if accelerator.is_main_process and accelerator.trackers == [] and cfg.train.report_to != "none":
        accelerator.init_trackers("diffalign", config={"method": cfg.method, **cfg.objective})
    (out).mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2))

    bar = tqdm(total=cfg.train.max_steps, initial=global_step, desc=f"train {cfg.method}",
               disable=not accelerator.is_local_main_process)
    start, history, update_metrics = time.time(), [], UpdateMetrics()
    nonfinite_run = nonfinite_total = skipped_samples = 0
    epoch = first_epoch
    while global_step < cfg.train.max_steps:
        dataset.epoch = epoch
        skip = done_in_epoch * cfg.train.grad_accum if epoch == first_epoch else 0
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        # accelerate's loaders push their own pass counter into the sampler when iterated; make it our epoch
        # (a fresh loader after a resume would otherwise replay epoch 0's order).
        batches.set_epoch(epoch)
        sampler.set_epoch(epoch)
        for batch in batches:
            skipped_samples += batch.get("skipped", 0)
            if user_adapter is not None and "profile_rows" in batch:  # PPD: each pair's user, from other examples
                batch["user_embedding"] = dataset.user_embeddings(batch["profile_rows"], user_encoder,
                                                                  batch["reversed_users"])
            with accelerator.accumulate(unet):
                loss, metrics = step_fn(unet, batch)
                if metrics:  # none from a micro-batch whose examples were all skipped (its loss is a zero dummy)
                    update_metrics.add({**metrics, "loss": loss.item()})
                accelerator.backward(loss)
                finite, grad_norm = True, None
                if accelerator.sync_gradients:
                    for module in outside_ddp:  # average their gradients like DDP would
                        average_gradients(accelerator, module.parameters())
                    # The norm is the same on every rank (gradients are reduced), so all ranks skip together.
                    limit = cfg.train.max_grad_norm if cfg.train.max_grad_norm > 0 else float("inf")
                    norm = accelerator.clip_grad_norm_(params, limit)
                    if norm is not None:  # DeepSpeed clips internally and returns None
                        grad_norm = float(norm)
                        finite = bool(torch.isfinite(norm)) and bool(torch.isfinite(loss.detach()))
                if finite:
                    optimizer.step()
                    # A finite gradient can still step the weights to inf (a huge lr): stop before they are used.
                    if accelerator.sync_gradients and not all_finite(params):
                        raise NonFiniteWeights(
                            f"step {global_step + 1}: the update made trained weights NaN or inf (train.lr "
                            f"{cfg.train.lr:g}); nothing is saved from them. Lower train.lr; the newest checkpoint "
                            f"under {out / 'checkpoints'}, if any, holds the finite weights before")
                elif accelerator.scaler is not None:
                    # fp16: optimizer.step() is what calls the grad scaler's update(); without it the scaler stays
                    # "unscaled" and the next clip_grad_norm_ raises. update() also lowers the scale after an inf.
                    accelerator.scaler.update()
                lr_scheduler.step()
                optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients and finite and cfg.train.ema_reference_decay is not None:
                ema_update(reference, accelerator.unwrap_model(unet), cfg.train.ema_reference_decay)
            if not accelerator.sync_gradients:
                continue
            nonfinite_run = 0 if finite else nonfinite_run + 1
            nonfinite_total += 0 if finite else 1
            if nonfinite_run:
                logger.warning("step %d: non-finite loss or gradient; update skipped (%d in a row, %d in all)",
                               global_step + 1, nonfinite_run, nonfinite_total)
            if nonfinite_run >= cfg.train.max_nonfinite_updates:
                # the last finite weights, resumable
                save_checkpoint(accelerator, out, global_step, cfg.train.checkpoints_total_limit, state)
                raise NonFiniteTraining(
                    f"{nonfinite_run} optimizer steps in a row had a non-finite loss or gradient (last at step "
                    f"{global_step + 1}); stopped. The weights before them are saved in "
                    f"{out / 'checkpoints'}. Lower train.lr, check the data, or raise train.max_nonfinite_updates.")
            global_step += 1
            bar.update(1)
            # this update's metrics, over its micro-batches and the ranks
            metrics = update_metrics.reduce(accelerator.num_processes)
            if grad_norm is not None:
                metrics["grad_norm"] = grad_norm
            metrics.update(nonfinite_skipped=nonfinite_total, lr=lr_scheduler.get_last_lr()[0], epoch=epoch)
            if len(optimizer.param_groups) > 1:  # train.text_encoder_lr's own group
                metrics["text_encoder_lr"] = lr_scheduler.get_last_lr()[1]
            history.append(metrics)
            if global_step % cfg.train.log_every == 0 or global_step == cfg.train.max_steps:
                # the loss (absent when every micro-batch was skipped) and the objective's headline metric, if any
                shown = {"loss": f"{metrics.get('loss', float('nan')):.4f}"}
                for key in ("reward", "implicit_acc", "caption_accuracy"):
                    if key in metrics:
                        shown[key] = f"{metrics[key]:.3f}"
                        break
                bar.set_postfix(shown)
                accelerator.log(metrics, step=global_step)
            if cfg.train.validation_every and global_step % cfg.train.validation_every == 0 \
                    and accelerator.is_main_process:
                _validate(cfg, parts, accelerator.unwrap_model(unet), out, global_step)
            if cfg.train.checkpoint_every and global_step % cfg.train.checkpoint_every == 0:
                if cache is not None:
                    cache.flush()
                save_checkpoint(accelerator, out, global_step, cfg.train.checkpoints_total_limit, state)
            if global_step >= cfg.train.max_steps:
                break
        epoch += 1
    bar.close()
    train_seconds = time.time() - start
    if cache is not None:
        cache.flush()
    accelerator.wait_for_everyone()

    summary = {"method": cfg.method, "steps": global_step, "train_seconds": round(train_seconds, 1),
               "examples_seen": global_step * cfg.train.batch_size * cfg.train.grad_accum * accelerator.num_processes,
               "nonfinite_skipped": nonfinite_total,
               "bad_samples_skipped": int(accelerator.reduce(torch.tensor(skipped_samples, device=accelerator.device),
                                                             reduction="sum")), "ties_dropped": getattr(dataset, "skipped_ties", 0), "examples_available": len(dataset),
               "first_metrics": history[0] if history else {}, "final_metrics": _mean_tail(history)}
    if resume:  # where this run continued from, and the config changes accepted there ({key: [saved, now]})
        summary["resumed"] = {"from_step": global_step_at_start, "accepted_changes": changes}
    if user_adapter is not None:
        summary["pairs_of_users_with_too_few_examples"] = dataset.skipped_few_examples
        summary["users_with_too_few_examples"] = dataset.skipped_users
        summary["profile_examples_skipped"] = dataset.skipped_profile_examples
    if cache is not None:
        summary["encoding_cache"] = {"directory": str(cache.directory), "hits": cache.hits, "misses": cache.misses,
                                     "encoder_calls": step_fn.encoders.calls}
    check_finite(state.parts)  # nothing non-finite is exported (every rank: the weights are replicated)
    if accelerator.is_main_process:
        final = accelerator.unwrap_model(unet)
        if soft_tokens is not None:
            summary["soft_tokens"] = str(save_soft_tokens(soft_tokens, out))
        elif user_adapter is not None:
            summary["user_adapter"] = str(save_user_adapter(user_adapter, out))
            if cfg.lora.enabled:
                summary["lora"] = str(save_lora(final, out, pipeline_class(parts.kind)))
        elif cfg.lora.enabled:
            summary["lora"] = str(save_lora(final, out, pipeline_class(parts.kind), text_lora=trained_text))
        else:
            final.save_pretrained(out / "unet", safe_serialization=True)
            summary["unet"] = str(out / "unet")
            if trained_text is not None:
                summary["text_encoders"] = [str(f) for f in trained_text.save(out)]
        if cfg.eval.enabled and is_toy_model(cfg.model.pretrained) and user_adapter is not None:
            from diffalign.toy.personalization import compare_personalized

            summary["comparison"] = compare_personalized(cfg, out)
        elif cfg.eval.enabled and is_toy_model(cfg.model.pretrained):
            from diffalign.toy.compare import compare_before_after

            summary["comparison"] = compare_before_after(cfg, out)
        from diffalign.model_card import write_model_card

        write_model_card(cfg, summary, out)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    accelerator.end_training()
    return summary


@torch.no_grad()
def start_token_state(parts) -> torch.Tensor:
    """[D]: the text states' first row (the start token) for the empty prompt, as the UNet reads them (SDXL: both
    encoders' penultimate states, concatenated)."""
    from diffalign.data.examples import token_ids

    states = conditioner_for(parts).encode(token_ids(parts.tokenizers, "")[None])[0]  # [1, 77, D]
    return states[0, 0].float()


def make_reward_step(objective, parts, accelerator: Accelerator, resolution: int):
    """Reward fine-tuning's step (core/reward_step.py) with its frozen reward model on the training device."""
    from diffalign.core.reward_step import RewardStep
    from diffalign.scorers import create_scorer

    reward = create_scorer("denscore", device=str(accelerator.device), **objective.reward_options())
    return RewardStep(objective, parts, conditioner_for(parts), accelerator, resolution, reward)


def open_encoding_cache(cfg: Config, dtype: torch.dtype, process_index: int = 0):
    """The encoding cache of this model, data and transform (data/encoding_cache.py)."""
    from diffalign.data.encoding_cache import EncodingCache, default_cache_root, encoders_fingerprint

    d = cfg.data
    source = Path(d.source)
    files = sorted(source.rglob("*.parquet")) if source.is_dir() else [source] if source.is_file() else []
    identity = {"source": str(source.resolve()) if files else d.source, "split": d.split,
                "files": [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files],
                "resolution": d.resolution, "random_crop": d.random_crop, "random_flip": d.random_flip,
                "vae": cfg.model.vae}
    if d.random_crop:
        logger.warning("data.cache_encodings with data.random_crop: every crop is a new view, so the cache "
                       "rarely hits; turn random_crop off to gain from it")
    root = Path(d.cache_dir) if d.cache_dir else default_cache_root()
    fingerprint = encoders_fingerprint(cfg.model.pretrained, cfg.model.revision, cfg.model.variant, dtype, identity)
    return EncodingCache(root / fingerprint, writer=f"rank{process_index}")


def _validate(cfg: Config, parts, unet, out: Path, step: int) -> None:
    from diffalign.objectives.longalign import segment_length_for_sampling
    from diffalign.validation import validation_grid

    prompts = cfg.eval.validation_prompts
    if not prompts and is_toy_model(cfg.model.pretrained):
        from diffalign.toy.prompts import prompt_set

        prompts = prompt_set("persona")[:4]
    if prompts:
        validation_grid(parts, unet, prompts, out / "validation" / f"step_{step:06d}.png", cfg.model.pretrained,
                        num_inference_steps=cfg.eval.num_inference_steps, guidance_scale=cfg.eval.guidance_scale,
                        max_text_length=segment_length_for_sampling(cfg.method, cfg.objective),  # as it trained
                        guidance_rescale=cfg.eval.guidance_rescale)


def _mean_tail(history: list[dict], n: int = 20) -> dict:
    tail = history[-n:]
    keys = {k for h in tail for k in h if is_metric_value(h[k])}
    return {k: sum(h[k] for h in tail if k in h) / max(1, sum(k in h for h in tail)) for k in sorted(keys)}


def main(argv: list[str] | None = None) -> int:
    try:
        args, overrides = parse_args(argv)
        cfg = build_config(args, overrides)
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
