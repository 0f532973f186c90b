"""A commit's readings grouped by series, and folded into rollups and latest values, without I/O.

Ingest groups each batch's readings by series once: the detectors judge each series' run, and
``SeriesFold`` keeps the same runs for the commit's insert (a run names its series once) and sums them
into the rows the commit upserts into ``rollups`` (5-minute min/max/sum/count per series) and
``latest`` (each series' newest reading). The fold runs on the
thread that prepares a group, beside the judging, and leaves the thread that commits only a few
rows per series to write: SQLite's work on that thread limits the drain (docs/benchmarks.md). A
run's readings are summed with ``min``/``max``/``sum`` over lists, in C, when they share a bucket,
which they nearly always do (a batch spans seconds, a bucket five minutes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import msgspec

from coldchain.messages import Quantity, Reading
from hub.detectors.base import SeriesRuns
from hub.schema import ROLLUP_BUCKET_MS

RollupKey = tuple[str, Quantity, int, str]
"""``(gateway_id, quantity, bucket_ms, sensor_id)``: the rollups table's primary key, in its order."""

LatestKey = tuple[str, str, Quantity]
"""``(gateway_id, sensor_id, quantity)``: the latest table's primary key."""

_RUNS_JSON: Final = msgspec.json.Encoder()

_MIN: Final = 0
_MAX: Final = 1
_SUM: Final = 2
_SAMPLES: Final = 3


class SeriesFold:
    """The runs of the batches added, and their rollup sums and latest readings, as rows for the commit.

    Batches are added in commit order; of two readings of a series with the same time, the one
    added later is the latest (as the database's own ``ts_ms >= latest.ts_ms`` rule keeps it).
    """

    __slots__ = ("_latest", "_rollups", "_runs")

    def __init__(self) -> None:
        self._rollups: dict[RollupKey, list[float]] = {}
        self._latest: dict[LatestKey, Reading] = {}
        self._runs: list[tuple[int, str, SeriesRuns]] = []

    def add(self, gateway_id: str, seq: int, runs: SeriesRuns) -> None:
        """Fold in the readings of a gateway's batch ``seq``, grouped by ``series_runs``."""
        if runs:
            self._runs.append((seq, gateway_id, runs))
        for (sensor_id, quantity), run in runs.items():
            self._add_run(gateway_id, sensor_id, quantity, run)

    def series(self) -> list[LatestKey]:
        """Every series with a reading added, as ``(gateway_id, sensor_id, quantity)``."""
        return list(self._latest)

    def readings_json(self, series_ids: Mapping[LatestKey, int]) -> bytes:
        """The readings added, for the commit's insert: ``[[seq, series_id, [reading, ...]], ...]`` (a
        reading is its wire array), batch by batch in the order added, each batch's series in the order
        of their first reading, each run in arrival order. ``series_ids`` names every series of ``series()``.

        Only the runs are visited here, never a reading: the encoder writes the readings in C.
        """
        return _RUNS_JSON.encode(
            [
                (seq, series_ids[gateway_id, sensor_id, quantity], run)
                for seq, gateway_id, runs in self._runs
                for (sensor_id, quantity), run in runs.items()
            ]
        )

    def _add_run(self, gateway_id: str, sensor_id: str, quantity: Quantity, run: Sequence[Reading]) -> None:
        times = [reading.ts_ms for reading in run]
        newest_ms = max(times)
        # The last of the readings at the newest time: a later one of equal time wins.
        newest = run[len(times) - 1 - times[::-1].index(newest_ms)]
        latest_key = (gateway_id, sensor_id, quantity)
        known = self._latest.get(latest_key)
        if known is None or newest_ms >= known.ts_ms:
            self._latest[latest_key] = newest
        oldest_ms = min(times)
        if oldest_ms - oldest_ms % ROLLUP_BUCKET_MS == newest_ms - newest_ms % ROLLUP_BUCKET_MS:
            values = [reading.value for reading in run]
            self._fold(
                (gateway_id, quantity, newest_ms - newest_ms % ROLLUP_BUCKET_MS, sensor_id),
                min(values),
                max(values),
                sum(values),
                len(values),
            )
            return
        for reading in run:
            value = reading.value
            self._fold(
                (gateway_id, quantity, reading.ts_ms - reading.ts_ms % ROLLUP_BUCKET_MS, sensor_id),
                value,
                value,
                value,
                1,
            )

    def _fold(self, key: RollupKey, low: float, high: float, total: float, samples: int) -> None:
        bucket = self._rollups.get(key)
        if bucket is None:
            self._rollups[key] = [low, high, total, samples]
            return
        bucket[_MIN] = min(bucket[_MIN], low)
        bucket[_MAX] = max(bucket[_MAX], high)
        bucket[_SUM] += total
        bucket[_SAMPLES] += samples

    def rollup_rows(self) -> list[tuple[str, str, str, int, float, float, float, int]]:
        """``(gateway_id, quantity, sensor_id, bucket_ms, min, max, sum, samples)`` per series and bucket."""
        return [
            (gateway_id, quantity.value, sensor_id, bucket_ms, low, high, total, int(samples))
            for (gateway_id, quantity, bucket_ms, sensor_id), (low, high, total, samples) in self._rollups.items()
        ]

    def latest_rows(self) -> list[tuple[str, str, str, int, float, str]]:
        """``(gateway_id, sensor_id, quantity, ts_ms, value, quality)`` of each series' newest reading."""
        return [
            (gateway_id, sensor_id, quantity.value, reading.ts_ms, reading.value, reading.quality.value)
            for (gateway_id, sensor_id, quantity), reading in self._latest.items()
        ]
