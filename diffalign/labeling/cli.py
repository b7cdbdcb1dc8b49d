"""``diffalign label --config configs/label/toy_bold.yaml [--section.key value ...]`` and
``diffalign iterate --config configs/iterate/toy_bold.yaml [--section.key value ...]``."""

from __future__ import annotations

import argparse
import json
import sys

from ..config import ConfigError, dotted_overrides

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


def _run(argv: list[str] | None, prog: str, description: str, epilog: str, config_help: str, load, run) -> int:
    """Parse ``--config FILE`` and ``--key value`` overrides, ``run(load(config, overrides))``, print its summary;
    a user's mistake is one line on stderr and exit code 2."""
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help=config_help)
    try:
        args, rest = parser.parse_known_args(sys.argv[1:] if argv is None else argv)
        summary = run(load(args.config, dotted_overrides(rest)))
    except (ConfigError, FileNotFoundError, ValueError) as err:
        print(f"{prog}: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    from .config import load_label_config
    from .run import label

    return _run(argv, "diffalign label", "Sample candidates per prompt, annotate them, write pairs and feedback "
                "(diffalign/labeling/).", EXAMPLES,
                "YAML file (configs/label/); every key can be overridden: --candidates 4", load_label_config, label)


def iterate_main(argv: list[str] | None = None) -> int:
    from .iterate import iterate, load_iterate_config

    return _run(argv, "diffalign iterate", "Online rounds: label with the current policy, train, evaluate "
                "(diffalign/labeling/iterate.py).", ITERATE_EXAMPLES,
                "YAML file (configs/iterate/); every key can be overridden: --rounds 1", load_iterate_config, iterate)
