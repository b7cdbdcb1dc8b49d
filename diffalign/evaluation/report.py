"""The evaluation report: per model, mean ± 95% CI of every score; per adapter, its win rate over the base on
every score (paired by case, ties ½); written as report.json (with every per-case score) and report.md."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..stats import MeanCI, WinRate, mean_ci, win_rate


@dataclass
class Report:
    models: list[str]  # "base" first, then the adapters
    prompts: list[str]  # one per case
    seeds: list[int]
    scores: dict[str, dict[str, np.ndarray]]  # model -> score name -> [N] (NaN = not applicable)
    settings: dict
    files: dict[str, str] = field(default_factory=dict)
    cached: dict[str, int] = field(default_factory=dict)  # model -> images reused from the cache

    @property
    def score_names(self) -> list[str]:
        """Scores defined on at least one case (e.g. toy/size is left out for prompts that never state a size)."""
        return [s for s in self.scores[self.models[0]]
                if any((~np.isnan(self.scores[m][s])).any() for m in self.models)]

    def summary(self) -> dict[str, dict[str, MeanCI]]:
        return {m: {s: mean_ci(self.scores[m][s]) for s in self.score_names} for m in self.models}

    def win_rates(self) -> dict[str, dict[str, WinRate]]:
        """Each non-base model against the base, per score, over the cases where both are defined."""
        base = self.scores[self.models[0]]
        out = {}
        for m in self.models[1:]:
            out[m] = {}
            for s in self.score_names:
                values = self.scores[m][s]
                defined = ~(np.isnan(values) | np.isnan(base[s]))
                if defined.sum() >= 2:
                    out[m][s] = win_rate(values, base[s])
        return out

    def win_rates_by_seed(self) -> dict[str, dict[str, dict[int, float]]]:
        """Each adapter's win rate over the base, per score, on each seed's cases alone.

        Every prompt sampled with one seed starts from the same initial noise (one generator per case, seeded with
        the seed alone), so the cases that share a seed are not independent draws: an effect that holds for some
        starting noises and not others shows as a spread here, which the case-level CI does not count."""
        seeds = np.asarray(self.seeds)
        base = self.scores[self.models[0]]
        out = {}
        for m, row in self.win_rates().items():
            out[m] = {}
            for s in row:
                per_seed = {}
                for seed in sorted(set(self.seeds)):
                    a, b = self.scores[m][s][seeds == seed], base[s][seeds == seed]
                    if (~(np.isnan(a) | np.isnan(b))).sum() >= 2:
                        per_seed[int(seed)] = win_rate(a, b).rate
                out[m][s] = per_seed
        return out

    def to_dict(self) -> dict:
        clean = lambda x: None if isinstance(x, float) and math.isnan(x) else x  # noqa: E731  (JSON has no NaN)
        return {
            "models": self.models, "settings": self.settings, "files": self.files, "cached_images": self.cached,
            "summary": {m: {s: {k: clean(v) for k, v in asdict(ci).items()} for s, ci in row.items()}
                        for m, row in self.summary().items()},
            "win_rates_vs_base": {m: {s: asdict(w) | {"n": w.n} for s, w in row.items()}
                                  for m, row in self.win_rates().items()},
            "win_rates_vs_base_by_seed": self.win_rates_by_seed(),
            "cases": [{"prompt": p, "seed": s, **{f"{m}/{name}": clean(float(self.scores[m][name][i]))
                                                  for m in self.models for name in self.score_names}}
                      for i, (p, s) in enumerate(zip(self.prompts, self.seeds))],
        }

    def to_markdown(self) -> str:
        n_prompts = len(dict.fromkeys(self.prompts))
        lines = [f"# Evaluation: {', '.join(self.models)}", "",
                 f"{len(self.prompts)} cases ({n_prompts} prompts × seeds, the same seeds for every model); "
                 f"prompts: `{self.settings.get('prompts')}`; base: `{self.settings.get('model')}`.", "",
                 "## Mean ± 95% CI", "", "| score | " + " | ".join(self.models) + " |",
                 "|---|" + "---|" * len(self.models)]
        summary = self.summary()
        for s in self.score_names:
            cells = [f"{summary[m][s].mean:.4g} [{summary[m][s].low:.4g}, {summary[m][s].high:.4g}] (n={summary[m][s].n})"
                     for m in self.models]
            lines.append(f"| {s} | " + " | ".join(cells) + " |")
        wins = self.win_rates()
        if wins:
            lines += ["", "## Win rate over base (ties ½) [95% CI]", "",
                      "| score | " + " | ".join(wins) + " |", "|---|" + "---|" * len(wins)]
            for s in self.score_names:
                cells = [f"{w[s].rate:.1%} [{w[s].low:.1%}, {w[s].high:.1%}] ({w[s].wins}/{w[s].ties}/{w[s].losses})"
                         if s in w else "–" for w in wins.values()]
                lines.append(f"| {s} | " + " | ".join(cells) + " |")
            lines += ["", "(wins/ties/losses in brackets)"]
            if len(set(self.seeds)) > 1:
                by_seed = self.win_rates_by_seed()
                lines += ["", "## Win rate over base, seed by seed: lowest – highest", "",
                          "Every prompt sampled with one seed starts from the same noise, so cases that share a seed "
                          "are not independent; this spread is what the CI above does not count.", "",
                          "| score | " + " | ".join(by_seed) + " |", "|---|" + "---|" * len(by_seed)]
                for s in self.score_names:
                    cells = [f"{min(r[s].values()):.1%} – {max(r[s].values()):.1%} ({len(r[s])} "
                             f"seed{'s' if len(r[s]) > 1 else ''})"
                             if r.get(s) else "–" for r in by_seed.values()]
                    lines.append(f"| {s} | " + " | ".join(cells) + " |")
        if self.files:
            lines += ["", "Files: " + ", ".join(f"{k}: `{Path(v).name}`" for k, v in self.files.items())]
        return "\n".join(lines) + "\n"

    def write(self, out_dir: Path) -> None:
        self.files |= {"json": str(out_dir / "report.json"), "markdown": str(out_dir / "report.md")}
        (out_dir / "report.json").write_text(json.dumps(self.to_dict(), indent=2))
        (out_dir / "report.md").write_text(self.to_markdown())
