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


# Captions the tiny flow models' small tokenizers are built from (any other text still tokenizes, in byte pieces).
TINY_CORPUS = ["a photo of a cat", "a red circle on the left", "a large blue square at the top on a white background",
               "a small green triangle. the background is sky."]


def _tiny_flow_text_parts(corpus: list[str], clip_width: int, t5_width: int):
    """(CLIP tokenizer, CLIP text config kwargs, T5 tokenizer, T5 encoder) at toy size, built offline."""
    from transformers import T5Config, T5EncoderModel

    from .small_tokenizers import build_small_clip_tokenizer, build_t5_tokenizer

    clip_tokenizer, t5_tokenizer = build_small_clip_tokenizer(corpus), build_t5_tokenizer(corpus, vocab_size=64)
    clip_config = dict(vocab_size=len(clip_tokenizer), hidden_size=clip_width, intermediate_size=2 * clip_width,
                       num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=77,
                       projection_dim=clip_width, hidden_act="gelu", bos_token_id=len(clip_tokenizer) - 2,
                       eos_token_id=len(clip_tokenizer) - 1, pad_token_id=len(clip_tokenizer) - 1)
    t5 = T5EncoderModel(T5Config(vocab_size=len(t5_tokenizer), d_model=t5_width, d_kv=t5_width // 4,
                                 d_ff=2 * t5_width, num_layers=2, num_heads=4, relative_attention_num_buckets=8,
                                 pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    return clip_tokenizer, clip_config, t5_tokenizer, t5


def _tiny_flow_vae(shift: float, scaling: float):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(32, 64),
                         down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                         norm_num_groups=8, sample_size=32, shift_factor=shift, scaling_factor=scaling)


def build_tiny_sd3(out: str | Path | None = None, seed: int = 0, corpus: list[str] | None = None, t5: bool = True):
    """A StableDiffusion3Pipeline at toy size (latent = image / 2, 2x2 patches): CLIP-L and CLIP-G slots 32 wide,
    a 64-wide T5 (``t5=False``: none, as SD3 runs without it), a 2-layer SD3 transformer; shift 3.0, a VAE with
    a shift factor (as SD3's). Saved if ``out``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    torch.manual_seed(seed)
    clip_tokenizer, clip_config, t5_tokenizer, t5_encoder = _tiny_flow_text_parts(corpus or TINY_CORPUS, 32, 64)
    transformer = SD3Transformer2DModel(sample_size=16, patch_size=2, in_channels=4, num_layers=2,
                                        attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                        caption_projection_dim=32, pooled_projection_dim=64, out_channels=4,
                                        pos_embed_max_size=16)
    pipe = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_tiny_flow_vae(0.0609, 1.5035),
        text_encoder=CLIPTextModelWithProjection(CLIPTextConfig(**clip_config)), tokenizer=clip_tokenizer,
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**clip_config)), tokenizer_2=clip_tokenizer,
        text_encoder_3=t5_encoder if t5 else None, tokenizer_3=t5_tokenizer if t5 else None)
    if out is not None:
        pipe.save_pretrained(out, safe_serialization=True)
    return pipe


def build_tiny_flux(out: str | Path | None = None, seed: int = 0, corpus: list[str] | None = None,
                    guidance_embeds: bool = True):
    """A FluxPipeline at toy size: a 32-wide CLIP-L slot (pooled), a 64-wide T5, a Flux transformer with one double
    and one single block on 2x2-packed 4-channel latents; a guidance embedding as Flux-dev's. Saved if ``out``."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    clip_tokenizer, clip_config, t5_tokenizer, t5_encoder = _tiny_flow_text_parts(corpus or TINY_CORPUS, 32, 64)
    transformer = FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=64,
                                         pooled_projection_dim=32, guidance_embeds=guidance_embeds,
                                         axes_dims_rope=(4, 6, 6))
    pipe = FluxPipeline(transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                        vae=_tiny_flow_vae(0.1159, 0.3611),
                        text_encoder=CLIPTextModel(CLIPTextConfig(**clip_config)), tokenizer=clip_tokenizer,
                        text_encoder_2=t5_encoder, tokenizer_2=t5_tokenizer)
    if out is not None:
        pipe.save_pretrained(out, safe_serialization=True)
    return pipe
