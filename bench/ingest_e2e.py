"""Hub ingest ceiling end to end: load generator processes -> a real Mosquitto -> a real `coldchain hub run`.

Not a test: it prints figures and never passes or fails.

For each batch size (readings per TelemetryBatch: 1, 10, 100, 500) on a fresh broker and hub:

- generator: ``--publishers`` processes (multiprocessing) publish agent-format batches (coldchain.messages,
  QoS 1, ``--gateways`` gateway ids, seqs 1, 2, 3, ... per gateway) with a window of in-flight PUBLISHes;
  the broker's PUBACK completes a message. "generator max" is their rate while the hub is offline
  (its persistent session makes Mosquitto queue everything for it: nobody else uses a core).
- hub, drain: the hub is then started and takes the queue; readings/s committed, from the commit
  stamps (``batches.received_ms``) of the hub's SQLite. The generators are idle: this is the hub's ceiling.
- hub, live: the same number of readings again, published at full speed while the hub runs: the hub
  shares the two cores with the generators and the broker.
- raw Mosquitto: the same two phases with a plain paho subscriber (QoS 1, clean_session false) that
  only counts messages, on a fresh broker. Hub share = hub rate / raw rate.

Every gateway is bound to the ``chilled-produce`` profile, so all seven detectors judge every reading.
Readings are 1 s apart per probe (4 probes per gateway), in range, and vary a little, so no detector
fires; reading time runs faster than wall time (a gateway sends hours of readings in seconds).

Then overload: the generators publish at ``--overload-factor`` (3) x the hub's drain ceiling at batch size
``--overload-batch`` (100) for ``--overload-seconds`` (20 by default to keep the run short; use 60 for
the issue's figure), sampling every second the hub's and Mosquitto's RSS, the broker's queue and drops
($SYS), what was published and what is stored; after the load stops, it waits for the hub to catch up
and checks that every published reading is stored exactly once.

Run: PYTHONPATH=. .venv/bin/python bench/ingest_e2e.py   (needs mosquitto; about 5 minutes)
     [--py-spy 3 [--py-spy-gil]]   (profile the hub in each drain; needs .venv/bin/pip install py-spy)
     PYTHONPATH=. .venv/bin/python bench/ingest_e2e.py --overload-seconds 60 --scale 3   (longer)
"""

from __future__ import annotations

import argparse
import hashlib
import multiprocessing as mp
import os
import platform
import shlex
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import psutil
from paho.mqtt.enums import CallbackAPIVersion

from bench import spy as spy_on
from coldchain.messages import Quantity, Reading, TelemetryBatch, encode
from tests.support.servers import Mosquitto, free_port

TOKEN = "bench-token-0123456789abcdef0123"
PROBES = 4
STEP_MS = 250
"""Reading time between two readings of a gateway: each of its 4 probes is read every second."""
WINDOW = 1000
"""PUBLISHes a generator process keeps in flight (paho's max_inflight, and its own pacing window)."""
BROKER_INFLIGHT = 1000
"""Mosquitto's max_inflight_messages: how many unacknowledged QoS 1 messages it sends the hub."""
PACE_SLICE_S = 0.002
"""A paced publisher sends what falls due in this much time at once: 200 gateways publish independently,
so the hub sees a smooth stream, not bursts of 50 batches (25,000 readings at 500 per batch) as before."""
UNPACED_CHECK_EVERY = 50
"""An unpaced publisher looks at the clock, its stop flag and its counter this often (messages)."""
BROKER_QUEUE = 50_000_000
"""Mosquitto's max_queued_messages: large, so a slow hub makes the broker queue, not drop."""
BATCH_SIZES = (1, 10, 100, 500)
# Readings per phase at --scale 1: a few seconds of hub work each.
PHASE_READINGS = {1: 30_000, 10: 120_000, 100: 300_000, 500: 400_000}

CHILLED_PRODUCE = """
[profiles.chilled-produce]
# as config/profiles.toml
temp_low_c = 0.0
temp_high_c = 4.0
max_single_excursion_s = 3600
max_cumulative_excursion_s = 14400
"""


# -- processes and configs -------------------------------------------------------------------------


def start_broker(work: Path, *, inflight: int = BROKER_INFLIGHT, queued: int = BROKER_QUEUE) -> Mosquitto:
    """A Mosquitto as tests/support/servers.py starts it, with inflight raised and $SYS every second."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    work.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(binary, work, max_queued_messages=queued)
    with broker.config_path.open("a") as config:
        config.write(f"max_inflight_messages {inflight}\nsys_interval 1\n")
    broker.start()
    return broker


def broker_process(broker: Mosquitto) -> psutil.Process:
    assert broker._process is not None
    return psutil.Process(broker._process.pid)


def gateway_ids(count: int, prefix: str = "gw-load") -> list[str]:
    return [f"{prefix}-{n:04d}" for n in range(count)]


@dataclass
class HubProcess:
    """A `coldchain hub run` child process, its store and API."""

    work: Path
    broker_port: int
    bindings: dict[str, str]
    profiles_text: str = CHILLED_PRODUCE
    top_toml: str = ""
    tables_toml: str = ""
    api_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    history: int = 0  # readings put in the store before the load (prefill_store): ids 1 ... history

    @property
    def db_path(self) -> Path:
        return self.work / "hub.sqlite3"

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def config_path(self) -> Path:
        return self.work / "hub.toml"

    def command(self) -> list[str]:
        return [sys.executable, "-m", "coldchain", "hub", "run", "--config", str(self.config_path)]

    def write_config(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        nodes = ", ".join(f'"{gateway}" = "{profile}"' for gateway, profile in self.bindings.items())
        (self.work / "profiles.toml").write_text(f"{self.profiles_text}\n[bindings]\nnodes = {{ {nodes} }}\n")
        self.config_path.write_text(
            f'profiles_file = "{self.work / "profiles.toml"}"\n{self.top_toml}\n'
            f'[mqtt]\nport = {self.broker_port}\nusername = "hub"\n'
            f'[store]\npath = "{self.db_path}"\n'
            f"[api]\nport = {self.api_port}\n"
            f'[[api.tokens]]\nname = "bench"\nsha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"\n'
            'scopes = ["read", "command", "staff", "orders"]\n'
            f"{self.tables_toml}\n"
        )

    def start(self) -> HubProcess:
        if not self.config_path.exists():
            self.write_config()
        with (self.work / "hub.log").open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"hub exited:\n{(self.work / 'hub.log').read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.api_url}/healthz", timeout=1).json()["mqtt_connected"]:
                    return self
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(0.1)
        raise TimeoutError("hub not ready in 30 s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.process = None

    def ps(self) -> psutil.Process:
        assert self.process is not None
        return psutil.Process(self.process.pid)

    def query(self, sql: str, *params: object) -> list[tuple[Any, ...]]:
        with closing(sqlite3.connect(self.db_path, timeout=10)) as conn:
            return conn.execute(sql, params).fetchall()

    def stored_readings(self) -> int:
        """Readings stored by the load, from max(id): rows are never deleted, so it is the count, read in O(1)."""
        try:
            return int(self.query("SELECT coalesce(max(id), 0) FROM readings")[0][0]) - self.history
        except sqlite3.OperationalError:
            return 0  # not migrated yet


# -- the load generator ------------------------------------------------------------------------------

_SENSORS = [f"probe-{n}" for n in range(PROBES)]


def make_payload(gateway_id: str, boot_id: str, seq: int, batch_size: int, start_ms: int) -> bytes:
    """An agent-format batch: readings (seq-1)*batch_size ... of the gateway, 1 s apart per probe."""
    first = (seq - 1) * batch_size
    return encode(
        TelemetryBatch(
            gateway_id,
            boot_id,
            seq,
            1,  # the gateway still holds every seq: nothing was released
            [
                Reading(_SENSORS[n % PROBES], Quantity.TEMPERATURE, start_ms + n * STEP_MS, 3.0 + (n % 7) / 100)
                for n in range(first, first + batch_size)
            ],
        )
    )


@dataclass(frozen=True)
class PublishJob:
    """What one generator process publishes: rounds over its gateways, seq first_seq, first_seq+1, ..."""

    port: int
    gateways: tuple[str, ...]
    boot_id: str
    batch_size: int
    first_seq: int
    rounds: int  # seqs per gateway; the job may stop earlier at `deadline_s`
    start_ms: int
    rate_msgs_s: float = 0.0  # 0: as fast as the window allows
    duration_s: float = 0.0  # 0: until `rounds` are done


@dataclass
class PublishResult:
    messages: int
    elapsed_s: float
    cpu_s: float
    last_seq: dict[str, int]
    max_lag_s: float  # how far behind its pacing schedule the process fell (0 when unpaced)


def publisher_main(job: PublishJob, go: Any, published: Any, results: Any, stop: Any = None) -> None:
    """One generator process: a paho client publishing `job` with QoS 1."""
    acked = [0]
    connected = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"gen-{uuid.uuid4().hex[:10]}", protocol=paho.MQTTv311)
    client.max_inflight_messages_set(WINDOW)
    client.max_queued_messages_set(0)
    client.on_connect = lambda *_a: connected.set()

    def on_publish(*_args: object) -> None:
        acked[0] += 1

    client.on_publish = on_publish
    client.connect("127.0.0.1", job.port, keepalive=60)
    client.loop_start()
    connected.wait(10)
    me = psutil.Process()
    go.wait()
    cpu0 = sum(me.cpu_times()[:2])
    began = time.perf_counter()
    deadline = began + job.duration_s if job.duration_s else float("inf")
    sent = 0
    max_lag = 0.0
    last_seq: dict[str, int] = {}
    topics = {gateway: f"cc/v1/gw/{gateway}/telemetry" for gateway in job.gateways}
    done = False
    check_every = (
        max(1, min(UNPACED_CHECK_EVERY, int(job.rate_msgs_s * PACE_SLICE_S)))
        if job.rate_msgs_s
        else UNPACED_CHECK_EVERY
    )
    for seq in range(job.first_seq, job.first_seq + job.rounds):
        for gateway in job.gateways:
            if sent % check_every == 0:
                now = time.perf_counter()
                if now >= deadline or (stop is not None and stop.is_set()):
                    done = True
                    break
                if job.rate_msgs_s:
                    ahead = began + sent / job.rate_msgs_s - now
                    if ahead > 0:
                        time.sleep(ahead)
                    else:
                        max_lag = max(max_lag, -ahead)
                published.value = sent
            while sent - acked[0] >= WINDOW:
                time.sleep(0.0005)
            client.publish(topics[gateway], make_payload(gateway, job.boot_id, seq, job.batch_size, job.start_ms), 1)
            sent += 1
            last_seq[gateway] = seq
        if done:
            break
    while acked[0] < sent:  # every PUBLISH has its PUBACK: the broker has them all
        time.sleep(0.001)
    elapsed = time.perf_counter() - began
    published.value = sent
    cpu = sum(me.cpu_times()[:2]) - cpu0
    client.disconnect()
    client.loop_stop()
    results.put(PublishResult(sent, elapsed, cpu, last_seq, max_lag))


class Generator:
    """``processes`` publisher processes sharing the gateways; ``run`` blocks until all PUBACKs are in."""

    def __init__(self, port: int, gateways: Sequence[str], processes: int, batch_size: int, start_ms: int) -> None:
        self.port = port
        self.gateways = list(gateways)
        self.processes = processes
        self.batch_size = batch_size
        self.start_ms = start_ms
        self.boot_id = uuid.uuid4().hex
        self.next_seq = 1
        self.last_seq: dict[str, int] = {}
        self.ctx = mp.get_context("spawn")
        self._published: list[Any] = []

    def published_now(self) -> int:
        """Messages published so far in the running phase (each process updates it when it checks its pace)."""
        return sum(value.value for value in self._published)

    def run(self, rounds: int, *, rate_msgs_s: float = 0.0, duration_s: float = 0.0, stop: Any = None) -> PublishResult:
        """Publish `rounds` seqs per gateway (or for `duration_s`, or until the `stop` mp.Event is set)."""
        go = self.ctx.Event()
        results = self.ctx.Queue()
        self._published = [self.ctx.Value("q", 0) for _ in range(self.processes)]
        workers = []
        for n in range(self.processes):
            job = PublishJob(
                self.port,
                tuple(self.gateways[n :: self.processes]),
                self.boot_id,
                self.batch_size,
                self.next_seq,
                rounds,
                self.start_ms,
                rate_msgs_s / self.processes,
                duration_s,
            )
            worker = self.ctx.Process(target=publisher_main, args=(job, go, self._published[n], results, stop))
            worker.start()
            workers.append(worker)
        time.sleep(1.5)  # spawn, import and connect
        go.set()
        parts = [results.get(timeout=3600) for _ in workers]
        for worker in workers:
            worker.join(30)
        merged: dict[str, int] = {}
        for part in parts:
            merged.update(part.last_seq)
        # Seqs stay contiguous per gateway across phases; a timed phase may end mid-round.
        for gateway, seq in merged.items():
            self.last_seq[gateway] = seq
        self.next_seq = max(self.last_seq.values()) + 1 if self.last_seq else self.next_seq
        # A gateway left one round behind would skip a seq next phase; the hub would wait for it (a gap).
        assert all(seq == self.next_seq - 1 for seq in self.last_seq.values()) or duration_s or stop, "uneven"
        return PublishResult(
            sum(p.messages for p in parts),
            max(p.elapsed_s for p in parts),
            sum(p.cpu_s for p in parts),
            merged,
            max(p.max_lag_s for p in parts),
        )


# -- the raw subscriber --------------------------------------------------------------------------------


def counter_main(port: int, expected: Any, connect: Any, subscribed: Any, results: Any, stop: Any) -> None:
    """A plain paho subscriber (QoS 1, persistent session) that only counts telemetry messages."""
    count = [0]
    first = [0.0]
    last = [0.0]
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id="raw-counter", protocol=paho.MQTTv311, clean_session=False
    )

    def on_message(*_args: object) -> None:
        now = time.time()
        if count[0] == 0:
            first[0] = now
        count[0] += 1
        last[0] = now

    client.on_message = on_message

    def on_connect(c: paho.Client, *_args: object) -> None:
        c.subscribe("cc/v1/gw/+/telemetry", qos=1)
        subscribed.set()

    client.on_connect = on_connect
    me = psutil.Process()
    while not stop.is_set():
        if not connect.wait(0.1):
            continue
        subscribed.clear()
        cpu0 = sum(me.cpu_times()[:2])
        count[0] = 0
        client.connect("127.0.0.1", port, keepalive=60)
        client.loop_start()
        while connect.is_set() and not stop.is_set():
            if expected.value and count[0] >= expected.value:
                results.put((count[0], first[0], last[0], sum(me.cpu_times()[:2]) - cpu0))
                expected.value = 0
            time.sleep(0.01)
        client.disconnect()
        client.loop_stop()


# -- measurements ----------------------------------------------------------------------------------------


@dataclass
class Rate:
    readings: int
    seconds: float
    cores: dict[str, float] = field(default_factory=dict)
    window: tuple[float, float] = (0.0, 0.0)

    @property
    def per_s(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else float("nan")


def commit_rate(hub: HubProcess, since_ms: int) -> Rate:
    """Readings/s from the hub's commit stamps after `since_ms`: (all but the first group) / (last - first)."""
    groups = hub.query(
        "SELECT received_ms, sum(reading_count) FROM batches WHERE received_ms >= ? GROUP BY received_ms"
        " ORDER BY received_ms",
        since_ms,
    )
    if len(groups) < 2:
        return Rate(0, 0.0)
    total = sum(n for _, n in groups)
    first, last = groups[0][0] / 1000, groups[-1][0] / 1000
    return Rate(total - groups[0][1], last - first, window=(first, last))


def wait_stored(hub: HubProcess, expected: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if hub.stored_readings() >= expected:
            return True
        time.sleep(0.1)
    return False


class CpuMeter:
    """CPU seconds of some processes over a phase, as cores used (CPU s / wall s)."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self.processes = processes
        self.began = time.perf_counter()
        self.start = {name: sum(p.cpu_times()[:2]) for name, p in processes.items()}

    def cores(self, wall_s: float | None = None) -> dict[str, float]:
        wall = wall_s if wall_s is not None else time.perf_counter() - self.began
        return {name: (sum(p.cpu_times()[:2]) - self.start[name]) / wall for name, p in self.processes.items()}


class CpuSampler:
    """Samples processes' CPU seconds 20 times a second, to attribute CPU to a window of wall time
    (the hub's first and last commit stamps) after the fact."""

    def __init__(self, processes: dict[str, psutil.Process]) -> None:
        self.processes = processes
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                cpu = {n: sum(p.cpu_times()[:2]) for n, p in self.processes.items()}
            except psutil.Error:
                return
            cpu["machine"] = machine_busy_s()
            self.samples.append((time.time(), cpu))
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def cores(self, t0: float, t1: float) -> dict[str, float]:
        """Cores used by each process between wall times t0 and t1 (nearest samples)."""
        if not self.samples or t1 <= t0:
            return {}
        first = min(self.samples, key=lambda s: abs(s[0] - t0))
        last = min(self.samples, key=lambda s: abs(s[0] - t1))
        wall = last[0] - first[0]
        return {n: (last[1][n] - first[1][n]) / wall for n in last[1]} if wall > 0 else {}


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (every process, ours and anyone else's)."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def exactly_once(hub: HubProcess, batch_size: int, messages: int) -> str:
    """Count, (gateway_id, seq) duplicates and short batches among the stored readings."""
    stored = hub.stored_readings()
    distinct = hub.query(
        "SELECT count(*) FROM (SELECT DISTINCT gateway_id, seq FROM series_readings WHERE id > ?)", hub.history
    )[0][0]
    odd = hub.query(
        "SELECT count(*) FROM (SELECT gateway_id, seq, count(*) AS n FROM series_readings WHERE id > ?"
        " GROUP BY gateway_id, seq HAVING n != ?)",
        hub.history,
        batch_size,
    )[0][0]
    gaps = hub.query("SELECT count(*) FROM gaps")[0][0]
    ok = stored == messages * batch_size and distinct == messages and odd == 0 and gaps == 0
    return (
        f"{'OK' if ok else 'MISMATCH'}: published {messages * batch_size:,} readings in {messages:,} batches;"
        f" stored {stored:,} readings, {distinct:,} distinct (gateway_id, seq), {odd} (gateway_id, seq) with"
        f" other than {batch_size} readings, {gaps} gaps"
    )


@dataclass
class Row:
    batch_size: int
    generator: Rate
    hub_drain: Rate
    hub_live: Rate
    gen_live: Rate
    raw_drain: Rate
    raw_live: Rate
    check: str


def measure_hub(
    work: Path,
    batch_size: int,
    readings: int,
    gateways: list[str],
    publishers: int,
    *,
    spy_s: float = 0.0,
    spy_gil_only: bool = False,
    ingest_toml: str = "",
    prefill: int = 0,
) -> tuple[Rate, Rate, Rate, Rate, str]:
    broker = start_broker(work / "broker")
    hub = HubProcess(
        work / "hub",
        broker.port,
        dict.fromkeys(gateways, "chilled-produce"),
        tables_toml=f"[ingest]\n{ingest_toml}\n" if ingest_toml else "",
    )
    try:
        hub.start()
        hub.stop()  # its persistent session stays: the broker queues for it from now on
        start_ms = int(time.time() * 1000) - 300_000
        if prefill:
            prefill_store(hub, gateways, prefill, start_ms)
        rounds = max(1, readings // batch_size // len(gateways))
        generator = Generator(broker.port, gateways, publishers, batch_size, start_ms)
        meter = CpuMeter({"broker": broker_process(broker)})
        sent = generator.run(rounds)
        gen = Rate(sent.messages * batch_size, sent.elapsed_s, {"generator": sent.cpu_s / sent.elapsed_s})
        gen.cores["broker"] = meter.cores(sent.elapsed_s)["broker"]
        since_ms = int(time.time() * 1000)
        hub.start()
        sampler = CpuSampler({"hub": hub.ps(), "broker": broker_process(broker), "bench": psutil.Process()})
        spy = (
            spy_on.record(hub.ps().pid, spy_s, work / f"spy-{batch_size}.txt", gil_only=spy_gil_only) if spy_s else None
        )
        wait_stored(hub, sent.messages * batch_size, 600)
        drain = commit_rate(hub, since_ms)
        if spy is not None:
            spy.wait()
            print(f"where the hub's time goes while draining, batch {batch_size} (py-spy, first {spy_s:g} s):")
            spy_on.summarise(work / f"spy-{batch_size}.txt")
        time.sleep(0.2)
        drain.cores = sampler.cores(*drain.window)
        # Live: the same again while the hub runs.
        since_ms = int(time.time() * 1000)
        sent_live = generator.run(rounds)
        wait_stored(hub, 2 * sent.messages * batch_size, 600)
        live = commit_rate(hub, since_ms)
        sampler.stop()
        live.cores = sampler.cores(*live.window)
        live.cores["generator"] = sent_live.cpu_s / max(live.seconds, sent_live.elapsed_s)
        for rate in (drain, live):  # cores busy on processes that are not part of this benchmark
            rate.cores["others"] = max(
                0.0,
                rate.cores.get("machine", 0)
                - sum(rate.cores.get(k, 0) for k in ("hub", "broker", "bench", "generator")),
            )
        gen_live = Rate(sent_live.messages * batch_size, sent_live.elapsed_s)
        check = exactly_once(hub, batch_size, sent.messages + sent_live.messages)
        return gen, drain, live, gen_live, check
    finally:
        hub.stop()
        broker.stop()


def prefill_store(hub: HubProcess, gateways: Sequence[str], readings: int, before_ms: int) -> None:
    """Give the stopped hub's store ``readings`` of history, as ingest would have committed them: the same
    gateways and probes, 500 per batch in turn, readings 1 s apart per probe, all before ``before_ms``.

    The detector checkpoint is moved past them, as a running hub's would be, so the hub does not replay
    them at start. Batches rows are left out: the history's seqs would collide with the load's.
    """
    per_gateway = -(-readings // len(gateways))
    first_ms = before_ms - (per_gateway + PROBES) * STEP_MS
    began = time.perf_counter()
    with closing(sqlite3.connect(hub.db_path, timeout=30)) as conn:
        conn.execute("CREATE TEMP TABLE gateway_index (g INTEGER PRIMARY KEY, gateway_id TEXT NOT NULL)")
        conn.executemany("INSERT INTO gateway_index VALUES (?, ?)", enumerate(gateways))
        with conn:
            conn.executemany(
                "INSERT INTO series (gateway_id, sensor_id, quantity) VALUES (?, ?, 'temperature')",
                [(gateway, sensor) for gateway in gateways for sensor in _SENSORS],
            )
            conn.execute(
                "WITH RECURSIVE k(k) AS (SELECT 0 UNION ALL SELECT k + 1 FROM k WHERE k + 1 < :readings),"
                " r AS (SELECT k / 500 % :gateways AS g, k / (500 * :gateways) * 500 + k % 500 AS n FROM k)"
                " INSERT INTO readings (series_id, ts_ms, value, quality, seq)"
                " SELECT series_id, :first_ms + n * :step_ms, 3.0 + (n % 7) / 100.0, 'ok', n / 500 + 1"
                " FROM r JOIN gateway_index USING (g) JOIN series"
                " ON series.gateway_id = gateway_index.gateway_id AND series.sensor_id = 'probe-' || (n % :probes)",
                {
                    "readings": readings,
                    "gateways": len(gateways),
                    "probes": PROBES,
                    "first_ms": first_ms,
                    "step_ms": STEP_MS,
                },
            )
            moved = conn.execute("UPDATE detector_checkpoint SET readings_id = (SELECT max(id) FROM readings)")
            if moved.rowcount != 1:
                raise RuntimeError("the hub left no detector checkpoint at stop: it would replay the history")
            hub.history = int(conn.execute("SELECT coalesce(max(id), 0) FROM readings").fetchone()[0])
    print(f"prefilled {readings:,} readings of history in {time.perf_counter() - began:.0f} s", flush=True)


def measure_raw(work: Path, batch_size: int, readings: int, gateways: list[str], publishers: int) -> tuple[Rate, Rate]:
    broker = start_broker(work / "raw-broker")
    ctx = mp.get_context("spawn")
    expected, connect, subscribed, stop, results = ctx.Value("q", 0), ctx.Event(), ctx.Event(), ctx.Event(), ctx.Queue()
    counter = ctx.Process(target=counter_main, args=(broker.port, expected, connect, subscribed, results, stop))
    counter.start()
    try:
        connect.set()
        subscribed.wait(20)
        time.sleep(0.3)
        connect.clear()  # offline: its session queues
        time.sleep(0.5)
        rounds = max(1, readings // batch_size // len(gateways))
        generator = Generator(broker.port, gateways, publishers, batch_size, int(time.time() * 1000) - 300_000)
        sent = generator.run(rounds)
        expected.value = sent.messages
        meter = CpuMeter({"broker": broker_process(broker)})
        connect.set()
        count, first, last, cpu = results.get(timeout=600)
        drain = Rate((count - 1) * batch_size, last - first, {"subscriber": cpu / (last - first)})
        drain.cores["broker"] = meter.cores(last - first)["broker"]
        # Live: reconnect (the count restarts from zero) and stay connected while the generators publish.
        connect.clear()
        time.sleep(0.5)
        connect.set()
        subscribed.wait(20)
        time.sleep(0.3)
        expected.value = sent.messages
        meter = CpuMeter({"broker": broker_process(broker)})
        sent_live = generator.run(rounds)
        count, first, last, cpu = results.get(timeout=600)
        live = Rate((count - 1) * batch_size, last - first, {"subscriber": cpu / (last - first)})
        live.cores.update(meter.cores(last - first + 1.5))
        live.cores["generator"] = sent_live.cpu_s / (last - first)
        return drain, live
    finally:
        stop.set()
        counter.join(10)
        broker.stop()


# -- overload ----------------------------------------------------------------------------------------------


class SysMonitor:
    """Mosquitto's $SYS counters of interest: messages stored (queued), publishes dropped, heap."""

    TOPICS = (
        "$SYS/broker/store/messages/count",
        "$SYS/broker/publish/messages/dropped",
        "$SYS/broker/heap/current",
    )

    def __init__(self, port: int) -> None:
        self.values: dict[str, str] = {}
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"sys-{uuid.uuid4().hex[:8]}")
        self.client.on_message = lambda _c, _u, m: self.values.__setitem__(
            m.topic.rsplit("/", 1)[-1], m.payload.decode()
        )

        def on_connect(c: paho.Client, *_args: object) -> None:
            c.subscribe([(topic, 0) for topic in self.TOPICS])

        self.client.on_connect = on_connect
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def get(self, name: str) -> str:
        return self.values.get(name, "-")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def overload(
    work: Path, batch_size: int, rate_readings_s: float, seconds: float, *, gateways: list[str], publishers: int
) -> None:
    broker = start_broker(work / "overload-broker")
    hub = HubProcess(work / "overload-hub", broker.port, dict.fromkeys(gateways, "chilled-produce"))
    monitor = SysMonitor(broker.port)
    try:
        hub.start()
        rate_msgs = rate_readings_s / batch_size
        generator = Generator(broker.port, gateways, publishers, batch_size, int(time.time() * 1000) - 300_000)
        print(
            f"\noverload: {rate_readings_s:,.0f} readings/s offered ({rate_msgs:,.0f} batches/s of {batch_size})"
            f" for {seconds:.0f} s by {publishers} publisher processes"
        )
        print(
            f"{'t s':>5} {'published':>11} {'stored':>11} {'backlog':>10} {'hub RSS MiB':>12} {'broker RSS MiB':>15}"
            f" {'broker queued':>14} {'dropped':>8} {'hub CPU':>8} {'busy cores':>13}"
        )
        hub_ps, broker_ps = hub.ps(), broker_process(broker)
        samples: list[tuple[float, int, int, float, float]] = []
        stop_sampling = threading.Event()
        began = time.monotonic()

        def sample() -> None:
            hub_ps.cpu_percent(None)
            psutil.cpu_percent(None)
            while not stop_sampling.wait(1.0):
                published = generator.published_now() * batch_size
                stored = hub.stored_readings()
                hub_rss, broker_rss = hub_ps.memory_info().rss / 2**20, broker_ps.memory_info().rss / 2**20
                t = time.monotonic() - began
                samples.append((t, published, stored, hub_rss, broker_rss))
                print(
                    f"{t:>5.0f} {published:>11,} {stored:>11,} {max(0, published - stored):>10,} {hub_rss:>12.1f}"
                    f" {broker_rss:>15.1f} {monitor.get('count'):>14} {monitor.get('dropped'):>8}"
                    f" {hub_ps.cpu_percent(None):>7.0f}%"
                    f" {psutil.cpu_percent(None) / 100 * (os.cpu_count() or 1):>13.2f}",
                    flush=True,
                )

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rounds = int(rate_msgs * seconds * 2 / len(gateways)) + 10
        meter = CpuMeter({"hub": hub_ps, "broker": broker_ps})
        sent = generator.run(rounds, rate_msgs_s=rate_msgs, duration_s=seconds)
        load_cores = meter.cores(sent.elapsed_s + 1.5)
        load_end = time.monotonic()
        total = sent.messages * batch_size
        stored_at_end = hub.stored_readings()
        caught_up = wait_stored(hub, total, 900)
        drain_s = time.monotonic() - load_end
        stop_sampling.set()
        sampler.join(5)
        print(
            f"published {total:,} readings in {sent.elapsed_s:.1f} s = {total / sent.elapsed_s:,.0f} readings/s"
            f" (offered {rate_readings_s:,.0f}; the publishers fell at most {sent.max_lag_s:.2f} s behind their"
            f" schedule); generator CPU {sent.cpu_s / sent.elapsed_s:.2f} cores, hub {load_cores['hub']:.2f},"
            f" broker {load_cores['broker']:.2f} during the load"
        )
        print(
            f"stored when the load stopped: {stored_at_end:,}; hub {'caught up' if caught_up else 'did NOT catch up'}"
            f" {drain_s:.1f} s later"
        )
        if samples:
            print(
                f"hub RSS: min {min(s[3] for s in samples):.1f} MiB, max {max(s[3] for s in samples):.1f} MiB;"
                f" broker RSS max {max(s[4] for s in samples):.1f} MiB; broker publishes dropped:"
                f" {monitor.get('dropped')}"
            )
        print(exactly_once(hub, batch_size, sent.messages))
    finally:
        monitor.close()
        hub.stop()
        broker.stop()


# -- main ------------------------------------------------------------------------------------------------------


def machine() -> str:
    return (
        f"machine: {platform.machine()}, {os.cpu_count()} cores (nproc),"
        f" {psutil.virtual_memory().total / 2**30:.0f} GiB,"
        f" Python {platform.python_version()}, paho-mqtt {paho_version()}, {mosquitto_version()}"
    )


def paho_version() -> str:
    import paho.mqtt

    return str(paho.mqtt.__version__)


def mosquitto_version() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    out = subprocess.run([binary, "-h"], capture_output=True, text=True, check=False).stdout
    return out.splitlines()[0].strip() if out else "mosquitto ?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="*", default=list(BATCH_SIZES))
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the readings per phase")
    parser.add_argument("--gateways", type=int, default=200)
    parser.add_argument("--publishers", type=int, default=2, help="generator processes")
    parser.add_argument("--overload-batch", type=int, default=100)
    parser.add_argument("--overload-factor", type=float, default=3.0)
    parser.add_argument("--overload-seconds", type=float, default=20.0)
    parser.add_argument("--overload-rate", type=float, default=0.0, help="readings/s (default: factor x ceiling)")
    parser.add_argument("--no-overload", action="store_true")
    parser.add_argument(
        "--py-spy",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="profile the hub for the first SECONDS of each drain",
    )
    parser.add_argument("--py-spy-gil", action="store_true", help="with --py-spy: sample only the GIL's holder")
    parser.add_argument(
        "--ingest",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an [ingest] setting of the hub under test, e.g. group_max_bytes=2097152 (repeatable)",
    )
    parser.add_argument(
        "--prefill",
        type=int,
        default=0,
        metavar="READINGS",
        help="give each hub's store this many readings of history before its drain (a large store)",
    )
    parser.add_argument("--keep", type=Path, default=None, help="keep logs and databases under this directory")
    args = parser.parse_args()
    print(machine())
    print("command: PYTHONPATH=. " + shlex.join([sys.executable, *sys.argv]))
    gateways = gateway_ids(args.gateways)
    tmp = None if args.keep else tempfile.TemporaryDirectory()
    root = args.keep or Path(tmp.name)  # type: ignore[union-attr]
    root.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []
    try:
        for batch_size in args.batch_sizes:
            readings = int(PHASE_READINGS.get(batch_size, 300_000) * args.scale)
            work = root / f"batch-{batch_size}"
            gen, drain, live, gen_live, check = measure_hub(
                work,
                batch_size,
                readings,
                gateways,
                args.publishers,
                spy_s=args.py_spy,
                spy_gil_only=args.py_spy_gil,
                ingest_toml="\n".join(args.ingest),
                prefill=args.prefill,
            )
            raw_drain, raw_live = measure_raw(work, batch_size, readings, gateways, args.publishers)
            rows.append(Row(batch_size, gen, drain, live, gen_live, raw_drain, raw_live, check))
            print(
                f"batch {batch_size}: generator {gen.per_s:,.0f}/s, hub drain {drain.per_s:,.0f}/s, live"
                f" {live.per_s:,.0f}/s, raw drain {raw_drain.per_s:,.0f}/s, live {raw_live.per_s:,.0f}/s",
                flush=True,
            )
        if rows:
            hub_cmd = HubProcess(root / "batch-N/hub", 0, {}).command()
            print(f"\nhub: {shlex.join(hub_cmd)}  (one per batch size, fresh store)")
            print(
                f"broker: mosquitto -c mosquitto.conf with max_queued_messages {BROKER_QUEUE},"
                f" max_inflight_messages {BROKER_INFLIGHT}; {args.gateways} gateways, {args.publishers} publisher"
                f" processes with {WINDOW} PUBLISHes in flight each, QoS 1, MQTT 3.1.1"
            )
            print("\nreadings/s; cores = CPU seconds per wall second of each side during the phase")
            header = (
                f"{'batch':>5} {'generator max':>14} {'hub drain':>10} {'raw drain':>10} {'hub share':>9}"
                f" {'hub live':>9} {'gen live':>9} {'raw live':>9} {'hub share':>9}"
                "  cores drain (hub/broker/others)  cores live (hub/broker/gen/others)  raw drain cores (sub/broker)"
            )
            print(header)
            for r in rows:
                print(
                    f"{r.batch_size:>5} {r.generator.per_s:>14,.0f} {r.hub_drain.per_s:>10,.0f}"
                    f" {r.raw_drain.per_s:>10,.0f} {r.hub_drain.per_s / r.raw_drain.per_s:>9.0%}"
                    f" {r.hub_live.per_s:>9,.0f} {r.gen_live.per_s:>9,.0f} {r.raw_live.per_s:>9,.0f}"
                    f" {r.hub_live.per_s / r.raw_live.per_s:>9.0%}"
                    f"  {r.hub_drain.cores.get('hub', 0):.2f}/{r.hub_drain.cores.get('broker', 0):.2f}"
                    f"/{r.hub_drain.cores.get('others', 0):.2f}{'':>15}"
                    f"{r.hub_live.cores.get('hub', 0):.2f}/{r.hub_live.cores.get('broker', 0):.2f}"
                    f"/{r.hub_live.cores.get('generator', 0):.2f}/{r.hub_live.cores.get('others', 0):.2f}{'':>14}"
                    f"{r.raw_drain.cores.get('subscriber', 0):.2f}/{r.raw_drain.cores.get('broker', 0):.2f}"
                )
            print(
                "generator max: cores used (generator/broker): "
                + ", ".join(
                    f"batch {r.batch_size}: {r.generator.cores['generator']:.2f}/{r.generator.cores['broker']:.2f}"
                    for r in rows
                )
            )
            for r in rows:
                print(f"exactly once, batch {r.batch_size}: {r.check}")
        if not args.no_overload:
            ceiling = next((r.hub_drain.per_s for r in rows if r.batch_size == args.overload_batch), 0.0)
            rate = args.overload_rate or args.overload_factor * ceiling
            if not rate:
                raise SystemExit("no ceiling measured for the overload batch size: pass --overload-rate")
            overload(
                root, args.overload_batch, rate, args.overload_seconds, gateways=gateways, publishers=args.publishers
            )
    finally:
        if tmp is not None:
            tmp.cleanup()


if __name__ == "__main__":
    main()
