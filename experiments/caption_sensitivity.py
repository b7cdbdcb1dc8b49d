"""How much a model's denoising error depends on each kind of caption edit, by timestep (TPO's signal).

    python experiments/caption_sensitivity.py [--model assets/toy-sd] [--lora OUTPUT_DIR | --soft-tokens OUTPUT_DIR]
                                              [--n 192]

For ground-truth toy renders with their true captions (assets/toy-data/captioned.parquet), each caption is
perturbed along one axis at a time (content, attribute, spatial, context; diffalign/data/perturb.py; context only
where the caption states a background, so the edit contradicts the image). At each timestep t, with the same
noise for both captions, it reports the mean per-sample error under the true caption, the mean gap
``error(perturbed) - error(true)`` and how often the gap is positive. A gap of zero means the model does not
read that part of the caption at all: TPO's pairs along that axis then carry no signal. Two more rows replace,
in turn, the rows after the caption's end token and the caption's own rows with the empty caption's (which of
them the UNet reads). A last row is SoftREPA's own measure: the renders in batches of 8, every image denoised under
every caption of its batch at one noise and t, and the contrastive cross-entropy over the captions
(objectives/softrepa.py, without the matched-error term; chance is log 8 = 2.079) with how often an image's own
caption gives the lowest error. ``--lora`` loads a trained output folder (UNet and, when trained, text-encoder
LoRA) with ``load_lora_weights``; ``--soft-tokens`` a SoftREPA output folder (soft_tokens.safetensors).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from diffusers import StableDiffusionPipeline  # noqa: E402

from diffalign.data.perturb import RulePerturber, applicable_axes  # noqa: E402
from diffalign.data.tables import open_table  # noqa: E402
from diffalign.models.soft_tokens import load_soft_tokens  # noqa: E402
from diffalign.objectives.softrepa import softrepa_loss  # noqa: E402
from diffalign.paths import REPO_ROOT, TOY_SD  # noqa: E402

TIMESTEPS = (50, 200, 400, 600, 800, 950)


def _images(table, n: int) -> torch.Tensor:
    """The first n renders as [n, 3, H, W] in [-1, 1]."""
    import io

    from PIL import Image

    def pixels(cell):  # datasets gives a PIL image (Image feature), the stored {"bytes": ...} or raw bytes
        raw = cell.get("bytes") if isinstance(cell, dict) else cell
        image = cell if isinstance(cell, Image.Image) else Image.open(io.BytesIO(raw))
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)

    return torch.stack([pixels(c) for c in table["image"][:n]]).float() / 127.5 - 1


def _gaps(pipe, x0: torch.Tensor, states_true: torch.Tensor, states_wrong: torch.Tensor, generator) -> dict:
    """{t: mean error under states_true, mean gap error(wrong) - error(true), share of gaps > 0}, same noise."""
    by_t = {}
    for t in TIMESTEPS:
        eps = torch.randn(x0.shape, generator=generator)
        tt = torch.full((len(x0),), t)
        x_t = pipe.scheduler.add_noise(x0, eps, tt)
        err_true = ((pipe.unet(x_t, tt, states_true).sample - eps) ** 2).mean((1, 2, 3))  # [n]
        err_wrong = ((pipe.unet(x_t, tt, states_wrong).sample - eps) ** 2).mean((1, 2, 3))
        gap = err_wrong - err_true
        by_t[t] = {"error_true": err_true.mean().item(), "gap": gap.mean().item(),
                   "gap_positive": (gap > 0).float().mean().item()}
    return by_t


def _in_batch(pipe, x0: torch.Tensor, states: torch.Tensor, generator, batch: int = 8) -> dict:
    """{t: SoftREPA's contrastive loss (matched weight 0) and caption accuracy}, mean over batches of ``batch``."""
    by_t = {}
    for t in TIMESTEPS:
        losses, accuracies = [], []
        for start in range(0, len(x0) - batch + 1, batch):
            images, texts = x0[start:start + batch], states[start:start + batch]  # [b, 4, h, w], [b, 77, D]
            eps = torch.randn(images[:1].shape, generator=generator).expand_as(images)  # one noise for the batch
            x_t = pipe.scheduler.add_noise(images, eps, torch.full((batch,), t))
            # row i * b + j: image i under caption j
            rows_x, rows_text = x_t.repeat_interleave(batch, 0), texts.repeat(batch, 1, 1)
            pred = pipe.unet(rows_x, torch.full((batch * batch,), t), rows_text).sample
            errors = ((pred - eps.repeat_interleave(batch, 0)) ** 2).mean((1, 2, 3)).view(batch, batch)
            loss, metrics = softrepa_loss(errors, matched_weight=0.0)
            losses.append(loss.item())
            accuracies.append(metrics["caption_accuracy"])
        by_t[t] = {"contrastive": float(np.mean(losses)), "caption_accuracy": float(np.mean(accuracies))}
    return by_t


@torch.no_grad()
def sensitivity(pipe, captions: list[str], images: torch.Tensor, seed: int = 0) -> dict:
    rng, generator = np.random.default_rng(seed), torch.Generator().manual_seed(seed)
    perturber = RulePerturber()

    def tokens(texts):
        return pipe.tokenizer(texts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                              truncation=True, return_tensors="pt")

    def encode(texts):
        return pipe.text_encoder(tokens(texts).input_ids)[0]  # [n, 77, D]

    latents = pipe.vae.encode(images).latent_dist.mean * pipe.vae.config.scaling_factor  # [n, 4, h, w]
    result = {}
    for axis in ("content", "attribute", "spatial", "context"):
        rows = [i for i, c in enumerate(captions)
                if axis in applicable_axes(c) and (axis != "context" or "background" in c)]
        true = [captions[i] for i in rows]
        wrong = [perturber.perturb(c, rng, axis)[0] for c in true]
        result[axis] = {"captions": len(rows), "by_t": _gaps(pipe, latents[rows], encode(true), encode(wrong),
                                                             generator)}
    # Which rows of the conditioning the UNet reads: the caption's own (start, words, end token) or the ones after
    # its end token (under CLIP's causal attention they summarise the whole caption). Each set in turn is replaced
    # by the empty caption's rows at the same places; the bigger the gap, the more the UNet relies on that set.
    states = encode(captions)  # [n, 77, D]
    lengths = tokens(captions).attention_mask.sum(dim=1).tolist()  # start + words + end, per caption
    empty = encode([""])[0]  # [77, D]
    for name, part in (("rows_after_end_token", lambda n: slice(n, None)), ("caption_rows", lambda n: slice(0, n))):
        edited = states.clone()
        for i, n in enumerate(lengths):
            edited[i, part(n)] = empty[part(n)]
        result[name] = {"captions": len(captions), "by_t": _gaps(pipe, latents, states, edited, generator)}
    result["in_batch_contrastive"] = {"captions": len(captions), "by_t": _in_batch(pipe, latents, states, generator)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(TOY_SD))
    adapter = parser.add_mutually_exclusive_group()
    adapter.add_argument("--lora", help="a training output folder (pytorch_lora_weights.safetensors)")
    adapter.add_argument("--soft-tokens", help="a SoftREPA training output folder (soft_tokens.safetensors)")
    parser.add_argument("--data", default=str(REPO_ROOT / "assets/toy-data/captioned.parquet"))
    parser.add_argument("--n", type=int, default=192, help="renders to use")
    parser.add_argument("--json", help="also write the numbers here")
    args = parser.parse_args()
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline.from_pretrained(args.model)
    if args.lora:
        pipe.load_lora_weights(args.lora)
    if args.soft_tokens:
        load_soft_tokens(pipe.unet, args.soft_tokens)
    table = open_table(args.data).select(range(args.n))
    result = sensitivity(pipe, list(table["caption"][:args.n]), _images(table, args.n))
    added = args.lora or args.soft_tokens
    print(f"{args.model}{' + ' + added if added else ''}: error(perturbed) - error(true), same noise")
    for axis, r in result.items():
        if axis == "in_batch_contrastive":
            cells = " | ".join(f"t{t} {v['contrastive']:.4f} ({v['caption_accuracy']:.0%} own caption best)"
                               for t, v in r["by_t"].items())
            print(f"  {'in-batch contrastive':20s} ({r['captions']:3d}) {cells}")
            continue
        cells = " | ".join(f"t{t} gap {v['gap']:+.4f} ({v['gap_positive']:.0%} > 0)" for t, v in r["by_t"].items())
        print(f"  {axis:20s} ({r['captions']:3d}) {cells}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
