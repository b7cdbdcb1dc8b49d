"""Can direct supervision teach a toy base a stated attribute it ignores? (toy world, full fine-tune)

    python experiments/attribute_learnability.py [--model assets/toy-sd] [--always position] [--steps 600]
                                                 [--lr 2e-4] [--batch 64] [--timestep-range 0 1000]
                                                 [--weighting min-snr] [--seed 0] [--seeds 4]
                                                 [--measure-steps 25] [--frozen-text-encoder]
                                                 [--out outputs/attribute-learnability]

A strong, direct signal for one caption attribute: ground-truth renders whose captions always state it, and the
plain denoising loss on the whole UNet and text encoder (no LoRA, no preference, no reference), with the
pretraining's 10% empty captions so classifier-free guidance keeps its unconditional branch. Caption-pair methods
on a LoRA (TDPO/TKTO, SoftREPA) get a weaker signal for the same attribute, so where this leaves it at chance
they have little to build on (an inference, not a measurement of them). Before and after, the model is measured
as `diffalign toy measure` does (held-out `attributes` prompts, CFG 5); the chance row is the base's.

``--weighting``: ``min-snr`` is the toy pretraining's loss (Min-SNR-5: the x0 error weighted by min(SNR_t, 5),
so a noisy step with SNR 0.02 counts 0.02); ``x0`` weights each sample by the factor that turns its error into
the x0 error (1/SNR_t for epsilon prediction), normalised to mean 1 over ``--timestep-range`` [lo, hi). That
factor grows fast with t (on SD's schedule, over [600, 1000) about two thirds of the weight sits at t >= 900),
so the noisiest steps dominate. JSON and a markdown table go to --out.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results_files import write_results  # noqa: E402  (beside this script)

from diffusers import StableDiffusionPipeline  # noqa: E402

from diffalign.core.errors import noisy_latents_and_target, per_sample_errors  # noqa: E402
from diffalign.paths import TOY_SD, as_recorded  # noqa: E402
from diffalign.toy.captioned import STATED, training_side_scenes  # noqa: E402
from diffalign.toy.judge import ATTRIBUTES  # noqa: E402
from diffalign.toy.measure import measure  # noqa: E402
from diffalign.toy.pretrain import PretrainConfig, min_snr_weights  # noqa: E402
from diffalign.toy.render import render  # noqa: E402
from diffalign.toy.samples import to_model_range  # noqa: E402
from diffalign.toy.world import realise  # noqa: E402

WEIGHTINGS = ("min-snr", "x0")
PRETRAINING = PretrainConfig()  # the Min-SNR gamma and the empty-caption rate of the toy pretraining


def x0_error_weights(scheduler, t: torch.Tensor, t_range: tuple[int, int]) -> torch.Tensor:
    """[B] factors that turn each prediction error into the x0 error, divided by their mean over t_range.

    x0_hat = (x_t - sqrt(1 - abar) eps_hat) / sqrt(abar)  ->  |x0 err|^2 = (1 - abar) / abar |eps err|^2;
    x0_hat = sqrt(abar) x_t - sqrt(1 - abar) v_hat        ->  |x0 err|^2 = (1 - abar) |v err|^2.
    """
    abar = scheduler.alphas_cumprod.float()
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        if (abar[t_range[0]:t_range[1]] == 0).any():
            raise ValueError("x0 weighting of epsilon errors is infinite where abar_t = 0 (a zero-terminal-SNR "
                             "schedule's last step); keep --timestep-range below it or use v-prediction")
        factor = (1 - abar) / abar
    elif kind == "v_prediction":
        factor = 1 - abar
    elif kind == "sample":
        factor = torch.ones_like(abar)
    else:
        raise ValueError(f"unsupported prediction_type {kind!r}; expected epsilon, v_prediction or sample")
    return factor[t] / factor[t_range[0]:t_range[1]].mean()


def fine_tune(pipe, always: str, steps: int, lr: float, batch: int, t_range: tuple[int, int], weighting: str,
              seed: int = 0, train_text_encoder: bool = True) -> list[float]:
    """Full fine-tune of pipe's UNet (and text encoder unless ``train_text_encoder`` is False) in place; returns
    each step's weighted loss."""
    if weighting not in WEIGHTINGS:
        raise ValueError(f"--weighting must be one of {WEIGHTINGS}; got {weighting!r}")
    lo, hi = t_range
    if not 0 <= lo < hi <= pipe.scheduler.config.num_train_timesteps:
        raise ValueError(f"--timestep-range must satisfy 0 <= lo < hi <= "
                         f"{pipe.scheduler.config.num_train_timesteps}; got {t_range}")
    rng = np.random.default_rng(seed)  # scenes and empty captions
    generator = torch.Generator().manual_seed(seed)  # noise and timesteps
    scenes = training_side_scenes(rng, stated={always: 1.0})
    unet, text_encoder, vae, scheduler = pipe.unet, pipe.text_encoder, pipe.vae, pipe.scheduler
    params = list(unet.parameters()) + (list(text_encoder.parameters()) if train_text_encoder else [])
    for p in params:
        p.requires_grad_(True)
    unet.train(), text_encoder.train(train_text_encoder)
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    losses = []
    for _ in range(steps):
        drawn = list(itertools.islice(scenes, batch))
        images = np.stack([render(realise(spec, rng)) for spec, _ in drawn])  # [B, 32, 32, 3] uint8
        captions = ["" if rng.random() < PRETRAINING.empty_caption_rate else caption for _, caption in drawn]
        ids = pipe.tokenizer(captions, padding="max_length", truncation=True,
                             max_length=pipe.tokenizer.model_max_length, return_tensors="pt").input_ids
        with torch.no_grad():
            x0 = vae.encode(to_model_range(images)).latent_dist.mean * vae.config.scaling_factor  # [B, 4, 16, 16]
        t = torch.randint(lo, hi, (batch,), generator=generator)
        noise = torch.randn(x0.shape, generator=generator)
        x_t, target = noisy_latents_and_target(scheduler, x0, noise, t)
        with torch.set_grad_enabled(train_text_encoder):
            states = text_encoder(ids)[0]  # [B, 77, D]
        errors = per_sample_errors(unet, x_t, t, states, target)  # [B]
        if weighting == "min-snr":
            weights = min_snr_weights(scheduler, t, PRETRAINING.min_snr_gamma)
        else:
            weights = x0_error_weights(scheduler, t, t_range)
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
        seeds: int, measure_steps: int = 25, seed: int = 0, train_text_encoder: bool = True) -> dict:
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    pipe.set_progress_bar_config(disable=True)
    before = measure(pipe, seeds, num_inference_steps=measure_steps)
    start = time.time()
    losses = fine_tune(pipe, always, steps, lr, batch, t_range, weighting, seed, train_text_encoder)
    train_seconds = time.time() - start
    after = measure(pipe, seeds, num_inference_steps=measure_steps)
    return {"model": as_recorded(model), "always_stated": always, "other_attributes_stated": STATED,
            "empty_caption_rate": PRETRAINING.empty_caption_rate, "steps": steps, "lr": lr, "batch": batch,
            "timestep_range": list(t_range), "weighting": weighting, "seed": seed,
            "text_encoder": "trained" if train_text_encoder else "frozen",
            "train_seconds": round(train_seconds, 1),
            "weighted_loss_first_last_20": [float(np.mean(losses[:20])), float(np.mean(losses[-20:]))],
            "before": before, "after": after}


def to_markdown(result: dict) -> str:
    b, a = result["before"], result["after"]
    lo, hi = result["timestep_range"]
    trained = {"trained": "UNet + text encoder", "frozen": "UNet (text encoder frozen)"}[result["text_encoder"]]
    lines = [f"`{result['model']}`, full fine-tune of {trained} on renders whose captions always state "
             f"{result['always_stated']} ({result['empty_caption_rate']:.0%} empty): {result['steps']} steps × "
             f"{result['batch']}, lr {result['lr']:g}, t in [{lo}, {hi}), {result['weighting']} weighting, seed "
             f"{result['seed']}, {result['train_seconds']:.0f} s. "
             f"Measured on {b['cases']} held-out `attributes` cases.", "",
             "| | fidelity | " + " | ".join(ATTRIBUTES) + " |", "|---" * (2 + len(ATTRIBUTES)) + "|"]
    for name, m in (("before", b), ("after", a), ("chance (base)", None)):
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
    parser.add_argument("--seed", type=int, default=0, help="the training data, noise and timesteps")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per held-out prompt in the measurement")
    parser.add_argument("--measure-steps", type=int, default=25, help="DDIM steps of the measurement")
    parser.add_argument("--frozen-text-encoder", action="store_true", help="train the UNet alone")
    parser.add_argument("--out", default="outputs/attribute-learnability")
    args = parser.parse_args()
    result = run(args.model, args.always, args.steps, args.lr, args.batch, tuple(args.timestep_range),
                 args.weighting, args.seeds, args.measure_steps, args.seed, not args.frozen_text_encoder)
    write_results(args.out, "attribute_learnability", result, to_markdown(result))


if __name__ == "__main__":
    main()
