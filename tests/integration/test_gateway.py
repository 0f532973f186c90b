"""The gateway's promises on a real Mosquitto: outages, kills, a full disk budget, remote
configuration, the local alarm and health reports."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from coldchain import topics
from coldchain.messages import CommandAck, GatewayHealth, decode
from firmware_sims.probe import ProbeBusSimulator
from tests.support.checks import assert_store_exact, stop_agent, wait_until
from tests.support.hub import Hub
from tests.support.processes import Child
from tests.support.servers import Mosquitto

pytestmark = pytest.mark.integration


def held_batches(agent: Child) -> int:
    """Batches the agent still holds on disk (unreceipted)."""
    with closing(sqlite3.connect(agent.log_path.parent / "state" / "buffer.sqlite3")) as conn:
        return int(conn.execute("SELECT count(*) FROM batches").fetchone()[0])


def test_broker_down_for_a_minute_loses_and_doubles_nothing(
    broker: Mosquitto,
    hub_factory: Callable[[Mosquitto], Hub],
    agent_factory: Callable[..., Child],
    probe_bus: ProbeBusSimulator,
) -> None:
    hub = hub_factory(broker).start()
    agent = agent_factory(broker, probe_bus).start()
    wait_until(lambda: hub.scalar("SELECT count(*) FROM batches") >= 10, 30, "stream did not start")

    broker.stop()
    outage_start_ms = int(time.time() * 1000)
    time.sleep(60)
    outage_end_ms = int(time.time() * 1000)
    broker.start()

    wait_until(
        lambda: "gateway gw-test-1 online" in agent.log().split("--- start")[-1].split("link to broker lost")[-1],
        60,
        "agent did not reconnect",
    )
    sampled, last_seq = stop_agent(agent)
    assert_store_exact(hub, "gw-test-1", sampled, last_seq)
    during = hub.scalar(
        "SELECT count(*) FROM readings WHERE ts_ms BETWEEN ? AND ?", outage_start_ms + 2000, outage_end_ms - 2000
    )
    assert during >= 50 * 4  # the probes were read all through the outage, and all of it arrived


def test_agent_killed_during_replay_resumes_without_loss_or_duplicates(
    broker: Mosquitto,
    hub_factory: Callable[[Mosquitto], Hub],
    agent_factory: Callable[..., Child],
    probe_bus: ProbeBusSimulator,
) -> None:
    hub = hub_factory(broker).start()
    # a slow replay (5 batches/s) so that the kill lands in the middle of it
    agent = agent_factory(broker, probe_bus, replay_batches_per_s=5.0, window_batches=8).start()
    wait_until(lambda: hub.scalar("SELECT count(*) FROM batches") >= 5, 30, "stream did not start")
    broker.stop()
    time.sleep(15)  # about 75 batches pile up on the gateway's disk
    broker.start()
    # The agent's reconnect delay is drawn at random up to its 60 s cap (edge_agent/backoff.py), and after a
    # 15 s outage the draw is already up to 16-32 s: 40 s here failed in CI once.
    wait_until(
        lambda: "resending" in agent.log() or hub.scalar("SELECT count(*) FROM batches") >= 20,
        90,
        "replay did not start",
    )
    wait_until(lambda: hub.scalar("SELECT count(*) FROM batches") >= 25, 40, "replay too slow")
    agent.kill()
    assert held_batches(agent) > 10  # the kill really interrupted a replay with a backlog left

    agent.start()
    wait_until(lambda: held_batches(agent) <= 2, 90, "backlog not drained after restart")
    _, last_seq = stop_agent(agent)
    seqs = [int(r[0]) for r in hub.query("SELECT seq FROM batches ORDER BY seq")]
    assert seqs == list(range(seqs[0], last_seq + 1))  # nothing lost: every batch ever made arrived
    assert hub.scalar("SELECT count(*) FROM gaps") == 0
    per_batch = hub.query(
        "SELECT b.seq, b.reading_count, count(r.seq) FROM batches b LEFT JOIN series_readings r USING (gateway_id, seq)"
        " GROUP BY b.seq HAVING b.reading_count != count(r.seq)"
    )
    assert per_batch == []  # nothing doubled: each batch's readings stored exactly once
    doubled = hub.scalar(
        "SELECT count(*) FROM (SELECT 1 FROM series_readings GROUP BY sensor_id, quantity, ts_ms HAVING count(*) > 1)"
    )
    assert doubled == 0


def test_full_disk_budget_drops_the_oldest_and_tells_the_hub_exactly_what(
    broker: Mosquitto,
    hub_factory: Callable[[Mosquitto], Hub],
    agent_factory: Callable[..., Child],
    probe_bus: ProbeBusSimulator,
) -> None:
    hub = hub_factory(broker).start()
    agent = agent_factory(broker, probe_bus, extra_toml="[buffer]\nbudget_bytes = 12000\n").start()
    wait_until(lambda: hub.scalar("SELECT count(*) FROM batches") >= 3, 30, "stream did not start")
    broker.stop()
    time.sleep(20)  # ~100 batches of ~600 bytes: far over a 12 kB budget
    broker.start()
    wait_until(lambda: hub.scalar("SELECT count(*) FROM gaps WHERE source = 'gateway'") >= 1, 60, "no gap record")

    def seqs_in(source: str) -> set[int]:
        ranges = hub.query("SELECT first_seq, last_seq FROM gaps WHERE source = ?", source)
        return {seq for first, last in ranges for seq in range(int(first), int(last) + 1)}  # type: ignore[call-overload]

    # Records ride on the batches after the drop: wait until they name every seq the hub saw skipped.
    wait_until(lambda: seqs_in("hub") <= seqs_in("gateway"), 60, "gap records missing")
    sampled, last_seq = stop_agent(agent)

    gaps = hub.query(
        "SELECT first_seq, last_seq, reason, readings, first_ts_ms, last_ts_ms FROM gaps WHERE source = 'gateway'"
    )
    stored_seqs = {int(r[0]) for r in hub.query("SELECT seq FROM batches")}
    released_seqs: set[int] = set()
    lost_readings = 0
    for first, last, reason, readings, first_ts, last_ts in gaps:
        assert reason == "disk_budget"
        assert first_ts is not None
        assert last_ts is not None
        assert first_ts <= last_ts
        released_seqs |= set(range(int(first), int(last) + 1))
        # A batch published just before the outage may have reached the hub while its receipt did not
        # reach the gateway: the record names it (released unreceipted), and the hub has its readings.
        arrived = hub.scalar(
            "SELECT coalesce(sum(reading_count), 0) FROM batches WHERE seq BETWEEN ? AND ?", int(first), int(last)
        )
        lost_readings += int(readings) - arrived
    assert released_seqs - stored_seqs  # the budget really dropped batches the hub never got
    everything = set(range(min(stored_seqs | released_seqs), last_seq + 1))
    assert stored_seqs | released_seqs == everything  # and nothing went missing without a record
    assert hub.scalar("SELECT count(*) FROM readings") + lost_readings == sampled  # every reading accounted for


def test_remote_configuration_is_applied_acknowledged_or_refused_with_the_reason(
    broker: Mosquitto,
    hub_factory: Callable[[Mosquitto], Hub],
    agent_factory: Callable[..., Child],
    probe_bus: ProbeBusSimulator,
) -> None:
    hub = hub_factory(broker).start()
    agent = agent_factory(broker, probe_bus, interval_s=1.0, batch_max_age_s=0.5).start()
    wait_until(lambda: hub.scalar("SELECT count(*) FROM batches") >= 2, 30, "stream did not start")
    settings = agent.log_path.parent / "state" / "settings.json"

    sent = hub.post(
        "/api/v1/gateways/gw-test-1/commands", {"change": {"action": "set_sampling_interval", "interval_s": 0.2}}
    )
    assert sent.status_code == 202, sent.text
    command_id = sent.json()["command_id"]
    wait_until(lambda: hub.get(f"/api/v1/commands/{command_id}").json()["status"] != "sent", 20, "no answer")
    answer = hub.get(f"/api/v1/commands/{command_id}").json()
    assert (answer["status"], answer["config_version"]) == ("accepted", 1)
    assert json.loads(settings.read_text())["interval_s"] == 0.2
    before = hub.scalar("SELECT count(*) FROM readings")
    time.sleep(3)
    assert hub.scalar("SELECT count(*) FROM readings") - before >= 3 / 0.2 * 4 * 0.6  # five polls a second now

    # refused by the gateway: it has no RFID reader, so a custody mode means nothing here
    refused = hub.post(
        "/api/v1/gateways/gw-test-1/commands", {"change": {"action": "set_custody_mode", "mode": "pickup"}}
    )
    refused_id = refused.json()["command_id"]
    wait_until(lambda: hub.get(f"/api/v1/commands/{refused_id}").json()["status"] != "sent", 20, "no answer")
    answer = hub.get(f"/api/v1/commands/{refused_id}").json()
    assert answer["status"] == "refused"
    assert "no RFID reader" in answer["reason"]
    # refused by the hub before sending: an impossible range
    assert (
        hub.post(
            "/api/v1/gateways/gw-test-1/commands", {"change": {"action": "set_product_range", "low_c": 8, "high_c": 2}}
        ).status_code
        == 422
    )
    # a malformed command straight on the cmd topic is refused with the reason and changes nothing
    acks: list[CommandAck] = []
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, m: acks.append(decode(bytes(m.payload), CommandAck))
    subscribed = threading.Event()
    client.on_subscribe = lambda *_args: subscribed.set()
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    client.subscribe(topics.topic_for("gw-test-1", topics.Channel.CMD_ACK), qos=1)
    assert subscribed.wait(10)  # acks are not retained: one sent before the SUBACK would be missed
    client.publish(
        topics.topic_for("gw-test-1", topics.Channel.CMD),
        json.dumps(
            {
                "schema": "cc.command/1",
                "command_id": "bad-1",
                "gateway_id": "gw-test-1",
                "issued_ms": int(time.time() * 1000),
                "change": {"action": "set_sampling_interval", "interval_s": -5},
            }
        ).encode(),
        qos=1,
    )
    wait_until(lambda: any(a.command_id == "bad-1" for a in acks), 20, "no ack for the malformed command")
    client.loop_stop()
    bad = next(a for a in acks if a.command_id == "bad-1")
    assert not bad.accepted
    assert "interval_s" in (bad.reason or "")
    assert json.loads(settings.read_text()) == {**json.loads(settings.read_text()), "interval_s": 0.2, "version": 1}
    stop_agent(agent)


def test_local_alarm_fires_offline_runs_the_hook_and_reaches_the_hub_later(
    broker_factory: Callable[..., Mosquitto],
    hub_factory: Callable[[Mosquitto], Hub],
    agent_factory: Callable[..., Child],
    probe_bus: ProbeBusSimulator,
    tmp_path: Path,
) -> None:
    broker = broker_factory(persistence=True)
    hub = hub_factory(broker).start()  # the hub's persistent session exists, as in production
    hook_log = tmp_path / "buzzer.log"
    broker.stop()  # then the link goes down before the gateway starts
    agent = agent_factory(
        broker,
        probe_bus,
        interval_s=0.5,
        extra_toml=f'[alarm]\nlow_c = 4.0\nhigh_c = 8.0\nhook_command = ["sh", "-c", '
        f'"echo $COLDCHAIN_ALARM_STATE $COLDCHAIN_ALARM_SENSOR >> {hook_log}"]\n',
    ).start()
    started = time.monotonic()
    wait_until(lambda: "LOCAL ALARM RAISED: chiller" in agent.log(), 10, "no local alarm")
    assert time.monotonic() - started < 8  # start-up plus one sampling interval
    wait_until(lambda: hook_log.exists() and "raised chiller" in hook_log.read_text(), 10, "hook not run")
    assert "freezer" in agent.log()  # -18 °C is out of a 4..8 °C range as well

    broker.start()  # the same hub reconnects by itself (a second hub would fight it for the client id)
    wait_until(
        lambda: hub.scalar("SELECT count(*) FROM local_alarms WHERE sensor_id = 'chiller'") >= 1,
        30,
        "the alarm never reached the hub",
    )
    row = hub.query("SELECT state, low_c, high_c FROM local_alarms WHERE sensor_id = 'chiller'")[0]
    assert row == ("raised", 4.0, 8.0)
    wait_until(lambda: hub.scalar("SELECT count(*) FROM gateway_health") >= 1, 20, "no health report")
    health = decode(bytes(hub.query("SELECT body FROM gateway_health")[0][0]), GatewayHealth)  # type: ignore[arg-type]
    assert health.alarms_active == ["chiller", "freezer"]
    assert health.rss_bytes > 0
    assert health.uplink.connected
    stop_agent(agent)
