"""Alarms, claims and investigations from detector findings, on a real store (SQLite and PostgreSQL).

Readings go through the real ingest pipeline (ledger, detectors, alarm service, outbox, audit),
so every assertion is about what a hub would have committed.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest

from coldchain.messages import Quantity, Reading, TagAction, TagRead, TelemetryBatch, encode
from coldchain.topics import Channel, topic_for
from hub.alarms import AlarmError, AlarmService, AlarmSettings
from hub.audit import verify_chain
from hub.compensation import load_policy
from hub.detectors.detector_set import DetectorSet
from hub.ingest import Inbound, IngestPipeline
from hub.orders import create_order
from hub.profiles import load_profile_book
from hub.store import IngestWriter
from tests.support.store import query

REPO = Path(__file__).resolve().parents[2]
BOOK = load_profile_book(REPO / "config/profiles.toml")
POLICY = load_policy(REPO / "config/compensation.toml")
T0 = 1_800_000_000_000  # reading time origin (ms)
BOOT = "0" * 32
CASE_A, CASE_B, CASE_C = (
    "urn:epc:id:sgtin:0614141.812345.1",
    "urn:epc:id:sgtin:0614141.812345.2",
    "urn:epc:id:sgtin:0614141.812345.3",
)


class Clock:
    def __init__(self) -> None:
        self.now = T0 / 1000

    def __call__(self) -> float:
        return self.now


class Hub:
    """A pipeline on a database, restartable, with the wall clock under the test's control."""

    def __init__(self, url: str, settings: AlarmSettings | None = None) -> None:
        self.url = url
        self.clock = Clock()
        self.settings = settings or AlarmSettings(notify=["ops"])
        self.seq: dict[str, int] = {}
        self.sent: list[Inbound] = []
        self.start()

    def start(self) -> None:
        def product(gateway_id: str) -> str | None:
            profile = BOOK.for_gateway(gateway_id)
            return profile.name if profile else None

        alarms = AlarmService(self.settings, POLICY, product)
        self.writer = IngestWriter(self.url, alarms)
        self.pipeline = IngestPipeline(
            self.writer,
            wall_clock=self.clock,
            detectors=lambda: DetectorSet(lambda key: BOOK.for_gateway(key.gateway_id)),
        )

    def send(self, gateway_id: str, readings: list[Reading] = (), tag_reads: list[TagRead] = ()) -> None:  # type: ignore[assignment]
        self.pipeline.process([self.message(gateway_id, readings, tag_reads)])

    def message(self, gateway_id: str, readings: list[Reading] = (), tag_reads: list[TagRead] = ()) -> Inbound:  # type: ignore[assignment]
        """The gateway's next batch as the hub receives it (noted in ``sent``), not yet ingested."""
        seq = self.seq.get(gateway_id, 0) + 1
        self.seq[gateway_id] = seq
        batch = TelemetryBatch(gateway_id, BOOT, seq, 1, list(readings), list(tag_reads))
        message = Inbound(topic_for(gateway_id, Channel.TELEMETRY), encode(batch), int(self.clock.now * 1000))
        self.sent.append(message)
        return message

    def temperatures(self, gateway_id: str, sensor: str, start_s: int, values: list[float], step_s: int = 10) -> None:
        """Send ``values`` every ``step_s`` from ``start_s`` after T0, advancing the wall clock with them."""
        for chunk in range(0, len(values), 30):
            readings = [
                Reading(sensor, Quantity.TEMPERATURE, T0 + (start_s + (chunk + i) * step_s) * 1000, value)
                for i, value in enumerate(values[chunk : chunk + 30])
            ]
            self.clock.now = readings[-1].ts_ms / 1000 + 1
            self.send(gateway_id, readings)

    def order(self, order_id: str, *items: str) -> None:
        with self.writer.transaction() as conn:
            create_order(
                conn,
                order_id=order_id,
                buyer_ref=f"buyer-{uuid.uuid4().hex[:8]}",
                product=None,
                lot_id=None,
                items=items,
                now_ms=T0,
            )

    def handover(self, gateway_id: str, epc_uri: str, action: TagAction, at_s: int) -> None:
        read = TagRead("reader", "3074257bf7194e4000001a85", epc_uri, T0 + at_s * 1000, -50.0, 1, action)
        self.send(gateway_id, tag_reads=[read])

    def rows(self, sql: str, **params: object) -> list[tuple[object, ...]]:
        return query(self.url, sql, **params)


@pytest.fixture
def hub(database_url: str) -> Hub:
    return Hub(database_url)


def reefer_failure(hub: Hub) -> None:
    """10 min at 2 °C, 70 min at 9 °C (over an hour above a 0..4 °C range: critical), 10 min back at 2 °C."""
    hub.temperatures("gw-reefer", "reefer-rear", 0, [2.0] * 60 + [9.0] * 420 + [2.0] * 60)


def test_a_reefer_failure_gives_one_alarm_and_exactly_one_claim_per_affected_order(hub: Hub) -> None:
    hub.order("order-a", CASE_A)  # on the truck during the failure
    hub.order("order-b", CASE_B)  # delivered before the failure
    hub.order("order-c", CASE_C)  # on another gateway
    hub.handover("gw-reefer", CASE_A, TagAction.PICKUP, at_s=-600)
    hub.handover("gw-reefer", CASE_B, TagAction.PICKUP, at_s=-600)
    hub.handover("gw-reefer", CASE_B, TagAction.DELIVERY, at_s=-300)
    hub.handover("gw-freezer", CASE_C, TagAction.PICKUP, at_s=-600)

    reefer_failure(hub)

    alarms = hub.rows("SELECT kind, severity, state FROM alarms WHERE kind = 'out_of_range'")
    assert alarms == [("out_of_range", "critical", "closed")]
    claims = hub.rows("SELECT order_id, action, refund_percent, state FROM claims")
    assert claims == [("order-a", "refund", 50.0, "pending")]  # the chilled-produce rule: over an hour, critical
    claim_rows = hub.rows("SELECT event_id, endpoint, kind, payload FROM outbox WHERE kind = 'claim'")
    assert len(claim_rows) == 1
    event_id, endpoint, _, payload = claim_rows[0]
    assert endpoint == "shop-claims"
    body = json.loads(payload)  # type: ignore[arg-type]
    assert event_id == f"claim-{body['claim_id']}"
    assert body["order_id"] == "order-a"
    assert body["excursion"]["duration_s"] >= 3600

    evidence = json.loads(hub.rows("SELECT evidence FROM investigations")[0][0])  # type: ignore[arg-type]
    values = [r["value"] for r in evidence["readings"]]
    assert max(values) == 9.0
    assert min(values) == 2.0  # readings from before and after the excursion are kept
    assert [(i["epc"], i["gateway_id"]) for i in evidence["items"]] == [(CASE_A, "gw-reefer")]
    assert verify_chain(hub.url).ok


def test_repeated_findings_resent_batches_and_a_restart_never_make_a_second_claim(hub: Hub) -> None:
    hub.order("order-a", CASE_A)
    hub.handover("gw-reefer", CASE_A, TagAction.PICKUP, at_s=-600)
    reefer_failure(hub)
    for message in list(hub.sent):
        hub.pipeline.process([message])  # the broker redelivers everything
    hub.start()  # the hub restarts on the same store: detectors are warmed from it
    for message in list(hub.sent):
        hub.pipeline.process([message])
    hub.temperatures("gw-reefer", "reefer-rear", 5400, [2.0] * 30)  # and life goes on
    assert hub.rows("SELECT count(*) FROM claims") == [(1,)]
    assert hub.rows("SELECT count(*) FROM alarms WHERE kind = 'out_of_range'") == [(1,)]
    assert hub.rows("SELECT count(*) FROM outbox WHERE kind = 'claim'") == [(1,)]


def test_a_two_minute_door_opening_gives_an_alarm_but_no_claim(hub: Hub) -> None:
    hub.order("order-a", CASE_A)
    hub.handover("gw-reefer", CASE_A, TagAction.PICKUP, at_s=-600)
    # 2 °C, a door open for two minutes (the air jumps to 8 °C), then 2 °C again.
    hub.temperatures("gw-reefer", "reefer-rear", 0, [2.0] * 60 + [8.0] * 12 + [2.0] * 120)
    kinds = {row[0] for row in hub.rows("SELECT kind FROM alarms")}
    assert "rate_of_change" in kinds  # the door was noticed
    assert "out_of_range" not in kinds  # shorter than the alarm dwell: not an excursion
    assert hub.rows("SELECT count(*) FROM claims") == [(0,)]


def test_staff_acknowledge_and_close_are_recorded_with_who_and_why(hub: Hub) -> None:
    hub.temperatures("gw-reefer", "reefer-rear", 0, [2.0] * 10 + [9.0] * 100)  # open, not yet closed
    (alarm_id,) = hub.rows("SELECT alarm_id FROM alarms WHERE kind = 'out_of_range' AND state = 'open'")[0]
    now = int(hub.clock.now * 1000)
    with hub.writer.transaction() as conn:
        hub.writer.alarms.acknowledge(conn, str(alarm_id), "li.wei", "driver called, checking the unit", now)
    with pytest.raises(AlarmError), hub.writer.transaction() as conn:
        hub.writer.alarms.acknowledge(conn, str(alarm_id), "li.wei", "again", now)
    with hub.writer.transaction() as conn:
        hub.writer.alarms.close_by_staff(conn, str(alarm_id), "zhang.min", "goods moved to a spare reefer", now)
    row = hub.rows(
        "SELECT state, acknowledged_by, closed_by, close_reason FROM alarms WHERE alarm_id = :alarm_id",
        alarm_id=alarm_id,
    )
    assert row == [("closed", "li.wei", "zhang.min", "goods moved to a spare reefer")]
    actions = [
        r[0] for r in hub.rows("SELECT action FROM audit WHERE entity_id = :alarm_id ORDER BY id", alarm_id=alarm_id)
    ]
    assert actions == ["open", "acknowledge", "close"]
    assert verify_chain(hub.url).ok


def test_unacknowledged_alarms_escalate_and_acknowledgements_expire(database_url: str) -> None:
    hub = Hub(database_url, AlarmSettings(notify=["ops"], escalate_after_s=600, ack_expires_after_s=3600))
    hub.temperatures("gw-reefer", "reefer-rear", 0, [2.0] * 10 + [9.0] * 100)
    (alarm_id,) = hub.rows("SELECT alarm_id FROM alarms WHERE kind = 'out_of_range'")[0]
    hub.clock.now += 601
    hub.pipeline.tick()
    assert hub.rows("SELECT escalations FROM alarms WHERE alarm_id = :alarm_id", alarm_id=alarm_id) == [(1,)]
    notices = [
        json.loads(p)["escalation"]  # type: ignore[arg-type]
        for (p,) in hub.rows("SELECT payload FROM outbox WHERE kind = 'alarm'")
        if str(alarm_id).encode() in p  # type: ignore[operator]
    ]
    assert max(notices) == 1  # the escalation went out to the ops endpoint
    with hub.writer.transaction() as conn:
        hub.writer.alarms.acknowledge(conn, str(alarm_id), "li.wei", "on it", int(hub.clock.now * 1000))
    hub.clock.now += 1800
    hub.pipeline.tick()
    assert hub.rows("SELECT state, escalations FROM alarms WHERE alarm_id = :alarm_id", alarm_id=alarm_id) == [
        ("acknowledged", 1)
    ]
    hub.clock.now += 1801  # acknowledged more than an hour ago and still active: not silenced forever
    hub.pipeline.tick()
    assert hub.rows("SELECT state FROM alarms WHERE alarm_id = :alarm_id", alarm_id=alarm_id) == [("open",)]


def test_a_tick_riding_on_a_group_commits_what_a_tick_just_before_it_would(database_url: str, tmp_path: Path) -> None:
    # A busy hub does its tick in the next group's commit (hub/ingest.py MqttIngest._ingest_loop).
    settings = AlarmSettings(notify=["ops"], escalate_after_s=600, ack_expires_after_s=3600)
    riding, alone = Hub(database_url, settings), Hub(f"sqlite:///{tmp_path / 'alone.sqlite3'}", settings)
    for hub in (riding, alone):
        hub.temperatures("gw-reefer", "reefer-front", 0, [2.0] * 10)  # then nothing: silent after 600 s
        hub.temperatures("gw-reefer", "reefer-rear", 0, [2.0] * 10 + [9.0] * 100)  # an excursion, not acknowledged
        hub.clock.now += 601  # the excursion's escalation is due
    back_to_normal = [Reading("reefer-rear", Quantity.TEMPERATURE, T0 + (1100 + 10 * i) * 1000, 2.0) for i in range(60)]

    alone.pipeline.tick()
    alone.send("gw-reefer", back_to_normal)
    riding.pipeline.commit(riding.pipeline.prepare([riding.message("gw-reefer", back_to_normal)], tick=True))

    alarms = "SELECT sensor_id, kind, severity, state, escalations, message FROM alarms ORDER BY sensor_id, kind, state"
    outbox = "SELECT kind, count(*) FROM outbox GROUP BY kind ORDER BY kind"
    assert riding.rows(alarms) == alone.rows(alarms)
    assert riding.rows(outbox) == alone.rows(outbox)
    # What the comparison covers: the tick's silence, its escalation, and the group closing the excursion after it.
    found = {(sensor, kind, state, escalations) for sensor, kind, _, state, escalations, _ in riding.rows(alarms)}
    assert ("reefer-front", "silent_sensor", "open", 0) in found, found
    assert ("reefer-rear", "out_of_range", "closed", 1) in found, found


def test_a_checkpoint_riding_on_a_group_is_saved_as_of_its_last_reading(hub: Hub) -> None:
    hub.temperatures("gw-reefer", "reefer-rear", 0, [2.0] * 60)  # committed before, without a checkpoint
    readings = [Reading("reefer-rear", Quantity.TEMPERATURE, T0 + (600 + 10 * i) * 1000, 9.0) for i in range(30)]
    prepared = hub.pipeline.prepare([hub.message("gw-reefer", readings)], checkpoint=True)
    assert prepared.checkpoint is not None
    hub.pipeline.commit(prepared)

    assert hub.writer.load_checkpoint() == (hub.rows("SELECT max(id) FROM readings")[0][0], prepared.checkpoint)
    hub.start()  # a restart replays nothing: the checkpoint already holds every committed reading
    assert hub.pipeline.warmup_readings == 0
    hub.temperatures("gw-reefer", "reefer-rear", 900, [9.0] * 400)  # the excursion the state carried on goes on
    assert hub.rows("SELECT kind, severity, state FROM alarms WHERE kind = 'out_of_range'") == [
        ("out_of_range", "critical", "open")
    ]


def test_a_normal_cold_room_day_gives_no_alarm(hub: Hub) -> None:
    import math  # noqa: PLC0415

    values = [2.0 + 0.3 * math.sin(i / 40) for i in range(8640)]  # 24 h every 10 s, gently cycling 1.7..2.3 °C
    hub.temperatures("gw-reefer", "reefer-rear", 0, values)
    assert hub.rows("SELECT kind, severity FROM alarms") == []


def test_a_restart_resumes_the_detectors_from_their_checkpoint_and_replays_only_what_came_after(hub: Hub) -> None:
    hub.order("order-a", CASE_A)
    hub.handover("gw-reefer", CASE_A, TagAction.PICKUP, at_s=-600)
    hub.temperatures("gw-reefer", "reefer-rear", 0, [2.0] * 60 + [9.0] * 300)  # an excursion under way
    hub.pipeline.checkpoint()
    hub.temperatures("gw-reefer", "reefer-rear", 3600, [9.0] * 60)  # 60 more readings after it
    hub.start()  # restart on the same store
    assert hub.pipeline.warmup_readings == 60  # not the whole history
    hub.temperatures("gw-reefer", "reefer-rear", 4200, [9.0] * 60 + [2.0] * 60)  # the excursion ends
    assert hub.rows("SELECT kind, severity, state FROM alarms WHERE kind = 'out_of_range'") == [
        ("out_of_range", "critical", "closed")
    ]
    assert hub.rows("SELECT order_id FROM claims") == [("order-a",)]
