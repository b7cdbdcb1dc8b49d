"""``diffalign iterate``: online rounds. Each round samples candidates with the current policy, labels them
(``diffalign label``), trains (the previous round's LoRA continued, ``lora.init_from``; the reference stays the
base model), and evaluates the new LoRA against the base on held-out prompts.

    <out>/round_<r>/labels/   the round's pairs and feedback (label.py)
    <out>/round_<r>/train/    its LoRA, summary, model card
    <out>/round_<r>/eval/     report.json / report.md / grid.png: the round's LoRA against the base
    <out>/iterate.json        every round's label counts, training summary and win rates; rounds.png the plot

Round r draws its candidates with seeds offset by r * SEED_STRIDE, so no two rounds label the same images. A
finished round (its report.json written) is kept when the command runs again with the same settings: an
interrupted run continues with the round it stopped in (a round's labelling continues by shard, its training
starts over). One round with the whole label budget is the offline baseline (``rounds: 1``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..config import ConfigError, build_dataclass, load_config, read_tree, repository_path

SEED_STRIDE = 100_000_000  # seeds of round r: the label config's first_seed + r * SEED_STRIDE + ...


@dataclass
class RoundEval:
    prompts: str = "toy:persona"  # held-out prompts (a prompt source)
    split: str = "test"
    seeds_per_prompt: int = 8
    first_seed: int = 0
    scorers: list[str] = field(default_factory=lambda: ["toy"])
    scorer_options: dict = field(default_factory=dict)  # {scorer: {option: value}}
    targets: list[str] = field(default_factory=lambda: ["toy/bold", "toy/fidelity"])  # scores reported by round
    num_inference_steps: int = 25
    guidance_scale: float = 5.0
    device: str = "cpu"


@dataclass
class IterateConfig:
    rounds: int = 3
    label_config: str = "configs/label/toy_bold.yaml"  # each round's labelling (diffalign label)
    label: dict = field(default_factory=dict)  # its overrides, dotted keys: {prompt_repeats: 4}
    train_config: str = "configs/toy/dpo.yaml"  # each round's training
    train: dict = field(default_factory=dict)  # its overrides, dotted keys: {train.max_steps: 100}
    table: str = "pairs"  # what each round trains on: pairs (dpo, mapo, ...) or feedback (kto)
    eval: RoundEval = field(default_factory=RoundEval)
    out: str = "outputs/iterate"


def load_iterate_config(path: str | None, overrides: list[tuple[str, str]] = ()) -> IterateConfig:
    cfg = build_dataclass(IterateConfig, read_tree(repository_path(path), overrides))
    cfg.label_config, cfg.train_config = repository_path(cfg.label_config), repository_path(cfg.train_config)
    if cfg.rounds < 1:
        raise ConfigError(f"rounds: expected at least 1; got {cfg.rounds}")
    if cfg.table not in ("pairs", "feedback"):
        raise ConfigError(f"table: expected 'pairs' or 'feedback'; got {cfg.table!r}")
    return cfg


def _pairs(overrides: dict) -> list[tuple[str, str]]:
    """{a.b: v} (or nested) -> [("a.b", "v")] as the command line would give them."""
    from ..resume_check import flatten

    return [(k, json.dumps(v) if not isinstance(v, str) else v) for k, v in flatten(overrides).items()]


def iterate(cfg: IterateConfig) -> dict:
    from ..evaluation.api import evaluate
    from ..evaluation.generation import SamplingSettings
    from ..models.lora import LORA_FILE
    from ..train import train
    from .config import load_label_config
    from .run import label

    out = Path(cfg.out)
    saved = out / "iterate_config.json"
    if saved.is_file() and json.loads(saved.read_text()) != json.loads(json.dumps(asdict(cfg))):
        raise ConfigError(f"{out} holds rounds run with other settings; choose another out folder")
    if not saved.is_file() and out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no diffalign rounds; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    saved.write_text(json.dumps(asdict(cfg), indent=1))
    rows, previous = [], None
    for r in range(cfg.rounds):
        folder = out / f"round_{r}"
        report_file = folder / "eval" / "report.json"
        base_label = load_label_config(cfg.label_config, _pairs(cfg.label))
        label_overrides = _pairs(cfg.label) + [("out", str(folder / "labels")),
                                               ("first_seed", str(base_label.first_seed + r * SEED_STRIDE))]
        if previous is not None:
            label_overrides.append(("adapter", str(previous)))
        label_cfg = load_label_config(cfg.label_config, label_overrides)
        if not report_file.is_file():
            labelled = label(label_cfg)
            train_overrides = _pairs(cfg.train) + [("data.source", str(folder / "labels" / cfg.table)),
                                                   ("output_dir", str(folder / "train")), ("overwrite", "true"),
                                                   ("eval.enabled", "false")]
            if previous is not None:
                train_overrides.append(("lora.init_from", str(previous)))
            trained = train(load_config(cfg.train_config, train_overrides))
            e = cfg.eval
            evaluate(label_cfg.model, [f"round{r}={folder / 'train'}"], e.prompts, e.scorers,
                              folder / "eval", e.seeds_per_prompt, e.first_seed, split=e.split,
                              scorer_options=e.scorer_options, device=e.device,
                              settings=SamplingSettings(e.num_inference_steps, e.guidance_scale), progress=False)
            (folder / "round.json").write_text(json.dumps({"label": labelled, "train": {
                k: trained[k] for k in ("steps", "train_seconds", "final_metrics") if k in trained}}, indent=1))
        result = json.loads(report_file.read_text())
        round_info = json.loads((folder / "round.json").read_text())
        wins = result["win_rates_vs_base"][f"round{r}"]
        missing = [t for t in cfg.eval.targets if t not in wins]
        if missing:
            raise ValueError(f"eval.targets {missing}: not among the round's scores {sorted(wins)}")
        rows.append({"round": r, "pairs": round_info["label"]["decisive_pairs"],
                     "train_steps": round_info["train"]["steps"],
                     "win_rate_vs_base": {t: wins[t] for t in cfg.eval.targets}})
        previous = folder / "train" / LORA_FILE
    summary = {"rounds": rows, "out": str(out)}
    (out / "iterate.json").write_text(json.dumps(summary, indent=1))
    plot_rounds(rows, cfg.eval.targets, out / "rounds.png")
    return summary


def plot_rounds(rows: list[dict], targets: list[str], path: Path) -> Path:
    """Win rate against the base (95% CI) of each target score, by round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for target in targets:
        points = [(row["round"], row["win_rate_vs_base"][target]) for row in rows]
        x = [p[0] for p in points]
        y = [100 * p[1]["rate"] for p in points]
        err = [[100 * (p[1]["rate"] - p[1]["low"]) for p in points], [100 * (p[1]["high"] - p[1]["rate"])
                                                                      for p in points]]
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=target)
    ax.axhline(50, color="grey", linewidth=0.8, linestyle="--")
    ax.set_xlabel("round")
    ax.set_ylabel("win rate vs base (%)")
    ax.set_xticks([row["round"] for row in rows])
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
