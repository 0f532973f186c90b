"""``coldchain demo``: the whole system in one process on its embedded defaults.

An in-process amqtt broker (unless ``--broker`` names one), the hub on SQLite with its API, and
three gateways, each reading two simulated Modbus probes over a pseudo-terminal. Every few
seconds it prints one line per sensor, read back from the hub's store, so what you see has made
the full trip probe -> agent -> broker -> hub. Ctrl-C (or ``--duration``) stops everything in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import secrets
import signal
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import Final
from urllib.parse import urlsplit

from amqtt.broker import Broker

from coldchain.errors import ConfigError
from coldchain.mqtt import MqttConfig
from edge_agent.config import (
    AgentConfig,
    BusConfig,
    CourierViewConfig,
    ProbeConfig,
    SamplingConfig,
    check_agent_config,
)
from edge_agent.drivers import DriverKind
from edge_agent.runtime import Agent
from firmware_sims.probe import ProbeBusSimulator
from firmware_sims.xymd02 import ProbeSpec
from hub.config import ApiConfig, ApiToken, HubConfig, StoreConfig
from hub.runtime import HubRuntime

PRINT_EVERY_S: Final = 5.0
STARTUP_TIMEOUT_S: Final = 15.0
DEMO_SAMPLING = SamplingConfig(interval_s=1.0, batch_max_age_s=2.0)
"""Faster than production so a newcomer sees values move within seconds."""


@dataclass(frozen=True)
class DemoGateway:
    """A simulated gateway: its id and its two probes (sensor id, set point, door openings per hour)."""

    gateway_id: str
    probes: tuple[tuple[str, float, float], ...]


GATEWAYS: Final = (
    DemoGateway("gw-coldroom", (("coldroom-a", 2.0, 0.0), ("coldroom-b", 3.0, 4.0))),
    DemoGateway("gw-reefer", (("reefer-front", 4.0, 0.0), ("reefer-rear", 4.5, 6.0))),
    DemoGateway("gw-courier", (("box-tea", 6.0, 2.0), ("box-berries", 3.5, 2.0))),
)


class EmbeddedBroker:
    """amqtt on its own event loop in a thread, anonymous, bound to 127.0.0.1 only."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="embedded-broker", daemon=True)

    def start(self) -> None:
        """Start and wait until the broker listens."""
        self._thread.start()
        if not self._ready.wait(STARTUP_TIMEOUT_S) or self._error is not None:
            raise ConfigError(f"embedded broker did not start on port {self.port}: {self._error}")

    def stop(self) -> None:
        """Shut the broker down and join its thread."""
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        async def serve() -> None:
            config = {
                "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{self.port}"}},
                "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
            }
            broker = Broker(config)
            await broker.start()
            self._loop = asyncio.get_running_loop()
            self._stop_event = asyncio.Event()
            self._ready.set()
            await self._stop_event.wait()
            await broker.shutdown()

        try:
            asyncio.run(serve())
        except Exception as exc:
            self._error = exc
            self._ready.set()


def _free_port(preferred: int | None = None) -> int:
    for candidate in (preferred, 0):
        if candidate is None:
            continue
        with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
            try:
                sock.bind(("127.0.0.1", candidate))
            except OSError:
                continue
            port: int = sock.getsockname()[1]
            return port
    raise ConfigError("no free TCP port on 127.0.0.1")


def _parse_broker_url(url: str) -> MqttConfig:
    parts = urlsplit(url)
    if parts.scheme not in ("mqtt", "tcp") or not parts.hostname:
        raise ConfigError(f"--broker must look like mqtt://host:port, got {url!r}")
    return MqttConfig(host=parts.hostname, port=parts.port or 1883)


@contextlib.contextmanager
def _quiet_third_party_logs() -> Iterator[None]:
    """amqtt logs every connection at INFO and tracebacks on shutdown races; the demo shows its own lines."""
    names = ("amqtt", "transitions", "uvicorn", "uvicorn.error")
    previous = {name: logging.getLogger(name).level for name in names}
    for name in names:
        logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


def run_demo(*, broker_url: str | None, api_port: int, duration_s: float | None) -> int:
    """Run the demo until Ctrl-C, SIGTERM or ``duration_s``; return the process exit code."""
    stop = threading.Event()

    def _request_stop(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, _request_stop)
    signal.signal(signal.SIGTERM, _request_stop)
    with (
        _quiet_third_party_logs(),
        tempfile.TemporaryDirectory(prefix="coldchain-demo-") as workdir,
        contextlib.ExitStack() as running,
    ):
        if broker_url is None:
            broker = EmbeddedBroker(_free_port())
            broker.start()
            running.callback(broker.stop)
            mqtt = MqttConfig(port=broker.port)
            broker_label = f"mqtt://127.0.0.1:{broker.port} (embedded amqtt)"
        else:
            mqtt = _parse_broker_url(broker_url)
            broker_label = broker_url

        token = secrets.token_urlsafe(24)
        courier_urls: list[str] = []
        port = _free_port(api_port)
        hub = HubRuntime(
            HubConfig(
                mqtt=mqtt,
                store=StoreConfig(path=str(Path(workdir) / "hub.sqlite3")),
                api=ApiConfig(
                    port=port,
                    tokens=[ApiToken("demo", hashlib.sha256(token.encode()).hexdigest(), ["read"])],
                ),
            ),
            demo=True,
        )
        hub.start_in_thread()
        running.callback(hub.stop)

        for index, gateway in enumerate(GATEWAYS):
            sim = ProbeBusSimulator(
                [
                    ProbeSpec(
                        address=address, set_point_c=set_point, door_rate_per_hour=doors, seed=index * 10 + address
                    )
                    for address, (_, set_point, doors) in enumerate(gateway.probes, start=1)
                ]
            )
            sim.start()
            running.callback(sim.stop)
            config = AgentConfig(
                gateway_id=gateway.gateway_id,
                state_dir=str(Path(workdir) / gateway.gateway_id),
                buses=[
                    BusConfig(
                        kind=DriverKind.MODBUS_RTU_PROBE,
                        port=str(sim.path),
                        probes=[
                            ProbeConfig(sensor_id=sensor_id, address=address)
                            for address, (sensor_id, _, _) in enumerate(gateway.probes, start=1)
                        ],
                    )
                ],
                mqtt=mqtt,
                sampling=DEMO_SAMPLING,
                courier_view=CourierViewConfig(port=_free_port()),
            )
            agent = Agent(check_agent_config(config, source="demo", demo=True), demo=True)
            agent.start()
            running.callback(agent.stop)
            if agent.courier_view is not None:
                courier_urls.append(f"{gateway.gateway_id} {agent.courier_view.url}")

        api = f"http://127.0.0.1:{port}"
        print("coldchain demo: 3 gateways x 2 probes -> broker -> hub (SQLite)")
        print(f"  broker  {broker_label}")
        print(f"  API     {api}/docs  (OpenAPI)   health: {api}/healthz")
        print(f"  token   {token}")
        print(f"          curl -H 'Authorization: Bearer {token}' {api}/api/v1/readings/latest")
        for line in courier_urls:
            print(f"  courier {line}")
        print("  Ctrl-C stops everything.", flush=True)
        _print_live(hub, stop, duration_s)
        print("\nstopping...", flush=True)
    print("demo stopped cleanly.", flush=True)
    return 0


def _print_live(hub: HubRuntime, stop: threading.Event, duration_s: float | None) -> None:
    deadline = None if duration_s is None else time.monotonic() + duration_s
    while True:
        wait = PRINT_EVERY_S if deadline is None else max(0.0, min(PRINT_EVERY_S, deadline - time.monotonic()))
        if stop.wait(wait):
            return
        _print_sensor_lines(hub)
        if deadline is not None and time.monotonic() >= deadline:
            return


def _print_sensor_lines(hub: HubRuntime) -> None:
    series: dict[tuple[str, str], dict[str, float]] = {}
    newest_ms: dict[tuple[str, str], int] = {}
    for row in hub.read_store.latest():
        key = (row.gateway_id, row.sensor_id)
        series.setdefault(key, {})[row.quantity] = row.value
        newest_ms[key] = max(newest_ms.get(key, 0), row.ts_ms)
    stored = hub.pipeline.stats.snapshot().get("readings_stored", 0)
    print(f"[{datetime.now():%H:%M:%S}] hub has stored {stored} readings")
    for key, values in sorted(series.items()):
        temperature = values.get("temperature", float("nan"))
        humidity = values.get("humidity", float("nan"))
        age_s = time.time() - newest_ms[key] / 1000
        print(f"  {key[0]:<11} {key[1]:<12} {temperature:6.1f} °C  {humidity:5.1f} %RH  ({age_s:.0f} s ago)")
    if not series:
        print("  waiting for the first batches...")
    sys.stdout.flush()
