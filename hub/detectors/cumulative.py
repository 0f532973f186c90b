"""Cumulative time out of range over a journey, against the profile's budget.

The time a series spends outside its range is integrated between readings: the interval from one
reading to the next counts as out of range when the earlier reading was outside (the value is held
until the next one), capped at ``silent_after_s`` per interval so that a long silence does not
count as time out of range. Short spikes count too: the budget is about how long the goods sat
warm, not about alarms. One critical finding opens when the total passes
``max_cumulative_excursion_s``; it never closes by itself, because the time cannot be taken back.

A journey is the series' history since its first reading, or since ``reset(key)`` (the hub calls
it when new goods are bound to the node, e.g. at a pickup).
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
    value_bounds,
    value_range,
)
from hub.profiles import ProductProfile


class CumulativeState(SeriesState, array_like=True, gc=False):
    """Per-series state: time out of range so far in the journey."""

    started_ms: int
    outside: bool
    out_ms: int = 0
    exceeded: bool = False


class CumulativeDetector(SeriesDetector[CumulativeState]):
    """Opens once when a journey's time out of range exceeds the budget (see the module text)."""

    kind: ClassVar[FindingKind] = FindingKind.CUMULATIVE_TIME_OUT_OF_RANGE
    state_type: ClassVar[type[SeriesState]] = CumulativeState

    def _start(self, key: SeriesKey, reading: Reading, profile: ProductProfile) -> CumulativeState | None:
        low, high, _ = value_range(profile, key.quantity)
        if low is None and high is None:
            return None
        return CumulativeState(reading.ts_ms, reading.ts_ms, _outside(reading.value, low, high))

    def judge(
        self, key: SeriesKey, state: CumulativeState, readings: Sequence[Reading], profile: ProductProfile
    ) -> list[Finding]:
        below, above = value_bounds(profile, key.quantity)
        longest_ms = int(profile.silent_after_s * 1000)
        budget_ms = profile.max_cumulative_excursion_s * 1000
        last_ts, outside, out_ms = state.last_ts_ms, state.outside, state.out_ms
        findings: list[Finding] = []
        for reading in readings:
            ts = reading.ts_ms
            if outside:
                out_ms += min(ts - last_ts, longest_ms)
            outside = reading.value < below or reading.value > above
            last_ts = ts
            if out_ms > budget_ms and not state.exceeded:
                state.exceeded = True
                findings.append(self._exceeded(key, state, reading, out_ms, profile))
        state.last_ts_ms, state.outside, state.out_ms = last_ts, outside, out_ms
        return findings

    def _exceeded(
        self, key: SeriesKey, state: CumulativeState, reading: Reading, out_ms: int, profile: ProductProfile
    ) -> Finding:
        out_s = out_ms / 1000
        return Finding(
            key,
            self.kind,
            "open",
            Severity.CRITICAL,
            state.started_ms,
            reading.ts_ms,
            reading.value,
            out_s,
            f"{describe(key)} has been out of range for {out_s / 60:.1f} min this journey, over the budget "
            f"of {profile.max_cumulative_excursion_s / 60:.0f} min",
        )

    def time_out_of_range_s(self, key: SeriesKey) -> float:
        """Time out of range of a series in its current journey, in seconds (0 for an unknown series)."""
        state = self._states.get(key)
        return 0.0 if state is None else state.out_ms / 1000


def _outside(value: float, low: float | None, high: float | None) -> bool:
    return (low is not None and value < low) or (high is not None and value > high)
