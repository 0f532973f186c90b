"""Widget and public API on a real hub process: requests/s and latency of the lot endpoint, and SSE
delivery delay to many live-room viewers. Not a test: it prints figures, it never passes or fails.

1. A real `coldchain hub run` (uvicorn, same settings as production: asyncio loop, h11, no uvloop
   unless installed) with a real Mosquitto. Its store is prepared in-process before start (tag reads
   and readings through ``IngestPipeline``, so the lot has two legs with rollups), then the lot is
   declared with ``POST /api/v1/lots``. The public rate limiter is per client address and would
   throttle a single-address load generator to 10/s: this benchmark sets ``[public] rate_per_s`` and
   ``rate_burst`` to 1e9 (printed below).
2. `wrk -t2 -c64 -d20s --latency` against, side by side on the same machine and uvicorn settings:
   a bare ASGI hello-world, a FastAPI hello-world (async route), a FastAPI hello-world shaped as the
   public routes were before 2026-11-27 (sync route + ``@app.middleware("http")``), then `GET /public/v1/lots/{lot}` (200)
   and the same with a revalidating client (wrk Lua: sends back the last ETag as If-None-Match).
3. SSE: N subscribers (raw asyncio sockets, separate process) on `/public/v1/lots/{lot}/events`; one
   reading per second published through Mosquitto to the lot's current node; delay = receipt time at
   each subscriber - publish time of the reading it first shows (same machine clock).

Run: PYTHONPATH=. .venv/bin/python bench/public_api.py [--seconds 20] [--subscribers 500] [--sse-seconds 60]
     [--py-spy]   (needs wrk: apt-get install -y wrk; mosquitto)
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import psutil

from bench import spy as spy_on

GTIN = "80614141123458"
LOT = "BERRY-2611"
CASES = ["urn:epc:id:sgtin:0614141.812345.11", "urn:epc:id:sgtin:0614141.812345.12"]
BOOT = "b" * 32
TOKEN = "bench-token-0123456789abcdef"
RATE = 1_000_000_000
UVICORN_SETTINGS = {"log_level": "warning", "lifespan": "off", "timeout_graceful_shutdown": 5}
"""As hub/runtime.py configures uvicorn (loop and http 'auto': uvloop/httptools only if installed)."""

REVALIDATE_LUA = """
local threads = {}
function setup(thread) table.insert(threads, thread) end
function init(args) etag = nil; n304 = 0; n200 = 0; nother = 0 end
function request()
  if etag then return wrk.format("GET", nil, {["If-None-Match"] = etag}) end
  return wrk.format("GET")
end
function response(status, headers, body)
  local e = headers["etag"] or headers["ETag"]
  if e then etag = e end
  if status == 304 then n304 = n304 + 1 elseif status == 200 then n200 = n200 + 1 else nother = nother + 1 end
end
function done(summary, latency, requests)
  local a, b, c = 0, 0, 0
  for _, t in ipairs(threads) do a = a + t:get("n304"); b = b + t:get("n200"); c = c + t:get("nother") end
  io.write(string.format("STATUS 304=%d 200=%d other=%d\\n", a, b, c))
end
"""


# ---------------------------------------------------------------- reference servers (child role)


async def bare_hello(scope, receive, send):  # type: ignore[no-untyped-def]
    """The least an ASGI app can do: one fixed response."""
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"hello":"world"}'})


def fastapi_hello(shaped: bool):  # type: ignore[no-untyped-def]
    from fastapi import FastAPI, Request, Response

    app = FastAPI()
    if shaped:  # as the public routes were until 2026-11-27: an http middleware and a sync (threadpool) route

        @app.middleware("http")
        async def passthrough(request: Request, call_next):  # type: ignore[no-untyped-def]
            return await call_next(request)

        @app.get("/hello")
        def hello_sync() -> Response:
            return Response(b'{"hello":"world"}', media_type="application/json")

    else:

        @app.get("/hello")
        async def hello_async() -> Response:
            return Response(b'{"hello":"world"}', media_type="application/json")

    return app


def serve(kind: str, port: int) -> None:
    import uvicorn

    app = {"bare": bare_hello, "fastapi": fastapi_hello(False), "fastapi-shaped": fastapi_hello(True)}[kind]
    uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **UVICORN_SETTINGS)).run()


# ---------------------------------------------------------------- SSE subscribers (child role)


async def subscriber(host: str, port: int, path: str, seen: dict[int, float], state: Counter[str]) -> None:
    """One viewer: raw HTTP/1.1, chunked SSE; records the first receipt time of each current_ts_ms."""
    try:
        reader, writer = await asyncio.open_connection(host, port)
    except OSError:
        state["connect_errors"] += 1
        return
    writer.write(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: text/event-stream\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200"):
        state["refused"] += 1
        writer.close()
        return
    chunked = b"chunked" in head.lower()
    state["connected"] += 1
    buffer = b""
    try:
        while True:
            if chunked:
                size = int((await reader.readline()).strip() or b"0", 16)
                if size == 0:
                    break
                data = await reader.readexactly(size + 2)
                data = data[:-2]
            else:
                data = await reader.read(65536)
                if not data:
                    break
            received_ms = time.time() * 1000
            buffer += data
            while b"\n\n" in buffer:
                event, buffer = buffer.split(b"\n\n", 1)
                for line in event.split(b"\n"):
                    if line.startswith(b"data: "):
                        state["events"] += 1
                        ts = json.loads(line[6:]).get("current_ts_ms")
                        if ts is not None and ts not in seen:
                            seen[ts] = received_ms
    except (asyncio.IncompleteReadError, ConnectionError):
        state["dropped"] += 1
    finally:
        writer.close()


async def subscribers_main(url: str, count: int, seconds: float, out: Path) -> None:
    host, port = url.split("//")[1].split("/", maxsplit=1)[0].split(":")
    path = "/" + url.split("//")[1].split("/", 1)[1]
    state: Counter[str] = Counter()
    seen: list[dict[int, float]] = [{} for _ in range(count)]
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(subscriber(host, int(port), path, seen[i], state)))
        if i % 50 == 49:
            await asyncio.sleep(0.05)
    deadline = time.monotonic() + 30
    while state["connected"] + state["refused"] + state["connect_errors"] < count and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    print(f"READY {state['connected']}", flush=True)
    await asyncio.sleep(seconds)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    out.write_text(json.dumps({"state": dict(state), "seen": [{str(k): v for k, v in s.items()} for s in seen]}))


# ---------------------------------------------------------------- the hub under test


def prepare_store(db: Path) -> int:
    """Two cases at a cold store for 2 h, then on a truck (open leg) for the last hour; return the
    truck's last seq."""
    from coldchain.messages import Quantity, Reading, TagAction, TagRead, TelemetryBatch, encode
    from hub.alarms import AlarmService, AlarmSettings
    from hub.ingest import Inbound, IngestPipeline
    from hub.store import IngestWriter

    now = int(time.time() * 1000)
    t0 = now - 3 * 3_600_000
    writer = IngestWriter(db, AlarmService(AlarmSettings(), None, lambda _: None))
    pipeline = IngestPipeline(writer)
    seqs: dict[str, int] = {}

    def send(gw: str, readings: list[Reading] | None = None, tags: list[TagRead] | None = None) -> None:
        seq = seqs[gw] = seqs.get(gw, 0) + 1
        batch = TelemetryBatch(gw, BOOT, seq, 1, readings or [], tags or [])
        pipeline.process([Inbound(f"cc/v1/gw/{gw}/telemetry", encode(batch), now)])

    def read(epc: str, at: int, action: TagAction) -> TagRead:
        return TagRead("r", "3074257bf7194e4000001a85", epc, at, None, 1, action)

    send("gw-store", tags=[read(c, t0, TagAction.PICKUP) for c in CASES])
    send("gw-store", [Reading("s", Quantity.TEMPERATURE, t0 + i * 60_000, 2.0 + (i % 3) / 2) for i in range(120)])
    t1 = t0 + 2 * 3_600_000
    send("gw-truck", tags=[read(c, t1, TagAction.PICKUP) for c in CASES])
    send("gw-truck", [Reading("t", Quantity.TEMPERATURE, t1 + i * 60_000, 4.0 + (i % 3) / 2) for i in range(55)])
    writer.close()
    return seqs["gw-truck"]


def hub_config(work: Path, broker_port: int, api_port: int) -> Path:
    config = work / "hub.toml"
    config.write_text(
        f"""
[mqtt]
port = {broker_port}
username = "hub"
[store]
path = "{work / "hub.sqlite3"}"
[api]
port = {api_port}
[[api.tokens]]
name = "bench"
sha256 = "{hashlib.sha256(TOKEN.encode()).hexdigest()}"
scopes = ["read", "orders"]
[public]
base_url = "http://127.0.0.1:{api_port}"
rate_per_s = {RATE}.0
rate_burst = {RATE}
[[nodes]]
gateway_id = "gw-store"
kind = "cold_store"
label_en = "Packhouse cold store"
city_en = "Dali"
[[nodes]]
gateway_id = "gw-truck"
kind = "reefer_truck"
label_en = "Reefer truck"
city_en = "Kunming"
"""
    )
    return config


def wait_http(url: str, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise TimeoutError(url)


def free_port() -> int:
    from tests.support.servers import free_port as fp

    return fp()


# ---------------------------------------------------------------- wrk


def run_wrk(url: str, args: argparse.Namespace, work: Path, *, lua: str | None = None) -> dict[str, str]:
    cmd = ["wrk", f"-t{args.threads}", f"-c{args.connections}", f"-d{args.seconds}s", "--latency"]
    if lua:
        script = work / "revalidate.lua"
        script.write_text(lua)
        cmd += ["-s", str(script)]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    figures = {"cmd": " ".join([*cmd, url])}
    figures["rps"] = re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)  # type: ignore[union-attr]
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}%\s+(\S+)", out, re.M)
        figures[f"p{pct}"] = m.group(1) if m else "?"
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    figures["non2xx"] = m.group(1) if m else "0"
    m = re.search(r"(\d+) requests in", out)
    figures["requests"] = m.group(1) if m else "?"
    m = re.search(r"Socket errors: (.*)", out)
    figures["errors"] = m.group(1) if m else "none"
    m = re.search(r"STATUS (.*)", out)
    figures["status"] = m.group(1) if m else ""
    return figures


def to_ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=20, help="duration of each wrk run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=64)
    parser.add_argument("--subscribers", type=int, default=500)
    parser.add_argument("--sse-seconds", type=int, default=60, help="lot changes published (one per second)")
    parser.add_argument("--py-spy", action="store_true", help="sample the hub with py-spy during the lot run")
    parser.add_argument("--role", choices=["bare", "fastapi", "fastapi-shaped", "sse"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    if args.role == "sse":
        asyncio.run(subscribers_main(args.url, args.subscribers, args.sse_seconds + 8, Path(args.out)))
        return
    if args.role:
        serve(args.role, args.port)
        return
    if not shutil.which("wrk"):
        sys.exit("wrk is not installed (apt-get install -y wrk)")

    from tests.support.servers import Mosquitto, require_binary

    try:
        import uvloop  # noqa: F401

        loop = "uvloop"
    except ImportError:
        loop = "asyncio"
    try:
        import httptools  # noqa: F401

        http = "httptools"
    except ImportError:
        http = "h11"
    import uvicorn

    print(
        f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"uvicorn {uvicorn.__version__} (loop {loop}, http {http}), wrk {args.threads} threads "
        f"{args.connections} connections {args.seconds} s"
    )
    print(f"public rate limiter raised for the benchmark: [public] rate_per_s = {RATE}, rate_burst = {RATE}")
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        broker_dir = work / "broker"
        broker_dir.mkdir()
        broker = Mosquitto(require_binary("mosquitto", "mosquitto"), broker_dir, max_queued_messages=100000)
        broker.start()
        try:
            rows = []
            for kind in ("bare", "fastapi", "fastapi-shaped"):
                port = free_port()
                proc = subprocess.Popen([sys.executable, __file__, "--role", kind, "--port", str(port)])
                procs.append(proc)
                wait_http(f"http://127.0.0.1:{port}/hello")
                rows.append(
                    (
                        f"hello: {kind} ASGI" if kind == "bare" else f"hello: {kind}",
                        run_wrk(f"http://127.0.0.1:{port}/hello", args, work),
                    )
                )
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=10)

            truck_seq = prepare_store(work / "hub.sqlite3")
            api_port = free_port()
            log = (work / "hub.log").open("ab")
            hub = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "coldchain",
                    "hub",
                    "run",
                    "--config",
                    str(hub_config(work, broker.port, api_port)),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            procs.append(hub)
            base = f"http://127.0.0.1:{api_port}"
            wait_http(f"{base}/healthz")
            response = httpx.post(
                f"{base}/api/v1/lots",
                json={"lot_id": LOT, "gtin": GTIN, "product": "蓝莓 blueberries", "items": CASES},
                headers={"Authorization": f"Bearer {TOKEN}"},
            )
            response.raise_for_status()
            lot_url = f"{base}/public/v1/lots/{LOT}"
            first = httpx.get(lot_url)
            view = first.json()
            print(
                f"lot {LOT}: {len(first.content)} bytes, {len(view['legs'])} legs, status {view['status']}, "
                f"current {view['current_temperature_c']} °C at {view['current_node_kind']}"
            )
            spy = spy_on.record(hub.pid, max(args.seconds - 4, 5), work / "spy.txt") if args.py_spy else None
            rows.append(("hub: GET /public/v1/lots/{lot} (200)", run_wrk(lot_url, args, work)))
            if spy:
                spy.wait()
            rows.append(("hub: same, revalidating (If-None-Match)", run_wrk(lot_url, args, work, lua=REVALIDATE_LUA)))

            bare_rps = float(rows[0][1]["rps"])
            print()
            print(
                f"{'server / route':<42} {'req/s':>9} {'ratio to bare':>13} {'p50':>9} {'p90':>9} {'p99':>9}"
                f" {'requests':>9} {'non-2xx/3xx':>11}  notes"
            )
            for name, f in rows:
                note = (f["status"] + " " if f["status"] else "") + (
                    "" if f["errors"] == "none" else f"socket errors: {f['errors']}"
                )
                print(
                    f"{name:<42} {float(f['rps']):>9,.0f} {float(f['rps']) / bare_rps:>13.3f} {f['p50']:>9}"
                    f" {f['p90']:>9} {f['p99']:>9} {f['requests']:>9} {f['non2xx']:>11}  {note}"
                )
            print("commands:")
            for name, f in rows:
                print(f"  {f['cmd']}")
            if spy and (work / "spy.txt").exists():
                print("\nwhere the hub's time goes under the 200 run (py-spy record -r 100 --nonblocking, raw):")
                spy_on.summarise(work / "spy.txt")

            sse(args, work, base, broker.port, truck_seq, hub)
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGINT)
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
            broker.stop()


def sse(
    args: argparse.Namespace, work: Path, base: str, broker_port: int, truck_seq: int, hub: subprocess.Popen[bytes]
) -> None:
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from coldchain.messages import Quantity, Reading, TelemetryBatch, encode

    print(
        f"\nSSE: {args.subscribers} subscribers on /public/v1/lots/{LOT}/events, one lot change per second on average "
        f"(interval uniform 0.5-1.5 s, random phase) for {args.sse_seconds} s (a truck reading published through Mosquitto, QoS 1)"
    )
    out = work / "sse.json"
    client_proc = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--role",
            "sse",
            "--url",
            f"{base}/public/v1/lots/{LOT}/events",
            "--subscribers",
            str(args.subscribers),
            "--sse-seconds",
            str(args.sse_seconds),
            "--out",
            str(out),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    ready = client_proc.stdout.readline().split()  # type: ignore[union-attr]
    print(f"  subscribers connected: {ready[1] if len(ready) > 1 else '?'}")
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-truck")
    client.username_pw_set("gw-truck")
    client.connect("127.0.0.1", broker_port)
    client.loop_start()
    hub_ps, sub_ps = psutil.Process(hub.pid), psutil.Process(client_proc.pid)
    hub_ps.cpu_percent(None)
    sub_ps.cpu_percent(None)
    published: list[int] = []
    seq = truck_seq
    next_at = time.monotonic() + 1
    for k in range(args.sse_seconds):
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at += random.uniform(0.5, 1.5)  # random phase against the 1 s cache and SSE tick
        seq += 1
        ts = int(time.time() * 1000)
        batch = TelemetryBatch("gw-truck", BOOT, seq, 1, [Reading("t", Quantity.TEMPERATURE, ts, 4.0 + (k % 20) / 10)])
        client.publish("cc/v1/gw/gw-truck/telemetry", encode(batch), qos=1)
        published.append(ts)
    time.sleep(4)
    hub_cpu, sub_cpu = hub_ps.cpu_percent(None), sub_ps.cpu_percent(None)
    client.loop_stop()
    client.disconnect()
    client_proc.wait(timeout=60)
    data = json.loads(out.read_text())
    seen = [sorted((int(k), v) for k, v in s.items()) for s in data["seen"]]
    delays: list[float] = []
    missed = 0
    for ts in published:
        for s in seen:
            first = next((v for k, v in s if k >= ts), None)
            if first is None:
                missed += 1
            else:
                delays.append(first - ts)
    delays.sort()

    def pct(p: float) -> float:
        return delays[min(len(delays) - 1, int(p / 100 * len(delays)))] if delays else float("nan")

    print(f"  subscriber state: {data['state']}")
    print(f"  hub CPU over the run: {hub_cpu:.0f} % of one core; subscriber process: {sub_cpu:.0f} %")
    print(f"  changes published: {len(published)}; deliveries measured: {len(delays)}; not delivered: {missed}")
    print(
        f"  {'delivery delay (publish -> subscriber receipt)':<48} {'p50':>8} {'p90':>8} {'p99':>8} {'max':>8} {'mean':>8}"
    )
    if delays:
        print(
            f"  {'ms':<48} {pct(50):>8.0f} {pct(90):>8.0f} {pct(99):>8.0f} {delays[-1]:>8.0f}"
            f" {statistics.fmean(delays):>8.0f}"
        )
    print("  aim: p99 under 1000 ms")


if __name__ == "__main__":
    main()
