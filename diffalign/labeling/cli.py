"""``diffalign label --config configs/label/toy_bold.yaml [--section.key value ...]``."""

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


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[tuple[str, str]]]:
    parser = argparse.ArgumentParser(prog="diffalign label", description=__doc__ + "\n\nSample candidates per "
                                     "prompt, annotate them, write pairs and feedback (diffalign/labeling/).",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file (configs/label/); every key can be overridden: --candidates 4")
    args, rest = parser.parse_known_args(argv)
    overrides = []
    while rest:
        key = rest.pop(0)
        if not key.startswith("--") or not rest:
            raise ConfigError(f"expected '--key value' overrides; got {key!r}")
        overrides.append((key[2:], rest.pop(0)))
    return args, overrides


def main(argv: list[str] | None = None) -> int:
    from ..toy import plugin  # noqa: F401  (the entry point registers the toy judge and prompt sets)
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
