"""Raw-series export rate: 1,000,000 readings from an in-memory source into a real local VictoriaMetrics.

Not a test: it prints figures and never passes or fails.

For each ``--batch-points`` size, on a fresh VictoriaMetrics (started as the test fixture starts it, with
``-dedup.minScrapeInterval=1ms`` as docs/series-export.md asks of production): the hub's ``SeriesExporter``
(its thread, ``influxdb-client`` with SYNCHRONOUS writes, cursor saved after every accepted batch) tails a
source that makes ``ExportReading`` rows on the fly (``--gateways`` x 4 sensors, one reading per series per
second of reading time), from start until the cursor reaches the last id. Then the samples VictoriaMetrics
holds are counted (each reading is one point with two fields: ``cc_reading_value`` and
``cc_reading_quality_ok``), so a figure is only printed for an export that lost and doubled nothing.

Also printed: the bench process's peak RSS after the exports (at most one batch of rows is in memory,
whatever the backlog), then line formatting alone (``reading_line``) against influxdb-client's ``Point``,
the reason the exporter builds lines by hand.

With ``--from-store``, the rows come from a real system of record instead: a SQLite file filled
through the hub's own ``IngestPipeline`` first, read back by ``SeriesStoreSource`` (what the hub runs);
``--postgresql URL`` does the same on a fresh database of that server.

Run: PYTHONPATH=. .venv/bin/python bench/series_export.py
     PYTHONPATH=. .venv/bin/python bench/series_export.py --readings 200000 --batch-points 5000
     PYTHONPATH=. .venv/bin/python bench/series_export.py --readings 500000 --batch-points 5000 --from-store
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from coldchain.messages import Quantity, Reading, TelemetryBatch, encode
from hub.ingest import Inbound, IngestPipeline
from hub.series_export import (
    ExportHealth,
    ExportReading,
    ExportSnapshot,
    SeriesConfig,
    SeriesExporter,
    reading_line,
)
from hub.store import IngestWriter, SeriesStoreSource
from tests.support.postgres import PostgresServer
from tests.support.servers import VictoriaMetrics

SENSORS = (("chiller", "temperature"), ("chiller", "humidity"), ("freezer", "temperature"), ("door", "temperature"))


class GeneratedSource:
    """``readings`` rows with ids 1..N, made when asked for (a store would make them from its rows)."""

    def __init__(self, readings: int, gateways: int) -> None:
        self.total = readings
        self.gateways = [f"gw-{n:03d}" for n in range(gateways)]
        self.series = gateways * len(SENSORS)
        self.start_ms = int(time.time() * 1000) - 30 * 86_400_000
        self.cursors: dict[str, int] = {}
        self.largest_read = 0
        self._lock = threading.Lock()

    def row(self, row_id: int) -> ExportReading:
        index = row_id - 1
        series = index % self.series
        gateway_id = self.gateways[series // len(SENSORS)]
        sensor_id, quantity = SENSORS[series % len(SENSORS)]
        value = (85.0 if quantity == "humidity" else 3.0) + (index % 97) / 100
        return ExportReading(
            row_id, gateway_id, sensor_id, quantity, self.start_ms + (index // self.series) * 1000, value, "good"
        )

    def readings_after(self, after_id: int, limit: int) -> Sequence[ExportReading]:
        self.largest_read = max(self.largest_read, limit)
        last = min(self.total, after_id + limit)
        return [self.row(row_id) for row_id in range(after_id + 1, last + 1)]

    def health_after(self, after_id: int, limit: int) -> Sequence[ExportHealth]:
        return []

    def latest_reading_id(self) -> int:
        return self.total

    def snapshot(self, closed_since_ms: int) -> ExportSnapshot:
        return ExportSnapshot(gateways=[], alarms=[])

    def cursor(self, name: str) -> int:
        with self._lock:
            return self.cursors.get(name, 0)

    def save_cursor(self, name: str, position: int) -> None:
        with self._lock:
            self.cursors[name] = position


def formatting_rates(source: GeneratedSource, count: int) -> tuple[float, float]:
    """(lines/s by reading_line, lines/s by influxdb-client's Point) over the first ``count`` rows."""
    from influxdb_client import Point, WritePrecision

    rows = [source.row(row_id) for row_id in range(1, count + 1)]
    started = time.perf_counter()
    for row in rows:
        reading_line(row, "cold_store")
    ours = count / (time.perf_counter() - started)
    started = time.perf_counter()
    for row in rows:
        (
            Point("cc_reading")
            .tag("gateway_id", row.gateway_id)
            .tag("sensor_id", row.sensor_id)
            .tag("quantity", row.quantity)
            .tag("node_kind", "cold_store")
            .field("value", row.value)
            .field("quality_ok", 1)
            .time(row.ts_ms, WritePrecision.MS)
            .to_line_protocol()
        )
    return ours, count / (time.perf_counter() - started)


def filled_store(target: str, readings: int, gateways: int) -> SeriesStoreSource:
    """A system of record holding ``readings`` committed through the hub's pipeline (500 per batch)."""
    generated = GeneratedSource(readings, gateways)
    writer = IngestWriter(target)
    pipeline = IngestPipeline(writer)
    boot = "0" * 32
    batch: dict[str, list[Reading]] = {}
    seqs: dict[str, int] = {}
    group: list[Inbound] = []
    started = time.perf_counter()
    for row_id in range(1, readings + 1):
        row = generated.row(row_id)
        pending = batch.setdefault(row.gateway_id, [])
        pending.append(Reading(row.sensor_id, Quantity(row.quantity), row.ts_ms, row.value))
        if len(pending) == 500 or row_id == readings:
            seqs[row.gateway_id] = seq = seqs.get(row.gateway_id, 0) + 1
            message = TelemetryBatch(row.gateway_id, boot, seq, 1, pending)
            group.append(Inbound(f"cc/v1/gw/{row.gateway_id}/telemetry", encode(message), 0))
            batch[row.gateway_id] = []
        if len(group) == 100:
            pipeline.process(group)
            group = []
    for gateway_id, pending in batch.items():
        if pending:
            seqs[gateway_id] = seq = seqs.get(gateway_id, 0) + 1
            message = TelemetryBatch(gateway_id, boot, seq, 1, pending)
            group.append(Inbound(f"cc/v1/gw/{gateway_id}/telemetry", encode(message), 0))
    if group:
        pipeline.process(group)
    writer.close()
    print(
        f"store filled: {readings:,} readings in {time.perf_counter() - started:.1f} s ({writer.database.display_url})"
    )
    return SeriesStoreSource(writer.database)


def run_once(
    binary: str, workdir: Path, readings: int, gateways: int, batch_points: int, store: str | None = None
) -> tuple[float, int, int]:
    """Export ``readings`` through a fresh VictoriaMetrics; (seconds, samples stored, largest read)."""
    vm = VictoriaMetrics(binary, workdir, dedup=True)
    vm.start()
    try:
        source: GeneratedSource | SeriesStoreSource = (
            GeneratedSource(readings, gateways) if store is None else filled_store(store, readings, gateways)
        )
        config = SeriesConfig(url=vm.url, batch_points=batch_points, flush_interval_s=0.05)
        exporter = SeriesExporter.from_config(
            config, source, node_kinds=dict.fromkeys(GeneratedSource(0, gateways).gateways, "cold_store")
        )
        assert exporter is not None
        started = time.perf_counter()
        exporter.start()
        while exporter.cursors()[0] < readings:
            time.sleep(0.01)
        elapsed = time.perf_counter() - started
        exporter.stop()
        counters = exporter.snapshot()
        assert counters["points_written"] == readings, counters
        if isinstance(source, SeriesStoreSource):
            source.database.dispose()
        # Counted by a query rather than /api/v1/export: two million samples as JSON would dwarf the
        # exporter's own memory in the RSS figure.
        (result,) = vm.query('sum(count_over_time({__name__=~"cc_reading_.*"}[31d]))')
        return elapsed, int(result["value"][1]), getattr(source, "largest_read", batch_points)
    finally:
        vm.stop()


def new_postgres_database(server_url: str) -> str:
    """A fresh database on ``server_url`` (left behind for inspection: drop the cc_* databases by hand)."""
    server = PostgresServer(server_url)
    try:
        return server.create_database()
    finally:
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000)
    parser.add_argument("--gateways", type=int, default=100)
    parser.add_argument("--batch-points", default="1000,5000,20000", help="comma-separated batch sizes")
    parser.add_argument("--from-store", action="store_true", help="read the rows from a SQLite system of record")
    parser.add_argument("--postgresql", metavar="URL", help="read them from a new database on this server")
    args = parser.parse_args()
    binary = shutil.which("victoria-metrics")
    if binary is None:
        sys.exit("victoria-metrics is not installed (Debian package victoria-metrics)")
    try:
        vm_version = subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "victoria-metrics"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        vm_version = "unknown"

    print(f"command: PYTHONPATH=. {shlex.join([sys.executable, *sys.argv])}")
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, {platform.system()} {platform.release()},"
        f" Python {platform.python_version()}, VictoriaMetrics {vm_version} on the same machine"
    )
    print(f"date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds')}")
    print(f"readings: {args.readings:,} over {args.gateways * len(SENSORS)} series ({args.gateways} gateways)")

    print()
    print(
        "| batch_points | seconds | points/s (readings/s) | samples/s in VictoriaMetrics | samples stored | largest read |"
    )
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    with tempfile.TemporaryDirectory(prefix="cc-series-bench-") as tmp:
        for index, size in enumerate(int(part) for part in args.batch_points.split(",")):
            workdir = Path(tmp) / f"vm{index}"
            workdir.mkdir()
            store = None
            if args.postgresql:
                store = new_postgres_database(args.postgresql)
            elif args.from_store:
                store = str(workdir / "hub.sqlite3")
            elapsed, samples, largest = run_once(binary, workdir, args.readings, args.gateways, size, store)
            exact = "exact" if samples == 2 * args.readings else f"MISMATCH, expected {2 * args.readings:,}"
            print(
                f"| {size:,} | {elapsed:.2f} | {args.readings / elapsed:,.0f} | {samples / elapsed:,.0f}"
                f" | {samples:,} ({exact}) | {largest:,} rows |"
            )
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print()
    print(f"bench process peak RSS after the exports: {peak_mib:.0f} MiB")
    ours, point = formatting_rates(GeneratedSource(100_000, args.gateways), 100_000)
    print(f"formatting alone, 100,000 readings: reading_line {ours:,.0f} lines/s, influxdb-client Point {point:,.0f}/s")


if __name__ == "__main__":
    main()
