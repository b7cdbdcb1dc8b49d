"""The toy before/after comparison that ends every embedded-default training run.

Base and aligned models sample the same held-out persona prompts with the same seeds; the judge scores both;
the report gives the persona win rate (ties ½) with its 95% CI and fidelity before/after, plus a grid in which
each prompt has a base row and an aligned row.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from diffusers import StableDiffusionPipeline, UNet2DConditionModel

from ..stats import win_rate
from .grid import save_grid
from .prompts import prompt_set
from .sampling import cases, generate
from .scoring import judge


def load_aligned(pretrained: str, out_dir: Path) -> StableDiffusionPipeline:
    """The base pipeline with the run's result loaded the way a user would: LoRA file or saved UNet."""
    pipe = StableDiffusionPipeline.from_pretrained(pretrained)
    if (out_dir / "unet").is_dir():
        pipe.unet = UNet2DConditionModel.from_pretrained(out_dir / "unet")
    else:
        pipe.load_lora_weights(str(out_dir))
    return pipe


def compare_before_after(cfg, out_dir: str | Path) -> dict:
    out_dir = Path(out_dir)
    e = cfg.eval
    prompts, seeds = cases(prompt_set("persona"), e.seeds_per_prompt)
    kwargs = dict(num_inference_steps=e.num_inference_steps, guidance_scale=e.guidance_scale)
    base = generate(StableDiffusionPipeline.from_pretrained(cfg.model.pretrained), prompts, seeds, **kwargs)
    aligned = generate(load_aligned(cfg.model.pretrained, out_dir), prompts, seeds, **kwargs)
    jb = [judge(im, p) for im, p in zip(base, prompts)]
    ja = [judge(im, p) for im, p in zip(aligned, prompts)]
    wr = win_rate([j.personas[e.persona] for j in ja], [j.personas[e.persona] for j in jb])
    fid_before, fid_after = float(np.mean([j.fidelity for j in jb])), float(np.mean([j.fidelity for j in ja]))
    k = e.seeds_per_prompt
    shown = range(0, min(len(prompts) // k, 8))
    rows = [r for i in shown for r in (base[i * k:(i + 1) * k], aligned[i * k:(i + 1) * k])]
    titles = [t for i in shown for t in (f"base: {prompts[i * k]}", f"{cfg.method}: {prompts[i * k]}")]
    grid = save_grid(rows, titles, out_dir / "before_after.png")
    text = (f"Before/after on {len(prompts)} held-out prompt x seed cases (persona '{e.persona}'):\n"
            f"  win rate of {cfg.method} over base: {wr}\n"
            f"  fidelity: base {fid_before:.1%} -> {cfg.method} {fid_after:.1%}\n"
            f"  grid: {grid}")
    result = {"persona": e.persona, "cases": len(prompts), "win_rate": wr.rate, "win_rate_ci": [wr.low, wr.high],
              "wins_ties_losses": [wr.wins, wr.ties, wr.losses], "fidelity_before": fid_before,
              "fidelity_after": fid_after, "grid": str(grid), "text": text}
    (out_dir / "comparison.json").write_text(json.dumps(result, indent=2))
    return result
