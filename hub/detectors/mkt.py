"""Mean kinetic temperature (MKT) over a sliding window, against the profile's ``mkt_limit_c``.

MKT = (ΔH/R) / (-ln(Σ wᵢ·exp(-ΔH/(R·Tᵢ)) / Σ wᵢ)), temperatures in kelvin, ΔH/R = 10,000 K
(USP <1160>, 83.144 kJ/mol). The weight wᵢ of a value is the time it stood for: each reading's
value is held until the next reading (the same rule as the cumulative detector), and an interval
is capped at ``silent_after_s`` so that a silence does not stretch the last value over hours.
Time-weighting keeps the MKT right when the sampling rate changes (a gateway catching up, or
sampling faster during an alarm); with evenly spaced readings it equals USP's plain mean.

The window slides in steps of 1/288 of ``mkt_window_s`` (5 minutes for 24 h): the series keeps
one sum per step, so memory and snapshots stay small and each reading costs O(1). MKT is judged
once the window holds at least a quarter of its length of data, so a fresh series is not judged
on its first minutes. An open finding closes when the MKT is back at or under the limit.
"""

from __future__ import annotations

import functools
import math
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
)
from hub.profiles import ProductProfile

DELTA_H_OVER_R_K: Final = 10_000.0
"""USP <1160>: activation energy 83.144 kJ/mol over the gas constant."""

KELVIN: Final = 273.15

REFERENCE_K: Final = KELVIN + 25.0
"""Terms are scaled by exp(ΔH/R/T_ref) so that sums stay near 1 instead of near 1e-16."""

MKT_BUCKETS: Final = 288
"""Steps the window slides in; 288 makes 5 minutes of a 24-hour window."""

MKT_MIN_COVERAGE: Final = 0.25
"""Fraction of the window that must hold data before the MKT is judged."""


def mkt_term(temp_c: float) -> float:
    """``exp(-ΔH/(R·T))`` scaled by ``exp(ΔH/(R·T_ref))`` (see ``REFERENCE_K``)."""
    return math.exp(-DELTA_H_OVER_R_K * (1.0 / (temp_c + KELVIN) - 1.0 / REFERENCE_K))


@functools.lru_cache(maxsize=64)
def _limit_term(limit_c: float) -> float:
    """``mkt_term`` of a profile's limit: a mean term above it is an MKT above the limit."""
    return mkt_term(limit_c)


def mkt_from_mean_term(mean_term: float) -> float:
    """The MKT in °C from the weighted mean of ``mkt_term`` values."""
    return DELTA_H_OVER_R_K / (DELTA_H_OVER_R_K / REFERENCE_K - math.log(mean_term)) - KELVIN


class MktState(SeriesState, array_like=True, gc=False):
    """Per-series state: one (weight, weighted term) sum per window step, oldest first."""

    last_value: float
    buckets: deque[int] = msgspec.field(default_factory=deque)
    weights: deque[float] = msgspec.field(default_factory=deque)
    terms: deque[float] = msgspec.field(default_factory=deque)
    total_weight: float = 0.0
    total_term: float = 0.0
    open_since_ms: int | None = None
    worst: float = 0.0


class MktDetector(SeriesDetector[MktState]):
    """Opens when the MKT over the window is above the limit (see the module text)."""

    kind: ClassVar[FindingKind] = FindingKind.MKT_OVER_LIMIT
    state_type: ClassVar[type[SeriesState]] = MktState

    def _start(self, key: SeriesKey, reading: Reading, profile: ProductProfile) -> MktState | None:
        if key.quantity is not Quantity.TEMPERATURE or profile.mkt_limit_c is None:
            return None
        return MktState(reading.ts_ms, reading.value)

    def step(self, key: SeriesKey, state: MktState, reading: Reading, profile: ProductProfile) -> list[Finding]:
        limit = profile.mkt_limit_c
        if limit is None:
            return []
        ts = reading.ts_ms
        weight = min(ts - state.last_ts_ms, profile.silent_after_s * 1000) / 1000
        term = weight * mkt_term(state.last_value)
        state.last_value = reading.value
        bucket = int(ts * MKT_BUCKETS // (profile.mkt_window_s * 1000))
        if state.buckets and state.buckets[-1] == bucket:
            state.weights[-1] += weight
            state.terms[-1] += term
            state.total_weight += weight
            state.total_term += term
        else:
            state.buckets.append(bucket)
            state.weights.append(weight)
            state.terms.append(term)
            while state.buckets[0] <= bucket - MKT_BUCKETS:
                state.buckets.popleft()
                state.weights.popleft()
                state.terms.popleft()
            # Summed afresh once per step (not once per reading): no drift from adding and removing.
            state.total_weight = math.fsum(state.weights)
            state.total_term = math.fsum(state.terms)
        if state.total_weight < MKT_MIN_COVERAGE * profile.mkt_window_s:
            return []
        # The MKT rises with the mean term: compare terms, and take the logarithm only when it matters.
        if state.open_since_ms is None and state.total_term <= state.total_weight * _limit_term(limit):
            return []
        mkt = mkt_from_mean_term(state.total_term / state.total_weight)
        return self._judge(key, state, ts, mkt, limit)

    def _judge(self, key: SeriesKey, state: MktState, ts: int, mkt: float, limit: float) -> list[Finding]:
        if state.open_since_ms is None:
            if mkt <= limit:
                return []
            state.open_since_ms, state.worst = ts, mkt
            return [
                Finding(
                    key,
                    self.kind,
                    "open",
                    Severity.WARNING,
                    ts,
                    ts,
                    mkt,
                    0.0,
                    f"{describe(key)} mean kinetic temperature {mkt:.2f} °C is over the limit of {limit:g} °C",
                )
            ]
        state.worst = max(state.worst, mkt)
        if mkt > limit:
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
                state.worst,
                duration_s,
                f"{describe(key)} mean kinetic temperature back at {mkt:.2f} °C, within {limit:g} °C, "
                f"after {duration_s / 3600:.1f} h (highest {state.worst:.2f} °C)",
            )
        ]

    def mkt_c(self, key: SeriesKey) -> float | None:
        """The current MKT of a series in °C, or ``None`` before it has any weighted data."""
        state = self._states.get(key)
        if state is None or state.total_weight <= 0:
            return None
        return mkt_from_mean_term(state.total_term / state.total_weight)
