"""A Stable Diffusion pipeline with SoftREPA soft tokens (trained by ``--method softrepa``).

    from diffalign.pipelines.soft_tokens_sd import SoftTokensStableDiffusionPipeline
    pipe = SoftTokensStableDiffusionPipeline.from_pretrained("stable-diffusion-v1-5/stable-diffusion-v1-5")
    pipe.load_soft_tokens("outputs/sd15-softrepa-captions")   # the folder with soft_tokens.safetensors
    image = pipe("two red apples to the left of a blue cup").images[0]
"""

from __future__ import annotations

from diffusers import StableDiffusionPipeline

from diffalign.models.soft_tokens import load_soft_tokens


class SoftTokensStableDiffusionPipeline(StableDiffusionPipeline):
    def load_soft_tokens(self, folder: str):
        """Route the UNet's down-block cross-attention through the saved tokens; returns them."""
        return load_soft_tokens(self.unet, folder)
