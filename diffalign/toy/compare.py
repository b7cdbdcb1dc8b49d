"""The toy before/after comparison that ends every embedded-default training run.

It is ``diffalign eval`` (diffalign.evaluation.evaluate) of the base against the run's output on held-out toy
prompts (``eval.prompt_set``: persona prompts by default, attribute prompts for fidelity methods such as TPO),
same seeds for both, scored by the toy judge. Reported: the persona's win rate (ties ½) with its 95% CI and
fidelity before/after; the full report (every toy score, grid, distributions) is in ``output_dir/comparison/``.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..evaluation import SamplingSettings, evaluate
from ..objectives.longalign import segment_length_for_sampling, segmenter_for_sampling
from . import plugin  # noqa: F401  (registers the scorer "toy" and the prompt source "toy:<set>")


def comparison_settings(cfg) -> SamplingSettings:
    """How the comparison samples both models: ``cfg.eval``'s steps and guidance, and a flow model's training T5
    length. A LoRA trained on segment-encoded prompts (LongAlign, text_encoding: segments) is sampled the way it
    trained; the base then gets the same encoding, so the comparison measures the LoRA and nothing else."""
    e = cfg.eval
    segment_length = segment_length_for_sampling(cfg.method, cfg.objective)
    segments = {} if segment_length is None else {"text_encoding": "segments", "max_text_length": segment_length,
                                                  "segmenter": segmenter_for_sampling(cfg.method, cfg.objective)}
    # a flow model is sampled with the T5 length it trained with (null: the family's default, as in training)
    return SamplingSettings(num_inference_steps=e.num_inference_steps, guidance_scale=e.guidance_scale,
                            guidance_rescale=e.guidance_rescale, max_sequence_length=cfg.model.max_sequence_length,
                            **segments)


def seed_range(rates: dict[int, float]) -> str:
    """"lowest-highest" of the per-seed win rates {seed: rate}."""
    if len(rates) > 1:
        return f"{min(rates.values()):.0%}-{max(rates.values()):.0%}"
    return "one seed" if rates else "no seed with 2 cases"


def compare_before_after(cfg, out_dir: str | Path) -> dict:
    out_dir = Path(out_dir)
    e = cfg.eval
    settings = comparison_settings(cfg)
    segments = settings.text_encoding == "segments"
    report = evaluate(cfg.model.pretrained, adapters=[f"{cfg.method}={out_dir}"], prompts=f"toy:{e.prompt_set}",
                      scorers=["toy"], output_dir=out_dir / "comparison", seeds_per_prompt=e.seeds_per_prompt,
                      settings=settings,
                      device="cpu")  # the toy model is tiny: CPU float32 keeps the figures machine-independent
    wr = report.win_rates()[cfg.method][f"toy/{e.persona}"]
    fid = {m: report.summary()[m]["toy/fidelity"].mean for m in report.models}
    fid_win = report.win_rates()[cfg.method]["toy/fidelity"]
    by_seed = report.win_rates_by_seed()[cfg.method]  # score -> {seed: rate}
    text = (f"Before/after on {len(report.prompts)} held-out `{e.prompt_set}` prompt x seed cases"
            f"{' (both models sampled with segment encoding)' if segments else ''}:\n"
            f"  win rate of {cfg.method} over base, persona '{e.persona}': {wr}\n"
            f"  fidelity: base {fid['base']:.1%} -> {cfg.method} {fid[cfg.method]:.1%} (win rate {fid_win})\n"
            f"  win rates seed by seed (a seed's cases share one starting noise): persona "
            f"{seed_range(by_seed[f'toy/{e.persona}'])}, fidelity {seed_range(by_seed['toy/fidelity'])}\n"
            f"  report: {report.files['markdown']}; grid: {report.files['grid']}")
    result = {"persona": e.persona, "prompt_set": e.prompt_set, "cases": len(report.prompts), "win_rate": wr.rate,
              "win_rate_ci": [wr.low, wr.high], "wins_ties_losses": [wr.wins, wr.ties, wr.losses],
              "fidelity_before": fid["base"], "fidelity_after": fid[cfg.method],
              "fidelity_win_rate": fid_win.rate, "fidelity_win_rate_ci": [fid_win.low, fid_win.high],
              "win_rate_by_seed": by_seed[f"toy/{e.persona}"], "fidelity_win_rate_by_seed": by_seed["toy/fidelity"],
              "report": report.files["markdown"], "grid": report.files["grid"], "text": text}
    (out_dir / "comparison.json").write_text(json.dumps(result, indent=2))
    return result


def compare_run(cfg, out_dir: str | Path) -> dict:
    """The end-of-run comparison a toy run gets: per user for a method that personalises (PPD's user adapter),
    else the persona's before/after."""
    from ..objectives import get_objective

    if get_objective(cfg.method, **cfg.objective).trains == "user_adapter":
        from .personalization import compare_personalized

        return compare_personalized(cfg, out_dir)
    return compare_before_after(cfg, out_dir)
