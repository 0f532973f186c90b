"""Out of range, with a dwell before opening and hysteresis before closing.

A value outside the profile's range must stay outside for ``alarm_dwell_s`` before an excursion
opens (warning), so a door opening or a defrost spike is not an excursion; the excursion escalates
to critical (an ``update``) once it has lasted ``max_single_excursion_s``; it closes on the first
reading back inside the range by ``hysteresis_c`` (``hysteresis_rh``), so noise at the limit does
not close and reopen it. Temperature and humidity are judged alike, each with its own range.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

from coldchain.messages import Reading
from hub.detectors.base import (
    Finding,
    FindingKind,
    SeriesDetector,
    SeriesKey,
    SeriesState,
    Severity,
    describe,
    unit,
    value_bounds,
    value_range,
)
from hub.profiles import ProductProfile


class OutOfRangeState(SeriesState, array_like=True, gc=False):
    """Per-series state: the pending or open excursion, if any."""

    out_since_ms: int | None = None
    """Time of the first reading of the current run outside the range."""
    worst: float = 0.0
    severity: str | None = None
    """Severity of the open excursion; ``None`` while none is open."""


class OutOfRangeDetector(SeriesDetector[OutOfRangeState]):
    """Opens an excursion when a value stays out of range for the dwell (see the module text)."""

    kind: ClassVar[FindingKind] = FindingKind.OUT_OF_RANGE
    state_type: ClassVar[type[SeriesState]] = OutOfRangeState

    def _start(self, key: SeriesKey, reading: Reading, profile: ProductProfile) -> OutOfRangeState | None:
        low, high, _ = value_range(profile, key.quantity)
        if low is None and high is None:
            return None
        return OutOfRangeState(reading.ts_ms)

    def _first(
        self, key: SeriesKey, state: OutOfRangeState, reading: Reading, profile: ProductProfile
    ) -> list[Finding]:
        return self.judge(key, state, (reading,), profile)

    def judge(
        self, key: SeriesKey, state: OutOfRangeState, readings: Sequence[Reading], profile: ProductProfile
    ) -> list[Finding]:
        low, high, _ = value_range(profile, key.quantity)
        below, above = value_bounds(profile, key.quantity)
        silent_after_ms = profile.silent_after_s * 1000
        findings: list[Finding] = []
        last_ts = state.last_ts_ms
        for reading in readings:
            value, ts = reading.value, reading.ts_ms
            if state.severity is not None:
                findings += self._judge_open(key, state, reading, profile)
            elif not (value < below or value > above):
                state.out_since_ms = None
            else:
                # A gap longer than the silence threshold breaks the run: nobody knows what happened in it.
                if state.out_since_ms is None or ts - last_ts > silent_after_ms:
                    state.out_since_ms, state.worst = ts, value
                else:
                    state.worst = _worse(state.worst, value, low, high)
                findings += self._maybe_open(key, state, reading, profile)
            last_ts = ts
        state.last_ts_ms = last_ts
        return findings

    def _judge_open(
        self, key: SeriesKey, state: OutOfRangeState, reading: Reading, profile: ProductProfile
    ) -> list[Finding]:
        """A reading while an excursion is open: close it (back inside by the hysteresis) or escalate it."""
        # Both are set whenever an excursion is open.
        assert state.out_since_ms is not None
        assert state.severity is not None
        low, high, hysteresis = value_range(profile, key.quantity)
        value, ts = reading.value, reading.ts_ms
        back_inside = (low is None or value >= low + hysteresis) and (high is None or value <= high - hysteresis)
        duration_s = (ts - state.out_since_ms) / 1000
        if back_inside:
            finding = Finding(
                key,
                self.kind,
                "close",
                Severity(state.severity),
                state.out_since_ms,
                ts,
                state.worst,
                duration_s,
                f"{describe(key)} back in range at {value:.2f} {unit(key.quantity)} after {duration_s / 60:.1f} min "
                f"(worst {state.worst:.2f})",
            )
            state.severity, state.out_since_ms = None, None
            return [finding]
        state.worst = _worse(state.worst, value, low, high)
        if state.severity == Severity.WARNING and duration_s >= profile.max_single_excursion_s:
            state.severity = Severity.CRITICAL
            return [
                Finding(
                    key,
                    self.kind,
                    "update",
                    Severity.CRITICAL,
                    state.out_since_ms,
                    ts,
                    state.worst,
                    duration_s,
                    f"{describe(key)} out of range for {duration_s / 60:.1f} min, over the "
                    f"{profile.max_single_excursion_s / 60:.0f} min allowed (worst {state.worst:.2f})",
                )
            ]
        return []

    def _maybe_open(
        self, key: SeriesKey, state: OutOfRangeState, reading: Reading, profile: ProductProfile
    ) -> list[Finding]:
        assert state.out_since_ms is not None
        duration_s = (reading.ts_ms - state.out_since_ms) / 1000
        if duration_s < profile.alarm_dwell_s:
            return []
        severity = Severity.CRITICAL if duration_s >= profile.max_single_excursion_s else Severity.WARNING
        state.severity = severity
        low, high, _ = value_range(profile, key.quantity)
        return [
            Finding(
                key,
                self.kind,
                "open",
                severity,
                state.out_since_ms,
                reading.ts_ms,
                state.worst,
                duration_s,
                f"{describe(key)} out of range [{_bound(low)}, {_bound(high)}] {unit(key.quantity)} "
                f"for {duration_s / 60:.1f} min (worst {state.worst:.2f})",
            )
        ]


def _worse(worst: float, value: float, low: float | None, high: float | None) -> float:
    """The value farther outside the range of the two."""

    def distance(v: float) -> float:
        return max(low - v if low is not None else 0.0, v - high if high is not None else 0.0)

    return value if distance(value) > distance(worst) else worst


def _bound(bound: float | None) -> str:
    return "-" if bound is None else f"{bound:g}"
