"""How a base model's caption fidelity moves with the classifier-free guidance scale (toy world, base only).

    python experiments/guidance_sweep.py [--model assets/toy-sd] [--prompts toy:attributes] [--seeds 4]
                                         [--guidance 1,3,5,9,15] [--reference 5] [--guidance-rescale 0]
                                         [--steps 25] [--limit N] [--device cpu] [--out outputs/guidance-sweep]

Raising the guidance scale is the cheapest way to make a model follow its caption more closely. Methods that
work by sharpening the caption's hold on the denoiser (TDPO/TKTO's caption pairs, SoftREPA's contrastive
tokens) act much like it, so where fidelity is flat or falls with the scale they have little to gain on that
base. For each scale: mean fidelity with its 95% CI, each stated attribute's rate, and the paired fidelity win
rate (ties ½) against the reference scale, on the same prompts and seeds. JSON and a markdown table go to --out.
CPU float32 by default, as the trainer's toy comparison samples, so the figures do not depend on the machine.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from results_files import write_results  # noqa: E402  (beside this script)

from diffalign.evaluation.api import evaluate  # noqa: E402
from diffalign.evaluation.generation import SamplingSettings  # noqa: E402
from diffalign.paths import TOY_SD, as_recorded  # noqa: E402
from diffalign.stats import win_rate  # noqa: E402
from diffalign.toy import plugin  # noqa: E402, F401  (registers the scorer "toy" and the prompt source "toy:<set>")
from diffalign.toy.judge import ATTRIBUTES  # noqa: E402


def sweep(model: str, prompts: str, seeds: int, scales: list[float], reference: float, rescale: float,
          out: Path, steps: int = 25, limit: int | None = None, device: str = "cpu") -> dict:
    if reference not in scales:
        raise ValueError(f"--reference {reference} must be one of the swept scales {scales}")
    if len(set(scales)) != len(scales):
        raise ValueError(f"each guidance scale once, please; got {scales}")
    reports = {scale: evaluate(model, prompts=prompts, scorers=["toy"], seeds_per_prompt=seeds, limit=limit,
                               output_dir=out / f"cfg{scale:g}", progress=False, device=device,
                               settings=SamplingSettings(num_inference_steps=steps, guidance_scale=scale,
                                                         guidance_rescale=rescale))
               for scale in scales}
    reference_fidelity = reports[reference].scores["base"]["toy/fidelity"]  # [N], the same cases for every scale
    rows = []
    for scale, report in reports.items():
        summary = report.summary()["base"]  # means over the cases where a score is defined (the attribute stated)
        rows.append({
            "guidance": scale,
            "fidelity": asdict(summary["toy/fidelity"]),
            # None: no prompt states the attribute (size in toy:long)
            "attributes": {a: summary[f"toy/{a}"].mean if f"toy/{a}" in summary else None for a in ATTRIBUTES},
            "win_rate_vs_reference": asdict(win_rate(report.scores["base"]["toy/fidelity"], reference_fidelity)),
        })
    return {"model": as_recorded(model), "prompts": prompts, "cases": len(reference_fidelity), "reference": reference,
            "guidance_rescale": rescale, "steps": steps, "device": device, "rows": rows}


def to_markdown(result: dict) -> str:
    lines = [f"{result['cases']} cases of `{result['prompts']}` on `{result['model']}`, guidance_rescale "
             f"{result['guidance_rescale']:g}; win rate: fidelity against CFG {result['reference']:g} on the same "
             "seeds (ties ½).", "",
             "| CFG | fidelity [95% CI] | " + " | ".join(ATTRIBUTES) + " | win rate vs reference (w/t/l) |",
             "|---" * (3 + len(ATTRIBUTES)) + "|"]
    for r in result["rows"]:
        f, w = r["fidelity"], r["win_rate_vs_reference"]
        lines.append(f"| {r['guidance']:g} | {f['mean']:.1%} [{f['low']:.1%}, {f['high']:.1%}] | "
                     + " | ".join("n/a" if r["attributes"][a] is None else f"{r['attributes'][a]:.1%}"
                                  for a in ATTRIBUTES)
                     + f" | {w['rate']:.1%} [{w['low']:.1%}, {w['high']:.1%}] ({w['wins']}/{w['ties']}/{w['losses']}) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(TOY_SD))
    parser.add_argument("--prompts", default="toy:attributes", help="toy:attributes or toy:long")
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt")
    parser.add_argument("--guidance", default="1,3,5,9,15", help="comma-separated guidance scales")
    parser.add_argument("--reference", type=float, default=5.0, help="the scale the others are compared with")
    parser.add_argument("--guidance-rescale", type=float, default=0.0)
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default="outputs/guidance-sweep")
    args = parser.parse_args()
    out = Path(args.out)
    result = sweep(args.model, args.prompts, args.seeds, [float(g) for g in args.guidance.split(",")],
                   args.reference, args.guidance_rescale, out, args.steps, args.limit, args.device)
    write_results(out, "guidance_sweep", result, to_markdown(result))


if __name__ == "__main__":
    main()
