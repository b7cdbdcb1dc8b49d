"""Training-step throughput and peak memory: diffalign's step against the compute floor and a naive step.

    python benchmarks/train_throughput.py                          # toy + SD1.5-shaped UNets, CPU
    python benchmarks/train_throughput.py --unets toy --methods dpo,mapo --steps 10
    python benchmarks/train_throughput.py --device cuda --unets sd15 --latent 64 --pairs 8 --mixed-precision fp16

For each UNet and objective, three steps on the same micro-batch size, each timed in its own process (so peak
memory is that step's alone) after warm-up steps:
  diffalign  the trainer's step (core.step.TrainStep) + backward, LoRA rank 8, encodings from a warm cache
  floor      the bare UNet work any implementation must do: forward+backward over the same rows, plus one
             no-grad forward where the objective needs a reference (InPO: plus one no-grad forward per inversion
             step), on ready-made latents and text states (no encoders, no noise bookkeeping, no loss)
  naive      a step written like the reference scripts: VAE encode and text encode every step, noise from one
             batch-wide stream, a separate frozen copy of the UNet as the reference
The optimizer step is left out of all three (the same few LoRA tensors for each). Throughput is examples per
second (pairs for image/caption-pair objectives, images for KTO) from the median step time. Peak memory: RSS
high-water mark of the process on CPU (models included), ``torch.cuda.max_memory_allocated`` on CUDA.
``--mixed-precision fp16|bf16`` runs all three as the trainer's ``train.mixed_precision`` does (and as the reference
scripts do): frozen encoders (and the naive step's reference copy) in that dtype, the UNet under autocast.

UNets: ``toy`` is the embedded toy SD (assets/toy-sd), on its own data. ``sd15`` is the real SD1.5 UNet, VAE and
CLIP ViT-L text encoder architectures built from their configs with random weights (no download), on toy images
resized to ``--latent`` x 8 pixels. Flow transformers: ``toy-flow`` is the embedded SD3-shaped toy
(assets/toy-flow); ``sd35m`` is Stable Diffusion 3.5 Medium's transformer (its config, random weights, 2.5B
parameters) with SD3's 16-channel VAE, on toy images resized to ``--latent`` x 8 pixels; its text encoders have
the real widths (CLIP-L 768, CLIP-G 1280, T5 4096) but one layer each, since with the warm encoding cache they only
run during warm-up (T5-XXL's 4.7B parameters would not fit this machine's memory in float32). Flow models have no
naive row: the reference scripts' step is measured for UNets. Writes a table (stdout, and --markdown) and JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

METHODS = ["dpo", "mapo", "inpo", "kto", "tdpo", "tkto"]
FLOW_MODELS = ("toy-flow", "sd35m")
MODES = ["floor", "diffalign", "naive"]
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LORA = dict(rank=8, alpha=8.0, target_modules=["to_q", "to_k", "to_v", "to_out.0"])


# ----------------------------------------------------------------------------------------------- models and data
def sd15_components(seed: int = 0, device: str = "cpu"):
    """SD1.5's UNet, VAE and text encoder architectures (configs of runwayml/stable-diffusion-v1-5), random,
    initialised on ``device`` (random init of 1.1B parameters takes the CPU many seconds, a GPU well under one)."""
    from diffusers import DDPMScheduler

    from diffalign.models.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    with torch.device(device):
        unet, vae, text = _sd15_modules()
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000)
    return unet, vae, text, build_clip_tokenizer(), scheduler


def _sd15_modules():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                        block_out_channels=(128, 256, 512, 512),
                        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
    text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072,
                                        num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=77,
                                        hidden_act="quick_gelu", projection_dim=768))
    return unet, vae, text


def sd35m_components(seed: int = 0, device: str = "cpu"):
    """SD3.5 Medium's transformer (stabilityai/stable-diffusion-3.5-medium's transformer config) and SD3's VAE,
    random; text encoders of the real widths with one layer each (see the module docstring). Returns loaded-parts
    of models.loading.SDComponents' shape."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

    from diffalign.families.flow import LazyEncoder
    from diffalign.models.loading import SDComponents
    from diffalign.models.small_tokenizers import build_t5_tokenizer
    from diffalign.models.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    with torch.device(device):
        transformer = SD3Transformer2DModel(
            sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64,
            num_attention_heads=24, joint_attention_dim=4096, caption_projection_dim=1536,
            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=384,
            dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=16, layers_per_block=2,
                            block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                            up_block_types=("UpDecoderBlock2D",) * 4, use_quant_conv=False, use_post_quant_conv=False,
                            shift_factor=0.0609, scaling_factor=1.5305)
        clips = [CLIPTextModelWithProjection(CLIPTextConfig(
            vocab_size=49408, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=1,
            num_attention_heads=width // 64, max_position_embeddings=77, projection_dim=width)) for width in (768, 1280)]
        t5 = T5EncoderModel(T5Config(vocab_size=256, d_model=4096, d_kv=64, d_ff=1024, num_layers=1, num_heads=64))
    clip_tokenizer = build_clip_tokenizer()
    return SDComponents(kind="sd3", tokenizer=clip_tokenizer, text_encoder=clips[0], tokenizer_2=clip_tokenizer,
                        text_encoder_2=clips[1], tokenizer_3=build_t5_tokenizer(["a red circle"] * 8),
                        text_encoder_3=LazyEncoder(lambda: t5), vae=vae, unet=transformer,
                        noise_scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), max_sequence_length=77)


def flow_components(name: str, device: str):
    from diffalign.models.loading import load_sd_components
    from diffalign.paths import TOY_FLOW

    return sd35m_components(device=device) if name == "sd35m" else load_sd_components(str(TOY_FLOW))


def toy_components():
    from diffalign.models.loading import load_sd_components
    from diffalign.paths import TOY_SD

    parts = load_sd_components(str(TOY_SD))
    return parts.unet, parts.vae, parts.text_encoder, parts.tokenizer, parts.noise_scheduler


def one_batch(method: str, tokenizer, pairs: int, resolution: int | None) -> dict:
    """A real micro-batch of the method's toy data (``pairs`` examples), pixels resized to ``resolution``."""
    from diffalign.config import load_config
    from diffalign.data.factory import build_training_data
    from diffalign.objectives import get_objective

    cfg = load_config(REPO / "configs" / "toy" / f"{method}.yaml")
    objective = get_objective(method, **cfg.objective)
    dataset, sampler, collate = build_training_data(cfg.data, objective, tokenizer, 0, pairs)
    batch = collate([dataset[i] for i in list(sampler)[:pairs]])
    if resolution and resolution != batch["pixels"].shape[-1]:
        batch["pixels"] = torch.nn.functional.interpolate(batch["pixels"], size=resolution, mode="bilinear")
    return batch


# --------------------------------------------------------------------------------------------------- the steps
def frozen_copy(module, dtype: torch.dtype):
    """A separate frozen copy of a diffusers model, its weights made directly in ``dtype`` (a float32 copy cast
    afterwards would put a float32 copy's worth into the process's RSS high-water mark, which is not the step's)."""
    with torch.device("meta"):
        twin = type(module).from_config(module.config)
    twin.load_state_dict({k: v.to(dtype, copy=True) for k, v in module.state_dict().items()}, assign=True)
    return twin.requires_grad_(False).eval()


def make_step(mode: str, method: str, unet, vae, family, batch: dict, device: torch.device,
              mixed_precision: str = "no"):
    """A zero-argument callable doing one micro-step of ``mode`` (forward + backward); returns nothing.
    The frozen encoders are already in the precision's dtype (as the trainer's ``freeze_encoders`` leaves them)."""
    from accelerate import Accelerator

    from diffalign.core.step import TrainStep
    from diffalign.data.encoding_cache import EncodingCache
    from diffalign.config import load_config
    from diffalign.models.loading import cast_frozen_weights
    from diffalign.models.lora import attach_lora
    from diffalign.objectives import get_objective

    objective = get_objective(method, **load_config(REPO / "configs" / "toy" / f"{method}.yaml").objective)
    dtype = DTYPES[mixed_precision]
    reference_copy = frozen_copy(unet, dtype) if mode == "naive" and objective.needs_reference else None
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)  # reusable
    attach_lora(unet, **dict(LORA, target_modules=family.lora_targets))  # SD3/Flux: the context stream's too
    cast_frozen_weights(unet, dtype)  # as the trainer: the frozen base in the training precision, LoRA float32
    unet.train()
    rows = len(batch["row_image"])
    scaling = vae.config.scaling_factor

    if mode == "diffalign":
        accelerator = Accelerator(cpu=device.type == "cpu", mixed_precision=mixed_precision)
        unet = accelerator.prepare(unet)
        cache = EncodingCache(Path(tempfile.mkdtemp(prefix="bench-cache-")))
        step_fn = TrainStep(objective, vae, family, None, accelerator, cache)

        def step():
            loss, _ = step_fn(unet, batch)
            loss.backward()
            unet.zero_grad(set_to_none=True)
        return step

    if mode == "floor":
        with torch.no_grad():  # ready-made inputs of the step's shapes (what a perfect pipeline would hand over)
            mean = vae.encode(batch["pixels"][:1].to(device, dtype)).latent_dist.mean
            encoded = family.conditioner.encode(batch["input_ids"][:1])  # (states [1, L, D],) (+ pooled [1, P])
        x = torch.randn(rows, *mean.shape[1:], device=device)
        text = torch.randn(rows, *encoded[0].shape[1:], device=device, dtype=encoded[0].dtype)
        pooled = torch.randn(rows, *encoded[1].shape[1:], device=device) if len(encoded) > 1 else None
        extra = family.conditioner.unet_kwargs(pooled, torch.zeros(rows, 6)) if pooled is not None else {}
        t = torch.randint(0, 1000, (rows,), device=device)
        extra_forwards = (1 if objective.needs_reference else 0) + (
            objective.inversion_options["steps"] if objective.noising == "ddim_inversion" else 0)

        def step():
            if extra_forwards:
                with torch.inference_mode(), autocast:
                    unet.disable_adapters()
                    for _ in range(extra_forwards):
                        family.predict(unet, x, t, text, **extra)
                    unet.enable_adapters()
            with autocast:
                out = family.predict(unet, x, t, text, **extra)
            out.float().pow(2).mean().backward()
            unet.zero_grad(set_to_none=True)
        return step

    # naive: the reference scripts' shape of step (UNets)
    from diffalign.core.errors import target_for

    text_encoder, scheduler = family.conditioner.text_encoder, family.scheduler

    def step():
        with torch.no_grad():
            pixels = batch["pixels"].to(device, dtype)
            latents = vae.encode(pixels).latent_dist.sample().float() * scaling  # [N, C, h, w]
            states = text_encoder(batch["input_ids"].to(device))[0]  # [U, 77, D], in the encoder's dtype
        x0 = latents[batch["row_image"].to(device)]
        text = states[batch["row_text"].to(device)]
        groups = batch["row_group"].to(device)
        g = int(groups.max()) + 1
        noise = torch.randn(g, *x0.shape[1:], device=device)[groups]
        t = torch.randint(0, 1000, (g,), device=device)[groups]
        x_t = scheduler.add_noise(x0, noise, t)
        target = target_for(scheduler, x0, noise, t)
        if objective.noising == "ddim_inversion":  # the inversion forwards, as diffalign's step does them
            from diffalign.core.inversion import ddim_inversion_latents

            gens = [torch.Generator().manual_seed(i) for i in range(rows)]
            with torch.no_grad(), autocast:
                x_t, noise = ddim_inversion_latents(unet, scheduler, x0, t, text, gens,
                                                    **objective.inversion_options)
            target = target_for(scheduler, x0, noise, t)
        with autocast:
            out = unet(x_t, t, text).sample
        policy = (out.float() - target).pow(2).mean(dim=(1, 2, 3))
        ref = None
        if reference_copy is not None:
            with torch.no_grad(), autocast:
                out = reference_copy(x_t, t, text).sample
            ref = (out.float() - target).pow(2).mean(dim=(1, 2, 3))
        loss, _ = objective.row_loss(policy, ref, batch)
        loss.backward()
        unet.zero_grad(set_to_none=True)
    return step


def worker(args) -> dict:
    """One (UNet, method, mode) measurement in this process."""
    torch.set_num_threads(args.threads or torch.get_num_threads())
    device = torch.device(args.device)
    from diffalign.families import family_for
    from diffalign.families.unet import UnetFamily
    from diffalign.models.conditioning import SDConditioner
    from diffalign.models.loading import freeze_encoders

    resolution = None if args.unet in ("toy", "toy-flow") else args.latent * 8
    if args.unet in FLOW_MODELS:
        parts = flow_components(args.unet, args.device)
        # as the trainer: the frozen encoders in the training precision's dtype (a lazy T5 when it loads)
        freeze_encoders(parts, device, DTYPES[args.mixed_precision])
        unet, vae, tokenizer, family = parts.unet, parts.vae, parts.tokenizers, family_for(parts)
    else:
        unet, vae, text_encoder, tokenizer, scheduler = toy_components() if args.unet == "toy" else \
            sd15_components(device=args.device)
        for frozen in (vae, text_encoder):  # as the trainer's freeze_encoders: the training precision's dtype
            frozen.requires_grad_(False).eval().to(device, dtype=DTYPES[args.mixed_precision])
        family = UnetFamily("sd", scheduler, SDConditioner(text_encoder), vae.config, unet.config)
    unet.to(device)
    batch = one_batch(args.method, tokenizer, args.pairs, resolution)
    step = make_step(args.mode, args.method, unet, vae, family, batch, device, args.mixed_precision)
    for _ in range(args.warmup):  # the first diffalign step also fills the encoding cache
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if device.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"unet": args.unet, "method": args.method, "mode": args.mode, "examples": args.pairs,
            "mixed_precision": args.mixed_precision,
            "rows": len(batch["row_image"]), "step_seconds": times, "median_seconds": statistics.median(times),
            "examples_per_second": args.pairs / statistics.median(times), "peak_memory_mb": peak / 2**20}


# ----------------------------------------------------------------------------------------------- orchestration
def run_all(args) -> list[dict]:
    """Every (UNet, method, mode) in its own process; ``--rounds`` passes, keeping each one's fastest median
    (a shared 2-core machine is noisy: the best of several runs is the least disturbed one)."""
    best: dict[tuple, dict] = {}
    for round_ in range(args.rounds):
        for unet in args.unets.split(","):
            pairs = args.pairs or (16 if unet in ("toy", "toy-flow") else 2)
            for method in args.methods.split(","):
                for mode in MODES if unet not in FLOW_MODELS else ("floor", "diffalign"):
                    command = [sys.executable, __file__, "--worker", "--unet", unet, "--method", method, "--mode",
                               mode, "--pairs", str(pairs), "--steps", str(args.steps), "--warmup", str(args.warmup),
                               "--device", args.device, "--latent", str(args.latent), "--threads", str(args.threads),
                               "--mixed-precision", args.mixed_precision]
                    done = subprocess.run(command, capture_output=True, text=True,
                                          env=dict(os.environ, HF_HUB_OFFLINE="1"))
                    if done.returncode:
                        raise SystemExit(f"{unet}/{method}/{mode} failed:\n{done.stderr[-3000:]}")
                    result = json.loads(done.stdout.strip().splitlines()[-1])
                    key = (unet, method, mode)
                    if key not in best or result["median_seconds"] < best[key]["median_seconds"]:
                        best[key] = result
                    print(f"round {round_ + 1}: {unet:5s} {method:5s} {mode:9s} {result['examples_per_second']:8.2f} "
                          f"ex/s  {result['peak_memory_mb']:8.0f} MB", file=sys.stderr)
    return list(best.values())


def table(results: list[dict]) -> str:
    by = {(r["unet"], r["method"], r["mode"]): r for r in results}
    lines = ["| UNet | method | diffalign ex/s | floor ex/s | diffalign / floor | naive ex/s | diffalign / naive "
             "| peak MB diffalign | peak MB naive |", "|---|---|---|---|---|---|---|---|---|"]
    for unet, method in dict.fromkeys((r["unet"], r["method"]) for r in results):
        d, f, n = (by.get((unet, method, m)) for m in MODES[1:2] + MODES[:1] + MODES[2:])
        naive = (f"{n['examples_per_second']:.2f} | {d['examples_per_second'] / n['examples_per_second']:.2f}× | "
                 f"{d['peak_memory_mb']:.0f} | {n['peak_memory_mb']:.0f}") if n else \
            f"— | — | {d['peak_memory_mb']:.0f} | —"  # flow models: no naive step
        lines.append(f"| {unet} | {method} | {d['examples_per_second']:.2f} | {f['examples_per_second']:.2f} | "
                     f"{d['examples_per_second'] / f['examples_per_second']:.2f} | {naive} |")
    precisions = sorted({r.get("mixed_precision", "no") for r in results})
    lines.append(f"\nmixed precision: {', '.join(precisions)}")
    for unet in dict.fromkeys(r["unet"] for r in results):
        if (unet, "dpo", "diffalign") in by and (unet, "mapo", "diffalign") in by:
            ratio = by[(unet, "mapo", "diffalign")]["examples_per_second"] / \
                by[(unet, "dpo", "diffalign")]["examples_per_second"]
            lines.append(f"\n{unet}: mapo / dpo pairs per second = {ratio:.2f}×")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--unets", default="toy,sd15", help="toy, sd15, toy-flow, sd35m (comma-separated)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--pairs", type=int, default=0, help="examples per micro-batch (default: toy 16, sd15 2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2, help="passes over everything; each keeps its best")
    parser.add_argument("--latent", type=int, default=16, help="sd15 latent side (images are 8x that)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--mixed-precision", default="no", choices=sorted(DTYPES),
                        help="as train.mixed_precision: encoders in this dtype, the UNet under autocast")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--out", default=None, help="JSON file (default: benchmarks/results/throughput-<device>.json)")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--unet", help=argparse.SUPPRESS)
    parser.add_argument("--method", help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.device == "cpu" and args.mixed_precision == "fp16":
        parser.error("--mixed-precision fp16 needs a GPU (no fp16 autocast on CPU in accelerate); use bf16")
    if args.worker:
        print(json.dumps(worker(args)))
        return
    results = run_all(args)
    text = table(results)
    print(text)
    machine = {"device": args.device, "cpu_count": os.cpu_count(), "platform": platform.platform(),
               "torch": torch.__version__, "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None}
    suffix = "" if args.mixed_precision == "no" else f"-{args.mixed_precision}"
    out = Path(args.out or REPO / "benchmarks" / "results" / f"throughput-{args.device}{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine, "args": vars(args), "results": results}, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(text + "\n")
    print(f"written: {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
