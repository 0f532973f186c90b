"""Rate of change: a door opening (fast, short) and a cooling failure (slower, sustained).

Door: the rate between the newest reading and the oldest one of the last ``DOOR_WINDOW_S``
(judged once they span three quarters of it, so two close noisy readings are not a rate) reaching
``door_rate_c_per_min`` in either direction opens an info finding. Cooling failure: readings are
averaged per minute, and when every minute's mean has risen over the previous one by at least
``sustained_rate_c_per_min`` for ``sustained_rise_s`` in a row, the finding becomes (or opens as)
a warning. A door spike rises for a minute or two then falls; a stopped cooling unit (or a door
left open) keeps rising. The finding closes when neither holds (the rate has calmed); its
severity never drops while it is open. Temperature series only.
"""

from __future__ import annotations

from bisect import bisect_left
from collections import deque
from collections.abc import Sequence
from typing import ClassVar, Final

import msgspec

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
)
from hub.profiles import ProductProfile

DOOR_WINDOW_S: Final = 60.0
"""A door changes the air within a minute; longer windows would dilute the rate of short openings."""

DOOR_MIN_SPAN: Final = 0.75
"""Fraction of the door window the readings must span: shorter spans turn probe noise into rates."""

DOOR_CLOSE_FRACTION: Final = 0.5
"""The door finding closes below half the opening rate, so a rate near the threshold does not flap."""

DOOR_WINDOW_MS: Final = DOOR_WINDOW_S * 1000
DOOR_MIN_SPAN_MS: Final = DOOR_WINDOW_MS * DOOR_MIN_SPAN

MINUTE_MS: Final = 60_000
"""Averaging step of the sustained-rise test: means of 12 readings at 5 s cut the noise 3.5-fold."""

QUIET_RUN_MIN: Final = 8
"""Shortest run tried as a whole (``_pass_quiet_run``): shorter ones cost more to bound than to judge."""


class RateState(SeriesState, array_like=True, gc=False):
    """Per-series state: the last minute of readings, the per-minute means and the open finding."""

    times: deque[int] = msgspec.field(default_factory=deque)
    values: deque[float] = msgspec.field(default_factory=deque)
    minute: int = 0
    minute_sum: float = 0.0
    minute_count: int = 0
    previous_mean: float | None = None
    previous_minute: int = 0
    rising_minutes: int = 0
    door: bool = False
    severity: str | None = None
    started_ms: int = 0
    worst_rate: float = 0.0


class RateOfChangeDetector(SeriesDetector[RateState]):
    """Door openings (info) and sustained rises (warning) from temperature rates (see the module text)."""

    kind: ClassVar[FindingKind] = FindingKind.RATE_OF_CHANGE
    state_type: ClassVar[type[SeriesState]] = RateState

    def _start(self, key: SeriesKey, reading: Reading, profile: ProductProfile) -> RateState | None:
        if key.quantity is not Quantity.TEMPERATURE:
            return None
        state = RateState(reading.ts_ms, minute=reading.ts_ms // MINUTE_MS, minute_sum=reading.value, minute_count=1)
        state.times.append(reading.ts_ms)
        state.values.append(reading.value)
        return state

    def judge(
        self, key: SeriesKey, state: RateState, readings: Sequence[Reading], profile: ProductProfile
    ) -> list[Finding]:
        if state.severity is None and len(readings) >= QUIET_RUN_MIN and _pass_quiet_run(state, readings, profile):
            return []
        threshold = profile.door_rate_c_per_min
        calm_threshold = threshold * DOOR_CLOSE_FRACTION
        rising_rate = profile.sustained_rate_c_per_min
        sustained_rise_s = profile.sustained_rise_s
        times, values = state.times, state.values
        minute, minute_sum, minute_count = state.minute, state.minute_sum, state.minute_count
        previous_mean, previous_minute, rising_minutes = (
            state.previous_mean,
            state.previous_minute,
            state.rising_minutes,
        )
        door, worst_rate = state.door, state.worst_rate
        findings: list[Finding] = []
        for reading in readings:
            ts, value = reading.ts_ms, reading.value
            if ts // MINUTE_MS == minute:
                minute_sum += value
                minute_count += 1
            else:
                mean = minute_sum / minute_count
                rising_minutes = _rising_minutes_after(
                    rising_minutes, previous_mean, previous_minute, minute, mean, rising_rate=rising_rate
                )
                previous_mean, previous_minute = mean, minute
                minute, minute_sum, minute_count = ts // MINUTE_MS, value, 1
            times.append(ts)
            values.append(value)
            while ts - times[0] > DOOR_WINDOW_MS:
                times.popleft()
                values.popleft()
            span_ms = ts - times[0]
            rate = (value - values[0]) * 60_000 / span_ms if span_ms >= DOOR_MIN_SPAN_MS else 0.0
            door = abs(rate) >= (calm_threshold if door else threshold)
            sustained = rising_minutes * 60 >= sustained_rise_s
            if abs(rate) > abs(worst_rate):
                worst_rate = rate
            if state.severity is None and not (door or sustained):
                worst_rate = 0.0
                continue
            state.worst_rate = worst_rate
            findings += self._judge(
                key, state, reading, rate=rate, active=door or sustained, sustained=sustained, profile=profile
            )
            worst_rate = state.worst_rate
        state.minute, state.minute_sum, state.minute_count = minute, minute_sum, minute_count
        state.previous_mean, state.previous_minute, state.rising_minutes = (
            previous_mean,
            previous_minute,
            rising_minutes,
        )
        state.door, state.worst_rate = door, worst_rate
        state.last_ts_ms = readings[-1].ts_ms
        return findings

    def _judge(
        self,
        key: SeriesKey,
        state: RateState,
        reading: Reading,
        *,
        rate: float,
        active: bool,
        sustained: bool,
        profile: ProductProfile,
    ) -> list[Finding]:
        """Open, escalate or close the finding for a reading that is active or comes while one is open."""
        ts, value = reading.ts_ms, reading.value
        severity = Severity.WARNING if sustained else Severity.INFO
        if state.severity is None:
            state.severity, state.started_ms, state.worst_rate = severity, ts, rate
            return [
                self._finding(key, "open", severity, state, ts=ts, value=value, why=self._why(sustained, rate, profile))
            ]
        if not active:
            finding = self._finding(
                key,
                "close",
                Severity(state.severity),
                state,
                ts=ts,
                value=value,
                why=f"temperature rate calm again after {(ts - state.started_ms) / 60_000:.1f} min "
                f"(steepest {state.worst_rate:+.2f} °C/min)",
            )
            state.severity, state.worst_rate = None, 0.0
            return [finding]
        if severity == Severity.WARNING and state.severity == Severity.INFO:
            state.severity = severity
            return [
                self._finding(key, "update", severity, state, ts=ts, value=value, why=self._why(True, rate, profile))
            ]
        return []

    def _finding(
        self, key: SeriesKey, action: Action, severity: Severity, state: RateState, *, ts: int, value: float, why: str
    ) -> Finding:
        return Finding(
            key,
            self.kind,
            action,
            severity,
            state.started_ms,
            ts,
            value,
            (ts - state.started_ms) / 1000,
            f"{describe(key)}: {why}",
        )

    @staticmethod
    def _why(sustained: bool, rate: float, profile: ProductProfile) -> str:
        if sustained:
            return (
                f"temperature rising steadily for {profile.sustained_rise_s / 60:.0f} min "
                f"(cooling failure or door left open)"
            )
        return f"temperature changing at {rate:+.2f} °C/min (door open?)"


def _rising_minutes_after(
    rising_minutes: int,
    previous_mean: float | None,
    previous_minute: int,
    minute: int,
    mean: float,
    *,
    rising_rate: float,
) -> int:
    """The count of minutes in a row whose mean rose by ``rising_rate``, once ``minute`` closes with ``mean``.

    A minute without readings breaks the chain: a rise is only sustained if it is seen.
    """
    if previous_mean is not None and previous_minute == minute - 1 and mean - previous_mean >= rising_rate:
        return rising_minutes + 1
    return 0


def _pass_quiet_run(state: RateState, readings: Sequence[Reading], profile: ProductProfile) -> bool:
    """Judge a run that cannot open a finding as a whole, leaving ``state`` as reading by reading would.

    Most runs are quiet: the door rate stays under its threshold and no minute's mean rises far
    enough. A door rate is at most the window's spread of values over ``DOOR_MIN_SPAN_MS``, so when
    the spread of the window and the run is under the threshold no reading can be a door; the
    minute means are then taken minute by minute instead of reading by reading. Returns ``False``,
    with ``state`` untouched, when the run may open a finding (the per-reading loop judges it then).
    The caller checks that no finding is open.
    """
    rising_rate = profile.sustained_rate_c_per_min
    rising_needed = profile.sustained_rise_s
    minute, minute_sum, minute_count = state.minute, state.minute_sum, state.minute_count
    previous_mean, previous_minute, rising_minutes = state.previous_mean, state.previous_minute, state.rising_minutes
    if rising_minutes * 60 >= rising_needed:
        return False  # a rise already sustained (the profile has changed): the first reading opens
    times_run = [reading.ts_ms for reading in readings]
    values_run = [reading.value for reading in readings]
    values = [*state.values, *values_run]
    if (max(values) - min(values)) * 60_000 / DOOR_MIN_SPAN_MS >= profile.door_rate_c_per_min:
        return False
    start, count = 0, len(times_run)
    while start < count:
        # Timestamps rise within a run (the set drops late readings): a minute is a slice.
        end = bisect_left(times_run, (minute + 1) * MINUTE_MS, start)
        for value in values_run[start:end]:
            # Summed one by one, as the per-reading loop does, so the means are the same to the bit.
            minute_sum += value
        minute_count += end - start
        if end == count:
            break
        mean = minute_sum / minute_count
        rising_minutes = _rising_minutes_after(
            rising_minutes, previous_mean, previous_minute, minute, mean, rising_rate=rising_rate
        )
        if rising_minutes * 60 >= rising_needed:
            return False
        previous_mean, previous_minute = mean, minute
        minute, minute_sum, minute_count = times_run[end] // MINUTE_MS, values_run[end], 1
        start = end + 1
    times = [*state.times, *times_run]
    keep_from = bisect_left(times, times_run[-1] - DOOR_WINDOW_MS)
    state.times = deque(times[keep_from:])
    state.values = deque(values[keep_from:])
    state.minute, state.minute_sum, state.minute_count = minute, minute_sum, minute_count
    state.previous_mean, state.previous_minute, state.rising_minutes = previous_mean, previous_minute, rising_minutes
    state.door, state.worst_rate = False, 0.0
    state.last_ts_ms = times_run[-1]
    return True
