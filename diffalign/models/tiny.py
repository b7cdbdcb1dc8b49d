"""Tiny, randomly initialised pipelines built from configs: the real architectures' code paths at toy size, offline.

Used by the tests and for trying configs on a CPU. ``build_tiny_sdxl`` has everything SDXL's training path needs
(two text encoders, the second with a projection for the pooled embedding, ``text_time`` added conditioning);
both tokenizers are the offline CLIP tokenizer (models/tokenizer.py).
"""

from __future__ import annotations

from pathlib import Path

import torch


def build_tiny_sdxl(out: str | Path | None = None, seed: int = 0):
    """A StableDiffusionXLPipeline with 32-wide encoders and a 2-level UNet (latent = image / 2); saved if ``out``."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from .tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    text_config = dict(vocab_size=49408, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, max_position_embeddings=77, projection_dim=32, hidden_act="gelu")
    pooled_dim, time_embed = 32, 8
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=64, norm_num_groups=8,
        addition_embed_type="text_time", addition_time_embed_dim=time_embed,
        projection_class_embeddings_input_dim=6 * time_embed + pooled_dim)  # 6 time ids + the pooled text
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        norm_num_groups=8, sample_size=32)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                       steps_offset=1, timestep_spacing="leading", num_train_timesteps=1000)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=CLIPTextModel(CLIPTextConfig(**text_config)),
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**text_config)),
        tokenizer=build_clip_tokenizer(), tokenizer_2=build_clip_tokenizer(), unet=unet, scheduler=scheduler,
        add_watermarker=False)
    if out is not None:
        pipe.save_pretrained(out, safe_serialization=True)
    return pipe
