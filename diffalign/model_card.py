"""The model card (README.md) written beside every trained LoRA or UNet."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml


def _soft_token_denoiser(weights: str) -> str:
    """Which pipeline attribute saved soft tokens attach to: the UNet, or SD3's transformer (layout "joint")."""
    import json

    from .models.soft_tokens import CONFIG_FILE

    config = json.loads((Path(weights).parent / CONFIG_FILE).read_text())
    return "transformer" if config.get("layout") == "joint" else "unet"


def write_model_card(cfg, summary: dict, out_dir: str | Path) -> Path:
    comparison = summary.get("comparison")
    results = comparison["text"] if comparison else "No evaluation was run with this training job."
    pipeline, module = "DiffusionPipeline", "diffusers"  # picks SD or SDXL from the base's model_index.json
    if "user_adapter" in summary:  # PPD: the personalised pipeline, with a user's embedding at call time
        pipeline, module = "PersonalizedStableDiffusionPipeline", "diffalign.pipelines.personalized_sd"
    load = (f"load_soft_tokens(pipe.{_soft_token_denoiser(summary['soft_tokens'])}, \"<this folder>\")  "
            "# from diffalign.models.soft_tokens" if "soft_tokens" in summary else
            "pipe.load_user_adapter(\"<this folder>\")  # then pipe(prompt, user_examples=[UserExample(...), ...])"
            if "user_adapter" in summary else "pipe.load_lora_weights(\"<this folder>\")" if cfg.lora.enabled
            else "pipe.unet = UNet2DConditionModel.from_pretrained(\"<this folder>/unet\")")
    from .objectives.longalign import segment_length_for_sampling

    segment_rows = segment_length_for_sampling(cfg.method, cfg.objective)
    if segment_rows is not None:  # trained on segment-encoded prompts (LongAlign, sft): sample them the same way
        load += (f"\n    from diffalign.pipelines.long_prompt import as_long_prompt_pipeline"
                 f"\n    pipe = as_long_prompt_pipeline(pipe, {segment_rows})  # segment encoding, as it trained")
    from .models.loading import T5_LENGTH, sampling_kind

    t5_length = cfg.model.max_sequence_length or T5_LENGTH.get(sampling_kind(cfg.model.pretrained))
    if t5_length:  # SD3/Flux: sample with the T5 length it trained with (SD3's pipeline default is 256)
        load += f"\n    image = pipe(\"a prompt\", max_sequence_length={t5_length}).images[0]  # T5 as in training"
    imports = pipeline + (", UNet2DConditionModel" if "unet" in summary else "")  # a full fine-tune's UNet class
    for folder in summary.get("text_encoders", []):  # a full fine-tune that trained the text encoder(s) too
        name = Path(folder).name
        load += f"\n    pipe.{name} = type(pipe.{name}).from_pretrained(\"<this folder>/{name}\")"
    resumed = summary.get("resumed") or {}
    changed = resumed.get("accepted_changes")
    history = (f"\nResumed at step {resumed['from_step']} with these settings changed (checkpoint's value, then this "
               "run's): " + "; ".join(f"`{k}` {v[0]!r} -> {v[1]!r}" for k, v in changed.items()) + "."
               if changed else "")
    text = f"""---
base_model: {cfg.model.pretrained}
library_name: diffusers
tags: [diffalign, {cfg.method}, text-to-image{"" if cfg.method == "sft" else ", preference-alignment"}]
---
# {cfg.method} on {cfg.model.pretrained}

Trained with diffalign (`{cfg.method}`) on `{cfg.data.source}`: {summary['steps']} optimizer steps,
{summary['examples_seen']} examples (pairs or images) seen, {summary['train_seconds']} s of training
({summary['ties_dropped']} tied pairs dropped).{history}

    from {module} import {imports}
    pipe = {pipeline}.from_pretrained("{cfg.model.pretrained}")
    {load}

## Measured results

{results}

## Configuration

```yaml
{yaml.safe_dump(dataclasses.asdict(cfg), sort_keys=False)}```
"""
    path = Path(out_dir) / "README.md"
    path.write_text(text)
    return path
