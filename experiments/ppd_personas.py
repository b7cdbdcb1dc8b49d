"""PPD's toy effect: a personalised model per persona vs the base and vs one DPO model trained on the pooled data.

    accelerate launch diffalign/train.py --method ppd --output_dir outputs/toy-ppd
    accelerate launch diffalign/train.py --method dpo --data.source assets/toy-data/pairs_multiuser.parquet \
        --output_dir outputs/toy-dpo-pooled --eval.enabled false
    python experiments/ppd_personas.py --ppd outputs/toy-ppd --pooled outputs/toy-dpo-pooled

For each persona (the four that label ``pairs_multiuser.parquet`` and the unseen ``cosy``), the personalised model
is conditioned on that persona's embedding from 4 examples and samples the held-out persona prompts with the same
seeds as the base and the pooled model; the toy judge scores the persona. Then the bold/subtle embeddings are
mixed at 0, 0.25, ..., 1. Prints a table and writes JSON (``experiments/results/ppd-personas-toy.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffalign.paths import REPO_ROOT, TOY_SD  # noqa: E402
from diffalign.toy.personalization import measure_personalization  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ppd", required=True, help="output folder of a --method ppd run")
    parser.add_argument("--pooled", help="output folder of a dpo run on the pooled multi-user pairs")
    parser.add_argument("--base", default=str(TOY_SD))
    parser.add_argument("--seeds", type=int, default=10, help="seeds per held-out persona prompt")
    parser.add_argument("--examples", type=int, default=4, help="examples per user embedding")
    parser.add_argument("--user-scale", type=float, help="the user term's scale at sampling (default: as trained)")
    parser.add_argument("--split", default="heldout", choices=["heldout", "train"],
                        help="persona prompts: held-out (the measurement) or training-side (to choose settings)")
    parser.add_argument("--personas", help="comma-separated subset (default: all five)")
    parser.add_argument("--no-mix", action="store_true", help="skip the bold/subtle interpolation")
    parser.add_argument("--out", default=str(REPO_ROOT / "experiments" / "results" / "ppd-personas-toy.json"))
    args = parser.parse_args()
    options = {}
    if args.personas:
        from diffalign.toy.personalization import TRAINED_PERSONAS, UNSEEN_PERSONA

        options["personas"] = tuple(p.strip() for p in args.personas.split(","))
        unknown = sorted(set(options["personas"]) - {*TRAINED_PERSONAS, UNSEEN_PERSONA})
        if unknown:
            parser.error(f"--personas: unknown {unknown}; expected some of {[*TRAINED_PERSONAS, UNSEEN_PERSONA]}")
    result = measure_personalization(args.base, args.ppd, args.pooled, k=args.examples, seeds_per_prompt=args.seeds,
                                     out_dir=Path(args.out).with_suffix(""), user_scale=args.user_scale,
                                     split=args.split, mix=None if args.no_mix else ("bold", "subtle"), **options)
    print(result["text"])
    result["command"] = "python " + " ".join(sys.argv)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
