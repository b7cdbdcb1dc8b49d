"""``diffalign label --config configs/label/toy_bold.yaml [--section.key value ...]`` and
``diffalign iterate --config configs/iterate/toy_bold.yaml [--section.key value ...]``."""

from __future__ import annotations

import argparse
import json
import sys

from ..config import ConfigError

EXAMPLES = """examples:
  diffalign label --config configs/label/toy_bold.yaml
  diffalign label --config configs/label/sd15_pickscore.yaml --prompts my_prompts.txt --out data/my_pairs
  diffalign label --config configs/label/toy_bold.yaml --adapter outputs/toy-dpo --out data/round2

Run again with the same settings to continue an interrupted job. Train on the result with
  --data.source OUT/pairs (dpo, mapo, inpo; kto reads pairs too) or --data.source OUT/feedback (kto)."""


ITERATE_EXAMPLES = """examples:
  diffalign iterate --config configs/iterate/toy_bold.yaml
  diffalign iterate --config configs/iterate/toy_bold.yaml --rounds 1 --label.prompt_repeats 12 --out outputs/offline

Each round: label with the current policy, train (continuing the previous LoRA), evaluate against the base."""


def parse_args(argv: list[str], prog: str = "diffalign label", description: str = "Sample candidates per prompt, "
               "annotate them, write pairs and feedback (diffalign/labeling/).", epilog: str = EXAMPLES,
               config_help: str = "YAML file (configs/label/); every key can be overridden: --candidates 4"
               ) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=config_help)
    args, rest = parser.parse_known_args(argv)
    overrides = []
    while rest:
        key = rest.pop(0)
        if not key.startswith("--") or not rest:
            raise ConfigError(f"expected '--key value' overrides; got {key!r}")
        overrides.append((key[2:], rest.pop(0)))
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    from .config import load_label_config
    from .run import label

    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
        summary = label(load_label_config(args.config, overrides))
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"diffalign label: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


def iterate_main(argv: list[str] | None = None) -> int:
    from .iterate import iterate, load_iterate_config

    try:
        args, overrides = parse_args(sys.argv[1:] if argv is None else argv, "diffalign iterate",
                                     "Online rounds: label with the current policy, train, evaluate "
                                     "(diffalign/labeling/iterate.py).", ITERATE_EXAMPLES,
                                     "YAML file (configs/iterate/); every key can be overridden: --rounds 1")
        summary = iterate(load_iterate_config(args.config, overrides))
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"diffalign iterate: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0
