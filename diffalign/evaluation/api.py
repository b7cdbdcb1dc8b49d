"""``diffalign.evaluate``: generate with fixed seeds for the base and each adapter, score, report."""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from pathlib import Path

import torch

from ..models.loading import check_pipeline_source, sampling_kind
from .generation import SamplingSettings, images_for
from .models import ModelSpec, check_adapter_weights, parse_adapter, trained_t5_length
from .plots import save_distributions, save_side_by_side
from .prompt_sources import load_prompts
from ..ranges import check_ranges, count, seed
from .report import Report
from .sampling import cases
from .scoring import build_scorers, score_images

log = logging.getLogger(__name__)


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def default_dtype(device: str) -> str:
    """Sampling dtype: float16 on GPUs (the usual diffusers setting), float32 on CPU."""
    return "float16" if device.startswith("cuda") else "float32"


OWN_FILES = {"report.json", "report.md", "grid.png", "distributions.png", "images"}


def _refuse_foreign_files(out: Path) -> None:
    """An evaluation folder is rewritten on rerun (that is how its cache is reused), so it must hold nothing else."""
    foreign = sorted(p.name for p in out.iterdir() if p.name not in OWN_FILES) if out.is_dir() else []
    if foreign:
        raise FileExistsError(f"{out} holds files that are not an evaluation's ({', '.join(foreign[:5])}); "
                              "choose another output folder")


def evaluate(model: str, adapters: list[str | ModelSpec] = (), prompts: str | list[str] = "toy:attributes",
             scorers: list[str] = ("toy",), output_dir: str | Path = "outputs/eval", seeds_per_prompt: int = 4,
             first_seed: int = 0, prompt_column: str | None = None, split: str = "test", limit: int | None = None,
             settings: SamplingSettings | None = None, scorer_options: dict[str, dict] | None = None,
             device: str | None = None, batch_size: int = 16, cache: bool = True, grid_cases: int = 8,
             progress: bool = True) -> Report:
    """Compare ``model`` (hub id or diffusers folder) with ``model`` + each adapter on the same (prompt, seed)
    cases and write report.json, report.md, grid.png and distributions.png to ``output_dir``.

    adapters: LoRA folders/files or full fine-tune folders (with unet/), as ``PATH`` or ``NAME=PATH[@SCALE]``.
    prompts: a list, or a source for ``load_prompts`` (``toy:attributes``, a .txt/.jsonl file, a dataset).
    The defaults (``toy:attributes``, the scorer ``toy``) are the toy world's: ``import diffalign.toy.plugin`` first.
    Every prompt is sampled with seeds first_seed .. first_seed + seeds_per_prompt - 1. Images are cached under
    ``output_dir/images`` and reused when rerun with the same weights and settings (``cache=False`` to resample).
    """
    # Everything that can be wrong with the arguments is reported before a model loads or the folder is made.
    check_ranges(seeds_per_prompt=(count, seeds_per_prompt), first_seed=(seed, first_seed), limit=(count, limit),
                 batch_size=(count, batch_size))
    device = device or default_device()
    settings = settings or SamplingSettings(dtype=default_dtype(device))
    out = Path(output_dir)
    _refuse_foreign_files(out)
    check_pipeline_source(model, argument="base model")
    prompt_list = list(prompts) if not isinstance(prompts, str) else load_prompts(prompts, prompt_column, split, limit)
    case_prompts, case_seeds = cases(prompt_list, seeds_per_prompt, first_seed)
    specs = [ModelSpec("base", model)] + [a if isinstance(a, ModelSpec) else parse_adapter(a, model) for a in adapters]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"two models share a name in {names}; name adapters NAME=PATH")
    for spec in specs:
        check_adapter_weights(spec)
    if settings.max_sequence_length is None:  # a flow model: the T5 length its adapters trained with, if they say
        settings = replace(settings, max_sequence_length=trained_t5_length(specs))
    settings = settings.for_kind(sampling_kind(model))  # a flow model's T5 length made concrete, for the report
    score_fns = build_scorers(list(scorers), scorer_options or {}, device)
    out.mkdir(parents=True, exist_ok=True)

    # The grid shows one case (its first seed) of each of the first ``grid_cases`` prompts.
    grid_idx = [case_prompts.index(p) for p in dict.fromkeys(case_prompts)][:grid_cases]
    scores, shown, cached = {}, {}, {}
    for spec in specs:
        log.info("evaluating %s: %d cases", spec.name, len(case_prompts))
        images, cached[spec.name] = images_for(spec, case_prompts, case_seeds, settings,
                                               out / "images" if cache else None, device, batch_size, progress)
        scores[spec.name] = score_images(score_fns, images, case_prompts)
        shown[spec.name] = images[grid_idx]
    report = Report(names, case_prompts, case_seeds, scores,
                    settings={"model": model, "adapters": [asdict(s) for s in specs[1:]],
                              "prompts": prompts if isinstance(prompts, str) else f"{len(prompt_list)} given",
                              "seeds_per_prompt": seeds_per_prompt, "first_seed": first_seed,
                              "scorers": list(scorers), "sampling": asdict(settings), "device": device},
                    cached=cached)
    report.files["grid"] = str(save_side_by_side(shown, [case_prompts[i] for i in grid_idx],
                                                 [case_seeds[i] for i in grid_idx], out / "grid.png"))
    defined = {m: {s: scores[m][s] for s in report.score_names} for m in names}
    report.files["distributions"] = str(save_distributions(defined, out / "distributions.png"))
    report.write(out)
    return report
