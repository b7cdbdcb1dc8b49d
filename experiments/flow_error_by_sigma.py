"""Where does a LoRA change a flow model's velocity error: on the training pairs' images, or everywhere? (toy world)

    python experiments/flow_error_by_sigma.py --lora kto=DIR --lora dpo=outputs/toy-flow-dpo
                                              [--model assets/toy-flow] [--pairs assets/toy-data/pairs_bold.parquet]
                                              [--images 256] [--out outputs/flow-error-by-sigma]

The velocity error (v_θ(x_t, σ) − (ε − x0))², averaged over pixels and images, at five fixed σ, for the base and each
LoRA, on two sets: the preferred images of the first ``--images`` training pairs (what a method fits) and as many
fresh renders of the toy world with their true captions (what the base was trained on; rng seed 123, so never the
pretraining pool). Latents are the VAE posterior means, normalised as the pipeline's; one ε per σ, drawn from seed
0 in σ order, the same for every model. A method that lowers the first and raises the second is fitting the pairs'
images (experiments/README.md, "Flow error by σ"). JSON and a markdown table go to --out.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results_files import write_results  # noqa: E402  (beside this script)

SIGMAS = (0.1, 0.3, 0.5, 0.7, 0.9)


def _latents(vae, images: np.ndarray) -> torch.Tensor:
    """uint8 [N, H, W, 3] -> normalised latents [N, C, h, w] (posterior means)."""
    from diffalign.toy.samples import to_model_range

    with torch.no_grad():
        mean = vae.encode(to_model_range(images)).latent_dist.mean
    return (mean - vae.config.shift_factor) * vae.config.scaling_factor


def _errors(transformer, x0, states, pooled) -> list[float]:
    generator = torch.Generator().manual_seed(0)
    out = []
    for sigma in SIGMAS:
        eps = torch.randn(x0.shape, generator=generator)
        x_t = (1 - sigma) * x0 + sigma * eps
        with torch.no_grad():
            v = transformer(hidden_states=x_t, timestep=torch.full((len(x0),), 1000.0 * sigma),
                            encoder_hidden_states=states, pooled_projections=pooled).sample
        out.append((v - (eps - x0)).pow(2).mean().item())
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="assets/toy-flow")
    parser.add_argument("--pairs", default="assets/toy-data/pairs_bold.parquet")
    parser.add_argument("--lora", action="append", default=[], help="NAME=DIR (repeatable)")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--out", default="outputs/flow-error-by-sigma")
    args = parser.parse_args(argv)

    from diffusers import StableDiffusion3Pipeline

    from diffalign.toy.samples import captioned_renders

    pipe = StableDiffusion3Pipeline.from_pretrained(args.model)
    table = pd.read_parquet(args.pairs).iloc[:args.images]
    preferred = [row.jpg_0 if row.label_0 >= row.label_1 else row.jpg_1 for row in table.itertuples()]
    pair_images = np.stack([np.array(Image.open(io.BytesIO(b)).convert("RGB")) for b in preferred])
    fresh_captions, fresh_images = captioned_renders(np.random.default_rng(123), args.images)
    sets = {"training pairs' preferred images": (pair_images, table["caption"].tolist()),
            "fresh renders": (fresh_images, fresh_captions)}
    results = {}
    for name, (images, captions) in sets.items():
        x0 = _latents(pipe.vae, images)
        with torch.no_grad():
            states, _, pooled, _ = pipe.encode_prompt(captions, captions, captions, do_classifier_free_guidance=False,
                                                      max_sequence_length=77)
        results[name] = {"base": _errors(pipe.transformer, x0, states, pooled)}
        for spec in args.lora:
            label, _, path = spec.partition("=")
            pipe.load_lora_weights(path, adapter_name=label)
            results[name][label] = _errors(pipe.transformer, x0, states, pooled)
            pipe.unload_lora_weights()
    lines = ["| images | model | " + " | ".join(f"σ {s}" for s in SIGMAS) + " |", "|---|---|" + "---|" * len(SIGMAS)]
    for name, models in results.items():
        for model, errors in models.items():
            lines.append(f"| {name} | {model} | " + " | ".join(f"{e:.3f}" for e in errors) + " |")
    write_results(args.out, "flow_error_by_sigma", {"sigmas": SIGMAS, "args": vars(args), "errors": results},
                  "\n".join(lines))


if __name__ == "__main__":
    main()
