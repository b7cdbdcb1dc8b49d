"""DDIM-InPO (Lu et al., CVPR 2025, arXiv 2503.18454): Diffusion-DPO on inverted latents.

The loss is Diffusion-DPO's (see dpo.py), L = -log σ((β/2) h), h = (m_ref(w) - m_θ(w)) - (m_ref(l) - m_θ(l)); only
the inputs change. Instead of x_t = sqrt(ᾱ_t) x0 + sqrt(1-ᾱ_t) eps, each image is DDIM-inverted by the policy
(core/inversion.py: no grad, conditional, a 10-step grid, η = 0.1 noise) to x_inv, and the errors are measured
against the reparameterised noise eps* = (x_inv - sqrt(ᾱ_t) x0) / sqrt(1 - ᾱ_t) at each row's own t. Both members
of a pair share t. Defaults (paper): β 2000 (SD1.5) / 5000 (SDXL), lr ≈ 1e-5, 400 steps.

The inversion grid is the authors' by default (``inversion="authors"``); ``inversion="diffalign"`` walks
destination levels instead (core/inversion.py). ``inversion_model="reference"`` (not in the paper) inverts with
the frozen reference instead of the policy. With the policy, the inverted latents move with the model being
trained; on the toy world that loses to the base with diffalign's grid (42%) and wins with the authors' (75.5%,
the toy default; docs/results.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..core.inversion import SEMANTICS
from .base import register
from .dpo import DiffusionDPO, DPOOptions


@dataclass
class InPOOptions(DPOOptions):
    beta: float = 2000.0  # β with the paper's ½, as DPO's
    inversion_steps: int = 10  # DDIM inversion steps from x0 to x_t
    inversion_eta: float = 0.1  # stochasticity of the inversion (η)
    # "policy" (the paper and its code) or "reference" (the frozen start: the inverted latents then no longer move
    # with the policy being trained)
    inversion_model: str = "policy"
    # Which grid steps run and which level the UNet is told (core/inversion.py): "authors" (the InPO authors'
    # script under the diffusers it pins: source levels below t, the UNet told -99 first, x_inv at the grid level at
    # or above t) or "diffalign" (destination levels below t; the first step from x0 exactly)
    inversion: str = "authors"

    def check(self) -> None:
        super().check()
        if self.inversion not in SEMANTICS:
            raise ValueError(f"inversion must be one of {', '.join(SEMANTICS)}; got {self.inversion!r}")
        if self.inversion_model not in ("policy", "reference"):
            raise ValueError(f"inversion_model must be 'policy' or 'reference'; got {self.inversion_model!r}")
        if self.inversion_steps < 1:
            raise ValueError(f"inversion_steps must be >= 1; got {self.inversion_steps}")
        if not 0 <= self.inversion_eta < math.inf:
            raise ValueError(f"inversion_eta must be a finite number >= 0; got {self.inversion_eta}")


@register
class DDIMInPO(DiffusionDPO):
    Options = InPOOptions
    name = "inpo"
    summary = "DDIM-InPO: DPO on DDIM-inverted latents of image pairs. arXiv 2503.18454"
    noising = "ddim_inversion"

    def __init__(self, **options):
        super().__init__(**options)
        o = self.options
        self.inversion_model = o.inversion_model
        self.inversion_options = {"steps": int(o.inversion_steps), "eta": float(o.inversion_eta),
                                  "semantics": o.inversion}
