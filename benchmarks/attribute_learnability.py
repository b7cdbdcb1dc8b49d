"""Can direct supervision teach a toy base a stated attribute it ignores? (toy world, full fine-tune)

    python benchmarks/attribute_learnability.py [--model assets/toy-sd] [--always position] [--steps 600]
                                                [--lr 2e-4] [--batch 64] [--timestep-range 0 1000]
                                                [--weighting min-snr] [--seeds 4] [--measure-steps 25]
                                                [--out outputs/attribute-learnability]

The strongest signal a caption attribute can get: ground-truth renders whose captions always state it, and the
plain denoising loss on the whole UNet and text encoder (no LoRA, no preference, no reference). If this leaves
the attribute at chance, a caption-pair method (TDPO/TKTO, SoftREPA) on a LoRA has nothing to grow it from.
Before and after, the base is measured as `diffalign toy measure` does (held-out `attributes` prompts; CFG 5).

``--weighting``: ``min-snr`` is the toy pretraining's loss (Min-SNR-5, which weights the x0 error by
min(SNR_t, 5): the high-noise steps, where the layout is decided, count little); ``x0`` weights every sample by
the factor that turns its error into the x0 error (1/SNR_t for epsilon prediction), normalised to mean 1 over
``--timestep-range``, so the high-noise steps count fully. JSON and a markdown table go to --out.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusers import StableDiffusionPipeline  # noqa: E402

from diffalign.core.errors import noisy_latents_and_target, per_sample_errors  # noqa: E402
from diffalign.paths import REPO_ROOT, TOY_SD  # noqa: E402
from diffalign.toy.captioned import training_side_scenes  # noqa: E402
from diffalign.toy.judge import ATTRIBUTES  # noqa: E402
from diffalign.toy.measure import measure  # noqa: E402
from diffalign.toy.pretrain import min_snr_weights  # noqa: E402
from diffalign.toy.render import render  # noqa: E402
from diffalign.toy.samples import to_model_range  # noqa: E402
from diffalign.toy.world import realise  # noqa: E402

WEIGHTINGS = ("min-snr", "x0")


def x0_error_weights(scheduler, t: torch.Tensor, t_range: tuple[int, int]) -> torch.Tensor:
    """[B] factors that turn each prediction error into the x0 error, divided by their mean over t_range.

    x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar)  ->  |x0 err|^2 = (1 - abar) / abar |eps err|^2;
    x0_hat = sqrt(abar) x_t - sqrt(1 - abar) v_hat        ->  |x0 err|^2 = (1 - abar) |v err|^2.
    """
    abar = scheduler.alphas_cumprod.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        factor = (1 - abar) / abar
    elif kind == "v_prediction":
        factor = 1 - abar
    else:
        factor = torch.ones_like(abar)
    return factor[t] / factor[t_range[0]:t_range[1]].mean()


def fine_tune(pipe, always: str, steps: int, lr: float, batch: int, t_range: tuple[int, int], weighting: str,
              seed: int = 0) -> list[float]:
    """Full fine-tune of pipe's UNet and text encoder in place; returns the loss of every step."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"--weighting must be one of {WEIGHTINGS}; got {weighting!r}")
    lo, hi = t_range
    if not 0 <= lo < hi <= pipe.scheduler.config.num_train_timesteps:
        raise ValueError(f"--timestep-range must satisfy 0 <= lo < hi <= "
                         f"{pipe.scheduler.config.num_train_timesteps}; got {t_range}")
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    scenes = training_side_scenes(rng, stated={always: 1.0})
    unet, text_encoder, vae, scheduler = pipe.unet, pipe.text_encoder, pipe.vae, pipe.scheduler
    params = list(unet.parameters()) + list(text_encoder.parameters())
    for p in params:
        p.requires_grad_(True)
    unet.train(), text_encoder.train()
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        drawn = list(itertools.islice(scenes, batch))
        images = np.stack([render(realise(spec, rng)) for spec, _ in drawn])  # [B, 32, 32, 3] uint8
        ids = pipe.tokenizer([caption for _, caption in drawn], padding="max_length", truncation=True,
                             max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
        with torch.no_grad():
            x0 = vae.encode(to_model_range(images)).latent_dist.mean * vae.config.scaling_factor  # [B, 4, 16, 16]
        t = torch.randint(lo, hi, (batch,))
        x_t, target = noisy_latents_and_target(scheduler, x0, torch.randn_like(x0), t)
        errors = per_sample_errors(unet, x_t, t, text_encoder(ids)[0], target)  # [B]
        weights = min_snr_weights(scheduler, t, 5.0) if weighting == "min-snr" else x0_error_weights(
            scheduler, t, t_range)
        loss = (errors * weights).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    unet.eval(), text_encoder.eval()
    for p in params:
        p.requires_grad_(False)
    return losses


def run(model: str, always: str, steps: int, lr: float, batch: int, t_range: tuple[int, int], weighting: str,
        seeds: int, measure_steps: int = 25) -> dict:
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    before = measure(pipe, seeds, num_inference_steps=measure_steps)
    start = time.time()
    losses = fine_tune(pipe, always, steps, lr, batch, t_range, weighting)
    train_seconds = time.time() - start
    after = measure(pipe, seeds, num_inference_steps=measure_steps)
    shown = Path(model).resolve()
    shown = str(shown.relative_to(REPO_ROOT)) if shown.is_relative_to(REPO_ROOT) else model
    return {"model": shown, "always_stated": always, "steps": steps, "lr": lr, "batch": batch,
            "timestep_range": list(t_range), "weighting": weighting, "train_seconds": round(train_seconds, 1),
            "loss_first_last_20": [float(np.mean(losses[:20])), float(np.mean(losses[-20:]))],
            "before": before, "after": after}


def to_markdown(result: dict) -> str:
    b, a = result["before"], result["after"]
    lines = [f"`{result['model']}`, full fine-tune of UNet + text encoder on renders whose captions always state "
             f"{result['always_stated']}: {result['steps']} steps × {result['batch']}, lr {result['lr']:g}, "
             f"t in {result['timestep_range']}, {result['weighting']} weighting, {result['train_seconds']:.0f} s. "
             f"Measured on {b['cases']} held-out `attributes` cases.", "",
             "| | fidelity | " + " | ".join(ATTRIBUTES) + " |", "|---" * (2 + len(ATTRIBUTES)) + "|"]
    for name, m in (("before", b), ("after", a), ("chance", None)):
        if m is None:
            cells = ["", *(f"{b['chance'][k]:.1%}" for k in ATTRIBUTES)]
        else:
            cells = [f"{m['fidelity']:.1%}", *(f"{m['attributes'][k]:.1%}" for k in ATTRIBUTES)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(TOY_SD))
    parser.add_argument("--always", default="position", choices=("size", "position", "background"),
                        help="the attribute every training caption states")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--timestep-range", type=int, nargs=2, default=(0, 1000), metavar=("LO", "HI"))
    parser.add_argument("--weighting", default="min-snr", choices=WEIGHTINGS)
    parser.add_argument("--seeds", type=int, default=4, help="seeds per held-out prompt in the measurement")
    parser.add_argument("--measure-steps", type=int, default=25, help="DDIM steps of the measurement")
    parser.add_argument("--out", default="outputs/attribute-learnability")
    args = parser.parse_args()
    result = run(args.model, args.always, args.steps, args.lr, args.batch, tuple(args.timestep_range),
                 args.weighting, args.seeds, args.measure_steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "attribute_learnability.json").write_text(json.dumps(result, indent=2))
    (out / "attribute_learnability.md").write_text(to_markdown(result) + "\n")
    print(to_markdown(result))


if __name__ == "__main__":
    main()
