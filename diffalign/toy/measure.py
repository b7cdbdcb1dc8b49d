"""Measuring a toy model: fidelity per stated attribute, and how it spreads the attributes a caption leaves open.

`diffalign toy measure` writes the base-model table of ``assets/toy-sd/README.md``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

import dataclasses

from ..evaluation.sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS, cases, generate
from .captions import parse
from .judge import ATTRIBUTES, attribute_checks, read_image
from .prompts import prompt_set
from .scoring import attribute_rates, judge
from .world import SIZE_THRESHOLD


def unstated_spread(images: np.ndarray) -> dict[str, float]:
    """How the model draws what captions leave open, from images of colour+shape-only prompts.

    large_share: fraction drawn large (ground truth: ~0.52 under the uniform size prior);
    x_std, y_std: spread of shape centres (a collapse to one place gives ~0; uniform placement ~0.15-0.2);
    background_entropy: entropy (bits) of the background colour histogram (uniform over 6 colours: 2.58).
    """
    readings = [read_image(im) for im in images]
    mains = [r.main for r in readings if r.main is not None]
    bgs = [r.background for r in readings]
    _, counts = np.unique(bgs, return_counts=True)
    p = counts / counts.sum()
    return {
        "large_share": float(np.mean([m.r > SIZE_THRESHOLD for m in mains])),
        "x_std": float(np.std([m.x for m in mains])),
        "y_std": float(np.std([m.y for m in mains])),
        "background_entropy_bits": float(-(p * np.log2(p)).sum()),
        "no_shape_rate": 1 - len(mains) / len(readings),
    }


def chance_rates(images: np.ndarray, prompts: list[str], seed: int = 0) -> dict[str, float]:
    """What "chance" means for size, position and background: how often an image satisfies the value stated in
    *another* case's caption (captions permuted across cases). Colour and shape chance are 1/6 and 1/3."""
    rng = np.random.default_rng(seed)
    specs = [parse(p) for p in prompts]
    readings = [read_image(im) for im in images]
    perm = rng.permutation(len(specs))
    outcomes: dict[str, list[bool]] = {"size": [], "position": [], "background": []}
    for i, j in enumerate(perm):
        own, other = specs[i], specs[j]
        swapped = dataclasses.replace(
            own, background=other.background if own.background else None,
            objects=(dataclasses.replace(own.objects[0], size=other.objects[0].size,
                                         position=other.objects[0].position),))
        checks = attribute_checks(swapped, readings[i])
        for kind in outcomes:
            outcomes[kind] += checks[kind]
    return {k: float(np.mean(v)) if v else float("nan") for k, v in outcomes.items()}


def measure(pipe, seeds_per_prompt: int = 4, num_inference_steps: int = DEFAULT_STEPS,
            guidance_scale: float = DEFAULT_GUIDANCE) -> dict:
    """Fidelity on held-out ``attributes`` prompts and spread on held-out ``persona`` prompts (no background
    stated), each prompt with seeds 0..seeds_per_prompt-1."""
    prompts, seeds = cases(prompt_set("attributes"), seeds_per_prompt)
    images = generate(pipe, prompts, seeds, num_inference_steps, guidance_scale)
    judgements = [judge(im, c) for im, c in zip(images, prompts)]
    open_prompts = [p for p in prompt_set("persona") if "background" not in p]
    open_cases = cases(open_prompts, max(1, 200 // len(open_prompts)))
    open_images = generate(pipe, *open_cases, num_inference_steps, guidance_scale)
    chance = {"colour": 1 / 6, "shape": 1 / 3, **chance_rates(images, prompts)}
    return {
        "cases": len(prompts),
        "fidelity": float(np.mean([j.fidelity for j in judgements])),
        "attributes": attribute_rates(judgements),
        "chance": chance,
        "unstated_cases": len(open_cases[0]),
        "unstated": unstated_spread(open_images),
        "settings": {"num_inference_steps": num_inference_steps, "guidance_scale": guidance_scale,
                     "seeds_per_prompt": seeds_per_prompt},
    }


def to_markdown(result: dict) -> str:
    a, u = result["attributes"], result["unstated"]
    chance = result["chance"]
    lines = [
        f"Held-out `attributes` prompts, {result['cases']} prompt×seed cases "
        f"({result['settings']['num_inference_steps']} sampling steps, CFG {result['settings']['guidance_scale']}):",
        "",
        "| stated attribute | followed | chance (captions permuted across cases) |",
        "|---|---|---|",
    ]
    for kind in ATTRIBUTES:
        lines.append(f"| {kind} | {a[kind]:.1%} | {chance[kind]:.1%} |")
    lines += [
        f"| all (mean fidelity) | {result['fidelity']:.1%} | |",
        "",
        f"Unstated attributes on held-out colour+shape prompts ({result['unstated_cases']} cases): "
        f"drawn large {u['large_share']:.0%} (prior ≈ 52%), centre spread x/y std {u['x_std']:.2f}/{u['y_std']:.2f}, "
        f"background entropy {u['background_entropy_bits']:.2f} bits (uniform 2.58), "
        f"no shape found {u['no_shape_rate']:.1%}.",
    ]
    return "\n".join(lines)


def write_report(result: dict, out_dir: str | Path) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "measure.json").write_text(json.dumps(result, indent=2))
    path = out_dir / "measure.md"
    path.write_text(to_markdown(result) + "\n")
    return path
