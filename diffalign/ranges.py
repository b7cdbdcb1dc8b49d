"""The valid ranges of numeric settings (training config and evaluation alike), checked before any model loads.

Out of range, each used to fail late and obscurely: 0 seeds as "need at least one array to stack", 0 steps as a
ZeroDivisionError inside the scheduler, a batch size of 0 as a range() error, a limit of 0 (falsy) as no limit at
all, an infinite lr as an all-NaN LoRA. Each rule converts (a CLI string or a number) and checks; `diffalign eval`
uses them as argparse types, ``evaluate`` and ``SamplingSettings`` on their arguments, config.validate on the
training config, so every path shares one definition of each range.
"""

from __future__ import annotations

import math
from typing import Callable


def _rule(kind: type, expected: str, ok: Callable) -> Callable:
    """A check converting its value to ``kind``: the number, or ValueError("expected <expected>, got <value>")."""

    def check(value):
        try:
            number = kind(value)
            # int(2.5) would quietly drop the .5: a number given as a number must convert exactly
            valid = (isinstance(value, str) or number == value) and not isinstance(value, bool) and ok(number)
        except (TypeError, ValueError, OverflowError):
            valid = False
        if not valid:
            raise ValueError(f"expected {expected}, got {value}")
        return number

    return check


count = _rule(int, "an integer >= 1", lambda n: n >= 1)  # seeds per prompt, steps, batch size, limit, text rows
non_negative_int = _rule(int, "an integer >= 0", lambda n: n >= 0)  # warmup steps, workers, save intervals
seed = non_negative_int
# diffusers' SD pipelines refuse sides that are not multiples of 8 (the VAE's downsampling), but only once loaded
image_side = _rule(int, "a positive multiple of 8", lambda n: n > 0 and n % 8 == 0)
positive = _rule(float, "a finite number > 0", lambda x: math.isfinite(x) and x > 0)  # lr, eps, alpha, beta
non_negative = _rule(float, "a finite number >= 0", lambda x: math.isfinite(x) and x >= 0)
guidance = non_negative
below_one = _rule(float, "a number in [0, 1)", lambda x: 0 <= x < 1)  # Adam's betas
# NaN fails the comparison too
fraction = _rule(float, "a number in [0, 1] (0: plain classifier-free guidance)", lambda x: 0 <= x <= 1)


def check_ranges(**rules_and_values: tuple[Callable, object]) -> None:
    """ValueError naming the first argument out of its range; ``name=(rule, value)``, a value of None is unset."""
    for name, (rule, value) in rules_and_values.items():
        if value is not None:
            try:
                rule(value)
            except ValueError as err:
                raise ValueError(f"{name}: {err}") from None
