"""The models the throughput benchmark trains on: real architectures with random weights (no download), or the
embedded toys.

    toy        assets/toy-sd (SD-shaped, 32 px)              toy-flow   assets/toy-flow (SD3-shaped, 32 px)
    sd15       Stable Diffusion 1.5's UNet, VAE and CLIP-L    sdxl       SDXL base's UNet, VAE, CLIP-L and bigG
    sd35m      SD3.5 Medium's transformer and SD3's VAE; text encoders of the real widths, one layer each
    tiny-sd15, tiny-sdxl, tiny-sd3: the same code paths at toy size (the CPU dry run of gpu_check.sh)

Every builder returns models.loading.SDComponents on ``device`` in float32. Random initialisation of a billion
parameters takes a CPU many seconds and a GPU well under one, so the weights are made where they will run.
"""

from __future__ import annotations

import torch

from diffalign.models.loading import SDComponents

FLOW_MODELS = ("toy-flow", "sd35m", "tiny-sd3")
TOY_MODELS = ("toy", "toy-flow", "tiny-sd15", "tiny-sdxl", "tiny-sd3")  # trained at their data's own 32 px


def build(name: str, device: str) -> SDComponents:
    if name not in BUILDERS:
        raise SystemExit(f"unknown model {name!r}: expected one of {', '.join(BUILDERS)}")
    torch.manual_seed(0)
    if name in RANDOM_AT_FULL_SIZE:
        with torch.device(device):
            return BUILDERS[name]()
    return BUILDERS[name]()  # small: built or loaded on the CPU, placed by the caller


def _clip(width: int, layers: int, heads: int, projection: bool, act: str = "quick_gelu"):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    config = CLIPTextConfig(vocab_size=49408, hidden_size=width, intermediate_size=4 * width,
                            num_hidden_layers=layers, num_attention_heads=heads, max_position_embeddings=77,
                            hidden_act=act, projection_dim=width)
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _vae(latent_channels: int = 4, **extra):
    from diffusers import AutoencoderKL

    return AutoencoderKL(in_channels=3, out_channels=3, latent_channels=latent_channels, layers_per_block=2,
                         block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, **extra)


def _ddpm():
    from diffusers import DDPMScheduler

    return DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", num_train_timesteps=1000)


def sd15() -> SDComponents:
    """runwayml/stable-diffusion-v1-5's configs: UNet 860M, VAE 84M, CLIP ViT-L/14 text encoder 123M."""
    from diffusers import UNet2DConditionModel

    from diffalign.models.tokenizer import build_clip_tokenizer

    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    return SDComponents(kind="sd", tokenizer=build_clip_tokenizer(), text_encoder=_clip(768, 12, 12, False),
                        vae=_vae(sample_size=512), unet=unet, noise_scheduler=_ddpm())


def sdxl() -> SDComponents:
    """stabilityai/stable-diffusion-xl-base-1.0's configs: UNet 2.6B, VAE 84M, CLIP-L 123M and OpenCLIP bigG 695M."""
    from diffusers import UNet2DConditionModel

    from diffalign.models.tokenizer import build_clip_tokenizer

    unet = UNet2DConditionModel(
        sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816)
    tokenizer = build_clip_tokenizer()
    return SDComponents(kind="sdxl", tokenizer=tokenizer, text_encoder=_clip(768, 12, 12, False),
                        tokenizer_2=tokenizer, text_encoder_2=_clip(1280, 32, 20, True, act="gelu"),
                        vae=_vae(sample_size=1024, scaling_factor=0.13025), unet=unet, noise_scheduler=_ddpm())


def sd35m() -> SDComponents:
    """stabilityai/stable-diffusion-3.5-medium's transformer (2.5B) and SD3's 16-channel VAE. The text encoders
    have the real widths (CLIP-L 768, CLIP-G 1280, T5 4096) but one layer each: with a warm encoding cache they only
    run in warm-up, and T5-XXL's 4.7B parameters in float32 would not fit a 24 GB machine."""
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel
    from transformers import T5Config, T5EncoderModel

    from diffalign.families.flow import LazyEncoder
    from diffalign.models.small_tokenizers import build_t5_tokenizer
    from diffalign.models.tokenizer import build_clip_tokenizer

    transformer = SD3Transformer2DModel(
        sample_size=128, patch_size=2, in_channels=16, num_layers=24, attention_head_dim=64, num_attention_heads=24,
        joint_attention_dim=4096, caption_projection_dim=1536, pooled_projection_dim=2048, out_channels=16,
        pos_embed_max_size=384, dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
    t5 = T5EncoderModel(T5Config(vocab_size=256, d_model=4096, d_kv=64, d_ff=1024, num_layers=1, num_heads=64))
    clip_tokenizer = build_clip_tokenizer()
    return SDComponents(kind="sd3", tokenizer=clip_tokenizer, text_encoder=_clip(768, 1, 12, True),
                        tokenizer_2=clip_tokenizer, text_encoder_2=_clip(1280, 1, 20, True),
                        tokenizer_3=build_t5_tokenizer(["a red circle"] * 8), text_encoder_3=LazyEncoder(lambda: t5),
                        vae=_vae(16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609,
                                 scaling_factor=1.5305),
                        unet=transformer, noise_scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
                        max_sequence_length=77)


def _saved(path) -> SDComponents:
    from diffalign.models.loading import load_sd_components

    return load_sd_components(str(path))


def toy() -> SDComponents:
    from diffalign.paths import TOY_SD

    return _saved(TOY_SD)


def toy_flow() -> SDComponents:
    from diffalign.paths import TOY_FLOW

    return _saved(TOY_FLOW)


def _tiny(builder) -> SDComponents:
    """A tiny pipeline of models.tiny, through a folder as a user's model would load."""
    import tempfile

    folder = tempfile.mkdtemp(prefix="bench-tiny-")
    builder(folder)
    return _saved(folder)


def tiny_sd15() -> SDComponents:
    from diffalign.models.tiny import build_tiny_sdxl

    parts = _tiny(build_tiny_sdxl)  # SD1.5's code path: the first text encoder alone, no added conditioning
    unet_config = dict(parts.unet.config, addition_embed_type=None, projection_class_embeddings_input_dim=None,
                       cross_attention_dim=parts.text_encoder.config.hidden_size)
    unet = type(parts.unet).from_config(unet_config)
    return SDComponents(kind="sd", tokenizer=parts.tokenizer, text_encoder=parts.text_encoder, vae=parts.vae,
                        unet=unet, noise_scheduler=_ddpm())


def tiny_sdxl() -> SDComponents:
    from diffalign.models.tiny import build_tiny_sdxl

    return _tiny(build_tiny_sdxl)


def tiny_sd3() -> SDComponents:
    from diffalign.models.tiny import build_tiny_sd3

    return _tiny(build_tiny_sd3)


RANDOM_AT_FULL_SIZE = ("sd15", "sdxl", "sd35m")
BUILDERS = {"toy": toy, "sd15": sd15, "sdxl": sdxl, "toy-flow": toy_flow, "sd35m": sd35m,
            "tiny-sd15": tiny_sd15, "tiny-sdxl": tiny_sdxl, "tiny-sd3": tiny_sd3}
