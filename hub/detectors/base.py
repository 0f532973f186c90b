"""What every detector shares: series keys, findings, the ``Detector`` protocol and the per-series base.

Detectors are pure: readings in, findings out. Each keeps its state per series in msgspec structs
so the hub can persist it (``snapshot``) in the same transaction as the readings and resume
exactly where it stopped after a crash (``restore``). Time comes only from the readings (``feed``)
and from the hub's clock passed to ``tick``: a detector never reads a clock of its own.
"""

from __future__ import annotations

import enum
import math
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Literal, NamedTuple, Protocol, TypeVar, get_origin

import msgspec

from coldchain.messages import Quantity, Reading
from hub.profiles import ProductProfile


class SeriesKey(NamedTuple):
    """One series: a sensor's quantity on a gateway."""

    gateway_id: str
    sensor_id: str
    quantity: Quantity


SeriesRuns = dict[tuple[str, Quantity], list[Reading]]
"""One gateway's readings by series (sensor id, quantity): each run in arrival order, the series in the
order of their first reading."""


def series_runs(readings: Iterable[Reading]) -> SeriesRuns:
    """Group one gateway's readings by series, keeping their order within each series."""
    runs: SeriesRuns = {}
    for reading in readings:
        sensor = (reading.sensor_id, reading.quantity)
        run = runs.get(sensor)
        if run is None:
            runs[sensor] = [reading]
        else:
            run.append(reading)
    return runs


class FindingKind(enum.StrEnum):
    """What a detector found (see docs/detectors.md for each)."""

    OUT_OF_RANGE = "out_of_range"
    CUMULATIVE_TIME_OUT_OF_RANGE = "cumulative_time_out_of_range"
    MKT_OVER_LIMIT = "mkt_over_limit"
    RATE_OF_CHANGE = "rate_of_change"
    STUCK_SENSOR = "stuck_sensor"
    SILENT_SENSOR = "silent_sensor"
    ABNORMAL_FLUCTUATION = "abnormal_fluctuation"


class Severity(enum.StrEnum):
    """How urgent a finding is."""

    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


Action = Literal["open", "update", "close"]


@dataclass(frozen=True, slots=True)
class Finding:
    """One step in the lifecycle of a condition on a series: it opened, changed (severity) or closed.

    ``started_ms`` is when the condition began in reading time; ``ts_ms`` the reading (or tick)
    time that produced this step; ``value`` the worst or current value (°C, %RH, or the MKT);
    ``duration_s`` how long the condition has lasted (the whole excursion on ``close``).
    """

    key: SeriesKey
    kind: FindingKind
    action: Action
    severity: Severity
    started_ms: int
    ts_ms: int
    value: float
    duration_s: float
    message: str


class Detector(Protocol):
    """A detector of one kind of condition, over any number of series."""

    def feed(self, key: SeriesKey, reading: Reading) -> list[Finding]:
        """Take one reading of ``key``; return the findings it produces (often none)."""
        ...

    def tick(self, now_ms: int) -> list[Finding]:
        """Advance the hub clock to ``now_ms``; return the time-driven findings (silence)."""
        ...

    def snapshot(self) -> bytes:
        """All per-series state, as msgspec JSON."""
        ...

    def restore(self, data: bytes) -> None:
        """Replace all per-series state with a ``snapshot``."""
        ...


ProfileFor = Callable[[SeriesKey], ProductProfile | None]
"""Which profile judges a series; ``None`` leaves the series unjudged."""


class SeriesState(msgspec.Struct, array_like=True, gc=False):
    """The part of every detector's state about time: the newest reading time of the series."""

    last_ts_ms: int


S = TypeVar("S", bound=SeriesState)


def _enc_hook(obj: Any) -> Any:
    if isinstance(obj, deque):
        return list(obj)
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _dec_hook(target: Any, obj: Any) -> Any:
    if (target is deque or get_origin(target) is deque) and isinstance(obj, list):
        return deque(obj)
    raise NotImplementedError(f"cannot decode {target}")


_ENCODER = msgspec.json.Encoder(enc_hook=_enc_hook)


class SeriesDetector(Generic[S]):
    """A detector whose state is one ``S`` per series, with the late-reading rule applied once here.

    A reading not newer than the newest one already seen for its series is late (delayed or
    re-ordered on the way): it is counted in ``late_readings`` and ignored, because each
    detector's notion of "now" and of elapsed time is the newest reading time. The readings
    themselves are stored by the hub in any case; only judgement skips them.
    """

    kind: ClassVar[FindingKind]
    state_type: ClassVar[type[SeriesState]]

    def __init__(self, profile_for: ProfileFor) -> None:
        """``profile_for`` maps a series to its profile (``None``: the series is not judged)."""
        self._profile_for = profile_for
        self._states: dict[SeriesKey, S] = {}
        self._decoder: msgspec.json.Decoder[list[tuple[SeriesKey, Any]]] = msgspec.json.Decoder(
            list[tuple[SeriesKey, self.state_type]],  # type: ignore[name-defined]
            dec_hook=_dec_hook,
        )
        self.late_readings = 0

    def feed(self, key: SeriesKey, reading: Reading) -> list[Finding]:
        """Take one reading of ``key`` (late readings are counted and ignored)."""
        profile = self._profile_for(key)
        if profile is None:
            return []
        return self.observe(key, reading, profile)

    def observe(self, key: SeriesKey, reading: Reading, profile: ProductProfile) -> list[Finding]:
        """``feed`` with the profile already looked up (the ``DetectorSet`` looks it up once for all)."""
        state = self._states.get(key)
        if state is None:
            state = self._start(key, reading, profile)
            if state is None:
                return []
            self._states[key] = state
            return self._first(key, state, reading, profile)
        if reading.ts_ms <= state.last_ts_ms:
            self.late_readings += 1
            return []
        return self.judge(key, state, (reading,), profile)

    def state_of(self, key: SeriesKey) -> S | None:
        """The state of ``key``, or ``None`` while the detector has not started judging it."""
        return self._states.get(key)

    def tick(self, now_ms: int) -> list[Finding]:
        """Only the silence detector is driven by the clock; the others find nothing here."""
        return []

    def reset(self, key: SeriesKey) -> None:
        """Forget a series (a new journey starts for it)."""
        self._states.pop(key, None)

    def snapshot(self) -> bytes:
        """All per-series state as msgspec JSON: ``[[key, state], ...]``."""
        return _ENCODER.encode(list(self._states.items()))

    def restore(self, data: bytes) -> None:
        """Replace all per-series state with a ``snapshot``; raises ``msgspec.DecodeError`` on bad data."""
        self._states = {SeriesKey(*key): state for key, state in self._decoder.decode(data)}

    def _start(self, key: SeriesKey, reading: Reading, profile: ProductProfile) -> S | None:
        """The state for a series' first reading, or ``None`` when the profile leaves nothing to judge.

        Whether it is ``None`` must depend on the key and the profile only: the ``DetectorSet`` does
        not ask again while the profile of the series stays the same object.
        """
        raise NotImplementedError

    def _first(self, key: SeriesKey, state: S, reading: Reading, profile: ProductProfile) -> list[Finding]:
        """Findings from the first reading of a series (most detectors need a history first)."""
        return []

    def judge(self, key: SeriesKey, state: S, readings: Sequence[Reading], profile: ProductProfile) -> list[Finding]:
        """Findings from a run of readings of ``key``, in reading order; sets ``state.last_ts_ms`` to the last one's.

        ``readings`` is non-empty and each is newer than the one before it and than ``state.last_ts_ms``.
        A run rather than one reading, so that a detector keeps its state in local variables over a
        batch's readings of a series instead of calling and loading attributes once per reading
        (docs/detectors.md). Public for the ``DetectorSet``, which checks lateness once for all
        detectors and calls this directly; anyone else calls ``feed``.
        """
        raise NotImplementedError


def value_range(profile: ProductProfile, quantity: Quantity) -> tuple[float | None, float | None, float]:
    """``(low, high, hysteresis)`` of a profile for a quantity."""
    if quantity is Quantity.TEMPERATURE:
        return profile.temp_low_c, profile.temp_high_c, profile.hysteresis_c
    return profile.humidity_low, profile.humidity_high, profile.hysteresis_rh


def value_bounds(profile: ProductProfile, quantity: Quantity) -> tuple[float, float]:
    """``(low, high)`` of a profile's range for a quantity, an open side as an infinity (for plain comparisons)."""
    low, high, _ = value_range(profile, quantity)
    return -math.inf if low is None else low, math.inf if high is None else high


def unit(quantity: Quantity) -> str:
    """The unit a quantity's values are written in, for messages."""
    return "°C" if quantity is Quantity.TEMPERATURE else "%RH"


def describe(key: SeriesKey) -> str:
    """A series as people read it in messages."""
    return f"{key.gateway_id}/{key.sensor_id} {key.quantity.value}"
