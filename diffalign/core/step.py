"""One micro-batch of any objective: latents, grouped noise, policy and reference errors, loss.

A batch is a set of UNet *rows*, each an (image, caption, noise group) triple, so that one step serves every
pair axis (see objectives.base):
    pixels [N, 3, H, W]   the distinct images;           image_group [N]: the noise group of each image
    input_ids [U, 77]     the distinct captions
    seeds [G]             one seed per noise group (the VAE sample, eps, t and any inversion noise come from it)
    row_image, row_text, row_group [R]: what each row is made of; labels [R] where the objective needs them.
row_detached [R] (optional): rows whose policy errors carry no gradient (KTO's mismatched reference point).
Image pairs: rows (w_1..w_B, l_1..l_B), both members of pair i in group i with caption i. Caption pairs (TPO): rows
(x_i|c_w_i ..., x_i|c_l_i ...), group i. Single images (KTO): one row, one group each.
The policy runs once over all rows; the reference (when the objective needs one) runs once more under
``torch.inference_mode()`` on the same inputs, as the adapters-disabled policy (LoRA) or the frozen copy (full fine-tune).
What differs between UNets and flow transformers (latent scaling, noising, target, the denoiser's call, the text
conditioning) is the model family's (families/): the step reads it and nothing else of the model.
"""

from __future__ import annotations

from contextlib import nullcontext
from functools import partial

import torch

from ..data.encoding_cache import EncodingCache, FrozenEncoders
from ..models.conditioning import cast_floats, take_rows
from ..objectives.base import Objective
from .errors import per_sample_errors
from .inversion import ddim_inversion_latents
from .noise import sample_latents, seeded_generators
from .reference import reference_unet
from .text_sources import FrozenText


class TrainStep:
    def __init__(self, objective: Objective, vae, family, frozen_reference, accelerator,
                 cache: EncodingCache | None = None, user_adapter=None,
                 timestep_range: tuple[int, int] | None = None, text_source=None):
        """``family``: the model family (families/: UNet, SD3 or Flux), which holds the text conditioner.
        ``cache``: frozen-encoder outputs on disk (data.encoding_cache); the encoders run only on misses.
        ``user_adapter``: PPD's (models/user_attention.py); the batch then holds ``user_embedding`` [U, E], one per
        caption, whose user tokens are appended to each row's text states (with gradient, for the projector).
        ``timestep_range``: [low, high) of the training timesteps (train.timestep_range; None = all).
        ``text_source``: where the text states come from (core/text_sources.py); default the frozen encoders
        through the cache. A trained text encoder's or segment encoding's source is built by training/steps.py."""
        self.user_adapter, self.timestep_range = user_adapter, timestep_range
        self.objective, self.vae = objective, vae
        self.family = family
        self.errors = partial(per_sample_errors, predict=family.predict)  # (model, x_t, t, states, target, **kw)
        self.encoders = FrozenEncoders(vae, family.conditioner, cache)
        self.conditioner = self.encoders.conditioner
        self.text = text_source or FrozenText(self.encoders)
        self.frozen_reference, self.accelerator = frozen_reference, accelerator
        objective.bind_processes(self._weighted_mean_over_processes)  # e.g. KTO's reference point

    def _weighted_mean_over_processes(self, value: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """sum_r w_r v_r / sum_r w_r over ranks (0 if every rank had weight 0); scalars in, scalar out."""
        device = self.accelerator.device
        both = self.accelerator.reduce(torch.stack([value * weight, weight]).float().to(device), reduction="sum")
        return both[0] / both[1] if both[1] > 0 else torch.zeros_like(both[0])

    def _no_rows_loss(self, unet) -> torch.Tensor:
        """A zero loss with the collectives of a real step, for a micro-batch left empty by skipped samples.

        Under DDP the other ranks run the UNet through its wrapper and all-reduce gradients in backward; this
        rank must do the same (a forward on a dummy input, times 0) and join the objective's own reductions,
        or the ranks' collectives mismatch and the run hangs or aborts.
        """
        self.objective.empty_batch_collectives(self.accelerator.device)
        x, t, text, extra = self.family.dummy_inputs(self.accelerator.device)  # one smallest row
        if self.user_adapter is not None:  # its parameters join the (zero) gradient like the other ranks'
            text = self.user_adapter.append_tokens(text, text.new_zeros(1, self.user_adapter.embed_dim))
        loss = 0.0 * self.family.predict(unet, x, t, text, **extra).float().sum()
        return self.text.add_idle_terms(loss)  # a trained text encoder's (zero) gradients and its anchor term

    def _text_rows(self, batch: dict, reference: bool = False) -> tuple[torch.Tensor, dict]:
        """Each row's text states [R, L, D] and extra UNet kwargs (SDXL: its pooled text and time ids).

        From the step's text source: frozen encoders without gradient (through the cache); trained ones with
        gradient for the policy, or the reference's own (``reference=True``; the caller picks the grad mode).
        """
        device = self.accelerator.device
        encoded = self.text.encode(batch, reference)  # (states [U, L, D],) or SDXL (+ pooled [U, P])
        row_text = batch["row_text"].to(device)
        pooled = encoded[1][row_text] if len(encoded) > 1 else None
        meta = batch["image_meta"].to(device)[batch["row_image"].to(device)] if "image_meta" in batch else None
        return encoded[0][row_text], self.conditioner.unet_kwargs(pooled, meta)  # [R, 77, D], {} or SDXL's

    @torch.no_grad()
    def _inputs(self, unet, batch: dict, text: torch.Tensor, unet_kwargs: dict, reference_text=None):
        device = self.accelerator.device
        generators = seeded_generators(batch["seeds"])  # [G]
        mean, std = self.encoders.posterior(batch["pixels"])  # [N, C, h, w] each
        images = self.family.latents(sample_latents(mean, std, [generators[g] for g in
                                                                 batch["image_group"].tolist()]))  # [N, C, h, w]
        eps, t = self.family.draw(images.shape[1:], generators, self.timestep_range)  # [G, C, h, w], [G]
        rows, groups = batch["row_image"].to(device), batch["row_group"]
        x0, noise, t = images[rows], eps.to(device)[groups.to(device)], t.to(device)[groups.to(device)]  # [R, ...]
        if self.objective.noising == "ddim_inversion":
            # InPO: x_t comes from inverting x0 (with the policy itself by default); the target is reparameterised.
            policy = self.accelerator.unwrap_model(unet)
            by_reference = self.objective.inversion_model == "reference"
            if by_reference and reference_text is not None:  # the reference reads its own (starting) text states
                text, unet_kwargs = reference_text
            with (reference_unet(policy, self.frozen_reference) if by_reference else nullcontext(policy)) as inverter:
                x_t, noise = ddim_inversion_latents(inverter, self.family.scheduler, x0, t, text,
                                                    [generators[g] for g in groups.tolist()],
                                                    **self.objective.inversion_options, **unet_kwargs)
        else:
            x_t = self.family.noisy(x0, noise, t)
        return x_t, t, self.family.target(x0, noise, t)

    def __call__(self, unet, batch: dict) -> tuple[torch.Tensor, dict]:
        if batch.get("rows") == 0:  # every example of this micro-batch was a skipped bad sample
            return self._no_rows_loss(unet), {}
        batch = self.objective.prepare_batch(batch)
        text, extra = self._text_rows(batch)  # [R, 77, D]; with gradient only when the text encoder trains
        reference_text = None  # a trained text encoder: the reference's own states, computed once
        if self.text.own_reference and self.objective.needs_reference:
            with torch.inference_mode():  # in the same precision as the policy's
                reference_text = self._text_rows(batch, reference=True)
        x_t, t, target = self._inputs(unet, batch, text, extra, reference_text)  # float32; the UNet autocasts
        if self.user_adapter is not None:  # [R, 77, D] -> [R, 77 + K, D]
            users = batch["user_embedding"].to(text.device)[batch["row_text"].to(text.device)]  # [R, E]
            text = self.user_adapter.append_tokens(text, users)
        detached = batch.get("row_detached")
        if detached is None:
            policy = self.errors(unet, x_t, t, text, target, **extra)  # [R] float32
        else:  # rows that only inform the loss (no gradient) run without building a graph
            live = ~detached.to(x_t.device)
            policy = x_t.new_zeros(len(x_t))
            policy[live] = self.errors(unet, x_t[live], t[live], text[live], target[live],
                                             **take_rows(extra, live))
            with torch.no_grad():
                policy[~live] = self.errors(unet, x_t[~live], t[~live], text[~live], target[~live],
                                                  **take_rows(extra, ~live))
        ref = None
        if self.objective.needs_reference:
            # The unwrapped module has no autocast wrapper of its own, so enter accelerate's explicitly.
            # inference_mode: no autograd bookkeeping at all (a little cheaper than no_grad).
            if reference_text is not None:
                text, extra = reference_text
            with torch.inference_mode(), self.accelerator.autocast(), \
                    reference_unet(self.accelerator.unwrap_model(unet), self.frozen_reference,
                                   [self.user_adapter] if self.user_adapter is not None else ()) as r:
                ref = self.errors(r, x_t.to(r.dtype), t, text.to(r.dtype), target,
                                        **cast_floats(extra, r.dtype))
            ref = ref.clone()  # [R]; an ordinary tensor again, as the loss combines it with the policy's under autograd
        loss, metrics = self.objective.row_loss(policy, ref, batch)
        return self.text.add_terms(loss, metrics)  # e.g. train.empty_prompt_anchor's term
