"""Stuck (flat-lined) sensor: the same value, within the probe's resolution, for ``stuck_after_s``.

A live probe in a refrigerated space moves by at least its resolution within minutes (noise,
the cooling cycle); a frozen register, a disconnected probe replaced by a cached value or a
firmware hang repeats one value while readings keep coming. The run restarts whenever the value
moves by half the resolution or more from where the run began (values that would round to a
different step). The finding (warning) closes on the first reading that moves.
"""

from __future__ import annotations

from typing import ClassVar, Final

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

    def step(self, key: SeriesKey, state: StuckState, reading: Reading, profile: ProductProfile) -> list[Finding]:
        ts, value = reading.ts_ms, reading.value
        flat_s = (ts - state.run_since_ms) / 1000
        if abs(value - state.run_value) >= RESOLUTION[key.quantity] / 2:
            finding = None
            if state.open:
                finding = Finding(
                    key,
                    self.kind,
                    "close",
                    Severity.WARNING,
                    state.run_since_ms,
                    ts,
                    state.run_value,
                    flat_s,
                    f"{describe(key)} moving again ({value:.2f} {unit(key.quantity)}) after {flat_s / 3600:.1f} h flat",
                )
            state.run_value, state.run_since_ms, state.open = value, ts, False
            return [finding] if finding else []
        if state.open or flat_s < profile.stuck_after_s:
            return []
        state.open = True
        return [
            Finding(
                key,
                self.kind,
                "open",
                Severity.WARNING,
                state.run_since_ms,
                ts,
                state.run_value,
                flat_s,
                f"{describe(key)} has read {state.run_value:.2f} {unit(key.quantity)} for {flat_s / 3600:.1f} h: "
                f"stuck sensor?",
            )
        ]
