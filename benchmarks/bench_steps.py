"""The training steps the throughput benchmark times, and the levers it turns one by one.

A *variant* is one row of the table: which step, in which precision, with which levers. Every step is a whole
optimizer step as a training run does it: forward(s), loss, backward, gradient clipping to 1.0, AdamW.

reference  the step of the script a user would otherwise run, with the LoRA reference those scripts use:
           dpo   diffusers' examples/research_projects/diffusion_dpo/train_diffusion_dpo.py (_sdxl.py for SDXL)
           mapo  the MaPO authors' train_with_lora.py (mapo-t2i/mapo; reference-free)
           kto   the Diffusion-KTO authors' train_kto_sd_v1.5.py with --use_lora (jacklishufan/diffusion-kto)
           What they all do every step: VAE-encode the images (a posterior *sample*, chunks of 8; in the weight
           dtype for diffusers' SD1.5 DPO, float32 for SDXL and for the authors' MaPO and KTO scripts), run the
           text encoder(s) in the weight dtype, one forward over all rows with the LoRA on, and (dpo, kto) one
           more over the same rows with the adapters disabled under no_grad. The whole UNet, LoRA included, is
           cast to the weight dtype (fp16/bf16) before the adapter is added; only under fp16 is the LoRA put back
           in float32. Noise and t are shared by a pair's two images (dpo, mapo); each image has its own (kto).
           Other methods take the DPO script's shape. Flow models (SD3) have no such script for these methods:
           their row is the DPO script's shape with flow noising (σ as diffusers' SD3 LoRA script draws it).
reference-copy   the full-fine-tune baseline: every UNet weight trains and a frozen copy of the starting UNet
           (in the weight dtype) is the reference, as the DiffusionDPO authors' full fine-tune keeps one.
diffalign  core.step.TrainStep as the trainer builds it: LoRA in float32 over a frozen base in the training
           precision, the reference by disabling the adapters; the encoders run every step unless the warm
           encoding cache is on (a lever). diffalign-full: the full fine-tune with its frozen copy.
floor      the bare denoiser work any implementation must do: forward + backward over the same rows (plus one
           no-grad forward where the objective has a reference) on ready-made latents and text states.

Levers (Variant fields), each measured on its own against the plain diffalign row: ``cache`` (warm encoding cache:
no VAE or text encoder in the step), ``precision`` (bf16: the frozen base in bf16, the LoRA in float32, autocast),
``attention`` ("classic": diffusers' AttnProcessor instead of SDPA, to show what SDPA gives), ``compile``
(torch.compile through accelerate's dynamo, inductor), ``channels_last``, ``fused_adamw``, ``gradient_checkpointing``
(memory for time), ``batch_scale`` (a larger micro-batch in the memory the others save).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LORA_RANK = 8
VAE_CHUNK = 8  # the reference scripts' --vae_encode_batch_size default
# Whose VAE runs in float32 in the reference script (else the weight dtype).
REFERENCE_VAE_FLOAT32 = {"mapo": True, "kto": True}


@dataclass(frozen=True)
class Variant:
    name: str
    step: str  # "reference", "reference-copy", "diffalign", "diffalign-full" or "floor"
    precision: str = "no"  # as train.mixed_precision
    cache: bool = False
    attention: str = "sdpa"  # "sdpa" (diffusers' default on torch 2) or "classic"
    compile: bool = False
    channels_last: bool = False
    fused_adamw: bool = False
    gradient_checkpointing: bool = False
    batch_scale: int = 1

    def to_dict(self) -> dict:
        return asdict(self)


def lever_variants(precision: str, full_fine_tune: bool, compile_: bool, attention_lever: bool) -> list[Variant]:
    """The rows for one method: the reference step, diffalign doing the same work, then each lever alone."""
    plain = Variant("diffalign", "diffalign", precision)
    rows = [Variant("reference script", "reference", precision), plain,
            Variant("floor", "floor", precision)]
    if full_fine_tune:
        rows += [Variant("reference script, full fine-tune (UNet copy)", "reference-copy", precision),
                 Variant("diffalign, full fine-tune", "diffalign-full", precision)]
    other = "bf16" if precision == "no" else "no"
    rows += [Variant(f"reference script, precision {other}", "reference", other),  # the script under that lever
             replace(plain, name="+ encoding cache", cache=True),
             replace(plain, name=f"precision {other}" + (" (base bf16, LoRA fp32)" if other == "bf16" else ""),
                     precision=other)]
    if attention_lever:
        rows.append(replace(plain, name="classic attention (SDPA off)", attention="classic"))
    rows += [replace(plain, name="+ channels-last", channels_last=True),
             replace(plain, name="+ fused AdamW", fused_adamw=True),
             replace(plain, name="+ gradient checkpointing", gradient_checkpointing=True),
             replace(plain, name="+ 2x micro-batch", batch_scale=2)]
    if compile_:
        rows.append(replace(plain, name="+ torch.compile", compile=True))  # last: dynamo state outlives it
    return rows


def combined(plain: Variant, levers: list[Variant], gains: dict[str, float]) -> Variant:
    """diffalign with every speed lever that beat the plain row by more than 2% on its own (measured in an earlier
    pass). Gradient checkpointing and the micro-batch size are memory levers, left out here."""
    chosen = replace(plain, name="diffalign, levers that paid")
    for lever in levers:
        if gains.get(lever.name, 0.0) <= 1.02 or lever.batch_scale != 1 or lever.gradient_checkpointing:
            continue
        chosen = replace(chosen, **{k: v for k, v in lever.to_dict().items()
                                    if k not in ("name", "step") and v != getattr(plain, k)})
    return chosen


# ------------------------------------------------------------------------------------------------------ data
def _toy_config(method: str):
    from diffalign.config import load_config

    return load_config(REPO / "configs" / "toy" / f"{method}.yaml")


def objective_of(method: str):
    """The objective as the method's toy default configures it."""
    from diffalign.objectives import get_objective

    return get_objective(method, **_toy_config(method).objective)


def one_batch(method: str, tokenizer, examples: int, resolution: int | None) -> dict:
    """A real micro-batch of the method's toy data (``examples`` pairs or images), pixels resized to
    ``resolution`` (None: the data's own 32 px)."""
    from diffalign.data.factory import build_training_data

    dataset, sampler, collate = build_training_data(_toy_config(method).data, objective_of(method), tokenizer, 0,
                                                    examples)
    batch = collate([dataset[i] for i in list(sampler)[:examples]])
    if resolution and resolution != batch["pixels"].shape[-1]:
        batch["pixels"] = torch.nn.functional.interpolate(batch["pixels"], size=resolution, mode="bilinear")
    return batch


# ----------------------------------------------------------------------------------------------------- steps
class StepSeeds:
    """The seeds of the n-th step's noise groups, the same for every row: a training run's batches each bring new
    seeds, and on a CPU the step time depends on the drawn t (some levels produce subnormal floats in the backward),
    so every row sees the same sequence of draws."""

    def __init__(self, groups: int):
        self.groups, self.calls = groups, 0

    def next(self) -> torch.Tensor:
        self.calls += 1
        return torch.arange(self.groups) + 1000 * self.calls  # [G]


def make_step(variant: Variant, method: str, parts, family, batch: dict, device: torch.device):
    """A zero-argument callable doing one optimizer step of ``variant``. ``parts``: SDComponents in float32 on
    ``device`` (the UNet is changed: adapters, casts, levers; build a fresh one per variant)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=False)  # a fresh precision/dynamo setting per variant
    accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=variant.precision,
                              dynamo_backend="inductor" if variant.compile else None)
    objective = objective_of(method)
    unet, dtype = parts.unet, DTYPES[variant.precision]
    _freeze_encoders(parts, variant, method, dtype, device)
    if variant.attention == "classic":
        from diffusers.models.attention_processor import AttnProcessor

        unet.set_attn_processor(AttnProcessor())
    seeds = StepSeeds(len(batch["seeds"]))
    if variant.step == "floor":
        return _floor_step(objective, unet, parts.vae, family, batch, device, dtype, accelerator, seeds)
    copy = None
    if variant.step in ("reference-copy", "diffalign-full"):
        copy = _frozen_copy(unet, dtype) if objective.needs_reference else None
        unet.requires_grad_(True)
        params = list(unet.parameters())
    elif variant.step == "reference":  # the script: the whole UNet in the weight dtype, then the adapter
        unet.to(dtype)
        params = _attach_lora(unet, family)
        if variant.precision == "fp16":
            for p in params:
                p.data = p.data.float()
    else:
        from diffalign.models.loading import cast_frozen_weights

        params = _attach_lora(unet, family)
        cast_frozen_weights(unet, dtype)  # the trainer's: frozen base in the training precision, LoRA float32
    _apply_memory_levers(unet, variant)
    optimizer = torch.optim.AdamW(params, lr=1e-6, weight_decay=1e-2, fused=variant.fused_adamw or None)
    model, optimizer = accelerator.prepare(unet, optimizer)
    model.train()

    if variant.step.startswith("diffalign"):
        from diffalign.core.step import TrainStep
        from diffalign.data.encoding_cache import EncodingCache

        cache = EncodingCache(Path(tempfile.mkdtemp(prefix="bench-cache-"))) if variant.cache else None
        train_step = TrainStep(objective, parts.vae, family, copy, accelerator, cache)

        def forward_loss():
            return train_step(model, dict(batch, seeds=seeds.next()))[0]
    else:
        def forward_loss():
            return _reference_loss(objective, model, accelerator, parts.vae, family, dict(batch, seeds=seeds.next()),
                                   device, copy)

    def step():
        loss = forward_loss()
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step


def _attach_lora(unet, family) -> list:
    from diffalign.models.lora import attach_lora

    return attach_lora(unet, LORA_RANK, float(LORA_RANK), family.lora_targets)  # SD3: the context stream's too


def _apply_memory_levers(unet, variant: Variant) -> None:
    if variant.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    if variant.channels_last:
        unet.to(memory_format=torch.channels_last)


def _freeze_encoders(parts, variant: Variant, method: str, dtype: torch.dtype, device) -> None:
    """The frozen encoders in the dtype the step's source puts them: diffalign's freeze_encoders for diffalign's
    steps (and the floor), the script's for the reference (MaPO's and KTO's VAE in float32)."""
    from diffalign.models.loading import freeze_encoders

    freeze_encoders(parts, device, dtype)
    if variant.step.startswith("reference") and (REFERENCE_VAE_FLOAT32.get(method) or parts.kind != "sd"):
        parts.vae.to(torch.float32)


def _frozen_copy(module, dtype: torch.dtype):
    """A separate frozen copy of a diffusers model, its weights made directly in ``dtype``."""
    with torch.device("meta"):
        twin = type(module).from_config(module.config)
    twin.load_state_dict({k: v.to(dtype, copy=True) for k, v in module.state_dict().items()}, assign=True)
    return twin.requires_grad_(False).eval()


def _encode_images(vae, family, pixels: torch.Tensor, generators: list) -> torch.Tensor:
    """The scripts' VAE pass: the posterior in chunks of 8, a sample of it (image j's noise from ``generators[j]``,
    as diffalign draws it, so both steps see the same draws), scaled (and shifted, for flow VAEs)."""
    pixels = pixels.to(vae.device, vae.dtype)
    with torch.no_grad():
        dists = [vae.encode(pixels[i:i + VAE_CHUNK]).latent_dist for i in range(0, len(pixels), VAE_CHUNK)]
    mean, std = torch.cat([d.mean for d in dists]).float(), torch.cat([d.std for d in dists]).float()
    noise = torch.stack([torch.randn(mean.shape[1:], generator=g) for g in generators]).to(mean.device)
    return family.latents(mean + std * noise)  # [N, C, h, w] float32


def _reference_loss(objective, model, accelerator, vae, family, batch, device, copy):
    """The reference scripts' forward and loss (see the module docstring)."""
    from diffalign.core.errors import per_sample_errors
    from diffalign.core.noise import seeded_generators

    generators = seeded_generators(batch["seeds"])  # [G]: one ε and t per group, a pair's images share them
    latents = _encode_images(vae, family, batch["pixels"], [generators[g] for g in batch["image_group"].tolist()])
    with torch.no_grad():
        encoded = family.conditioner.encode(batch["input_ids"])  # (states [U, L, D],) (+ pooled [U, P])
    rows, texts, groups = (batch[k].to(device) for k in ("row_image", "row_text", "row_group"))
    x0, states = latents[rows], encoded[0][texts]
    extra = family.conditioner.unet_kwargs(encoded[1][texts] if len(encoded) > 1 else None,
                                           batch["image_meta"].to(device)[rows])
    noise, t = family.draw(x0.shape[1:], generators)  # [G, C, h, w], [G]
    noise, t = noise.to(device)[groups], t.to(device)[groups]
    x_t, target = family.noisy(x0, noise, t), family.target(x0, noise, t)
    if objective.noising == "ddim_inversion":  # InPO: the authors' script inverts with the policy, no grad
        from diffalign.core.inversion import ddim_inversion_latents

        with accelerator.autocast():
            x_t, noise = ddim_inversion_latents(accelerator.unwrap_model(model), family.scheduler, x0, t, states,
                                                [generators[g] for g in groups.tolist()],
                                                **objective.inversion_options, **extra)
        target = family.target(x0, noise, t)
    policy = per_sample_errors(model, x_t, t, states, target, predict=family.predict, **extra)  # [R] float32
    ref = None
    if objective.needs_reference:
        reference = copy if copy is not None else accelerator.unwrap_model(model)
        if copy is None:
            reference.disable_adapters()
        with torch.no_grad(), accelerator.autocast():
            ref = per_sample_errors(reference, x_t, t, states, target, predict=family.predict, **extra)
        if copy is None:
            reference.enable_adapters()
    return objective.row_loss(policy, ref, objective.prepare_batch(batch))[0]


def _floor_step(objective, unet, vae, family, batch, device, dtype, accelerator, seeds: StepSeeds):
    """Forward + backward over the rows on ready-made inputs, plus the reference's (and InPO's inversion's)
    no-grad forwards; the same optimizer step."""
    from diffalign.models.loading import cast_frozen_weights

    params = _attach_lora(unet, family)
    cast_frozen_weights(unet, dtype)
    optimizer = torch.optim.AdamW(params, lr=1e-6, weight_decay=1e-2)
    model, optimizer = accelerator.prepare(unet, optimizer)
    rows = len(batch["row_image"])
    with torch.no_grad():  # inputs of the step's shapes, as a perfect pipeline would hand them over
        latent = family.latents(vae.encode(batch["pixels"][:1].to(device, vae.dtype)).latent_dist.mean)
        encoded = family.conditioner.encode(batch["input_ids"][:1])  # (states [1, L, D],) (+ pooled [1, P])
    x = torch.randn(rows, *latent.shape[1:], device=device)
    text = torch.randn(rows, *encoded[0].shape[1:], device=device, dtype=encoded[0].dtype)
    pooled = torch.randn(rows, *encoded[1].shape[1:], device=device) if len(encoded) > 1 else None
    extra = family.conditioner.unet_kwargs(pooled, batch["image_meta"][:1].expand(rows, -1).to(device)) \
        if pooled is not None else {}
    groups = batch["row_group"]
    extra_forwards = (1 if objective.needs_reference else 0) + (
        objective.inversion_options["steps"] if objective.noising == "ddim_inversion" else 0)
    policy = accelerator.unwrap_model(model)

    def step():
        from diffalign.core.noise import seeded_generators

        _, t = family.draw(x.shape[1:], seeded_generators(seeds.next()))  # the step's t of each group
        t = t.to(device)[groups.to(device)]  # [R]
        if extra_forwards:
            with torch.inference_mode(), accelerator.autocast():
                policy.disable_adapters()
                for _ in range(extra_forwards):
                    family.predict(policy, x, t, text, **extra)
                policy.enable_adapters()
        out = family.predict(model, x, t, text, **extra)
        accelerator.backward(out.float().pow(2).mean())
        accelerator.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return step
