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

    def judge(
        self, key: SeriesKey, state: MktState, readings: Sequence[Reading], profile: ProductProfile
    ) -> list[Finding]:
        limit = profile.mkt_limit_c
        if limit is None:
            state.last_ts_ms = readings[-1].ts_ms
            return []
        limit_term = _limit_term(limit)
        longest_ms = profile.silent_after_s * 1000
        bucket_ms = profile.mkt_window_s * 1000
        min_weight = MKT_MIN_COVERAGE * profile.mkt_window_s
        buckets, weights, terms = state.buckets, state.weights, state.terms
        # The newest step's sums are kept in locals and written back when the step changes.
        current = buckets[-1] if buckets else None
        step_weight = weights[-1] if buckets else 0.0
        step_term = terms[-1] if buckets else 0.0
        total_weight, total_term = state.total_weight, state.total_term
        last_ts, last_value = state.last_ts_ms, state.last_value
        # Values repeat at the probes' resolution: the exponential is taken once per distinct value in a row.
        termed_value, value_term = last_value, mkt_term(last_value)
        findings: list[Finding] = []
        for reading in readings:
            ts = reading.ts_ms
            weight = min(ts - last_ts, longest_ms) / 1000
            if last_value != termed_value:
                termed_value, value_term = last_value, mkt_term(last_value)
            term = weight * value_term
            last_ts, last_value = ts, reading.value
            bucket = int(ts * MKT_BUCKETS // bucket_ms)
            if bucket == current:
                step_weight += weight
                step_term += term
                total_weight += weight
                total_term += term
            else:
                if current is not None:
                    weights[-1], terms[-1] = step_weight, step_term
                buckets.append(bucket)
                weights.append(weight)
                terms.append(term)
                current, step_weight, step_term = bucket, weight, term
                while buckets[0] <= bucket - MKT_BUCKETS:
                    buckets.popleft()
                    weights.popleft()
                    terms.popleft()
                # Summed afresh once per step (not once per reading): no drift from adding and removing.
                total_weight = math.fsum(weights)
                total_term = math.fsum(terms)
            if total_weight < min_weight:
                continue
            # The MKT rises with the mean term: compare terms, and take the logarithm only when it matters.
            if state.open_since_ms is None and total_term <= total_weight * limit_term:
                continue
            mkt = mkt_from_mean_term(total_term / total_weight)
            findings += self._judge(key, state, ts, mkt, limit)
        if current is not None:
            weights[-1], terms[-1] = step_weight, step_term
        state.total_weight, state.total_term = total_weight, total_term
        state.last_ts_ms, state.last_value = last_ts, last_value
        return findings

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
