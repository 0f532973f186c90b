"""Abnormal fluctuation: erratic jumps between readings, judged with robust statistics.

The detector keeps the last ``WINDOW`` first differences (value minus previous value) of a
series. Their median and MAD (median absolute deviation, times 1.4826 to estimate a standard
deviation; never below ``MIN_SCALE``, half the probe's resolution, so a quiet quantised series does
not divide by zero) are recomputed every ``RECOMPUTE_EVERY`` readings, which keeps the cost O(1)
amortised; each new difference gets a robust z-score against them. The median and MAD ignore the
jumps themselves, so a burst of them cannot hide by inflating the scale as a standard deviation
would. A finding (warning) opens when ``fluctuation_outliers`` of the window's differences reach
``fluctuation_z`` (one glitch is not a fluctuation) and closes when none is left in the window.
Judged once the window is full. Gaussian noise alone reaches z = 8 with probability about 1e-15
per step: the false alarms that remain come from real, if harmless, jumps (docs/detectors.md).
"""

from __future__ import annotations

import statistics
from collections import deque
from typing import ClassVar, Final

import msgspec

from coldchain.messages import Quantity, Reading
from hub.detectors.base import (
    Finding,
    FindingKind,
    SeriesDetector,
    SeriesKey,
    SeriesState,
    Severity,
    describe,
    unit,
)
from hub.profiles import ProductProfile

WINDOW: Final = 60
"""Differences kept per series: five minutes at 5 s, enough for a stable median and MAD."""

RECOMPUTE_EVERY: Final = 10
"""Readings between two computations of the median and MAD: the scale changes slowly."""

MAD_TO_SIGMA: Final = 1.4826
"""MAD of a normal distribution times this is its standard deviation."""

MIN_SCALE: Final[dict[Quantity, float]] = {Quantity.TEMPERATURE: 0.05, Quantity.HUMIDITY: 0.05}
"""Half the probes' 0.1 resolution: below it, differences are quantisation, not signal."""


class FluctuationState(SeriesState, array_like=True, gc=False):
    """Per-series state: the recent differences, their outlier flags and the cached median and scale."""

    last_value: float
    diffs: deque[float] = msgspec.field(default_factory=deque)
    flags: deque[bool] = msgspec.field(default_factory=deque)
    outliers: int = 0
    median: float = 0.0
    scale: float = 0.0
    since_recompute: int = RECOMPUTE_EVERY
    open_since_ms: int | None = None
    worst_z: float = 0.0


class FluctuationDetector(SeriesDetector[FluctuationState]):
    """Opens when robust z-scores of the steps between readings show repeated jumps (see the module text)."""

    kind: ClassVar[FindingKind] = FindingKind.ABNORMAL_FLUCTUATION
    state_type: ClassVar[type[SeriesState]] = FluctuationState

    def _start(self, key: SeriesKey, reading: Reading, profile: ProductProfile) -> FluctuationState | None:
        return FluctuationState(reading.ts_ms, reading.value)

    def _next(
        self, key: SeriesKey, state: FluctuationState, reading: Reading, profile: ProductProfile
    ) -> list[Finding]:
        diff = reading.value - state.last_value
        state.last_value = reading.value
        diffs, flags = state.diffs, state.flags
        if len(diffs) < WINDOW:
            diffs.append(diff)
            flags.append(False)
            return []
        if state.since_recompute >= RECOMPUTE_EVERY:
            state.median = statistics.median(diffs)
            mad = statistics.median([abs(d - state.median) for d in diffs])
            state.scale = max(MAD_TO_SIGMA * mad, MIN_SCALE[key.quantity])
            state.since_recompute = 0
        state.since_recompute += 1
        z = abs(diff - state.median) / state.scale
        outlier = z >= profile.fluctuation_z
        diffs.popleft()
        state.outliers -= flags.popleft()
        diffs.append(diff)
        flags.append(outlier)
        state.outliers += outlier
        return self._judge(key, state, reading, profile, z)

    def _judge(
        self, key: SeriesKey, state: FluctuationState, reading: Reading, profile: ProductProfile, z: float
    ) -> list[Finding]:
        ts = reading.ts_ms
        if state.open_since_ms is None:
            if state.outliers < profile.fluctuation_outliers:
                return []
            state.open_since_ms, state.worst_z = ts, z
            return [
                Finding(
                    key,
                    self.kind,
                    "open",
                    Severity.WARNING,
                    ts,
                    ts,
                    reading.value,
                    0.0,
                    f"{describe(key)} fluctuating: {state.outliers} jumps in the last {WINDOW} readings, latest "
                    f"z = {z:.1f} (typical step {state.scale:.3f} {unit(key.quantity)})",
                )
            ]
        state.worst_z = max(state.worst_z, z)
        if state.outliers:
            return []
        started, state.open_since_ms = state.open_since_ms, None
        duration_s = (ts - started) / 1000
        return [
            Finding(
                key,
                self.kind,
                "close",
                Severity.WARNING,
                started,
                ts,
                reading.value,
                duration_s,
                f"{describe(key)} steady again after {duration_s / 60:.1f} min (largest z = {state.worst_z:.1f})",
            )
        ]
