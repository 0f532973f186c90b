"""SQLite's insert of a commit's readings, three ways side by side, on the hub's own store settings.

The insert of a commit group's readings is most of the ingest writer thread's work (docs/benchmarks.md).
This prints readings per second for three ways the rows can reach SQLite, each into a fresh migrated
store (WAL, synchronous=FULL, the readings index), a commit per group as the writer does:

- ``json``: one JSON parameter (``SeriesFold.readings_json``) expanded by ``json_each`` and sorted
  into commit order: what the writer does (``_INSERT_READINGS_SQL``);
- ``executemany``: one bound row per step (``_bulk_insert``);
- ``values``: multi-row VALUES statements of bound parameters, 2,048 rows (10,240 values) at most,
  a power of two of rows each so that a few statement texts stay prepared.

Parameters are built before the clock starts: this is SQLite's and the driver's work alone. It is not
the end-to-end figure: the JSON statement releases the GIL for the whole insert, while the driver
binds every value holding it, and the hub's ingest thread waits for it then (docs/decisions.md,
"Multi-row VALUES for the readings: tried, not taken"). The ways run in turn, ``--rounds`` times,
best and median printed. Not a test: it never passes or fails.
Run: PYTHONPATH=. .venv/bin/python bench/sqlite_insert.py [--groups 40] [--group-readings 50000] [--series 800]
"""

from __future__ import annotations

import argparse
import functools
import itertools
import platform
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from coldchain.messages import Quantity, Reading
from hub import schema
from hub.db import Database, sqlite_url
from hub.detectors.base import series_runs
from hub.series_fold import SeriesFold
from hub.store import _INSERT_READINGS_SQL, _bulk_insert

START_MS = 1_772_323_200_000
READINGS_PER_BATCH = 500
READINGS_COLUMNS = ("series_id", "ts_ms", "value", "quality", "seq")
VALUES_MAX_ROWS = 2048


def reading_rows(readings_json: bytes) -> list[tuple[Any, ...]]:
    """A commit's readings as ``(series_id, ts_ms, value, quality, seq)`` rows, in commit order."""
    return [
        (series_id, ts_ms, value, quality, seq)
        for seq, series_id, run in msgspec.json.decode(readings_json)
        for _, _, ts_ms, value, quality in run
    ]


def insert_json(conn: Connection, readings_json: bytes) -> None:
    conn.exec_driver_sql(_INSERT_READINGS_SQL["sqlite"], (readings_json.decode(),))


def insert_executemany(conn: Connection, rows: list[tuple[Any, ...]]) -> None:
    _bulk_insert(conn, (schema.readings, READINGS_COLUMNS), rows)


@functools.cache
def values_sql(count: int) -> str:
    row = f"({', '.join('?' * len(READINGS_COLUMNS))})"
    return f"INSERT INTO readings ({', '.join(READINGS_COLUMNS)}) VALUES {', '.join([row] * count)}"


def prepare_values(readings_json: bytes) -> list[tuple[int, tuple[Any, ...]]]:
    """Statements of a power of two of rows (at most ``VALUES_MAX_ROWS``) and their parameters."""
    rows = reading_rows(readings_json)
    statements = []
    start = 0
    while start < len(rows):
        count = min(VALUES_MAX_ROWS, 1 << ((len(rows) - start).bit_length() - 1))
        statements.append((count, tuple(itertools.chain.from_iterable(rows[start : start + count]))))
        start += count
    return statements


def insert_values(conn: Connection, statements: list[tuple[int, tuple[Any, ...]]]) -> None:
    for count, parameters in statements:
        conn.exec_driver_sql(values_sql(count), parameters)


Way = tuple[Callable[[bytes], Any], Callable[[Connection, Any], None]]
WAYS: dict[str, Way] = {
    "json": (lambda readings_json: readings_json, insert_json),
    "executemany": (reading_rows, insert_executemany),
    "values": (prepare_values, insert_values),
}


def commit_groups(groups: int, group_readings: int, series: int) -> list[bytes]:
    """The readings of ``groups`` commit groups as the writer gets them: batches of 500 readings from
    gateways of four probes, folded by series (``SeriesFold.readings_json``)."""
    gateways = series // 4
    series_ids = {(f"gw-{n // 4:04d}", f"probe-{n % 4}", Quantity.TEMPERATURE): n + 1 for n in range(gateways * 4)}
    commits = []
    batch = 0
    for _ in range(groups):
        fold = SeriesFold()
        for _ in range(group_readings // READINGS_PER_BATCH):
            gateway, seq = batch % gateways, batch // gateways + 1
            readings = [
                Reading(
                    f"probe-{i % 4}",
                    Quantity.TEMPERATURE,
                    START_MS + (seq * READINGS_PER_BATCH + i) * 1000,
                    round(3.0 + (i % 7) / 100, 2),
                )
                for i in range(READINGS_PER_BATCH)
            ]
            fold.add(f"gw-{gateway:04d}", seq, series_runs(readings))
            batch += 1
        commits.append(fold.readings_json(series_ids))
    return commits


def run_way(way: Way, commits: list[bytes], workdir: Path) -> float:
    """Seconds to insert and commit every group into a fresh store (parameters built beforehand)."""
    prepare, insert = way
    parameters = [prepare(readings_json) for readings_json in commits]
    database = Database(sqlite_url(workdir / f"{uuid.uuid4().hex}.sqlite3"))
    database.upgrade()
    try:
        with database.writer() as conn:
            started = time.perf_counter()
            for group in parameters:
                with conn.begin():
                    insert(conn, group)
            elapsed = time.perf_counter() - started
            stored = conn.execute(sa.select(sa.func.count()).select_from(schema.readings)).scalar_one()
            first_ts = conn.execute(sa.text("SELECT ts_ms FROM readings WHERE id = 1")).scalar_one()
    finally:
        database.dispose()
    expected = len(commits) * len(reading_rows(commits[0]))
    if stored != expected or first_ts != START_MS + READINGS_PER_BATCH * 1000:  # batch 0 is seq 1
        raise SystemExit(f"stored {stored} readings (expected {expected}), the first at {first_ts}")
    return elapsed


def main() -> None:
    """Insert the same commit groups every way, ``--rounds`` times in turn."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--groups", type=int, default=40, help="commit groups (one transaction each)")
    parser.add_argument("--group-readings", type=int, default=50_000, help="readings per commit group")
    parser.add_argument("--series", type=int, default=800, help="series (four probes per gateway)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each way, in turn")
    args = parser.parse_args()
    commits = commit_groups(args.groups, args.group_readings, args.series)
    total = args.groups * (args.group_readings // READINGS_PER_BATCH) * READINGS_PER_BATCH
    print(
        f"python {platform.python_version()}, SQLite {sqlite3.sqlite_version} on {platform.machine()}: "
        f"{args.groups} commits of {args.group_readings:,} readings over {args.series} series, {args.rounds} rounds"
    )
    rates: dict[str, list[float]] = {name: [] for name in WAYS}
    with tempfile.TemporaryDirectory() as workdir:
        for _ in range(args.rounds):
            for name, way in WAYS.items():
                rates[name].append(total / run_way(way, commits, Path(workdir)))
    baseline = max(rates["json"])
    for name, measured in rates.items():
        best = max(measured)
        print(
            f"  {name:12s} best {best:10,.0f} readings/s, median {statistics.median(measured):10,.0f}"
            f"  ({best / baseline:.2f}x json)"
        )


if __name__ == "__main__":
    main()
