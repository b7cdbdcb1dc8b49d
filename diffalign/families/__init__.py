"""What differs between model families, behind one interface, so the training step and every objective stay the
same: ε/v-prediction UNets (SD 1.x/2.x, SDXL: families/unet.py) and rectified-flow transformers (SD3/3.5:
families/sd3.py; Flux: families/flux.py; what they share: families/flow.py).

A family is chosen from the pipeline's own class (models/loading.pipeline_kind reads model_index.json), never from
its name, and holds:

    conditioner                         text states of caption ids (models/conditioning.py's interface):
                                        encode(ids [U, L_ids]) -> (states [U, L, D], pooled [U, P]) or (states,);
                                        unet_kwargs(pooled [R, P], meta [R, 6]) -> the denoiser's extra arguments
    latents(sample [N, C, h, w])        a VAE posterior draw -> the latent the denoiser trains on (scaled, shifted)
    draw(shape, generators, range)      one (noise [C, h, w], schedule index) per noise group -> ([G, ...], [G])
    noisy(x0, noise, t)                 x_t [R, C, h, w] at schedule index t [R]
    target(x0, noise, t)                what the denoiser predicts at x_t (ε, v, or the velocity ε − x0)
    predict(model, x_t, t, states, **extra) -> [R, C, h, w]   one call of the denoiser (UNet or transformer)
    dummy_inputs(device)                (x, t, states, extra) of one smallest row: a step with no rows (core/step)
    pipeline_class                      the diffusers pipeline that samples it and loads its LoRA
    lora_targets                        the LoRA target modules diffusers' own LoRA scripts use for it
    unsupported(objective, cfg)         why a method or setting cannot run on the family (None: it can)

The objectives never see any of this: errors are errors, whether of ε, v or the velocity.
"""

from __future__ import annotations

FAMILY_OF_KIND = {"sd": "unet", "sdxl": "unet", "sd3": "sd3", "flux": "flux"}


def family_class(kind: str):
    """The family class of a pipeline kind (models/loading.SUPPORTED's values)."""
    if kind in ("sd", "sdxl"):
        from .unet import UnetFamily

        return UnetFamily
    if kind == "sd3":
        from .sd3 import SD3Family

        return SD3Family
    if kind == "flux":
        from .flux import FluxFamily

        return FluxFamily
    raise ValueError(f"no model family for pipeline kind {kind!r}")


def family_for(parts, train_cfg=None, model_cfg=None):
    """The family of loaded components (models/loading.SDComponents); ``train_cfg``/``model_cfg``: the run's
    train and model config (timestep sampling of flow models, Flux's guidance), defaults when None."""
    return family_class(parts.kind).from_parts(parts, train_cfg, model_cfg)
