"""Pretraining a toy SD3-shaped flow model on the shapes world (`diffalign toy pretrain --family sd3`).

The embedded flow base (``assets/toy-flow``): a ``StableDiffusion3Pipeline`` that ``DiffusionPipeline.from_pretrained``
loads offline, with every slot SD3 has: two CLIP text encoders (with projections: the pooled input), a T5 encoder,
their tokenizers built here (a CLIP tokenizer cut to the merges the toy world's words use, a unigram T5 tokenizer
trained on toy captions: models/small_tokenizers.py), an SD3 transformer and a flow-matching Euler scheduler.

Recipe, deterministic under ``seed`` on CPU:
1. the VAE of an existing toy base (``vae_from``, default ``assets/toy-sd``), with SD3's latent normalisation
   measured on the toy world: shift_factor = the latents' mean, scaling_factor = 1 / their std after the shift;
2. the transformer and the three text encoders jointly from scratch with the rectified-flow loss (families/flow.py:
   x_t = (1 − σ) x0 + σ ε, target ε − x0, σ logit-normal as SD3 trains), 10% empty captions (so classifier-free
   guidance works), an EMA of the weights (saved). Latents of a fixed pool of renders are encoded once.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel,
                       StableDiffusion3Pipeline)
from diffusers.training_utils import EMAModel, compute_density_for_timestep_sampling
from tqdm.auto import tqdm
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

from ..models.joint_tokenizer import JointTokenizer
from ..models.small_tokenizers import build_small_clip_tokenizer, build_t5_tokenizer
from ..paths import TOY_MODEL_MARKER, TOY_SD
from .model import LATENT_CHANNELS, LATENT_SIZE
from .samples import captioned_renders, to_model_range

T5_LENGTH = 77  # T5 tokens per caption, as diffusers' SD3 LoRA script trains (model.max_sequence_length's default)


@dataclass
class FlowPretrainConfig:
    seed: int = 0
    vae_from: str = str(TOY_SD)  # a toy base whose VAE the flow model reuses
    steps: int = 4000
    pool_size: int = 20000  # captioned renders whose latents the transformer trains on
    corpus_size: int = 20000  # captions the tokenizers are built from
    multi_fraction: float = 0.08  # as toy-sd's recipe
    long_fraction: float = 0.2
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    empty_caption_rate: float = 0.1
    ema_decay: float = 0.999
    shift: float = 1.0  # the scheduler's σ shift (SD3 uses 3.0 at 1024 px; 1.0 suits 16x16 latents)
    layers: int = 4
    width: int = 64  # transformer width (heads x head dim) and the joint text width (T5's)
    clip_width: int = 32  # each CLIP slot; the two concatenated are the T5 width


def _cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def make_flow_parts(cfg: FlowPretrainConfig, corpus: list[str]):
    """(tokenizers [CLIP-L, CLIP-G, T5], text encoders [CLIP-L, CLIP-G, T5], transformer), freshly initialised."""
    clip_tokenizer = build_small_clip_tokenizer(corpus)
    t5_tokenizer = build_t5_tokenizer(corpus, vocab_size=256, max_length=T5_LENGTH)
    n = len(clip_tokenizer)
    clip_config = CLIPTextConfig(vocab_size=n, hidden_size=cfg.clip_width, intermediate_size=4 * cfg.clip_width,
                                 num_hidden_layers=3, num_attention_heads=4, max_position_embeddings=77,
                                 hidden_act="quick_gelu", bos_token_id=n - 2, eos_token_id=n - 1, pad_token_id=n - 1,
                                 projection_dim=cfg.clip_width)
    encoders = [CLIPTextModelWithProjection(clip_config), CLIPTextModelWithProjection(clip_config),
                T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=cfg.width, d_kv=cfg.width // 4,
                                        d_ff=4 * cfg.width, num_layers=2, num_heads=4,
                                        relative_attention_num_buckets=16, pad_token_id=0, eos_token_id=1,
                                        decoder_start_token_id=0, dropout_rate=0.0))]
    transformer = SD3Transformer2DModel(sample_size=LATENT_SIZE, patch_size=2, in_channels=LATENT_CHANNELS,
                                        num_layers=cfg.layers, attention_head_dim=cfg.width // 2, num_attention_heads=2,
                                        joint_attention_dim=cfg.width, caption_projection_dim=cfg.width,
                                        pooled_projection_dim=2 * cfg.clip_width, out_channels=LATENT_CHANNELS,
                                        pos_embed_max_size=LATENT_SIZE)
    return [clip_tokenizer, clip_tokenizer, t5_tokenizer], encoders, transformer


def normalised_vae(path: str, rng: np.random.Generator) -> AutoencoderKL:
    """The toy base's VAE with SD3's latent normalisation measured on 1024 random renders."""
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae").eval().requires_grad_(False)
    _, images = captioned_renders(rng, 1024)
    with torch.no_grad():
        latents = vae.encode(to_model_range(images)).latent_dist.mean
    shift = float(latents.mean())
    vae.register_to_config(shift_factor=shift, scaling_factor=float(1.0 / (latents - shift).std()))
    return vae


def encode_pool(vae, tokenizer: JointTokenizer, rng, cfg: FlowPretrainConfig, batch: int = 500):
    """(latents [n, 4, 16, 16] normalised as the pipeline's, ids [n, 77 + 77 + 77]) of random renders."""
    latents, ids = [], []
    for start in tqdm(range(0, cfg.pool_size, batch), desc="encode pool"):
        captions, images = captioned_renders(rng, min(batch, cfg.pool_size - start), cfg.multi_fraction,
                                             cfg.long_fraction)
        with torch.no_grad():
            mean = vae.encode(to_model_range(images)).latent_dist.mean
        latents.append((mean - vae.config.shift_factor) * vae.config.scaling_factor)
        ids.append(tokenizer(captions).input_ids)
    return torch.cat(latents), torch.cat(ids)


def pretrain_flow(out_dir: str | Path, cfg: FlowPretrainConfig | None = None) -> StableDiffusion3Pipeline:
    """Train the toy SD3-shaped model and save it with ``save_pretrained`` (safetensors) under ``out_dir``."""
    from ..families.flow import LazyEncoder
    from ..families.sd3 import SD3Conditioner

    cfg = cfg or FlowPretrainConfig()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    start = time.time()
    corpus = captioned_renders(rng, cfg.corpus_size, 0.3, 0.5)[0]  # captions only: every phrasing, many scenes
    tokenizers, encoders, transformer = make_flow_parts(cfg, corpus)
    joint = JointTokenizer(tokenizers, [77, 77, T5_LENGTH])
    vae = normalised_vae(cfg.vae_from, rng)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=cfg.shift)
    sigmas = scheduler.sigmas.clone()  # [1000], index -> σ
    latents, ids = encode_pool(vae, joint, rng, cfg)
    empty = joint([""]).input_ids
    # the T5 here trains with the rest: a LazyEncoder that hands it over as is (no freezing placement)
    conditioner = SD3Conditioner(encoders[0], encoders[1], LazyEncoder(lambda: encoders[2]), joint, T5_LENGTH,
                                 cfg.width)
    params = list(transformer.parameters()) + [p for e in encoders for p in e.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_with_warmup(s, cfg.warmup_steps, cfg.steps))
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True, power=3 / 4)
    generator = torch.Generator().manual_seed(cfg.seed)
    bar = tqdm(range(cfg.steps), desc="pretrain transformer+text")
    for _ in bar:
        idx = torch.from_numpy(rng.integers(0, len(latents), cfg.batch_size))
        batch_ids = ids[idx].clone()
        batch_ids[torch.from_numpy(rng.random(cfg.batch_size) < cfg.empty_caption_rate)] = empty
        x0 = latents[idx]  # [B, 4, 16, 16]
        noise = torch.randn(x0.shape, generator=generator)
        u = compute_density_for_timestep_sampling("logit_normal", cfg.batch_size, 0.0, 1.0, generator=generator)
        index = (u * len(sigmas)).long().clamp(max=len(sigmas) - 1)
        sigma = sigmas[index].view(-1, 1, 1, 1)
        states, pooled = conditioner.encode(batch_ids)  # [B, 154, 64], [B, 64]
        x_t = (1 - sigma) * x0 + sigma * noise
        prediction = transformer(hidden_states=x_t, timestep=scheduler.timesteps[index],
                                 encoder_hidden_states=states, pooled_projections=pooled).sample
        loss = (prediction - (noise - x0)).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        ema.step(params)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    ema.copy_to(params)
    pipe = StableDiffusion3Pipeline(transformer=transformer.eval(), scheduler=scheduler, vae=vae,
                                    text_encoder=encoders[0].eval(), tokenizer=tokenizers[0],
                                    text_encoder_2=encoders[1].eval(), tokenizer_2=tokenizers[1],
                                    text_encoder_3=encoders[2].eval(), tokenizer_3=tokenizers[2])
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # Marks the folder as a toy-world base (paths.is_toy_model): training on it ends with the toy comparison.
    (Path(out_dir) / TOY_MODEL_MARKER).write_text(json.dumps({"recipe": dataclasses.asdict(cfg)}, indent=2) + "\n")
    print(f"saved toy flow model to {out_dir} after {(time.time() - start) / 60:.1f} min")
    return pipe

