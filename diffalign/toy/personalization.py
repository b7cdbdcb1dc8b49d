"""PPD on the toy world: users' few examples, and the measured comparison of a personalised model.

- ``persona_examples``: k decisive pairs of the toy pool (``pairs_multiuser.parquet``'s images) labelled by a
  persona with Bradley–Terry noise, as that user would label them: the few examples a (new) user gives.
- ``compare_personalized``: on held-out persona prompts (same seeds for every model), for each persona the
  personalised model (conditioned on that persona's embedding from ``k`` examples) against the base, and, when a
  pooled (non-personalised) DPO model is given, against it; then the interpolation of two users' embeddings.
  The trained personas label ``pairs_multiuser.parquet``; ``cosy`` labels nothing the model trained on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from ..evaluation.grid import save_grid
from ..evaluation.sampling import cases, generate
from ..models.user_examples import UserExample
from ..paths import TOY_DATA
from ..stats import mean_ci, win_rate
from .personas import bradley_terry_label
from .prompts import prompt_set
from .scoring import judge

TRAINED_PERSONAS = ("bold", "subtle", "warm", "skyward")  # the users of pairs_multiuser.parquet
UNSEEN_PERSONA = "cosy"
MIX_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def persona_examples(persona: str, k: int = 4, source: str | Path | None = None, seed: int = 0) -> list[UserExample]:
    """k (caption, chosen, rejected) examples of ``persona``: pool pairs in a seeded order, ties skipped."""
    from datasets import load_dataset

    from ..data.examples import decode_image

    source = Path(source or TOY_DATA / "pairs_multiuser.parquet")
    table = load_dataset("parquet", data_files=str(source), split="train")
    rng = np.random.default_rng([seed, sum(map(ord, persona))])
    examples = []
    for row in rng.permutation(len(table)).tolist():
        record = table[row]
        images = [decode_image(record[c], f"{source} row {row} column {c}") for c in ("jpg_0", "jpg_1")]
        s0, s1 = (judge(np.asarray(im), record["caption"]).personas[persona] for im in images)
        label_0, _ = bradley_terry_label(s0, s1, rng)
        if label_0 == 0.5:
            continue
        chosen, rejected = images if label_0 == 1.0 else images[::-1]
        # The key names which image was chosen: another draw may label the same row the other way.
        examples.append(UserExample(record["caption"], chosen, rejected, key=f"{source}#{row}:{int(label_0)}"))
        if len(examples) == k:
            return examples
    raise ValueError(f"{source}: fewer than {k} decisive pairs for persona {persona!r}")


def _persona_scores(images: np.ndarray, prompts: list[str], persona: str) -> np.ndarray:
    return np.array([judge(im, p).personas[persona] for im, p in zip(images, prompts)])


@torch.no_grad()
def measure_personalization(base: str, ppd_dir: str | Path, pooled_dir: str | Path | None = None,
                            personas: tuple[str, ...] = (*TRAINED_PERSONAS, UNSEEN_PERSONA), k: int = 4,
                            seeds_per_prompt: int = 10, num_inference_steps: int = 25, guidance_scale: float = 5.0,
                            mix: tuple[str, str] | None = ("bold", "subtle"), out_dir: str | Path | None = None,
                            user_scale: float | None = None, split: str = "heldout",
                            guidance_rescale: float = 0.0) -> dict:
    """Win rates (persona score, paired by case) of the personalised model over the base and the pooled model.

    ``user_scale``: the user term's scale at sampling (None: as trained). ``split``: the persona prompts' side,
    "heldout" (the measurement) or "train" (to choose settings such as the scale without looking at it).
    ``mix`` None skips the interpolation."""
    from ..evaluation.models import ModelSpec, load_pipeline
    from ..pipelines.personalized_sd import PersonalizedStableDiffusionPipeline

    prompts, seeds = cases(prompt_set("persona", split), seeds_per_prompt)
    settings = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, progress=False,
                    guidance_rescale=guidance_rescale)
    base_images = generate(load_pipeline(ModelSpec("base", base)), prompts, seeds, **settings)
    pooled_images = None
    if pooled_dir is not None:  # loaded the way `diffalign eval` loads an adapter
        pooled_images = generate(load_pipeline(ModelSpec("pooled", base, str(pooled_dir))), prompts, seeds,
                                 **settings)
    ppd = PersonalizedStableDiffusionPipeline.from_pretrained(base)
    ppd.load_user_adapter(str(ppd_dir))
    embeddings = {p: ppd.user_embedding(persona_examples(p, k)) for p in set(personas) | set(mix or ())}
    result = {"cases": len(prompts), "examples_per_user": k, "user_scale": user_scale, "prompt_split": split,
              "guidance_scale": guidance_scale, "guidance_rescale": guidance_rescale,
              "personas": {}, "interpolation": {}, "interpolation_monotonic": None}
    settings_ppd = dict(settings, user_scale=user_scale)
    grid_rows, grid_titles = [base_images[::seeds_per_prompt][:8]], ["base"]
    for persona in personas:
        images = generate(ppd, prompts, seeds, user_embedding=embeddings[persona], **settings_ppd)
        scores = _persona_scores(images, prompts, persona)
        base_scores = _persona_scores(base_images, prompts, persona)
        row = {"trained_on": persona in TRAINED_PERSONAS, "embedding_norm": float(embeddings[persona].norm()),
               "score_base": mean_ci(base_scores).mean, "score_personalized": mean_ci(scores).mean,
               "vs_base": _as_dict(win_rate(scores, base_scores)),
               "fidelity_base": float(np.mean([judge(im, p).fidelity for im, p in zip(base_images, prompts)])),
               "fidelity_personalized": float(np.mean([judge(im, p).fidelity for im, p in zip(images, prompts)]))}
        if pooled_images is not None:
            pooled_scores = _persona_scores(pooled_images, prompts, persona)
            row["score_pooled"] = mean_ci(pooled_scores).mean
            row["vs_pooled"] = _as_dict(win_rate(scores, pooled_scores))
        result["personas"][persona] = row
        grid_rows.append(images[::seeds_per_prompt][:8])
        grid_titles.append(f"ppd:{persona}")
    if mix is not None:
        a, b = mix
        for w in MIX_WEIGHTS:  # (1 - w) a + w b: a's score should fall and b's rise as w grows
            images = generate(ppd, prompts, seeds, user_embedding=embeddings[a], mix_with=embeddings[b],
                              mix_weight=w, **settings_ppd)
            result["interpolation"][str(w)] = {p: float(_persona_scores(images, prompts, p).mean()) for p in (a, b)}
        curve_a = [result["interpolation"][str(w)][a] for w in MIX_WEIGHTS]
        curve_b = [result["interpolation"][str(w)][b] for w in MIX_WEIGHTS]
        result["interpolation_monotonic"] = bool(np.all(np.diff(curve_a) < 0) and np.all(np.diff(curve_b) > 0))
    result["text"] = _text(result, mix)
    if out_dir is not None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        result["grid"] = str(save_grid(grid_rows, grid_titles, out_dir / "grid.png"))
        (out_dir / "personalization.json").write_text(json.dumps(result, indent=2))
        (out_dir / "report.md").write_text(result["text"] + "\n")
    return result


def compare_personalized(cfg, out_dir: str | Path) -> dict:
    """The end of ``--method ppd`` on the toy: ``measure_personalization`` of the run (no pooled model), every user
    embedded from 4 examples whatever the training profiles' size, sampled at ``objective.comparison_user_scale``
    (default: the trained scale)."""
    from ..objectives import get_objective

    e = cfg.eval
    scale = get_objective(cfg.method, **cfg.objective).options.comparison_user_scale
    return measure_personalization(cfg.model.pretrained, out_dir, k=4,
                                   seeds_per_prompt=e.seeds_per_prompt, num_inference_steps=e.num_inference_steps,
                                   guidance_scale=e.guidance_scale, out_dir=Path(out_dir) / "comparison",
                                   user_scale=scale, guidance_rescale=e.guidance_rescale)


def _as_dict(wr) -> dict:
    return {"rate": wr.rate, "ci": [wr.low, wr.high], "wins_ties_losses": [wr.wins, wr.ties, wr.losses],
            "text": str(wr)}


def _text(result: dict, mix: tuple[str, str] | None) -> str:
    side = "held-out" if result["prompt_split"] == "heldout" else "TRAINING-side"
    scale = "" if result["user_scale"] is None else f", user scale {result['user_scale']:g}"
    lines = [f"Personalised (PPD) vs base on {result['cases']} {side} persona prompt x seed cases, each user "
             f"embedded from {result['examples_per_user']} examples{scale}:",
             "| persona | trained on | score base -> ppd | win rate vs base | win rate vs pooled dpo | fidelity |",
             "|---|---|---|---|---|---|"]
    for p, r in result["personas"].items():
        pooled = r["vs_pooled"]["text"] if "vs_pooled" in r else "-"
        lines.append(f"| {p} | {'yes' if r['trained_on'] else 'no (unseen)'} | {r['score_base']:.3f} -> "
                     f"{r['score_personalized']:.3f} | {r['vs_base']['text']} | {pooled} | "
                     f"{r['fidelity_base']:.1%} -> {r['fidelity_personalized']:.1%} |")
    if mix is None:
        return "\n".join(lines)
    a, b = mix
    lines.append(f"Interpolation (1 - w)·{a} + w·{b}, mean persona scores:")
    for w, scores in result["interpolation"].items():
        lines.append(f"  w={w}: {a} {scores[a]:.3f}, {b} {scores[b]:.3f}")
    lines.append(f"  monotonic: {result['interpolation_monotonic']}")
    return "\n".join(lines)
