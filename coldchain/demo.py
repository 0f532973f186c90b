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
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import httpx
from amqtt.broker import Broker

from coldchain.errors import ConfigError
from coldchain.messages import TagAction
from coldchain.mqtt import MqttConfig
from coldchain.signals import StopRequest
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
from firmware_sims.thermal import ThermalModel
from firmware_sims.uhf_reader import UhfReaderSimulator
from firmware_sims.xymd02 import ProbeSpec
from hub.config import ApiConfig, ApiToken, HubConfig, StoreConfig
from hub.notify import Endpoint
from hub.receiver import ReceiverServer, create_receiver_app
from hub.runtime import HubRuntime
from hub.traceability.model import NodeInfo
from hub.traceability.settings import PublicSettings

PRINT_EVERY_S: Final = 5.0
EVENT_POLL_S: Final = 1.0
# The scripted excursion: the reefer's rear probe loses cooling this many seconds after the start.
REEFER_FAILS_AT_S: Final = 20.0
REEFER_FAILURE_S: Final = 25.0
REEFER_AIR_TIME_CONSTANT_S: Final = 8.0
"""A fast-reacting air model so the whole story (failure, alarm, recovery, claim) fits in about a minute."""
DEMO_CASE_EPC: Final = "3074257bf7194e40000007d1"  # SGTIN-96 urn:epc:id:sgtin:0614141.812345.2001
DEMO_ORDER: Final = "demo-order-1"
DEMO_CASE_URI: Final = "urn:epc:id:sgtin:0614141.812345.2001"
DEMO_LOT: Final = "BERRY-2611"
DEMO_GTIN: Final = "80614141123458"
DEMO_NODES: Final = [
    NodeInfo("gw-coldroom", "cold_store", "产地冷库", "Packhouse cold store", None, "丽江", "Lijiang"),
    NodeInfo("gw-reefer", "reefer_truck", "冷藏车", "Reefer truck", None, "昆明", "Kunming"),
    NodeInfo("gw-courier", "courier_box", "快递保温箱", "Courier box", None, "上海", "Shanghai"),
]
# Thresholds in real seconds so the demo's excursion is judged in a minute, not in hours.
DEMO_PROFILES: Final = """
[profiles.demo-chilled]
temp_low_c = 0.0
temp_high_c = 8.0
alarm_dwell_s = 5
max_single_excursion_s = 15
max_cumulative_excursion_s = 3600
silent_after_s = 120

[bindings]
nodes = { "gw-reefer" = "demo-chilled" }
"""
DEMO_POLICY: Final = """
endpoint = "shop-claims"

[[rules]]
min_severity = "critical"
action = "refund"
refund_percent = 30
"""
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
    levels = dict.fromkeys(("amqtt", "transitions", "uvicorn", "uvicorn.error"), logging.CRITICAL)
    levels["hub.ingest"] = logging.ERROR  # it logs alarm changes as warnings; the demo prints ALARM lines
    previous = {name: logging.getLogger(name).level for name in levels}
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    try:
        yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


def run_demo(*, broker_url: str | None, api_port: int, duration_s: float | None) -> int:
    """Run the demo until Ctrl-C, SIGTERM or ``duration_s``; return the process exit code."""
    stop = StopRequest()
    stop.install()
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
        port = _free_port(api_port)
        work = Path(workdir)
        claim_secret = secrets.token_bytes(32)
        (work / "claims-secret").write_bytes(claim_secret.hex().encode())
        receiver = ReceiverServer(create_receiver_app([claim_secret.hex().encode()]))
        receiver.start()
        running.callback(receiver.stop)
        (work / "profiles.toml").write_text(DEMO_PROFILES)
        (work / "compensation.toml").write_text(DEMO_POLICY)
        hub = HubRuntime(
            HubConfig(
                mqtt=mqtt,
                store=StoreConfig(path=str(work / "hub.sqlite3")),
                api=ApiConfig(
                    port=port,
                    tokens=[ApiToken("demo", hashlib.sha256(token.encode()).hexdigest(), ["read", "staff", "orders"])],
                ),
                profiles_file=str(work / "profiles.toml"),
                compensation_file=str(work / "compensation.toml"),
                endpoints=[
                    Endpoint(
                        name="shop-claims",
                        url=f"{receiver.url}/claims",
                        format="claim",
                        secret_file=str(work / "claims-secret"),
                    )
                ],
                public=PublicSettings(base_url=f"http://127.0.0.1:{port}"),
                nodes=DEMO_NODES,
            ),
            demo=True,
        )
        hub.start_in_thread()
        running.callback(hub.stop)
        api = f"http://127.0.0.1:{port}"
        _wait_for_api(hub)
        buyer_link = _declare_lot_and_order(api, token)

        courier_urls = [_start_gateway(index, gateway, mqtt, work, running) for index, gateway in enumerate(GATEWAYS)]

        print("coldchain demo: 3 gateways x 2 probes -> broker -> hub (SQLite)")
        print(f"  broker  {broker_label}")
        print(f"  API     {api}/docs  (OpenAPI)   health: {api}/healthz")
        print(f"  token   {token}")
        print(f"          curl -H 'Authorization: Bearer {token}' {api}/api/v1/readings/latest")
        for line in filter(None, courier_urls):
            print(f"  courier {line}")
        print(f"  widget  {api}/widget/index.html?lot={DEMO_LOT}   (English: &lang=en, OBS: &transparent=1)")
        print(f"  buyer   {buyer_link}   (order {DEMO_ORDER}'s own trail)")
        print(f"  shop    reference claim receiver at {receiver.url}/claims; order {DEMO_ORDER} rides on gw-reefer")
        print(f"  script  the reefer's rear unit fails {REEFER_FAILS_AT_S:.0f} s in, for {REEFER_FAILURE_S:.0f} s")
        print("  Ctrl-C stops everything.", flush=True)
        _print_live(hub, receiver.url, stop, duration_s)
        print("\nstopping...", flush=True)
    print("demo stopped cleanly.", flush=True)
    return 0


def _start_gateway(
    index: int, gateway: DemoGateway, mqtt: MqttConfig, work: Path, running: contextlib.ExitStack
) -> str | None:
    """Start one gateway's simulators and agent; return its courier view line."""
    reefer = gateway.gateway_id == "gw-reefer"
    models = {2: _failing_reefer_air()} if reefer else None
    sim = ProbeBusSimulator(
        [
            ProbeSpec(address=address, set_point_c=set_point, door_rate_per_hour=doors, seed=index * 10 + address)
            for address, (_, set_point, doors) in enumerate(gateway.probes, start=1)
        ],
        models=models,
    )
    sim.start()
    running.callback(sim.stop)
    buses = [
        BusConfig(
            kind=DriverKind.MODBUS_RTU_PROBE,
            port=str(sim.path),
            probes=[
                ProbeConfig(sensor_id=sensor_id, address=address)
                for address, (sensor_id, _, _) in enumerate(gateway.probes, start=1)
            ],
        )
    ]
    if reefer:  # the buyer's case rides on this truck: its reader sees it
        reader = UhfReaderSimulator()
        reader.place_tags([DEMO_CASE_EPC])
        reader.start()
        running.callback(reader.stop)
        buses.append(BusConfig(kind=DriverKind.UHF_M100, port=str(reader.path), device_id="door-reader"))
    config = AgentConfig(
        gateway_id=gateway.gateway_id,
        state_dir=str(work / gateway.gateway_id),
        buses=buses,
        mqtt=mqtt,
        sampling=DEMO_SAMPLING,
        courier_view=CourierViewConfig(port=_free_port()),
        custody_mode=TagAction.PICKUP,
    )
    agent = Agent(check_agent_config(config, source="demo", demo=True), demo=True)
    agent.start()
    running.callback(agent.stop)
    return f"{gateway.gateway_id} {agent.courier_view.url}" if agent.courier_view is not None else None


def _print_live(hub: HubRuntime, receiver_url: str, stop: StopRequest, duration_s: float | None) -> None:
    deadline = None if duration_s is None else time.monotonic() + duration_s
    next_sensors = time.monotonic() + PRINT_EVERY_S
    seen: set[tuple[str, str, str]] = set()
    while True:
        wait = EVENT_POLL_S if deadline is None else max(0.0, min(EVENT_POLL_S, deadline - time.monotonic()))
        if stop.wait(wait):
            return
        _print_events(hub, receiver_url, seen)
        if time.monotonic() >= next_sensors:
            next_sensors += PRINT_EVERY_S
            _print_sensor_lines(hub)
        if deadline is not None and time.monotonic() >= deadline:
            return


def _print_events(hub: HubRuntime, receiver_url: str, seen: set[tuple[str, str, str]]) -> None:
    """Alarm changes and paid claims, each printed once, as they happen."""
    try:
        # Claims first, alarms second: a claim is paid only after its alarm closed, so the closing
        # is already in the store when the alarms are read and always prints before the claim.
        accepted = httpx.get(f"{receiver_url}/claims", timeout=2).json()
    except httpx.HTTPError:
        accepted = []
    for alarm in reversed(hub.read_store.alarms()):
        if alarm["kind"] not in ("out_of_range", "rate_of_change"):
            continue
        key = (alarm["alarm_id"], alarm["state"], alarm["severity"])
        if key not in seen:
            seen.add(key)
            peak = alarm["peak_value"]
            print(
                f"  ALARM {alarm['state']:<6} {alarm['severity']:<8} {alarm['kind']} on"
                f" {alarm['gateway_id']}/{alarm['sensor_id']} ({peak:.1f} °C)",
                flush=True,
            )
    for claim in accepted:
        body = claim.get("body", claim)
        key = ("claim", str(body.get("claim_id")), "")
        if key not in seen:
            seen.add(key)
            print(
                f"  CLAIM paid: order {body.get('order_id')} gets a {body.get('action')} of"
                f" {body.get('refund_percent')} % for the excursion; the shop's receiver verified and acknowledged it",
                flush=True,
            )


def _declare_lot_and_order(api: str, token: str) -> str:
    """What the shop platform does: declare the lot on sale, record an order, get the buyer's link."""
    auth = {"Authorization": f"Bearer {token}"}
    for path, body in (
        (
            "/api/v1/lots",
            {"lot_id": DEMO_LOT, "gtin": DEMO_GTIN, "product": "蓝莓 blueberries", "items": [DEMO_CASE_URI]},
        ),
        ("/api/v1/orders", {"order_id": DEMO_ORDER, "buyer_ref": "live-room-buyer-8841", "items": [DEMO_CASE_URI]}),
    ):
        httpx.post(f"{api}{path}", json=body, headers=auth, timeout=5).raise_for_status()
    link = httpx.post(f"{api}/api/v1/orders/{DEMO_ORDER}/keys", headers=auth, timeout=5)
    link.raise_for_status()
    return str(link.json()["url"])


def _wait_for_api(hub: HubRuntime) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while not hub.api_started:
        if time.monotonic() > deadline:
            raise ConfigError("the hub's API did not start")
        time.sleep(0.05)


def _failing_reefer_air() -> ThermalModel:
    return ThermalModel(
        set_point_c=4.5,
        ambient_c=30.0,
        time_constant_s=REEFER_AIR_TIME_CONSTANT_S,
        insulation_time_constant_s=REEFER_AIR_TIME_CONSTANT_S * 2,  # without cooling the box warms in seconds too
        noise_c=0.05,
        seed=7,
        cooling_failures=[(REEFER_FAILS_AT_S, REEFER_FAILURE_S)],
    )


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
