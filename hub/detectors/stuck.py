"""Stuck (flat-lined) sensor: the same value, within the probe's resolution, for ``stuck_after_s``.

A live probe in a refrigerated space moves by at least its resolution within minutes (noise,
the cooling cycle); a frozen register, a disconnected probe replaced by a cached value or a
firmware hang repeats one value while readings keep coming. The run restarts whenever the value
moves by half the resolution or more from where the run began (values that would round to a
different step). The finding (warning) closes on the first reading that moves.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar, Final

from coldchain.messages import Quantity, Reading
from hub.detectors.base import (
    Action,
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

RESOLUTION: Final[dict[Quantity, float]] = {Quantity.TEMPERATURE: 0.1, Quantity.HUMIDITY: 0.1}
"""Display resolution of the supported probes (XY-MD02 class: 0.1 °C, 0.1 %RH)."""


class StuckState(SeriesState, array_like=True, gc=False):
    """Per-series state: where the current flat run began, and whether a finding is open."""

    run_value: float
    run_since_ms: int
    open: bool = False


class StuckSensorDetector(SeriesDetector[StuckState]):
    """Opens when a series stays flat for ``stuck_after_s`` (see the module text)."""

    kind: ClassVar[FindingKind] = FindingKind.STUCK_SENSOR
    state_type: ClassVar[type[SeriesState]] = StuckState

    def _start(self, key: SeriesKey, reading: Reading, profile: ProductProfile) -> StuckState | None:
        return StuckState(reading.ts_ms, reading.value, reading.ts_ms)

    def judge(
        self, key: SeriesKey, state: StuckState, readings: Sequence[Reading], profile: ProductProfile
    ) -> list[Finding]:
        moved = RESOLUTION[key.quantity] / 2
        stuck_after_s = profile.stuck_after_s
        run_value, run_since_ms, is_open = state.run_value, state.run_since_ms, state.open
        findings: list[Finding] = []
        for reading in readings:
            ts, value = reading.ts_ms, reading.value
            if abs(value - run_value) >= moved:
                if is_open:
                    findings.append(self._finding(key, "close", run_value, run_since_ms, reading))
                run_value, run_since_ms, is_open = value, ts, False
            elif not is_open and (ts - run_since_ms) / 1000 >= stuck_after_s:
                is_open = True
                findings.append(self._finding(key, "open", run_value, run_since_ms, reading))
        state.run_value, state.run_since_ms, state.open = run_value, run_since_ms, is_open
        state.last_ts_ms = readings[-1].ts_ms
        return findings

    def _finding(
        self, key: SeriesKey, action: Action, run_value: float, run_since_ms: int, reading: Reading
    ) -> Finding:
        """The finding opening (``open``) or closing (``close``, the value moved) a flat run."""
        flat_s = (reading.ts_ms - run_since_ms) / 1000
        if action == "open":
            message = f"has read {run_value:.2f} {unit(key.quantity)} for {flat_s / 3600:.1f} h: stuck sensor?"
        else:
            message = f"moving again ({reading.value:.2f} {unit(key.quantity)}) after {flat_s / 3600:.1f} h flat"
        return Finding(
            key,
            self.kind,
            action,
            Severity.WARNING,
            run_since_ms,
            reading.ts_ms,
            run_value,
            flat_s,
            f"{describe(key)} {message}",
        )
