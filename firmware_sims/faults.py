"""Faults every simulated device can be told to show, so the agent is tested against bad hardware.

A simulator holds one ``FaultState`` (mutable, read by its serving thread on every frame) and
offers ``unplug()`` / ``replug()`` for the cable: the pty goes away and a new one appears at the
same ``link`` path, as a USB serial adapter does when it re-enumerates.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field


@dataclass
class FaultState:
    """What is wrong with a device right now; the defaults are a healthy device."""

    corrupt_probability: float = 0.0
    """Chance that an outgoing frame has one byte flipped (line noise, a loose connector)."""
    silent: bool = False
    """The device does not answer at all (no power, dead firmware)."""
    stuck: bool = False
    """Measured values freeze at their last value (a hung sensor that still answers)."""
    clock_offset_s: float = 0.0
    """Added to the device's own clock where it reports time (GPS UTC): a clock jump."""
    rng: random.Random = field(default_factory=lambda: random.Random(0))  # noqa: S311 - simulation, not crypto

    def maybe_corrupt(self, frame: bytes) -> bytes:
        """``frame``, with one byte flipped with probability ``corrupt_probability``."""
        if not frame or self.corrupt_probability <= 0 or self.rng.random() >= self.corrupt_probability:
            return frame
        index = self.rng.randrange(len(frame))
        return frame[:index] + bytes([frame[index] ^ (1 << self.rng.randrange(8))]) + frame[index + 1 :]
