"""A gateway with every kind of device: probes, a UHF RFID reader and a GPS, on simulators,
through a real Mosquitto to the hub; the courier records a handover through the courier view."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from coldchain.messages import GatewayHealth, decode
from firmware_sims.faults import FaultState
from firmware_sims.gps import GpsSimulator, Waypoint
from firmware_sims.probe import ProbeBusSimulator
from firmware_sims.uhf_reader import UhfReaderSimulator
from tests.support.checks import stop_agent, wait_until
from tests.support.hub import Hub
from tests.support.processes import Child
from tests.support.servers import Mosquitto

pytestmark = pytest.mark.integration

CASE_EPC = "3074257bf7194e4000001a85"  # GS1 TDS example SGTIN-96
CASE_URI = "urn:epc:id:sgtin:0614141.812345.6789"
UNKNOWN_EPC = "e2801160600002084a6c1234"  # a TID-like value with no EPC header the gateway knows
ROUTE = [Waypoint(30.2741, 120.1551, speed_kmh=60.0), Waypoint(30.3000, 120.2000)]  # Hangzhou


@pytest.fixture
def reader() -> Iterator[UhfReaderSimulator]:
    sim = UhfReaderSimulator()
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def gps() -> Iterator[GpsSimulator]:
    sim = GpsSimulator(ROUTE)
    sim.faults = FaultState(clock_offset_s=-30.0)  # the satellites' UTC is 30 s behind the gateway clock
    sim.start()
    yield sim
    sim.stop()


def test_tags_fixes_and_a_courier_handover_reach_the_hub(
    broker: Mosquitto,
    hub_factory: Callable[[Mosquitto], Hub],
    agent_factory: Callable[..., Child],
    probe_bus: ProbeBusSimulator,
    reader: UhfReaderSimulator,
    gps: GpsSimulator,
) -> None:
    hub = hub_factory(broker).start()
    agent = agent_factory(
        broker,
        probe_bus,
        interval_s=0.5,
        extra_toml=f"""
[[buses]]
kind = "uhf_m100"
port = "{reader.path}"
device_id = "door-reader"
interval_s = 0.2
debounce_s = 30

[[buses]]
kind = "nmea_gps"
port = "{gps.path}"
device_id = "gps"
""",
    ).start()
    wait_until(lambda: "courier view at http" in agent.log(), 20, "no courier view")
    courier = re.findall(r"courier view at (http://\S+)", agent.log())[-1].rstrip("/")

    reader.place_tags([CASE_EPC, UNKNOWN_EPC])
    wait_until(lambda: hub.scalar("SELECT count(*) FROM tag_reads") >= 2, 30, "no tag reads at the hub")
    reads = hub.query("SELECT epc_hex, epc_uri, action FROM tag_reads ORDER BY epc_hex")
    assert reads == [(CASE_EPC, CASE_URI, "observe"), (UNKNOWN_EPC, None, "observe")]  # unknown kept as hex

    # The courier presses pickup and holds the case alone to the antenna.
    reader.clear()
    time.sleep(1.0)  # let inventories already under way (0.2 s apart) finish before arming
    armed = httpx.post(f"{courier}/api/handover", json={"action": "pickup"}, timeout=5)
    assert armed.status_code == 202
    assert armed.json()["handover_armed"] == "pickup"
    reader.place_tags([CASE_EPC])
    wait_until(
        lambda: hub.scalar("SELECT count(*) FROM tag_reads WHERE action = 'pickup'") >= 1,
        30,
        "the handover never reached the hub",
    )
    assert hub.query("SELECT epc_uri FROM tag_reads WHERE action = 'pickup'")[0] == (CASE_URI,)
    state = httpx.get(f"{courier}/api/state", timeout=5).json()
    assert [h["epc_uri"] for h in state["recent_handovers"]] == [CASE_URI]
    assert {s["sensor_id"] for s in state["sensors"]} == {"chiller", "freezer"}
    assert state["connected"] is True

    wait_until(lambda: hub.scalar("SELECT count(*) FROM gps_fixes") >= 2, 30, "no GPS fixes at the hub")
    lat, lon, quality = hub.query("SELECT lat, lon, fix_quality FROM gps_fixes ORDER BY ts_ms LIMIT 1")[0]
    assert abs(float(lat) - 30.2741) < 0.05  # type: ignore[arg-type]
    assert abs(float(lon) - 120.1551) < 0.05  # type: ignore[arg-type]
    assert quality == 1

    def clock_offset() -> int | None:
        rows = hub.query("SELECT body FROM gateway_health")
        return decode(bytes(rows[0][0]), GatewayHealth).clock_offset_ms if rows else None  # type: ignore[arg-type]

    wait_until(lambda: clock_offset() is not None, 20, "no clock offset in the health report")
    assert 28_000 < (clock_offset() or 0) < 32_000
    stop_agent(agent)
