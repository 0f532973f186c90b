"""Hub ingest core without the broker: decode, deduplicate and commit batches to the system of record.

Prints readings per second for several batch sizes, on SQLite and, with ``--postgresql URL`` (a server
where the user may create databases), on PostgreSQL side by side. Not a test: it never passes or fails.
Run: make bench-ingest   (PYTHONPATH=. .venv/bin/python bench/ingest_pipeline.py --readings 200000
     [--postgresql postgresql://postgres@127.0.0.1:5432/postgres])
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa

from coldchain.messages import Quantity, Reading, TelemetryBatch, encode
from hub.alarms import AlarmService, AlarmSettings
from hub.detectors.detector_set import DetectorSet
from hub.ingest import Inbound, IngestPipeline
from hub.profiles import load_profile_book
from hub.runtime import tune_interpreter_for_ingest
from hub.store import IngestWriter
from tests.support.postgres import PostgresServer

GROUP_MESSAGES = 500


def payloads(gateways: int, batch_size: int, total_readings: int) -> list[Inbound]:
    boot = uuid.uuid4().hex
    start = int(time.time() * 1000) - 86_400_000
    messages = []
    batches = total_readings // batch_size
    for n in range(batches):
        gateway = f"gw-{n % gateways:04d}"
        seq = n // gateways + 1
        readings = [
            Reading(f"probe-{i % 4}", Quantity.TEMPERATURE, start + (seq * batch_size + i) * 1000, 3.0 + (i % 5) / 100)
            for i in range(batch_size)
        ]
        messages.append(
            Inbound(f"cc/v1/gw/{gateway}/telemetry", encode(TelemetryBatch(gateway, boot, seq, 1, readings)), 0)
        )
    return messages


@contextmanager
def fresh_store(postgresql: str | None) -> Iterator[str]:
    """A new SQLite file, or a new database on the PostgreSQL server, dropped afterwards."""
    if postgresql is None:
        with tempfile.TemporaryDirectory() as workdir:
            yield str(Path(workdir) / "bench.sqlite3")
        return
    server = PostgresServer(postgresql)
    url = server.create_database()
    try:
        yield url
    finally:
        server.drop_database(url)
        server.stop()


def run(batch_size: int, total: int, *, detectors: bool, postgresql: str | None = None) -> tuple[float, float]:
    messages = payloads(50, batch_size, total)
    with fresh_store(postgresql) as store:
        judge = None
        if detectors:  # every series judged against the chilled-produce profile, alarms committed
            profile = load_profile_book(Path("config/profiles.toml")).profiles["chilled-produce"]
            judge = lambda: DetectorSet(lambda _key: profile)  # noqa: E731
        alarms = AlarmService(AlarmSettings(), None, lambda _gateway: None)
        writer = IngestWriter(store, alarms)
        pipeline = IngestPipeline(writer, detectors=judge)
        started = time.perf_counter()
        for i in range(0, len(messages), GROUP_MESSAGES):
            pipeline.process(messages[i : i + GROUP_MESSAGES])
        elapsed = time.perf_counter() - started
        dup_started = time.perf_counter()
        for i in range(0, len(messages), GROUP_MESSAGES):
            pipeline.process(messages[i : i + GROUP_MESSAGES])
        dup_elapsed = time.perf_counter() - dup_started
        stored = pipeline.stats.snapshot()["readings_stored"]
        assert stored == len(messages) * batch_size, stored
        writer.close()
        writer.database.dispose()
    return stored / elapsed, stored / dup_elapsed


def main() -> None:
    logging.getLogger("hub").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--postgresql", metavar="URL", help="also run on this PostgreSQL server (creates databases)")
    args = parser.parse_args()
    tune_interpreter_for_ingest()  # as `coldchain hub run` does
    print(f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}")
    backends: list[tuple[str, str | None]] = [("SQLite file in tmp", None)]
    if args.postgresql:
        backends.append(("PostgreSQL " + sa.make_url(args.postgresql).render_as_string(), args.postgresql))
    for detectors in (False, True):
        print("with every detector judging every reading" if detectors else "storage only (no product profile)")
        header = "".join(f" {name[:10] + ' stored/s':>22} {'dup/s':>12}" for name, _ in backends)
        print(f"{'batch size':>10}{header}")
        for batch_size in (1, 10, 100, 500):
            total = args.readings if batch_size > 1 else min(args.readings, 20_000)
            cells = []
            for _, url in backends:
                new_rate, dup_rate = run(batch_size, total, detectors=detectors, postgresql=url)
                cells.append(f" {new_rate:>22,.0f} {dup_rate:>12,.0f}")
            print(f"{batch_size:>10}{''.join(cells)}")
    for name, _ in backends:
        print(f"  {name}")


if __name__ == "__main__":
    main()
