"""Abnormal fluctuation: erratic jumps between readings, judged with robust statistics.

The detector keeps the last ``WINDOW`` steps of a series: the change from one judged reading to
the next, judged readings being at least ``MIN_STEP_MS`` apart. The statistics were tuned on 5 s
sampling; a series read faster, such as a probe that measures once a second read at 10 Hz (nine
repeats in ten), would otherwise fill the window with zero steps, collapse the MAD to its floor
and take the probe's ordinary noise for jumps. Between two judged readings the step is the largest
swing from the earlier one, so a spike shorter than a step still counts.

The steps' median and MAD (median absolute deviation, times 1.4826 to estimate a standard
deviation; never below ``MIN_SCALE``, half the probe's resolution, so a quiet quantised series does
not divide by zero) are recomputed every ``RECOMPUTE_EVERY`` steps, which keeps the cost O(1)
amortised; each new step gets a robust z-score against them. The median and MAD ignore the jumps
themselves, so a burst of them cannot hide by inflating the scale as a standard deviation would. A
finding (warning) opens when ``fluctuation_outliers`` of the window's steps reach ``fluctuation_z``
(one glitch is not a fluctuation) and closes when none is left in the window. Judged once the
window is full. Gaussian noise alone reaches z = 8 with probability about 1e-15 per step: the false
alarms that remain come from real, if harmless, jumps (docs/detectors.md).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
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
"""Steps kept per series: five minutes at 5 s, enough for a stable median and MAD."""

MIN_STEP_MS: Final = 4_000
"""Shortest step judged: 5 s sampling with its jitter passes whole; faster sampling is judged near it."""

RECOMPUTE_EVERY: Final = 10
"""Readings between two computations of the median and MAD: the scale changes slowly."""

MAD_TO_SIGMA: Final = 1.4826
"""MAD of a normal distribution times this is its standard deviation."""

MIN_SCALE: Final[dict[Quantity, float]] = {Quantity.TEMPERATURE: 0.05, Quantity.HUMIDITY: 0.05}
"""Half the probes' 0.1 resolution: below it, differences are quantisation, not signal."""


class FluctuationState(SeriesState, array_like=True, gc=False):
    """Per-series state: the recent steps, their outlier flags and the cached median and scale.

    ``last_value`` is the value of the last judged reading, at ``last_value_ms``; ``swing`` the
    largest change from it seen since (the step being built).
    """

    last_value: float
    diffs: deque[float] = msgspec.field(default_factory=deque)
    flags: deque[bool] = msgspec.field(default_factory=deque)
    outliers: int = 0
    median: float = 0.0
    scale: float = 0.0
    since_recompute: int = RECOMPUTE_EVERY
    open_since_ms: int | None = None
    worst_z: float = 0.0
    last_value_ms: int = 0
    swing: float = 0.0


class FluctuationDetector(SeriesDetector[FluctuationState]):
    """Opens when robust z-scores of the steps between readings show repeated jumps (see the module text)."""

    kind: ClassVar[FindingKind] = FindingKind.ABNORMAL_FLUCTUATION
    state_type: ClassVar[type[SeriesState]] = FluctuationState

    def _start(self, key: SeriesKey, reading: Reading, profile: ProductProfile) -> FluctuationState | None:
        return FluctuationState(reading.ts_ms, reading.value, last_value_ms=reading.ts_ms)

    def judge(
        self, key: SeriesKey, state: FluctuationState, readings: Sequence[Reading], profile: ProductProfile
    ) -> list[Finding]:
        fluctuation_z, enough_outliers = profile.fluctuation_z, profile.fluctuation_outliers
        min_scale = MIN_SCALE[key.quantity]
        diffs, flags = state.diffs, state.flags
        last_value, last_value_ms, swing = state.last_value, state.last_value_ms, state.swing
        outliers, median, scale, since_recompute = state.outliers, state.median, state.scale, state.since_recompute
        open_since_ms, worst_z = state.open_since_ms, state.worst_z
        findings: list[Finding] = []
        for reading in readings:
            value, ts = reading.value, reading.ts_ms
            change = value - last_value
            if abs(change) > abs(swing):
                swing = change
            if ts - last_value_ms < MIN_STEP_MS:
                continue
            diff, swing = swing, 0.0
            last_value, last_value_ms = value, ts
            if len(diffs) < WINDOW:
                diffs.append(diff)
                flags.append(False)
                continue
            if since_recompute >= RECOMPUTE_EVERY:
                median, scale = _median_and_scale(diffs, min_scale)
                since_recompute = 0
            since_recompute += 1
            z = abs(diff - median) / scale
            outlier = z >= fluctuation_z
            diffs.popleft()
            diffs.append(diff)
            if flags.popleft():
                outliers -= 1
            flags.append(outlier)
            if outlier:
                outliers += 1
            if open_since_ms is None:
                if outliers < enough_outliers:
                    continue
            elif outliers:
                worst_z = max(worst_z, z)
                continue
            state.outliers, state.scale, state.open_since_ms, state.worst_z = outliers, scale, open_since_ms, worst_z
            findings.append(self._judge(key, state, reading, z))
            open_since_ms, worst_z = state.open_since_ms, state.worst_z
        state.last_value, state.last_value_ms, state.swing = last_value, last_value_ms, swing
        state.outliers, state.median, state.scale, state.since_recompute = outliers, median, scale, since_recompute
        state.open_since_ms, state.worst_z = open_since_ms, worst_z
        state.last_ts_ms = readings[-1].ts_ms
        return findings

    def _judge(self, key: SeriesKey, state: FluctuationState, reading: Reading, z: float) -> Finding:
        """Open (enough outliers, none open) or close (one open, no outlier left)."""
        ts = reading.ts_ms
        if state.open_since_ms is None:
            state.open_since_ms, state.worst_z = ts, z
            return Finding(
                key,
                self.kind,
                "open",
                Severity.WARNING,
                ts,
                ts,
                reading.value,
                0.0,
                f"{describe(key)} fluctuating: {state.outliers} jumps in the last {WINDOW} steps, latest "
                f"z = {z:.1f} (typical step {state.scale:.3f} {unit(key.quantity)})",
            )
        state.worst_z = max(state.worst_z, z)
        started, state.open_since_ms = state.open_since_ms, None
        duration_s = (ts - started) / 1000
        return Finding(
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


def _median_and_scale(diffs: deque[float], min_scale: float) -> tuple[float, float]:
    """The median of ``diffs`` and their MAD as a standard deviation, floored at ``min_scale``."""
    ordered = sorted(diffs)
    median = _middle(ordered)
    deviations = sorted([d - median if d > median else median - d for d in ordered])
    return median, max(MAD_TO_SIGMA * _middle(deviations), min_scale)


def _middle(ordered: list[float]) -> float:
    """The median of a sorted, non-empty list."""
    half = len(ordered) // 2
    return ordered[half] if len(ordered) % 2 else (ordered[half - 1] + ordered[half]) / 2
