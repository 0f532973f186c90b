"""Edge agent footprint and replay rate, measured on real processes (not a test: prints figures).

1. RSS and CPU of `coldchain agent` reading 16 probes (two RS485 buses of 8) at 1 Hz, and in a
   10x burst (10 Hz), against a real Mosquitto and hub.
2. Replay after a one-hour outage: one hour of those 16 sensors (115,200 readings, temperature
   and humidity) waits in the agent's disk buffer; the agent starts with the hub reachable, and
   the time until the hub has receipted all of it gives the replay rate.
3. Live readings during a replay (``--live-outage-hours``, default 24, so the replay lasts long
   enough to measure): for every live batch, the time from its newest reading to its commit at the
   hub, for batches committed while the backlog was still replaying and for those after it (live
   batches are cut every second here, not every 10 s, to have many to time).

Run: make bench-agent   (PYTHONPATH=. .venv/bin/python bench/agent_footprint.py --seconds 60; needs mosquitto)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import psutil

from coldchain.messages import Quantity, Reading
from edge_agent.disk_buffer import BufferConfig, DiskBuffer
from firmware_sims.probe import ProbeBusSimulator
from firmware_sims.xymd02 import ProbeSpec
from tests.support.servers import Mosquitto, free_port, wait_for_port

GATEWAY = "gw-bench"
TOKEN = "bench-token-0123456789abcdef"


def start(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as handle:
        return subprocess.Popen([sys.executable, "-m", "coldchain", *args], stdout=handle, stderr=subprocess.STDOUT)


def write_configs(
    work: Path,
    broker_port: int,
    api_port: int,
    buses: list[ProbeBusSimulator],
    interval: float,
    batch_age_s: float = 10.0,
) -> Path:
    (work / "hub.toml").write_text(
        f'[mqtt]\nport = {broker_port}\nusername = "hub"\n[store]\npath = "{work / "hub.sqlite3"}"\n'
        f'[api]\nport = {api_port}\n[[api.tokens]]\nname = "b"\n'
        f'sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\nscopes = ["read"]\n'
    )
    text = (
        f'gateway_id = "{GATEWAY}"\nstate_dir = "{work / "state"}"\n'
        f'[mqtt]\nport = {broker_port}\nusername = "{GATEWAY}"\n'
        f"[sampling]\ninterval_s = {interval}\nbatch_max_age_s = {batch_age_s}\n[courier_view]\nenabled = false\n"
    )
    for b, bus in enumerate(buses):
        text += f'[[buses]]\nkind = "modbus_rtu_probe"\nport = "{bus.path}"\n'
        for address in range(1, 9):
            text += f'[[buses.probes]]\nsensor_id = "probe-{b}-{address}"\naddress = {address}\n'
    config = work / "agent.toml"
    config.write_text(text)
    return config


def measure(process: psutil.Process, seconds: float) -> tuple[float, float]:
    process.cpu_percent(None)
    peak_rss = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(1)
        peak_rss = max(peak_rss, process.memory_info().rss)
    return process.cpu_percent(None), peak_rss / 2**20


def footprint(work: Path, broker: Mosquitto, seconds: float, interval: float) -> tuple[float, float]:
    buses = [ProbeBusSimulator([ProbeSpec(address=a, seed=b * 10 + a) for a in range(1, 9)]) for b in range(2)]
    for bus in buses:
        bus.start()
    api_port = free_port()
    config = write_configs(work, broker.port, api_port, buses, interval)
    hub = start(["hub", "run", "--config", str(work / "hub.toml")], work / "hub.log")
    agent = start(["agent", "--config", str(config)], work / "agent.log")
    try:
        wait_for_port(api_port)
        time.sleep(5)  # past start-up
        return measure(psutil.Process(agent.pid), seconds)
    finally:
        for process in (agent, hub):
            process.terminate()
            process.wait(30)
        for bus in buses:
            bus.stop()


def replay(
    work: Path, broker: Mosquitto, hours: float = 1.0, after_s: float = 0.0
) -> tuple[int, float, list[int], list[int]]:
    """(backlog readings, seconds to replay them, live latencies during the replay, after it) in ms."""
    state = work / "state"
    buffer = DiskBuffer(state / "buffer.sqlite3", GATEWAY, uuid.uuid4().hex, BufferConfig(budget_bytes=2**34))
    outage_ms = int(hours * 3_600_000)
    start_ms = int(time.time() * 1000) - outage_ms
    sensors = [f"probe-{b}-{a}" for b in range(2) for a in range(1, 9)]
    pending: list[Reading] = []
    total = 0
    for second in range(outage_ms // 1000):
        for sensor in sensors:
            pending += [
                Reading(sensor, Quantity.TEMPERATURE, start_ms + second * 1000, 4.0),
                Reading(sensor, Quantity.HUMIDITY, start_ms + second * 1000, 85.0),
            ]
        if len(pending) >= 500:
            buffer.append(pending[:500])
            total += 500
            pending = pending[500:]
    buffer.append(pending)
    total += len(pending)
    buffer.close()

    buses = [ProbeBusSimulator([ProbeSpec(address=a) for a in range(1, 9)]) for _ in range(2)]
    for bus in buses:
        bus.start()
    api_port = free_port()
    # Live batches cut every second, so a replay of some seconds has many of them to time.
    config = write_configs(work, broker.port, api_port, buses, 1.0, batch_age_s=1.0)
    config.write_text(config.read_text() + "[buffer]\nbudget_bytes = 1073741824\n")  # keep the whole backlog
    hub = start(["hub", "run", "--config", str(work / "hub.toml")], work / "hub.log")
    try:
        wait_for_port(api_port)
        time.sleep(1)
        began = time.monotonic()
        agent = start(["agent", "--config", str(config)], work / "agent.log")
        import sqlite3

        while True:
            with sqlite3.connect(work / "hub.sqlite3") as conn:
                stored = conn.execute(
                    "SELECT count(*) FROM readings WHERE ts_ms < ?", (start_ms + outage_ms,)
                ).fetchone()[0]
            if stored >= total:
                break
            time.sleep(0.05)
        elapsed = time.monotonic() - began
        replayed_ms = int(time.time() * 1000)
        time.sleep(after_s)  # live batches after the backlog, for comparison
        agent.terminate()
        agent.wait(30)
        with sqlite3.connect(work / "hub.sqlite3") as conn:
            live = conn.execute(
                "SELECT b.received_ms, max(r.ts_ms) FROM batches b JOIN readings r ON r.seq = b.seq"
                " GROUP BY b.seq HAVING min(r.ts_ms) >= ?",
                (start_ms + outage_ms,),
            ).fetchall()
        during = [received - newest for received, newest in live if received <= replayed_ms]
        after = [received - newest for received, newest in live if received > replayed_ms]
    finally:
        hub.terminate()
        hub.wait(30)
        for bus in buses:
            bus.stop()
    return total, elapsed, during, after


def percentiles(values: list[int]) -> str:
    if not values:
        return "none"
    ordered = sorted(values)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return f"{len(ordered)} batches, p50 {pick(0.5)} ms, p99 {pick(0.99)} ms, max {ordered[-1]} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--live-outage-hours", type=float, default=24.0)
    args = parser.parse_args()
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    for label, interval in (("16 sensors at 1 Hz", 1.0), ("10x burst: 16 sensors at 10 Hz", 0.1)):
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            broker = Mosquitto(binary, work)
            broker.start()
            try:
                cpu, rss = footprint(work, broker, args.seconds, interval)
            finally:
                broker.stop()
        print(f"agent, {label}: CPU {cpu:.2f} % of one core, peak RSS {rss:.1f} MiB (over {args.seconds:.0f} s)")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(binary, work)
        broker.start()
        try:
            total, elapsed, _, _ = replay(work, broker)
        finally:
            broker.stop()
    print(
        f"replay of a one-hour outage: {total:,} readings in {elapsed:.2f} s = {total / elapsed:,.0f} readings/s"
        " (agent start-up included)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker = Mosquitto(binary, work)
        broker.start()
        try:
            total, elapsed, during, after = replay(work, broker, hours=args.live_outage_hours, after_s=30)
        finally:
            broker.stop()
    print(
        f"replay of a {args.live_outage_hours:g}-hour outage: {total:,} readings in {elapsed:.2f} s"
        f" = {total / elapsed:,.0f} readings/s"
    )
    print(f"  live batches committed during the replay: newest reading to commit {percentiles(during)}")
    print(f"  live batches committed after it:          newest reading to commit {percentiles(after)}")


if __name__ == "__main__":
    main()
