"""Pretraining the embedded toy Stable Diffusion from scratch on the shapes world (`diffalign toy pretrain`).

Two stages, deterministic under ``seed`` on CPU:
1. the VAE, as an autoencoder with a tiny KL weight, on random renders;
2. the UNet and the CLIP text encoder jointly with the epsilon-prediction loss of SD weighted by Min-SNR-5
   (Hang et al., 2023: the same optimum, several times faster convergence), 10% empty captions (so classifier-free
   guidance works), and an EMA of the weights, which is what gets saved. Latents of a fixed pool of renders are
   encoded once, so the VAE is not run in the loop. ``zero_terminal_snr``: a zero-terminal-SNR schedule and the
   v-prediction loss instead, weighted alike (``min_snr_weights``). ``frozen_text_encoder``: the UNet alone trains,
   conditioned on a given CLIP's text tower kept frozen (SD1.5's recipe; the default trains the encoder too).
The latent scaling factor is measured (1 / std of the latents), as SD's 0.18215 was.
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
import torch.nn.functional as F
from diffusers import StableDiffusionPipeline
from diffusers.training_utils import EMAModel
from tqdm.auto import tqdm
from transformers import CLIPTextModel, CLIPTokenizer

from ..core.errors import noisy_latents_and_target
from ..models.tokenizer import build_clip_tokenizer
from ..paths import TOY_MODEL_MARKER
from .model import make_scheduler, make_text_encoder, make_unet, make_vae, text_encoder_config
from .samples import captioned_renders, to_model_range


@dataclass
class PretrainConfig:
    seed: int = 0
    vae_steps: int = 800
    vae_lr: float = 2e-3
    vae_kl_weight: float = 1e-6
    unet_steps: int = 3000
    pool_size: int = 30000  # captioned renders whose latents the UNet stage trains on
    multi_fraction: float = 0.08  # multi-object scenes: few, so single objects (the default world) come out clean
    long_fraction: float = 0.2  # captions in the verbose style
    batch_size: int = 64
    lr: float = 1e-3
    warmup_steps: int = 100
    min_snr_gamma: float = 5.0
    empty_caption_rate: float = 0.1
    ema_decay: float = 0.999
    zero_terminal_snr: bool = False  # rescaled betas + v-prediction (toy/model.py make_scheduler)
    # A CLIP folder (CLIPModel or CLIPTextModel, e.g. assets/toy-clip) whose text tower conditions the UNet, frozen,
    # as SD1.5 conditions on OpenAI's frozen CLIP. None: a text encoder trained from scratch with the UNet.
    frozen_text_encoder: str | None = None


def _cosine_with_warmup(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def train_vae(cfg: PretrainConfig, rng: np.random.Generator):
    vae = make_vae()
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine_with_warmup(s, 50, cfg.vae_steps))
    bar = tqdm(range(cfg.vae_steps), desc="pretrain vae")
    for _ in bar:
        _, images = captioned_renders(rng, cfg.batch_size, cfg.multi_fraction, cfg.long_fraction)
        x = to_model_range(images)  # [B, 3, 32, 32]
        posterior = vae.encode(x).latent_dist
        recon = vae.decode(posterior.sample()).sample
        # L1 on top of MSE keeps flat colours exact (the judge reads colours by nearest palette entry).
        loss = F.mse_loss(recon, x) + 0.5 * F.l1_loss(recon, x) + cfg.vae_kl_weight * posterior.kl().mean()
        loss.backward()
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        bar.set_postfix(loss=f"{loss.item():.4f}")
    vae.eval().requires_grad_(False)
    _, images = captioned_renders(rng, 1024)
    with torch.no_grad():
        latents = vae.encode(to_model_range(images)).latent_dist.mean
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    return vae


def encode_pool(vae, tokenizer, rng: np.random.Generator, cfg: PretrainConfig, batch: int = 500):
    """(latent means [n, 4, 16, 16], token ids [n, 77], captions): the UNet stage's training set."""
    means, ids, all_captions = [], [], []
    n = cfg.pool_size
    for start in tqdm(range(0, n, batch), desc="encode pool"):
        captions, images = captioned_renders(rng, min(batch, n - start), cfg.multi_fraction, cfg.long_fraction)
        with torch.no_grad():
            means.append(vae.encode(to_model_range(images)).latent_dist.mean * vae.config.scaling_factor)
        ids.append(tokenizer(captions, padding="max_length", max_length=tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids)
        all_captions += captions
    return torch.cat(means), torch.cat(ids), all_captions


def min_snr_weights(scheduler, t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Per-sample Min-SNR-gamma weight, SNR_t = abar_t / (1 - abar_t): min(SNR_t, gamma) / SNR_t for epsilon
    prediction, min(SNR_t, gamma) / (SNR_t + 1) for v-prediction. Both weight the x0 error by min(SNR_t, gamma)
    (the epsilon error is SNR_t times it, the v error SNR_t + 1 times), so the two parameterisations train the
    same balance of timesteps. SNR 0 (a zero-terminal-SNR schedule's last step, which sampling starts from)
    gets weight 1: the formula would give 0 (v) or 0/0 (epsilon) and leave that step untrained."""
    abar = scheduler.alphas_cumprod[t]
    snr = abar / (1 - abar)
    scale = snr + 1 if scheduler.config.prediction_type == "v_prediction" else snr
    return torch.where(snr > 0, torch.clamp(snr, max=gamma) / scale.clamp(min=1e-12), torch.ones_like(snr))


def denoising_loss(unet, scheduler, x0, noise, t, states, gamma: float) -> torch.Tensor:
    """The Min-SNR-weighted mean squared error [scalar] of the UNet's prediction of the scheduler's target
    (the noise for epsilon prediction, v for v-prediction) at x_t; x0, noise [B, 4, 16, 16], t [B]."""
    x_t, target = noisy_latents_and_target(scheduler, x0, noise, t)
    per_sample = (unet(x_t, t, states).sample - target).pow(2).mean(dim=(1, 2, 3))  # [B]
    return (per_sample * min_snr_weights(scheduler, t, gamma)).mean()


def load_frozen_text_encoder(path: str) -> CLIPTextModel:
    """The text tower of the CLIP at ``path`` (safetensors), frozen. Its shape must be the toy's (width 64, 77
    positions), so the UNet's cross-attention fits it; its vocabulary is its tokenizer's (frozen_tokenizer)."""
    encoder = CLIPTextModel.from_pretrained(path, use_safetensors=True, dtype=torch.float32)  # as the UNet trains
    expected = text_encoder_config()  # the config alone: building a model would draw from the RNG
    for key in ("hidden_size", "max_position_embeddings"):
        if getattr(encoder.config, key) != getattr(expected, key):
            raise ValueError(f"{path}: text encoder {key} is {getattr(encoder.config, key)}, the toy UNet needs "
                             f"{getattr(expected, key)}")
    return encoder.eval().requires_grad_(False)


def train_unet(cfg: PretrainConfig, rng: np.random.Generator, vae, tokenizer, on_step=None,
               frozen_text_encoder: CLIPTextModel | None = None):
    """``frozen_text_encoder``: cfg.frozen_text_encoder's, loaded by the caller (None: train one from scratch)."""
    frozen = frozen_text_encoder is not None
    text_encoder = frozen_text_encoder if frozen else make_text_encoder()
    unet, scheduler = make_unet(), make_scheduler(cfg.zero_terminal_snr)
    latents, ids, _ = encode_pool(vae, tokenizer, rng, cfg)
    empty_ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length,
                          return_tensors="pt").input_ids
    params = list(unet.parameters()) + ([] if frozen else list(text_encoder.parameters()))
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: _cosine_with_warmup(s, cfg.warmup_steps, cfg.unet_steps))
    ema = EMAModel(params, decay=cfg.ema_decay, use_ema_warmup=True, power=3 / 4)
    bar = tqdm(range(cfg.unet_steps), desc="pretrain unet" if frozen else "pretrain unet+text")
    for step in bar:
        idx = torch.from_numpy(rng.integers(0, len(latents), cfg.batch_size))
        batch_ids = ids[idx].clone()
        batch_ids[torch.from_numpy(rng.random(cfg.batch_size) < cfg.empty_caption_rate)] = empty_ids
        x0 = latents[idx]  # [B, 4, 16, 16], already scaled
        noise = torch.randn_like(x0)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (x0.shape[0],))
        with torch.set_grad_enabled(not frozen):
            states = text_encoder(batch_ids)[0]  # [B, 77, 64]
        loss = denoising_loss(unet, scheduler, x0, noise, t, states, cfg.min_snr_gamma)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(), sched.step(), opt.zero_grad(set_to_none=True)
        ema.step(params)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if on_step is not None:
            on_step(step + 1, unet, text_encoder, scheduler, ema)
    ema.copy_to(params)
    return unet.eval(), text_encoder.eval(), scheduler


def pretrain(out_dir: str | Path, cfg: PretrainConfig | None = None) -> StableDiffusionPipeline:
    """Train the toy SD and save it with ``save_pretrained`` (safetensors) under ``out_dir``."""
    cfg = cfg or PretrainConfig()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    start = time.time()
    # Loaded (and its shape checked) before the VAE's minutes, not after; loading draws nothing from the RNGs. A
    # frozen CLIP comes with its own tokenizer (the shipped toy CLIPs' vocabularies are cut: toy/shrink.py).
    frozen = load_frozen_text_encoder(cfg.frozen_text_encoder) if cfg.frozen_text_encoder else None
    tokenizer = CLIPTokenizer.from_pretrained(cfg.frozen_text_encoder) if frozen is not None else build_clip_tokenizer()
    vae = train_vae(cfg, rng)
    unet, text_encoder, scheduler = train_unet(cfg, rng, vae, tokenizer, frozen_text_encoder=frozen)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(out_dir, safe_serialization=True)
    # Marks the folder as a toy-world base (paths.is_toy_model): training on it ends with the toy comparison.
    (Path(out_dir) / TOY_MODEL_MARKER).write_text(json.dumps({"recipe": dataclasses.asdict(cfg)}, indent=2) + "\n")
    print(f"saved toy SD to {out_dir} after {(time.time() - start) / 60:.1f} min")
    return pipe
