"""Every detector over every series, behind one ``feed`` / ``tick`` / ``snapshot`` / ``restore``."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Final

import msgspec

from coldchain.messages import Quality, Reading
from hub.detectors.base import Finding, ProfileFor, SeriesDetector, SeriesKey, SeriesRuns, SeriesState, series_runs
from hub.detectors.cumulative import CumulativeDetector
from hub.detectors.fluctuation import FluctuationDetector
from hub.detectors.mkt import MktDetector
from hub.detectors.out_of_range import OutOfRangeDetector
from hub.detectors.rate import RateOfChangeDetector
from hub.detectors.silent import SilentSensorDetector
from hub.detectors.stuck import StuckSensorDetector
from hub.profiles import ProductProfile

SNAPSHOT_VERSION: Final = 1

Judge = Callable[[SeriesKey, Any, Sequence[Reading], ProductProfile], list[Finding]]
"""A detector's ``judge``, bound to it."""


class _Snapshot(msgspec.Struct, forbid_unknown_fields=True):
    version: int
    late_readings: int
    bad_readings: int
    newest: list[tuple[SeriesKey, int]]
    detectors: dict[str, msgspec.Raw]


_DECODER: Final = msgspec.json.Decoder(_Snapshot)
_ENCODER: Final = msgspec.json.Encoder()


def default_detectors(profile_for: ProfileFor) -> list[SeriesDetector[Any]]:
    """One of each detector, in the order their findings are returned."""
    return [
        OutOfRangeDetector(profile_for),
        CumulativeDetector(profile_for),
        MktDetector(profile_for),
        RateOfChangeDetector(profile_for),
        StuckSensorDetector(profile_for),
        SilentSensorDetector(profile_for),
        FluctuationDetector(profile_for),
    ]


class _Series:
    """What the set keeps per series: the newest judged reading time and every detector's state.

    ``judges`` pairs, in detector order, each judging detector's ``judge`` with its state of the
    series (the same object the detector keeps; a detector that does not judge the series under
    ``profile`` is left out), so a reading is judged with one dictionary lookup instead of one per
    detector. ``judges`` is ``None`` until the series has been judged once, and again after a
    ``reset`` or a ``restore``: the next reading then goes through each detector's own ``observe``,
    which starts what needs starting, and ``judges`` is taken afresh.
    """

    __slots__ = ("judges", "newest_ms", "profile")

    def __init__(self, newest_ms: int) -> None:
        self.newest_ms = newest_ms
        self.profile: ProductProfile | None = None
        self.judges: list[tuple[Judge, SeriesState]] | None = None


def _reading_time(finding: Finding) -> int:
    """The time of the reading that produced a finding (each detector stamps its findings with it)."""
    return finding.ts_ms


class DetectorSet:
    """Runs every detector on each reading of a series and returns all their findings in order.

    The late-reading rule is applied here once for all: a reading not newer than its series'
    newest is counted in ``late_readings`` and judged by no detector. Readings of quality
    ``bad`` (the sensor reported an error; the value is kept only for the record) are counted in
    ``bad_readings`` and judged by none either: a sensor sending only errors is as good as silent.
    A series whose ``profile_for`` is ``None`` is not judged.

    The set owns its detectors' state: reset a series through the set, not through a detector.
    """

    def __init__(self, profile_for: ProfileFor, detectors: Sequence[SeriesDetector[Any]] | None = None) -> None:
        """Use ``detectors`` (default: one of each, all sharing ``profile_for``)."""
        self._profile_for = profile_for
        self.detectors: tuple[SeriesDetector[Any], ...] = tuple(
            default_detectors(profile_for) if detectors is None else detectors
        )
        names = [detector.kind.value for detector in self.detectors]
        if len(set(names)) != len(names):
            raise ValueError(f"one detector per kind, got {names}")
        self._series: dict[SeriesKey, _Series] = {}
        self.late_readings = 0
        self.bad_readings = 0

    def feed(self, key: SeriesKey, reading: Reading) -> list[Finding]:
        """Judge one reading of ``key`` with every detector."""
        return self.feed_series(key, (reading,))

    def feed_batch(self, gateway_id: str, readings: Iterable[Reading]) -> list[Finding]:
        """Judge the readings of one gateway's batch: each series' readings in order, the series in the
        order of their first reading (findings of different series are independent)."""
        return self.feed_runs(gateway_id, series_runs(readings))

    def feed_runs(self, gateway_id: str, runs: SeriesRuns) -> list[Finding]:
        """``feed_batch`` with the readings already grouped by ``series_runs``."""
        findings: list[Finding] = []
        for (sensor_id, quantity), run in runs.items():
            findings += self.feed_series(SeriesKey(gateway_id, sensor_id, quantity), run)
        return findings

    def feed_series(self, key: SeriesKey, readings: Iterable[Reading]) -> list[Finding]:
        """Judge readings of one series, in order, with every detector; findings in reading order.

        The series' record and profile are looked up once for all of them, and each detector judges
        the run of readings that passed the late and bad reading rules in one call (docs/detectors.md).
        """
        series = self._series.get(key)
        run: list[Reading] = []
        for reading in readings:
            ts = reading.ts_ms
            if series is not None and ts <= series.newest_ms:
                self.late_readings += 1
                continue
            if reading.quality is Quality.BAD:
                self.bad_readings += 1
                continue
            if series is None:
                series = self._series[key] = _Series(ts)
            else:
                series.newest_ms = ts
            run.append(reading)
        profile = self._profile_for(key)
        if series is None or profile is None or not run:
            return []
        findings: list[Finding] = []
        judges = series.judges
        if judges is None or profile is not series.profile:
            first = run[0]
            for detector in self.detectors:
                findings += detector.observe(key, first, profile)
            series.profile = profile
            judges = series.judges = [
                (detector.judge, state) for detector in self.detectors if (state := detector.state_of(key)) is not None
            ]
            del run[0]
            if not run:
                return findings
        # The hot path: every state here is older than the run (checked above), as ``observe`` would check.
        judged = 0
        for judge, state in judges:
            found = judge(key, state, run, profile)
            if found:
                findings += found
                judged += 1
        if judged > 1:
            # Each detector's findings are in reading order: a stable sort by reading time interleaves
            # them as judging reading by reading would (the first reading's ``observe`` findings lead).
            findings.sort(key=_reading_time)
        return findings

    def tick(self, now_ms: int) -> list[Finding]:
        """Advance the hub clock: time-driven findings (silence) of every detector."""
        findings: list[Finding] = []
        for detector in self.detectors:
            findings += detector.tick(now_ms)
        return findings

    def reset(self, key: SeriesKey) -> None:
        """Start a new journey for ``key``: the time-out-of-range budget starts again from zero.

        The other detectors judge the air, not the goods, and keep their state (an open excursion
        still closes normally).
        """
        for detector in self.detectors:
            if isinstance(detector, CumulativeDetector):
                detector.reset(key)
        series = self._series.get(key)
        if series is not None:
            series.judges = None

    def snapshot(self) -> bytes:
        """The state of every detector and of the late-reading rule, as msgspec JSON."""
        return _ENCODER.encode(
            _Snapshot(
                SNAPSHOT_VERSION,
                self.late_readings,
                self.bad_readings,
                [(key, series.newest_ms) for key, series in self._series.items()],
                {detector.kind.value: msgspec.Raw(detector.snapshot()) for detector in self.detectors},
            )
        )

    def restore(self, data: bytes) -> None:
        """Replace all state with a ``snapshot``; raises ``ValueError`` when it does not fit this set."""
        try:
            snapshot = _DECODER.decode(data)
        except msgspec.DecodeError as exc:
            raise ValueError(f"not a detector snapshot: {exc}") from exc
        if snapshot.version != SNAPSHOT_VERSION:
            raise ValueError(f"detector snapshot version {snapshot.version}, expected {SNAPSHOT_VERSION}")
        missing = {detector.kind.value for detector in self.detectors} - set(snapshot.detectors)
        if missing:
            raise ValueError(f"detector snapshot lacks {sorted(missing)}")
        for detector in self.detectors:
            try:
                detector.restore(snapshot.detectors[detector.kind.value])
            except msgspec.DecodeError as exc:
                raise ValueError(f"detector snapshot of {detector.kind.value} is invalid: {exc}") from exc
        self._series = {SeriesKey(*key): _Series(newest_ms) for key, newest_ms in snapshot.newest}
        self.late_readings = snapshot.late_readings
        self.bad_readings = snapshot.bad_readings
