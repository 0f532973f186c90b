"""Profile the hub's ingest core at its ceiling: the in-process pipeline of bench/ingest_pipeline.py
(decode, deduplicate, commit to SQLite with synchronous=FULL) with every series bound to
chilled-produce, so all seven detectors judge every reading. Not a test: it prints figures.

Prints the unprofiled rate first, then the top costs by cumulative and by own time under cProfile
(deterministic: every Python call is counted, which inflates small hot functions by roughly the
same per-call overhead), optionally a pyinstrument (sampling) tree as a cross-check.

Run: PYTHONPATH=. .venv/bin/python bench/profile_hub.py [--readings 200000 --batch-size 100 --top 15 --pyinstrument]
"""

from __future__ import annotations

import argparse
import cProfile
import logging
import os
import platform
import pstats
import tempfile
import time
import uuid
from pathlib import Path

from coldchain.messages import Quantity, Reading, TelemetryBatch, encode
from hub.alarms import AlarmService, AlarmSettings
from hub.detectors.detector_set import DetectorSet
from hub.ingest import Inbound, IngestPipeline
from hub.profiles import load_profile_book
from hub.runtime import tune_interpreter_for_ingest
from hub.store import IngestWriter

GROUP_MESSAGES = 500
GATEWAYS = 50


def payloads(batch_size: int, total_readings: int) -> list[Inbound]:
    """As bench/ingest_pipeline.py: 50 gateways, 4 probes each, one reading per second per batch slot."""
    boot = uuid.uuid4().hex
    start = int(time.time() * 1000) - 86_400_000
    messages = []
    for n in range(total_readings // batch_size):
        gateway = f"gw-{n % GATEWAYS:04d}"
        seq = n // GATEWAYS + 1
        readings = [
            Reading(f"probe-{i % 4}", Quantity.TEMPERATURE, start + (seq * batch_size + i) * 1000, 3.0 + (i % 5) / 100)
            for i in range(batch_size)
        ]
        messages.append(
            Inbound(f"cc/v1/gw/{gateway}/telemetry", encode(TelemetryBatch(gateway, boot, seq, 1, readings)), 0)
        )
    return messages


def pipeline_in(workdir: Path) -> IngestPipeline:
    profile = load_profile_book(Path("config/profiles.toml")).profiles["chilled-produce"]
    alarms = AlarmService(AlarmSettings(), None, lambda _gateway: None)
    return IngestPipeline(
        IngestWriter(workdir / "bench.sqlite3", alarms), detectors=lambda: DetectorSet(lambda _key: profile)
    )


def drive(pipeline: IngestPipeline, messages: list[Inbound]) -> float:
    started = time.perf_counter()
    for i in range(0, len(messages), GROUP_MESSAGES):
        pipeline.process(messages[i : i + GROUP_MESSAGES])
    return time.perf_counter() - started


def short(func: tuple[str, int, str]) -> str:
    path, line, name = func
    for marker in ("/site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{path}:{line}({name})" if path != "~" else name


def table(stats: pstats.Stats, key: str, top: int, total: float) -> None:
    entries = stats.stats  # type: ignore[attr-defined]
    index = 3 if key == "cumulative" else 2
    rows = sorted(entries.items(), key=lambda kv: kv[1][index], reverse=True)[:top]
    print(f"top {top} by {key} time (of {total:.2f} s profiled)")
    print(f"{'#':>3} {'calls':>10} {'own s':>8} {'own %':>6} {'cum s':>8} {'cum %':>6}  function")
    for n, (func, (_cc, nc, tt, ct, _callers)) in enumerate(rows, 1):
        print(
            f"{n:>3} {nc:>10,} {tt:>8.3f} {100 * tt / total:>6.1f} {ct:>8.3f} {100 * ct / total:>6.1f}  {short(func)}"
        )
    print()


def main() -> None:
    logging.getLogger("hub").setLevel(logging.ERROR)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument(
        "--pyinstrument", action="store_true", help="also a pyinstrument tree (pip install pyinstrument)"
    )
    args = parser.parse_args()
    tune_interpreter_for_ingest()  # as `coldchain hub run` does
    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
        f"{args.readings:,} readings, {args.batch_size} per message, {GATEWAYS} gateways, groups of {GROUP_MESSAGES}"
    )
    messages = payloads(args.batch_size, args.readings)
    with tempfile.TemporaryDirectory() as tmp:
        elapsed = drive(pipeline_in(Path(tmp)), messages)
    print(f"unprofiled: {args.readings / elapsed:,.0f} stored readings/s ({elapsed:.2f} s)")

    with tempfile.TemporaryDirectory() as tmp:
        pipeline = pipeline_in(Path(tmp))
        profiler = cProfile.Profile()
        profiler.enable()
        elapsed = drive(pipeline, messages)
        profiler.disable()
    print(f"under cProfile: {args.readings / elapsed:,.0f} stored readings/s ({elapsed:.2f} s)\n")
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    table(stats, "cumulative", args.top, total)
    table(stats, "own", args.top, total)

    if args.pyinstrument:
        from pyinstrument import Profiler

        with tempfile.TemporaryDirectory() as tmp:
            pipeline = pipeline_in(Path(tmp))
            sampler = Profiler(interval=0.0005)
            sampler.start()
            elapsed = drive(pipeline, messages)
            sampler.stop()
        print(f"under pyinstrument: {args.readings / elapsed:,.0f} stored readings/s ({elapsed:.2f} s)")
        print(
            sampler.output_text(unicode=False, color=False, show_all=False, short_mode=False, time="percent_of_total")
        )


if __name__ == "__main__":
    main()
