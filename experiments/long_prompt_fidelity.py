"""Segment encoding (LongAlign) vs CLIP's 77-token truncation on the toy world's long captions.

    python experiments/long_prompt_fidelity.py [--model assets/toy-sd] [--lora DIR] [--seeds 4] [--first-seed 0]
        [--out outputs/long-prompts]

Samples the held-out ``toy:long`` captions (5-6 objects, most over 77 tokens) with both text encodings, the same
seeds, and scores fidelity with the toy judge. Reports each encoding's mean fidelity with its 95% CI and the
paired win rate of segments over truncation (ties ½), overall and on the captions over 77 tokens, and writes
JSON beside the two evaluation reports. ``--lora DIR``: also a LoRA adapted to segment encoding (``--method sft``
with ``text_encoding: segments``, LongAlign's first stage), sampled both ways; its segment-encoded images are
compared with the base model's truncated ones (what the adaptation and the encoding gain together) and with its
own truncated ones (what the encoding gains on the adapted model).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffalign.evaluation.api import evaluate  # noqa: E402
from diffalign.evaluation.generation import SamplingSettings  # noqa: E402
from diffalign.paths import TOY_SD  # noqa: E402
from diffalign.stats import mean_ci, win_rate  # noqa: E402
from diffalign.toy import plugin  # noqa: E402, F401  (registers the scorer "toy" and the prompt source "toy:<set>")

import numpy as np  # noqa: E402
from dataclasses import asdict  # noqa: E402
from transformers import CLIPTokenizer  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(TOY_SD))
    parser.add_argument("--seeds", type=int, default=4, help="seeds per prompt")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--lora", help="a LoRA folder adapted to segment encoding (--method sft)")
    parser.add_argument("--max-text-length", type=int, default=240)
    parser.add_argument("--out", default="outputs/long-prompts")
    args = parser.parse_args()
    reports = {}
    for encoding in ("clip", "segments"):
        reports[encoding] = evaluate(args.model, adapters=[f"adapted={args.lora}"] if args.lora else (),
                                     prompts="toy:long", scorers=["toy"], seeds_per_prompt=args.seeds,
                                     first_seed=args.first_seed,
                                     output_dir=Path(args.out) / encoding,
                                     settings=SamplingSettings(text_encoding=encoding,
                                                               max_text_length=args.max_text_length))
    clip, seg = (reports[e].scores["base"]["toy/fidelity"] for e in ("clip", "segments"))  # [N] each, same cases
    prompts = reports["clip"].prompts
    tokenizer = CLIPTokenizer.from_pretrained(args.model, subfolder="tokenizer")
    over = np.array([len(tokenizer(p).input_ids) > tokenizer.model_max_length for p in prompts])
    result = {"cases": len(prompts), "cases_over_77_tokens": int(over.sum()),
              "fidelity_clip": asdict(mean_ci(clip)), "fidelity_segments": asdict(mean_ci(seg)),
              "win_rate_segments_over_clip": asdict(win_rate(seg, clip)),
              "win_rate_segments_over_clip_over_77": asdict(win_rate(seg[over], clip[over]))}
    if args.lora:
        a_clip, a_seg = (reports[e].scores["adapted"]["toy/fidelity"] for e in ("clip", "segments"))
        result.update({"lora": args.lora, "adapted_fidelity_clip": asdict(mean_ci(a_clip)),
                       "adapted_fidelity_segments": asdict(mean_ci(a_seg)),
                       "win_rate_adapted_segments_over_base_clip": asdict(win_rate(a_seg, clip)),
                       "win_rate_adapted_segments_over_base_clip_over_77": asdict(win_rate(a_seg[over], clip[over])),
                       "win_rate_adapted_segments_over_adapted_clip": asdict(win_rate(a_seg, a_clip))})
    Path(args.out, "comparison.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
