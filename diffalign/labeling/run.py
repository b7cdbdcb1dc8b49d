"""``diffalign label``: sample K candidates per prompt with fixed seeds, let an annotator judge them, and write the
tables the trainers read.

    <out>/pairs/train-0000s-of-0000n.parquet      Pick-a-Pic v2 schema (dpo, mapo, inpo; kto and the captioned
                                                  methods read it too) + provenance columns
    <out>/feedback/train-0000s-of-0000n.parquet   caption, image, label (kto) + provenance columns
    <out>/config.json, <out>/label.json            the settings; the counts of the last run

Shards: prompts [s * P, (s + 1) * P) make shard s (P = prompts_per_shard). Each shard's two files are written to
temporary names and renamed, pairs first: a shard is done when its feedback file exists, and an interrupted run,
started again with the same settings, redoes only the shards not done (their candidates come back from the
sample cache under <out>/samples, removed once the shard is written). So no row is written twice or lost.

Provenance columns: ``annotator`` (its spec), ``annotator_version`` (a hash of the spec and of its local weight
files), ``model`` and ``model_version`` (the sampling model and adapter, hashed as evaluation caches them),
``seed_0``/``seed_1`` (``seed``), ``score_0``/``score_1`` (``score``: the candidates' standing), ``annotation``
(JSON: each scorer's raw scores, or the MLLM's pairwise preferences), ``prompt_index``.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

from ..config import ConfigError
from ..data.images import png_bytes
from ..evaluation.generation import SamplingSettings, case_key, images_for
from ..evaluation.models import ModelSpec, trained_t5_length
from ..evaluation.prompt_sources import load_prompts
from .config import LabelConfig
from .selection import select_feedback, select_pairs

PROVENANCE = {"annotator": "string", "annotator_version": "string", "model": "string", "model_version": "string",
              "annotation": "string", "prompt_index": "int64"}
PAIR_SCHEMA = {"caption": "string", "jpg_0": "binary", "jpg_1": "binary", "label_0": "float64", "label_1": "float64",
               "score_0": "float64", "score_1": "float64", "seed_0": "int64", "seed_1": "int64", **PROVENANCE}
FEEDBACK_SCHEMA = {"caption": "string", "image": "binary", "label": "int64", "score": "float64", "seed": "int64",
                   **PROVENANCE}


def build_annotator(cfg: LabelConfig):
    import torch

    a = cfg.annotator
    if a.kind == "mllm":
        from .mllm import MLLMJudge

        return MLLMJudge(a.model, a.criteria, cfg.device, getattr(torch, cfg.dtype), a.trust_remote_code,
                         a.max_new_tokens)
    from .annotators import ScoreAnnotator

    return ScoreAnnotator(a.terms(), cfg.device)


def _check_out(out: Path, cfg: LabelConfig) -> None:
    """A new folder, or the same run's folder (resume); anything else is refused, never overwritten."""
    saved = out / "config.json"
    if saved.is_file():
        before, now = json.loads(saved.read_text()), json.loads(json.dumps(asdict(cfg)))  # as JSON stores it
        changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
        if changed:
            raise ConfigError(f"{out} holds labels made with other settings (differing: {', '.join(changed)}); "
                              "choose another out folder, or run again with the same settings to continue it")
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(f"{out} is not empty and holds no diffalign labels (config.json); choose another folder")


def _write(rows: list[dict], schema: dict, path: Path) -> None:
    """rows -> parquet at ``path``, written to a temporary name first (atomic rename)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({name: pa.array([r[name] for r in rows], type=getattr(pa, kind)())
                      for name, kind in schema.items()})
    tmp = path.with_name(path.name + ".tmp")
    pq.write_table(table, tmp)
    os.replace(tmp, path)


def _labels(folder: Path, column: str) -> list[float]:
    """``column`` of every shard in ``folder``, in shard order."""
    import pyarrow.parquet as pq

    return [v for path in sorted(folder.glob("train-*.parquet")) for v in pq.read_table(path, columns=[column])
            .column(0).to_pylist()]


def label(cfg: LabelConfig, progress: bool = True) -> dict:
    """Run (or continue) a labelling job; returns the counts also written to <out>/label.json."""
    out = Path(cfg.out)
    _check_out(out, cfg)
    prompts = load_prompts(cfg.prompts, column=cfg.prompt_column, split=cfg.split, limit=cfg.max_prompts)
    prompts = prompts * cfg.prompt_repeats  # prompt g (its repeat included) draws seeds first_seed + g * K + c
    shards = -(-len(prompts) // cfg.prompts_per_shard)
    for folder in ("pairs", "feedback"):
        (out / folder).mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=1))
    spec = ModelSpec("policy", cfg.model, cfg.adapter)
    # a flow policy samples with the T5 length its adapter trained with (else its family's training default)
    settings = SamplingSettings(cfg.num_inference_steps, cfg.guidance_scale, cfg.resolution, cfg.resolution,
                                cfg.dtype, max_sequence_length=trained_t5_length([spec]))
    k, model_version = cfg.candidates, spec.fingerprint()
    model_name = cfg.model + (f" + {cfg.adapter}" if cfg.adapter else "")
    annotator, resumed = None, 0
    for s in range(shards):
        name = f"train-{s:05d}-of-{shards:05d}.parquet"
        if (out / "feedback" / name).is_file():
            resumed += 1
            continue
        annotator = annotator or build_annotator(cfg)
        first = s * cfg.prompts_per_shard
        shard_prompts = prompts[first:first + cfg.prompts_per_shard]
        cases = [(p, cfg.first_seed + (first + g) * k + c) for g, p in enumerate(shard_prompts) for c in range(k)]
        images, _ = images_for(spec, [p for p, _ in cases], [seed for _, seed in cases], settings, out / "samples",
                               cfg.device, progress=progress)
        pairs, feedback = [], []
        for g, prompt in enumerate(shard_prompts):
            candidates = list(images[g * k:(g + 1) * k])
            seeds = [seed for _, seed in cases[g * k:(g + 1) * k]]
            gap, standing, details = annotator.judge(candidates, prompt)
            common = {"annotator": annotator.spec, "annotator_version": annotator.version, "model": model_name,
                      "model_version": model_version, "annotation": json.dumps(details), "prompt_index": first + g}
            for i, j, label_0 in select_pairs(gap, standing, cfg.selection):
                pairs.append({"caption": prompt, "jpg_0": png_bytes(candidates[i]), "jpg_1": png_bytes(candidates[j]),
                              "label_0": label_0, "label_1": 1.0 - label_0, "score_0": float(standing[i]),
                              "score_1": float(standing[j]), "seed_0": seeds[i], "seed_1": seeds[j], **common})
            for c, verdict in select_feedback(standing, cfg.selection):
                feedback.append({"caption": prompt, "image": png_bytes(candidates[c]), "label": verdict,
                                 "score": float(standing[c]), "seed": seeds[c], **common})
        _write(pairs, PAIR_SCHEMA, out / "pairs" / name)
        _write(feedback, FEEDBACK_SCHEMA, out / "feedback" / name)  # last: the shard is done
        _drop_samples(out / "samples", cases)
    labels = _labels(out / "pairs", "label_0")
    summary = {"prompts": len(prompts), "candidates_per_prompt": k, "shards": shards, "shards_resumed": resumed,
               "pairs": len(labels), "decisive_pairs": sum(v != 0.5 for v in labels),
               "ties": sum(v == 0.5 for v in labels),
               "feedback_rows": len(_labels(out / "feedback", "label")),
               "out": str(out)}
    if annotator is not None and hasattr(annotator, "stats"):  # the MLLM judge, for the shards labelled now
        summary["mllm"] = {**annotator.stats, "disagreement_rate": annotator.disagreement_rate()}
    (out / "label.json").write_text(json.dumps(summary, indent=1))
    return summary


def _drop_samples(cache: Path, cases: list[tuple[str, int]]) -> None:
    """The shard's candidates are in its parquet files now: their cached PNGs go."""
    keys = {f"{case_key(p, seed)}.png" for p, seed in cases}
    for folder in cache.glob("*"):
        for name in keys:
            (folder / name).unlink(missing_ok=True)
