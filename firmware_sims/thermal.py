"""A lumped thermal and humidity model of a refrigerated space (cold room, reefer, courier box).

The air temperature follows a first-order lag toward a target that depends on the situation:
the set point while the cooling unit runs with the door shut, the ambient temperature while the
door is open (fast, air exchange) or the cooling has failed (slow, through the insulation).
Relative humidity lags toward its set point and rises toward saturation while the door lets warm,
moist air in. The lag is integrated exactly between samples, split at every door or failure edge,
so the result does not depend on how often the model is sampled; only the sensor noise does.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
from collections.abc import Sequence
from typing import Final

DEFAULT_COOLING_TIME_CONSTANT_S: Final = 900.0
"""A loaded cold room or reefer pulls its air down to the set point in about an hour (4 time constants)."""

DEFAULT_DOOR_TIME_CONSTANT_S: Final = 180.0
"""Through an open door the cold air is largely replaced within a few minutes."""

DEFAULT_INSULATION_TIME_CONSTANT_S: Final = 3 * 3600.0
"""With the cooling off and the door shut, an insulated body warms over hours, not minutes."""

DEFAULT_HUMIDITY_TIME_CONSTANT_S: Final = 600.0
"""The evaporator brings humidity back toward its set point more slowly than it does the temperature."""

DEFAULT_NOISE_RH: Final = 0.2
"""SHT20-class sensors repeat to about 0.1 %RH; 0.2 gives visible but realistic jitter."""

DOOR_OPEN_RH: Final = 95.0
"""Warm ambient air chilled inside a cold space approaches saturation, short of condensing."""

MEAN_DOOR_OPEN_S: Final = 60.0
"""A typical loading or picking stop holds the door open about a minute."""

MIN_DOOR_OPEN_S: Final = 5.0
"""A random opening shorter than this would not be a door opening but a sensor glitch."""


def _check_intervals(name: str, intervals: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    checked = []
    for start, duration in intervals:
        if start < 0 or duration < 0:
            raise ValueError(f"{name}: start and duration must be >= 0, got ({start}, {duration})")
        checked.append((float(start), float(duration)))
    return sorted(checked)


def _inside(intervals: Sequence[tuple[float, float]], t_s: float) -> bool:
    return any(start <= t_s < start + duration for start, duration in intervals)


class ThermalModel:
    """Air temperature and relative humidity of one refrigerated space, as one sensor sees them.

    Times are seconds since the start of the simulation. ``door_openings`` and ``cooling_failures``
    are schedules of ``(start_s, duration_s)``; ``door_rate_per_hour`` adds random openings
    (Poisson arrivals, exponential durations). The same ``seed`` and the same sample times give
    the same readings.
    """

    def __init__(
        self,
        *,
        set_point_c: float = 4.0,
        ambient_c: float = 25.0,
        time_constant_s: float = DEFAULT_COOLING_TIME_CONSTANT_S,
        door_time_constant_s: float = DEFAULT_DOOR_TIME_CONSTANT_S,
        noise_c: float = 0.05,
        humidity_set_point: float = 85.0,
        seed: int = 0,
        door_openings: Sequence[tuple[float, float]] = (),
        door_rate_per_hour: float = 0.0,
        insulation_time_constant_s: float = DEFAULT_INSULATION_TIME_CONSTANT_S,
        humidity_time_constant_s: float = DEFAULT_HUMIDITY_TIME_CONSTANT_S,
        noise_rh: float = DEFAULT_NOISE_RH,
        cooling_failures: Sequence[tuple[float, float]] = (),
        initial_c: float | None = None,
        initial_rh: float | None = None,
    ) -> None:
        """Build the model; the space starts at ``initial_c`` / ``initial_rh`` (default: the set points)."""
        for name, tau in (
            ("time_constant_s", time_constant_s),
            ("door_time_constant_s", door_time_constant_s),
            ("insulation_time_constant_s", insulation_time_constant_s),
            ("humidity_time_constant_s", humidity_time_constant_s),
        ):
            if not tau > 0:
                raise ValueError(f"{name} must be > 0, got {tau}")
        if noise_c < 0 or noise_rh < 0:
            raise ValueError("sensor noise must be >= 0")
        if door_rate_per_hour < 0:
            raise ValueError(f"door_rate_per_hour must be >= 0, got {door_rate_per_hour}")
        if not 0.0 <= humidity_set_point <= 100.0:
            raise ValueError(f"humidity_set_point must be 0..100 %RH, got {humidity_set_point}")
        self.set_point_c = set_point_c
        self.ambient_c = ambient_c
        self.humidity_set_point = humidity_set_point
        self._tau_cooling = time_constant_s
        self._tau_door = door_time_constant_s
        self._tau_insulation = insulation_time_constant_s
        self._tau_humidity = humidity_time_constant_s
        self._noise_c = noise_c
        self._noise_rh = noise_rh
        self._doors = _check_intervals("door_openings", door_openings)
        self._failures = _check_intervals("cooling_failures", cooling_failures)
        # Separate streams, so that random doors do not shift the noise sequence and vice versa.
        self._noise_rng = random.Random(f"{seed}:noise")  # noqa: S311 - reproducible simulation, not secrets
        self._door_rng = random.Random(f"{seed}:door")  # noqa: S311 - reproducible simulation, not secrets
        self._door_rate_per_s = door_rate_per_hour / 3600.0
        self._next_random_door = self._next_arrival(0.0)
        self._t = 0.0
        self._temp = set_point_c if initial_c is None else initial_c
        self._rh = humidity_set_point if initial_rh is None else initial_rh

    def door_open(self, t_s: float) -> bool:
        """Whether the door is open at ``t_s`` (scheduled or random opening)."""
        self._generate_doors(t_s)
        return _inside(self._doors, t_s)

    def cooling_on(self, t_s: float) -> bool:
        """Whether the cooling unit runs at ``t_s`` (it runs except during scheduled failures)."""
        return not _inside(self._failures, t_s)

    def sample(self, t_s: float) -> tuple[float, float]:
        """Advance to ``t_s`` and return a noisy reading ``(temperature °C, relative humidity %)``.

        Calls must come with non-decreasing ``t_s``: the model integrates forward only.
        """
        if t_s < self._t:
            raise ValueError(f"samples must be taken in time order: {t_s} after {self._t}")
        self._advance(t_s)
        temp = self._temp + self._noise_rng.gauss(0.0, self._noise_c)
        rh = self._rh + self._noise_rng.gauss(0.0, self._noise_rh)
        return temp, min(100.0, max(0.0, rh))

    def _next_arrival(self, after_s: float) -> float:
        if self._door_rate_per_s == 0.0:
            return math.inf
        return after_s + self._door_rng.expovariate(self._door_rate_per_s)

    def _generate_doors(self, upto_s: float) -> None:
        while self._next_random_door <= upto_s:
            start = self._next_random_door
            duration = max(MIN_DOOR_OPEN_S, self._door_rng.expovariate(1.0 / MEAN_DOOR_OPEN_S))
            bisect.insort(self._doors, (start, duration))
            # Arrivals are counted from the moment the door shuts again: it cannot open twice at once.
            self._next_random_door = self._next_arrival(start + duration)

    def _advance(self, t_s: float) -> None:
        self._generate_doors(t_s)
        edges = {
            edge
            for start, duration in (*self._doors, *self._failures)
            for edge in (start, start + duration)
            if self._t < edge < t_s
        }
        bounds = [self._t, *sorted(edges), t_s]
        for begin, end in itertools.pairwise(bounds):
            self._step(begin, end)
        self._t = t_s

    def _step(self, begin: float, end: float) -> None:
        dt = end - begin
        if dt <= 0:
            return
        middle = (begin + end) / 2
        door = _inside(self._doors, middle)
        if door:
            temp_target, temp_tau = self.ambient_c, self._tau_door
            rh_target, rh_tau = DOOR_OPEN_RH, self._tau_door
        elif self.cooling_on(middle):
            temp_target, temp_tau = self.set_point_c, self._tau_cooling
            rh_target, rh_tau = self.humidity_set_point, self._tau_humidity
        else:
            temp_target, temp_tau = self.ambient_c, self._tau_insulation
            rh_target, rh_tau = self.humidity_set_point, self._tau_humidity
        self._temp = temp_target + (self._temp - temp_target) * math.exp(-dt / temp_tau)
        self._rh = rh_target + (self._rh - rh_target) * math.exp(-dt / rh_tau)
