"""`diffalign toy demo`: sample the embedded base model on a few held-out prompts, judge, write a grid and scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..evaluation.grid import save_grid
from ..evaluation.sampling import cases, generate
from .prompts import prompt_set
from .scoring import judge


def run_demo(pipe, out_dir: str | Path, n_prompts: int = 8, seeds_per_prompt: int = 6) -> dict:
    prompts = prompt_set("attributes")[:: max(1, len(prompt_set("attributes")) // n_prompts)][:n_prompts]
    ps, ss = cases(prompts, seeds_per_prompt)
    images = generate(pipe, ps, ss)
    judgements = [judge(im, c) for im, c in zip(images, ps)]
    out_dir = Path(out_dir)
    rows = [images[i * seeds_per_prompt:(i + 1) * seeds_per_prompt] for i in range(len(prompts))]
    grid = save_grid(rows, prompts, out_dir / "demo_grid.png")
    per_prompt = []
    for i, prompt in enumerate(prompts):
        js = judgements[i * seeds_per_prompt:(i + 1) * seeds_per_prompt]
        per_prompt.append({"prompt": prompt, "fidelity": float(np.mean([j.fidelity for j in js])),
                           "personas": {p: float(np.mean([j.personas[p] for j in js])) for p in js[0].personas}})
    scores = {"grid": str(grid), "mean_fidelity": float(np.mean([j.fidelity for j in judgements])),
              "prompts": per_prompt}
    (out_dir / "demo_scores.json").write_text(json.dumps(scores, indent=2))
    return scores
