"""What a PPD user encoder reads: a user's preferences, one (caption, preferred image, dispreferred image) each.

Every encoder kind (user_encoders.py, user_vlm.py) and the data layer that gathers a user's examples share it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class UserExample:
    """One preference of a user. ``chosen``/``rejected``: PIL images; ``key`` names the example for caching
    (e.g. ``"pairs.parquet#17"``), None: never cached. Subclasses may decode the images lazily."""

    caption: str
    chosen: object
    rejected: object
    key: str | None = None
