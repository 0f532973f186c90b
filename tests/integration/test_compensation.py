"""When the cold chain breaks: a simulated reefer failure through agent, broker and hub to exactly
one signed claim per affected order at the shop's receiver, even when the hub is killed between
committing the claim and sending it."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from firmware_sims.scenario import ScenarioPlayer, parse_scenario
from hub.receiver import ReceiverServer, create_receiver_app
from tests.support.checks import stop_agent, wait_until
from tests.support.hub import Hub
from tests.support.processes import Child
from tests.support.servers import Mosquitto, free_port

pytestmark = pytest.mark.integration

SECRET = b"claims-secret-for-tests-0123456789"
CASE_ON_TRUCK = "3074257bf7194e40000007d1"  # SGTIN-96 urn:epc:id:sgtin:0614141.812345.2001
CASE_ELSEWHERE = "3074257bf7194e40000007d2"
# 40 simulated minutes at 120x (20 s): the reefer's cooling fails from minute 2 to minute 20.
SCENARIO = f"""
name = "short-reefer-failure"
speed = 120.0
seed = 5
start_utc = 2026-03-03T06:00:00+07:00

[[nodes]]
id = "reefer"
kind = "reefer_truck"
set_point_c = 2.0
ambient_c = 32.0
humidity_set_point = 90.0
location = [11.94, 108.44]

[[legs]]
node = "reefer"
duration_s = 2400
cooling_failures = [[120, 1080]]
pickup = ["{CASE_ON_TRUCK}"]
"""
# Thresholds in real seconds, because the gateway stamps readings with its own (real) clock.
PROFILES = """
[profiles.test-chilled]
temp_low_c = 0.0
temp_high_c = 4.0
alarm_dwell_s = 2
max_single_excursion_s = 4
max_cumulative_excursion_s = 3600
hysteresis_c = 0.3
silent_after_s = 3600

[bindings]
nodes = { "gw-test-1" = "test-chilled" }
"""
POLICY = """
endpoint = "shop-claims"

[[rules]]
min_severity = "critical"
action = "refund"
refund_percent = 30
"""


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "claims-secret"
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def player(tmp_path: Path) -> Iterator[ScenarioPlayer]:
    player = ScenarioPlayer(parse_scenario(SCENARIO), link_dir=tmp_path)
    yield player
    player.stop()


def hub_with_policy(
    hub_factory: Callable[..., Hub], broker: Mosquitto, tmp_path: Path, secret: Path, receiver_url: str
) -> Hub:
    (tmp_path / "profiles.toml").write_text(PROFILES)
    (tmp_path / "compensation.toml").write_text(POLICY)
    return hub_factory(
        broker,
        top_toml=(
            f'profiles_file = "{tmp_path / "profiles.toml"}"\ncompensation_file = "{tmp_path / "compensation.toml"}"'
        ),
        tables_toml=f"""
[[endpoints]]
name = "shop-claims"
url = "{receiver_url}/claims"
format = "claim"
secret_file = "{secret}"
""",
    )


def agent_for(agent_factory: Callable[..., Child], broker: Mosquitto, player: ScenarioPlayer) -> Child:
    class Probe:  # the agent fixture takes anything with a ``path``
        path = player.paths["probe"]

    return agent_factory(
        broker,
        Probe,
        interval_s=0.5,
        batch_max_age_s=0.5,
        extra_toml=f"""
[[buses]]
kind = "uhf_m100"
port = "{player.paths["rfid"]}"
device_id = "reader"
interval_s = 0.5
""",
    )


def test_a_reefer_failure_pays_the_affected_order_once_even_across_a_hub_kill(
    broker: Mosquitto,
    hub_factory: Callable[..., Hub],
    agent_factory: Callable[..., Child],
    player: ScenarioPlayer,
    tmp_path: Path,
    secret_file: Path,
) -> None:
    receiver_port = free_port()
    receiver_url = f"http://127.0.0.1:{receiver_port}"  # nothing listens yet: the shop is down
    hub = hub_with_policy(hub_factory, broker, tmp_path, secret_file, receiver_url).start()
    for order_id, epc in (("order-on-truck", CASE_ON_TRUCK), ("order-elsewhere", CASE_ELSEWHERE)):
        created = hub.post("/api/v1/orders", {"order_id": order_id, "buyer_ref": f"ref-{order_id}", "items": [epc]})
        assert created.status_code == 201, created.text

    player.start()
    agent = agent_for(agent_factory, broker, player).start()
    wait_until(lambda: hub.scalar("SELECT count(*) FROM claims") >= 1, 90, "no claim after the reefer failure")
    wait_until(
        lambda: hub.scalar("SELECT count(*) FROM outbox WHERE kind = 'claim' AND attempts > 0") >= 1,
        30,
        "the hub never tried to send the claim",
    )
    hub.child.kill()  # committed in the outbox, never delivered: the shop was down

    receiver = ReceiverServer(create_receiver_app([SECRET]), port=receiver_port)
    receiver.start()
    try:
        hub.start()
        wait_until(lambda: len(httpx.get(f"{receiver_url}/claims", timeout=5).json()) >= 1, 60, "claim not delivered")
        time.sleep(3)  # time for any duplicate to arrive
        accepted = httpx.get(f"{receiver_url}/claims", timeout=5).json()
    finally:
        receiver.stop()
    assert len(accepted) == 1
    assert hub.query("SELECT order_id, action, refund_percent, state FROM claims") == [
        ("order-on-truck", "refund", 30.0, "delivered")
    ]
    investigation = hub.get(f"/api/v1/investigations/{hub.query('SELECT claim_id FROM claims')[0][0]}").json()
    assert max(r["value"] for r in investigation["evidence"]["readings"]) > 4.0
    assert investigation["evidence"]["items"][0]["gateway_id"] == "gw-test-1"
    stop_agent(agent)
