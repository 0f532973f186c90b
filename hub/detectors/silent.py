"""Silent sensor: no reading of a series for ``silent_after_s`` by the hub's clock.

Driven by ``tick(now_ms)``: the hub calls it with its own clock, so a gateway whose clock or link
is dead is still noticed. A series is silent when its newest reading time is older than
``silent_after_s`` before ``now_ms``; the finding (warning) starts at that newest reading and
closes on the next reading to arrive, with the length of the gap. A store-and-forward gateway
that comes back fills the gap with its buffered readings: the first of them closes the finding.
A silent gateway shows as all of its series silent at once. ``tick`` is O(series).
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
)
from hub.profiles import ProductProfile


class SilentState(SeriesState, array_like=True, gc=False):
    """Per-series state: the newest value, the silence threshold in force and whether a finding is open."""

    last_value: float
    silent_after_ms: int
    open: bool = False


class SilentSensorDetector(SeriesDetector[SilentState]):
    """Opens on ``tick`` when a series has been quiet too long (see the module text)."""

    kind: ClassVar[FindingKind] = FindingKind.SILENT_SENSOR
    state_type: ClassVar[type[SeriesState]] = SilentState

    def _start(self, key: SeriesKey, reading: Reading, profile: ProductProfile) -> SilentState | None:
        return SilentState(reading.ts_ms, reading.value, int(profile.silent_after_s * 1000))

    def judge(
        self, key: SeriesKey, state: SilentState, readings: Sequence[Reading], profile: ProductProfile
    ) -> list[Finding]:
        # Only the first reading can close a silence, and only the newest one is kept: O(1) per run.
        findings: list[Finding] = []
        if state.open:
            state.open = False
            first = readings[0]
            gap_s = (first.ts_ms - state.last_ts_ms) / 1000
            findings.append(
                Finding(
                    key,
                    self.kind,
                    "close",
                    Severity.WARNING,
                    state.last_ts_ms,
                    first.ts_ms,
                    first.value,
                    gap_s,
                    f"{describe(key)} reporting again after {gap_s / 60:.1f} min without readings",
                )
            )
        newest = readings[-1]
        state.last_value, state.last_ts_ms = newest.value, newest.ts_ms
        state.silent_after_ms = int(profile.silent_after_s * 1000)
        return findings

    def tick(self, now_ms: int) -> list[Finding]:
        """Open a finding for every series whose newest reading is older than its threshold."""
        findings = []
        for key, state in self._states.items():
            if state.open or now_ms - state.last_ts_ms <= state.silent_after_ms:
                continue
            state.open = True
            quiet_s = (now_ms - state.last_ts_ms) / 1000
            findings.append(
                Finding(
                    key,
                    self.kind,
                    "open",
                    Severity.WARNING,
                    state.last_ts_ms,
                    now_ms,
                    state.last_value,
                    quiet_s,
                    f"{describe(key)} silent for {quiet_s / 60:.1f} min (last reading {state.last_value:.2f})",
                )
            )
        return findings
