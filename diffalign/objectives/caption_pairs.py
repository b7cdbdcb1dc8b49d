"""The options every caption-pair objective (TPO's TDPO and TKTO) shares: how the negative caption is made."""

from __future__ import annotations

from dataclasses import dataclass, field

from .base import Options


def _all_axes() -> list[str]:
    from ..data.perturb import AXES

    return list(AXES)


@dataclass
class CaptionPerturbOptions(Options):
    # which attribute kinds the rule-based perturber may change in a caption (data/perturb.py)
    perturb_axes: list[str] = field(default_factory=_all_axes)
    perturber_model: str | None = None  # a local text-generation model (hub id or folder) instead of the rules

    def check(self) -> None:
        super().check()
        from ..data.perturb import AXES

        bad = sorted(set(self.perturb_axes) - set(AXES))
        if bad or not self.perturb_axes:
            raise ValueError(f"perturb_axes: unknown {bad} (or empty); expected some of {list(AXES)}")


class CaptionPairs:
    """Mixin: the data factory's view of CaptionPerturbOptions."""

    @property
    def perturb_axes(self) -> tuple[str, ...]:
        return tuple(self.options.perturb_axes)

    @property
    def perturber_model(self) -> str | None:
        return self.options.perturber_model
