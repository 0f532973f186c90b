"""Hub ingest core without the broker: decode, deduplicate and commit batches to SQLite.

Prints readings per second for several batch sizes. Not a test: it never passes or fails.
Run: make bench-ingest   (PYTHONPATH=. .venv/bin/python bench/ingest_pipeline.py --readings 200000)
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path

from coldchain.messages import Quantity, Reading, TelemetryBatch, encode
from hub.alarms import AlarmService, AlarmSettings
from hub.detectors.detector_set import DetectorSet
from hub.ingest import Inbound, IngestPipeline
from hub.profiles import load_profile_book
from hub.store import IngestWriter

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


def run(batch_size: int, total: int, *, detectors: bool) -> tuple[float, float]:
    messages = payloads(50, batch_size, total)
    with tempfile.TemporaryDirectory() as workdir:
        judge = None
        if detectors:  # every series judged against the chilled-produce profile, alarms committed
            profile = load_profile_book(Path("config/profiles.toml")).profiles["chilled-produce"]
            judge = lambda: DetectorSet(lambda _key: profile)  # noqa: E731
        alarms = AlarmService(AlarmSettings(), None, lambda _gateway: None)
        pipeline = IngestPipeline(IngestWriter(Path(workdir) / "bench.sqlite3", alarms), detectors=judge)
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
    return stored / elapsed, stored / dup_elapsed


def main() -> None:
    logging.getLogger("hub").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=200_000)
    args = parser.parse_args()
    print(
        f"machine: {platform.machine()} {os.cpu_count()} cores, Python {platform.python_version()}, SQLite file in tmp"
    )
    for detectors in (False, True):
        print("with every detector judging every reading" if detectors else "storage only (no product profile)")
        print(f"{'batch size':>10} {'stored readings/s':>18} {'duplicate readings/s':>21}")
        for batch_size in (1, 10, 100, 500):
            total = args.readings if batch_size > 1 else min(args.readings, 20_000)
            new_rate, dup_rate = run(batch_size, total, detectors=detectors)
            print(f"{batch_size:>10} {new_rate:>18,.0f} {dup_rate:>21,.0f}")


if __name__ == "__main__":
    main()
