"""Capped exponential backoff with full jitter, so a fleet that lost the broker together does
not reconnect together (the "thundering herd" after a broker restart)."""

from __future__ import annotations

import random
from typing import Final

BACKOFF_BASE_S: Final = 0.5
BACKOFF_CAP_S: Final = 60.0
"""A gateway retries at least once a minute: buffered data is safe on disk, the broker is not flooded."""


class Backoff:
    """Delays ``uniform(0, min(cap, base * 2**attempt))``; ``reset()`` after a success."""

    def __init__(
        self, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S, rng: random.Random | None = None
    ) -> None:
        if base_s <= 0 or cap_s < base_s:
            raise ValueError(f"need 0 < base_s <= cap_s, got base_s={base_s}, cap_s={cap_s}")
        self._base_s = base_s
        self._cap_s = cap_s
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not cryptography
        self._attempt = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; each call widens the window up to the cap."""
        ceiling = min(self._cap_s, self._base_s * 2 ** min(self._attempt, 32))
        self._attempt += 1
        return self._rng.uniform(0, ceiling)

    def reset(self) -> None:
        """Start again from the base delay."""
        self._attempt = 0
