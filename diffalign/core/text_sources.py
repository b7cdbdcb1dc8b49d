"""Where a training step's text states come from: one object per kind, chosen once (training/steps.py), so the step
itself does not branch on it.

    FrozenText    the frozen encoders, through the encoding cache when there is one
    SegmentText   each caption encoded sentence by sentence by the frozen encoders (LongAlign's segment encoding)
    TrainedText   text encoders that train (a LoRA or all weights): the policy's states with gradient, the
                  reference's from its own encoders (adapters off, or a frozen starting copy)

Every source: ``encode(batch, reference=False)`` -> conditioner.encode's tuple for the batch's distinct captions,
(states [U, L, D],) or SDXL's (states, pooled [U, P]); ``own_reference``: whether the reference reads other states
than the policy; ``add_terms(loss, metrics)`` and ``add_idle_terms(loss)``: terms of the source's own added to
every loss (train.empty_prompt_anchor) and, for a micro-batch of skipped samples, a zero with the same collectives.
"""

from __future__ import annotations

import torch

from ..models.segment_encoding import encode_prompts


class FrozenText:
    own_reference = False  # the reference reads the policy's (frozen) states

    def __init__(self, encoders):
        self.encoders = encoders  # data/encoding_cache.FrozenEncoders: counts calls, reads and fills the cache

    def encode(self, batch: dict, reference: bool = False) -> tuple[torch.Tensor, ...]:
        return self.encoders.text(batch["input_ids"])  # [U, 77] (SDXL [U, 2, 77]) ids

    def add_terms(self, loss: torch.Tensor, metrics: dict) -> tuple[torch.Tensor, dict]:
        return loss, metrics

    def add_idle_terms(self, loss: torch.Tensor) -> torch.Tensor:
        return loss


class SegmentText(FrozenText):
    """The batch's ``captions`` cut into sentences, each encoded in its own 77-token window, cut or padded to
    ``max_length`` rows (models/segment_encoding.py); frozen, uncached encoders."""

    def __init__(self, segment_encoders: list[tuple], max_length: int, device, segmenter: str = "diffalign"):
        self.segment_encoders, self.max_length, self.device = segment_encoders, max_length, device
        self.segmenter = segmenter

    def encode(self, batch: dict, reference: bool = False) -> tuple[torch.Tensor, ...]:
        states, pooled = encode_prompts(batch["captions"], self.segment_encoders, self.max_length,
                                        segmenter=self.segmenter)
        return (states.to(self.device),) if pooled is None else (states.to(self.device), pooled.to(self.device))


class TrainedText:
    """Trained text encoder(s) (models/trained_text.TrainedTextEncoders) read through ``conditioner``."""

    own_reference = True

    def __init__(self, trained, conditioner):
        self.trained, self.conditioner = trained, conditioner
        self.empty_ids, self.empty_start, self.empty_prompt_weight = None, (), 0.0  # anchor_empty_prompt sets them

    def encode(self, batch: dict, reference: bool = False) -> tuple[torch.Tensor, ...]:
        return self.trained.encode(self.conditioner, batch["input_ids"], reference)

    def anchor_empty_prompt(self, empty_ids: torch.Tensor, weight: float) -> None:
        """Add ``weight`` x empty_prompt_drift to every loss (train.empty_prompt_anchor), where

            empty_prompt_drift = sum over encode's outputs of mean((E_theta(empty) - E_start(empty))^2)

        on the empty prompt's ids ``empty_ids`` ([77], SDXL [2, 77]): classifier-free guidance's unconditional input
        in SD pipelines. Call it before training, and before a checkpoint is loaded: E_start is computed here, once,
        from the encoder as it is now (the starting model, the reference's), in the same precision as the policy's
        later encodes, so the drift is exactly 0 at the start."""
        self.empty_ids, self.empty_prompt_weight = empty_ids[None], weight  # [1, 77] or [1, 2, 77]
        with torch.no_grad():
            self.empty_start = tuple(part.detach() for part in self.trained.encode(self.conditioner, self.empty_ids))

    def empty_prompt_drift(self) -> torch.Tensor:
        policy = self.trained.encode(self.conditioner, self.empty_ids)
        return sum(((p.float() - s.float()) ** 2).mean() for p, s in zip(policy, self.empty_start))

    def add_terms(self, loss: torch.Tensor, metrics: dict) -> tuple[torch.Tensor, dict]:
        if not self.empty_prompt_weight:
            return loss, metrics
        drift = self.empty_prompt_drift()
        return loss + self.empty_prompt_weight * drift, {**metrics, "empty_prompt_drift": drift.item()}

    def add_idle_terms(self, loss: torch.Tensor) -> torch.Tensor:
        # The text encoders' gradients are averaged by hand, parameter by parameter, on every rank: this rank must
        # have the same gradients present (zeros), or its all-reduces pair with others' calls.
        device = loss.device
        ids = torch.zeros((1, 2, 77) if self.conditioner.kind == "sdxl" else (1, 77), dtype=torch.long, device=device)
        loss = loss + 0.0 * sum(part.float().sum() for part in self.conditioner.encode(ids))
        if self.empty_prompt_weight:  # the anchor's own term, as the other ranks add it
            loss = loss + self.empty_prompt_weight * self.empty_prompt_drift()
        return loss
