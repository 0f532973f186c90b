"""The spine end to end on a real Mosquitto: probe simulator -> agent -> broker -> hub -> SQLite.

Each test proves the store is exact: every reading the agent sampled is stored once, whatever
happens to the hub or the broker in between.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from coldchain import topics
from coldchain.messages import Quantity, Reading, TelemetryBatch, encode
from firmware_sims.probe import ProbeBusSimulator
from tests.support.checks import assert_store_exact, kill_hub_twice_mid_stream, stop_agent, wait_until
from tests.support.hub import Hub
from tests.support.mqtt import TestClient, make_batches
from tests.support.processes import Child
from tests.support.servers import Mosquitto

pytestmark = pytest.mark.integration


def test_every_sampled_reading_is_stored_once_and_served_by_the_api(
    broker: Mosquitto,
    hub_factory: Callable[[Mosquitto], Hub],
    agent_factory: Callable[..., Child],
    probe_bus: ProbeBusSimulator,
) -> None:
    hub = hub_factory(broker).start()
    agent = agent_factory(broker, probe_bus).start()
    wait_until(lambda: hub.scalar("SELECT count(*) FROM batches") >= 20, 30, "hub received too few batches")

    sampled, last_seq = stop_agent(agent)

    assert sampled >= 20 * 4
    assert_store_exact(hub, "gw-test-1", sampled, last_seq)
    chiller = hub.query(
        "SELECT avg(value) FROM series_readings WHERE sensor_id = 'chiller' AND quantity = 'temperature'"
    )
    freezer = hub.query(
        "SELECT avg(value) FROM series_readings WHERE sensor_id = 'freezer' AND quantity = 'temperature'"
    )
    assert 2.0 < float(chiller[0][0]) < 4.0  # type: ignore[arg-type]
    assert -19.0 < float(freezer[0][0]) < -17.0  # type: ignore[arg-type]  # negative values survive the chain

    latest = hub.get("/api/v1/readings/latest").json()
    assert {(r["sensor_id"], r["quantity"]) for r in latest} == {
        ("chiller", "temperature"),
        ("chiller", "humidity"),
        ("freezer", "temperature"),
        ("freezer", "humidity"),
    }
    gateways = hub.get("/api/v1/gateways").json()
    assert [(g["gateway_id"], g["acked_seq"], g["readings"], g["status"]) for g in gateways] == [
        ("gw-test-1", last_seq, sampled, "offline")
    ]
    assert hub.get("/api/v1/gateways").status_code == 200
    import httpx  # noqa: PLC0415

    assert httpx.get(f"{hub.api_url}/api/v1/gateways").status_code == 401
    assert httpx.get(f"{hub.api_url}/api/v1/gateways", headers={"Authorization": "Bearer wrong"}).status_code == 401


def test_batches_sent_again_are_stored_once(broker: Mosquitto, hub_factory: Callable[[Mosquitto], Hub]) -> None:
    hub = hub_factory(broker).start()
    client = TestClient(broker.port)
    client.watch_receipts("gw-dup")
    payloads = make_batches("gw-dup", count=30, readings_per_batch=10)

    client.publish_telemetry("gw-dup", payloads)
    client.wait_receipt("gw-dup", 30)
    client.publish_telemetry("gw-dup", payloads)
    client.publish_telemetry("gw-dup", list(reversed(payloads[:10])))
    wait_until(lambda: hub.get("/healthz").json()["ingest"].get("duplicates", 0) == 40, 20, "duplicates not seen")
    client.close()

    assert hub.scalar("SELECT count(*) FROM readings") == 300
    assert hub.scalar("SELECT count(*) FROM batches") == 30
    assert hub.get("/healthz").json()["ingest"]["readings_stored"] == 300


def test_bad_messages_are_counted_and_set_aside_while_good_ones_around_them_are_stored(
    broker: Mosquitto, hub_factory: Callable[[Mosquitto], Hub]
) -> None:
    hub = hub_factory(broker).start()
    client = TestClient(broker.port)
    client.watch_receipts("gw-bad")
    good = make_batches("gw-bad", count=4, readings_per_batch=5)
    now = int(time.time() * 1000)
    one_bad_reading = encode(
        TelemetryBatch("gw-bad", "0" * 32, 3, 1, [Reading("probe-1", Quantity.TEMPERATURE, now, 4.0)])
    ).replace(b"4.0", b"999.0", 1)
    topic = topics.topic_for("gw-bad", topics.Channel.TELEMETRY)

    client.publish(topic, good[0])
    client.publish(topic, b"\x00\xffnot json at all")
    client.publish(topic, good[1])
    client.publish(topic, one_bad_reading)  # seq 3: its only reading is out of range
    client.publish(topics.topic_for("gw-other", topics.Channel.TELEMETRY), good[2])  # topic/payload id mismatch
    client.publish(topic, b"[" * 300_000)  # over the size limit
    client.publish("cc/v1/gw/gw-bad/bogus", good[2])  # unknown channel: not even subscribed, never seen
    client.publish(topic, good[3])  # seq 4
    client.wait_receipt("gw-bad", 2)
    wait_until(lambda: hub.scalar("SELECT count(*) FROM rejected") >= 4, 20, "rejections not recorded")
    client.close()

    assert hub.scalar("SELECT count(*) FROM readings") == 15  # seqs 1, 2 and 4
    reasons = sorted(str(row[0]) for row in hub.query("SELECT reason FROM rejected"))
    assert reasons == ["id_mismatch", "invalid_reading", "malformed", "too_large"]
    counters = hub.get("/healthz").json()["ingest"]
    assert counters["rejected_malformed"] == 1
    assert counters["rejected_too_large"] == 1
    assert counters["rejected_invalid_reading"] == 1
    assert counters["rejected_id_mismatch"] == 1
    # The batch whose only reading was refused still counts as delivered, so the gateway is not stuck.
    assert hub.scalar("SELECT acked_seq FROM gateways WHERE gateway_id = 'gw-bad'") == 4
    assert hub.child.running


def test_hub_killed_mid_stream_loses_and_doubles_nothing(
    broker: Mosquitto,
    hub_factory: Callable[[Mosquitto], Hub],
    agent_factory: Callable[..., Child],
    probe_bus: ProbeBusSimulator,
) -> None:
    hub = hub_factory(broker).start()
    agent = agent_factory(broker, probe_bus).start()
    kill_hub_twice_mid_stream(hub, agent)


def test_hub_away_behind_a_dropping_broker_still_gets_every_reading_once(
    broker_factory: Callable[..., Mosquitto],
    hub_factory: Callable[[Mosquitto], Hub],
    agent_factory: Callable[..., Child],
    probe_bus: ProbeBusSimulator,
) -> None:
    broker = broker_factory(max_queued_messages=5)
    hub = hub_factory(broker).start()
    agent = agent_factory(broker, probe_bus).start()
    wait_until(lambda: hub.scalar("SELECT count(*) FROM batches") >= 5, 30, "stream did not start")

    assert hub.child.terminate() == 0
    time.sleep(30)
    hub.start()

    assert "being dropped" in broker.log()  # the broker really did throw batches away
    wait_until(lambda: "resending from seq" in agent.log(), 30, "agent never resent")
    sampled, last_seq = stop_agent(agent)
    assert hub.scalar("SELECT count(*) FROM batches") > 30 / 0.2 * 0.5  # batches kept coming while the hub was away
    assert_store_exact(hub, "gw-test-1", sampled, last_seq)


def test_after_a_burst_every_gateways_newest_receipt_is_retained(
    broker: Mosquitto, hub_factory: Callable[[Mosquitto], Hub]
) -> None:
    # Receipts are coalesced per gateway while one is in flight: the newest must still always go out.
    hub = hub_factory(broker).start()
    gateways = [f"gw-burst-{n:02d}" for n in range(40)]
    batches = {gateway_id: make_batches(gateway_id, count=25, readings_per_batch=4) for gateway_id in gateways}
    publisher = TestClient(broker.port)
    for seq in range(25):  # interleaved, as many gateways publishing at once
        for gateway_id in gateways:
            publisher.client.publish(
                topics.topic_for(gateway_id, topics.Channel.TELEMETRY), batches[gateway_id][seq], qos=1
            )
    wait_until(lambda: hub.scalar("SELECT count(*) FROM batches") == 40 * 25, 60, "burst not stored")
    publisher.close()

    late_subscriber = TestClient(broker.port)  # sees only what the broker retained
    for gateway_id in gateways:
        late_subscriber.watch_receipts(gateway_id)
    for gateway_id in gateways:
        late_subscriber.wait_receipt(gateway_id, 25, timeout_s=10)
    late_subscriber.close()
    assert hub.scalar("SELECT count(*) FROM readings") == 40 * 25 * 4
