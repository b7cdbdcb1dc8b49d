"""How far a reward can be pushed by pixel changes too small to change what the image shows (toy world).

    python experiments/reward_fragility.py [--reward-model assets/toy-clip-long] [--model assets/toy-sd]
                                           [--prompts toy:long] [--limit 48] [--seeds 2] [--first-seed 4]
                                           [--eps 2,8] [--attack-steps 10] [--out DIR]

Reward fine-tuning (LongAlign) climbs the reward's gradient through the sampler. Where a change of a few /255 per
pixel raises the reward as much as a whole training run does, the generator can learn that change instead of
following the caption better: reward hacking. For the base model's samples of the prompts this script reports
  - how the reward (Denscore on a CLIP-style scorer, ω 0.3) agrees with the toy judge's fidelity: Pearson r over
    all cases, and within prompt (each case minus its prompt's mean over the seeds);
  - for each L-inf radius eps (in /255): the reward before and after ``--attack-steps`` signed-gradient steps of
    eps/4 inside the radius (projected gradient ascent), and the judged fidelity of the moved images.
The shared direction v is that of all the cases' captions, fixed during the attack. JSON and a markdown table go
to --out. CPU float32.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results_files import write_results  # noqa: E402  (beside this script)

from diffalign.paths import TOY_CLIP_LONG, TOY_SD, as_recorded  # noqa: E402
from diffalign.scorers.denscore import Denscore, shared_direction  # noqa: E402


def signed_gradient_attack(reward, pixels: torch.Tensor, eps: float, steps: int) -> torch.Tensor:
    """pixels [N, 3, H, W] in [0, 1] -> the same moved within ``eps`` (L-inf) to raise ``reward(pixels) -> [N]``:
    ``steps`` signed-gradient steps of eps / 4, each projected back into the radius and [0, 1]."""
    x = pixels.clone()
    for _ in range(steps):
        x.requires_grad_(True)
        (grad,) = torch.autograd.grad(reward(x).sum(), x)
        x = torch.minimum(torch.maximum(x.detach() + eps / 4 * grad.sign(), pixels - eps), pixels + eps).clamp(0, 1)
    return x.detach()


def _fidelity(pixels: torch.Tensor, prompts: list[str]) -> np.ndarray:
    from diffalign.toy.scoring import judge

    images = (pixels.permute(0, 2, 3, 1).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    return np.array([judge(image, prompt).fidelity for image, prompt in zip(images, prompts)])


def _within_prompt(values: np.ndarray, prompts: list[str]) -> np.ndarray:
    """Each value minus the mean of its prompt's values."""
    keys = np.array([hash(p) for p in prompts])
    return values - np.array([values[keys == k].mean() for k in keys])


def measure(reward_model: str, model: str, prompts_name: str, limit: int, seeds: int, first_seed: int,
            radii: list[float], attack_steps: int) -> dict:
    from diffusers import StableDiffusionPipeline

    from diffalign.toy.prompts import prompt_set
    from diffalign.evaluation.sampling import cases, generate

    if not prompts_name.startswith("toy:"):
        raise ValueError(f"--prompts must be a toy prompt set (the judge reads toy captions); got {prompts_name!r}")
    prompts, case_seeds = cases(prompt_set(prompts_name.removeprefix("toy:"))[:limit], seeds, first_seed)
    pipe = StableDiffusionPipeline.from_pretrained(model, safety_checker=None)
    images = generate(pipe, prompts, case_seeds, progress=False)  # uint8 [N, H, W, 3], the comparison's sampler
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    scorer = Denscore("clipscore", omega=0.3, model=reward_model)
    v = shared_direction(scorer.caption_vectors(prompts))
    reward = lambda x: scorer.reward(x, prompts, v)  # noqa: E731  [N], with gradient to x
    with torch.no_grad():
        before = reward(pixels).numpy()
    fidelity = _fidelity(pixels, prompts)
    rows = []
    for eps in radii:
        moved = signed_gradient_attack(reward, pixels, eps / 255, attack_steps)
        with torch.no_grad():
            after = reward(moved).numpy()
        rows.append({"eps_255": eps, "reward_before": float(before.mean()), "reward_after": float(after.mean()),
                     "fidelity_before": float(fidelity.mean()), "fidelity_after": float(_fidelity(moved, prompts).mean())})
    return {"reward_model": as_recorded(reward_model), "model": as_recorded(model), "prompts": prompts_name,
            "cases": len(prompts), "attack_steps": attack_steps,
            "reward_fidelity_r": float(np.corrcoef(before, fidelity)[0, 1]),
            "reward_fidelity_r_within_prompt": float(np.corrcoef(_within_prompt(before, prompts),
                                                                 _within_prompt(fidelity, prompts))[0, 1]),
            "rows": rows}


def to_markdown(result: dict) -> str:
    lines = [f"Denscore (ω 0.3) on `{result['reward_model']}`, {result['cases']} base samples of `{result['prompts']}` "
             f"from `{result['model']}`. Agreement with judged fidelity: r {result['reward_fidelity_r']:.2f} "
             f"(within prompt {result['reward_fidelity_r_within_prompt']:.2f}).", "",
             f"| eps (/255) | reward before → after {result['attack_steps']} signed-gradient steps | "
             "judged fidelity before → after |", "|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['eps_255']:g} | {r['reward_before']:.3f} → {r['reward_after']:.3f} | "
                     f"{r['fidelity_before']:.1%} → {r['fidelity_after']:.1%} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reward-model", default=str(TOY_CLIP_LONG), help="a CLIP folder (Denscore's backbone)")
    parser.add_argument("--model", default=str(TOY_SD), help="the toy base whose samples are scored")
    parser.add_argument("--prompts", default="toy:long")
    parser.add_argument("--limit", type=int, default=48, help="the first N prompts of the held-out set")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (within-prompt r needs 2 or more)")
    parser.add_argument("--first-seed", type=int, default=4)
    parser.add_argument("--eps", default="2,8", help="comma-separated L-inf radii in /255")
    parser.add_argument("--attack-steps", type=int, default=10)
    parser.add_argument("--out", default="outputs/reward-fragility")
    args = parser.parse_args()
    result = measure(args.reward_model, args.model, args.prompts, args.limit, args.seeds, args.first_seed,
                     [float(e) for e in args.eps.split(",")], args.attack_steps)
    write_results(args.out, "reward_fragility", result, to_markdown(result))


if __name__ == "__main__":
    main()
