"""A tiny CLIP of the toy world (`diffalign toy clip`): image and caption embeddings learned contrastively.

Real images get their embeddings from a real CLIP (e.g. ``openai/clip-vit-large-patch14``); the toy world needs one
of its own so that the same code paths (PPD's CLIP-difference user encoder, CLIP-style scorers) run on it. Trained
from scratch on random renders whose captions state size, position and background most of the time, so the image
embedding carries those attributes (what the personas' tastes read) and not only colour and shape.

Saved as a transformers ``CLIPModel`` + ``CLIPProcessor`` folder (``assets/toy-clip``), loadable offline with
``CLIPModel.from_pretrained`` like any CLIP, with ``training_args.json`` beside it (its recipe, what else moves its
float sums, and its held-out retrieval; the robust reward CLIP has one, the two older toy CLIPs predate it).
Deterministic under its seed, thread count and package versions on CPU.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from tqdm.auto import tqdm
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from ..models.segment_encoding import split_segments
from ..models.tokenizer import MAX_LENGTH, build_clip_tokenizer
from .captions import write
from .model import text_encoder_config
from .render import render
from .world import CANVAS, realise, sample_spec

# OpenAI CLIP's pixel normalisation; the processor saved with the model applies the same.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
EMBED_DIM = 64
TRAINING_ARGS = "training_args.json"  # the recipe, saved beside the weights


def make_toy_clip() -> CLIPModel:
    """A ViT on 32x32 images (4x4 patches: 64 tokens) and the toy text tower's shape, both projected to 64."""
    text = text_encoder_config().to_dict()
    vision = dict(image_size=CANVAS, patch_size=4, num_channels=3, hidden_size=64, intermediate_size=256,
                  num_hidden_layers=4, num_attention_heads=4, hidden_act="quick_gelu", projection_dim=EMBED_DIM)
    return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=EMBED_DIM))


def make_processor(tokenizer=None) -> CLIPProcessor:
    image_processor = CLIPImageProcessor(do_resize=True, size={"shortest_edge": CANVAS}, do_center_crop=True,
                                         crop_size={"height": CANVAS, "width": CANVAS}, do_normalize=True,
                                         image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    return CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer or build_clip_tokenizer())


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 [N, 32, 32, 3] -> CLIP pixel values [N, 3, 32, 32] (what the saved processor gives at 32x32)."""
    return normalise_float(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0)


def normalise_float(pixels: torch.Tensor) -> torch.Tensor:
    """float pixels [N, 3, H, W] in [0, 1] -> CLIP pixel values (differentiable)."""
    return (pixels - torch.tensor(CLIP_MEAN)[:, None, None]) / torch.tensor(CLIP_STD)[:, None, None]


def contrastive_loss(model: CLIPModel, text: dict, pixel_values: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric cross-entropy over a batch of matched (caption, image) rows."""
    out = model(**text, pixel_values=pixel_values)
    labels = torch.arange(len(pixel_values))
    # Identical captions in a batch are true matches too; CLIP's loss ignores that (rare here: 1 in ~10^3).
    return 0.5 * (F.cross_entropy(out.logits_per_image, labels) + F.cross_entropy(out.logits_per_text, labels))


def adversarial_pixels(model: CLIPModel, text: dict, pixels: torch.Tensor, eps: float,
                       generator: torch.Generator) -> torch.Tensor:
    """The renders [N, 3, H, W] in [0, 1] moved by at most ``eps`` per pixel (L-inf, in [0, 1] units) to raise the
    contrastive loss: one signed-gradient step of 1.25 eps from a uniform random start (FGSM with random start,
    Wong et al., ICLR 2020). Training on them makes the image tower robust to the near-invisible pixel changes
    that a reward-tuned generator otherwise learns to make (reward hacking; docs/results.md, LongAlign)."""
    delta = (torch.rand(pixels.shape, generator=generator) * 2 - 1) * eps
    delta.requires_grad_(True)
    loss = contrastive_loss(model, text, normalise_float((pixels + delta).clamp(0, 1)))
    (grad,) = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + 1.25 * eps * grad.sign()).clamp(-eps, eps)
    return (pixels + delta).clamp(0, 1)


def clip_batch(rng: np.random.Generator, n: int, multi_fraction: float = 0.15,
               scene_sentences: float = 0.0) -> tuple[list[str], np.ndarray]:
    """n renders with captions that state size/position/background with odds 0.8 each (mostly single objects).

    ``scene_sentences``: the share of renders that are 5-6-object scenes captioned by *one* sentence of their
    verbose caption (one object, or the background): what LongAlign's Denscore compares an image with, sentence by
    sentence. The rest are drawn as before."""
    captions, images = [], []
    for _ in range(n):
        if scene_sentences and rng.random() < scene_sentences:  # no draw at 0: the default stream is unchanged
            spec = sample_spec(rng, n_objects=int(rng.integers(5, 7)))
            captions.append(str(rng.choice(split_segments(write(spec, "long", rng)))))
        else:
            n_objects = int(rng.integers(2, 5)) if rng.random() < multi_fraction else 1
            spec = sample_spec(rng, p_size=0.8, p_position=0.8, p_background=0.8, n_objects=n_objects)
            captions.append(write(spec, "short", rng))
        images.append(render(realise(spec, rng)))
    return captions, np.stack(images)


@dataclass
class ToyClipConfig:
    seed: int = 0
    steps: int = 1000
    batch_size: int = 256
    lr: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.1
    scene_sentences: float = 0.0  # share of multi-object scenes captioned by one of their sentences (see clip_batch)
    adversarial_eps: float = 0.0  # > 0: train on adversarial renders within this L-inf radius (adversarial_pixels)
    init: str | None = None  # a toy CLIP folder to start from (fine-tuning) instead of random weights


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    return h.hexdigest()


def train_toy_clip(out_dir: str | Path, cfg: ToyClipConfig | None = None) -> dict:
    """Train and save the toy CLIP; returns a summary with held-out retrieval accuracy (image -> its caption)."""
    cfg = cfg or ToyClipConfig()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    # a fine-tune reads its start's own tokenizer (a shipped toy CLIP's vocabulary is cut: toy/shrink.py)
    tokenizer = CLIPProcessor.from_pretrained(cfg.init).tokenizer if cfg.init else build_clip_tokenizer()
    model = (CLIPModel.from_pretrained(cfg.init) if cfg.init else make_toy_clip()).train()
    generator = torch.Generator().manual_seed(cfg.seed)  # the adversarial start
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    lr_at = lambda s: min(1.0, (s + 1) / cfg.warmup_steps) * 0.5 * (1 + math.cos(math.pi * s / cfg.steps))  # noqa
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    start = time.time()
    for step in tqdm(range(cfg.steps), desc="toy clip"):
        captions, images = clip_batch(rng, cfg.batch_size, scene_sentences=cfg.scene_sentences)
        # Padded to the batch's longest caption, not 77: the text tower costs a fifth as much.
        text = tokenizer(captions, padding="longest", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # [N, 3, 32, 32]
        if cfg.adversarial_eps > 0:
            pixels = adversarial_pixels(model, text, pixels, cfg.adversarial_eps, generator)
        loss = contrastive_loss(model, text, normalise_float(pixels))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
    model.eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    make_processor(tokenizer).save_pretrained(out_dir)
    results = {"train_seconds": round(time.time() - start, 1), "final_loss": loss.item(),
               "heldout_retrieval": retrieval_accuracy(model, tokenizer),
               "long_caption_retrieval": long_caption_retrieval(model, tokenizer)}
    # The recipe beside the weights: a shipped reward CLIP must say how it was made. The starting weights by hash (a
    # folder's contents can change under its name), and what else moves float sums: thread count and versions.
    environment = {"torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                   "transformers": transformers.__version__,
                   "init_sha256": _sha256(Path(cfg.init) / "model.safetensors") if cfg.init else None}
    record = {"args": asdict(cfg), "environment": environment, "results": results}
    (out_dir / TRAINING_ARGS).write_text(json.dumps(record, indent=2) + "\n")
    summary = {**asdict(cfg), **results}
    return summary


@torch.no_grad()
def long_caption_retrieval(model: CLIPModel, tokenizer, n: int = 64, seed: int = 20_000) -> float:
    """Fraction of n fresh 5-6-object scenes whose own verbose caption is the closest of the n, each caption
    embedded as Denscore does: the mean of its sentences' normalised embeddings."""
    rng = np.random.default_rng(seed)
    specs = [sample_spec(rng, n_objects=int(rng.integers(5, 7))) for _ in range(n)]
    captions = [write(spec, "long", rng) for spec in specs]
    images = np.stack([render(realise(spec, rng)) for spec in specs])
    f = F.normalize(model.get_image_features(pixel_values=normalise(images)).pooler_output, dim=-1)  # [n, D]
    t = []
    for caption in captions:
        ids = tokenizer(split_segments(caption), padding=True, return_tensors="pt")
        t.append(F.normalize(model.get_text_features(**ids).pooler_output, dim=-1).mean(dim=0))
    similarity = f @ torch.stack(t).T  # [n images, n captions]
    return float((similarity.argmax(dim=1) == torch.arange(n)).float().mean())


@torch.no_grad()
def retrieval_accuracy(model: CLIPModel, tokenizer, n: int = 256, seed: int = 10_000) -> float:
    """Fraction of n fresh renders whose own caption is the most similar of the n captions."""
    captions, images = clip_batch(np.random.default_rng(seed), n)
    text = tokenizer(captions, padding="longest", max_length=MAX_LENGTH, truncation=True, return_tensors="pt")
    logits = model(**text, pixel_values=normalise(images)).logits_per_image  # [n, n]
    same = torch.tensor([[a == b for b in captions] for a in captions])
    return float(same[torch.arange(n), logits.argmax(1)].float().mean())
