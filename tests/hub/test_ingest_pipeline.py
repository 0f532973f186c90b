"""IngestPipeline over a real store, SQLite and PostgreSQL.

Dedup across groups and restarts, receipts, rejections, atomicity.
"""

from __future__ import annotations

import itertools
import sqlite3
from contextlib import closing

import msgspec
import pytest
import sqlalchemy as sa

from coldchain.messages import GatewayStatus, Quality, Quantity, Reading, Receipt, TelemetryBatch, encode
from coldchain.topics import Channel, topic_for
from hub.db import Database, StoreError
from hub.ingest import Inbound, IngestPipeline
from hub.migrations import head
from hub.schema import ROLLUP_BUCKET_MS
from hub.store import REJECTED_PAYLOAD_KEEP_BYTES, IngestWriter, ReadStore
from tests.support.store import execute, query, refusing_inserts

BOOT = "0123456789abcdef0123456789abcdef"
TS = 1_700_000_000_000
NOW_S = 1_800_000_000.0
NOW_MS = int(NOW_S * 1000)


def make_batch(
    gateway_id: str,
    seq: int,
    *,
    oldest: int = 1,
    readings: list[Reading] | None = None,
) -> TelemetryBatch:
    if readings is None:
        readings = [
            Reading("probe-1", Quantity.TEMPERATURE, TS + seq * 1000, 4.0 + seq / 10),
            Reading("probe-1", Quantity.HUMIDITY, TS + seq * 1000, 80.0),
        ]
    return TelemetryBatch(gateway_id=gateway_id, boot_id=BOOT, seq=seq, oldest_held_seq=oldest, readings=readings)


def telemetry(gateway_id: str, seq: int, **kwargs) -> Inbound:
    return Inbound(topic_for(gateway_id, Channel.TELEMETRY), encode(make_batch(gateway_id, seq, **kwargs)), NOW_MS)


def status(gateway_id: str, state: str, ts_ms: int) -> Inbound:
    message = GatewayStatus(gateway_id=gateway_id, boot_id=BOOT, state=state, ts_ms=ts_ms, agent_version="0.1.0")
    return Inbound(topic_for(gateway_id, Channel.STATUS), encode(message), NOW_MS)


class Hub:
    """A pipeline on a database, reopenable to play a restart."""

    def __init__(self, url: str, **kwargs) -> None:
        self.url = url
        self.kwargs = kwargs
        self.writer = IngestWriter(url)
        self.pipeline = IngestPipeline(self.writer, wall_clock=lambda: NOW_S, **kwargs)

    def restart(self) -> None:
        self.writer.close()
        self.writer = IngestWriter(self.url)
        self.pipeline = IngestPipeline(self.writer, wall_clock=lambda: NOW_S, **self.kwargs)

    def process(self, *messages: Inbound) -> dict[str, int]:
        return {r.gateway_id: r.acked_seq for r in self.pipeline.process(list(messages))}

    def query(self, sql: str) -> list[tuple]:
        return query(self.url, sql)

    def readings_per_batch(self) -> dict[tuple[str, int], int]:
        rows = self.query("SELECT gateway_id, seq, count(*) FROM series_readings GROUP BY gateway_id, seq")
        return {(gw, seq): count for gw, seq, count in rows}

    def stored_batches(self) -> list[tuple[str, int]]:
        return self.query("SELECT gateway_id, seq FROM batches ORDER BY gateway_id, seq")


@pytest.fixture
def hub(database_url):
    h = Hub(database_url)
    yield h
    h.writer.close()
    h.writer.database.dispose()


def test_in_order_batches_are_stored_and_receipted(hub):
    receipts = hub.pipeline.process([telemetry("gw-1", 1), telemetry("gw-1", 2)])
    assert receipts == [Receipt(gateway_id="gw-1", acked_seq=2, ts_ms=NOW_MS)]
    assert hub.readings_per_batch() == {("gw-1", 1): 2, ("gw-1", 2): 2}
    assert ReadStore(hub.url).reading_count() == 4
    stats = hub.pipeline.stats.snapshot()
    assert stats["messages"] == 2
    assert stats["batches_stored"] == 2
    assert stats["readings_stored"] == 4
    assert stats["duplicates"] == 0
    rows = hub.query("SELECT sensor_id, quantity, ts_ms, value, quality, seq FROM series_readings WHERE seq = 1")
    assert sorted(rows) == [
        ("probe-1", "humidity", TS + 1000, 80.0, "good", 1),
        ("probe-1", "temperature", TS + 1000, 4.1, "good", 1),
    ]


def test_reading_ids_follow_commit_order_batch_by_batch_and_series_by_series(hub):
    """Detector checkpoints and the series exporter resume after an id: ids must be in commit order,
    batch by batch; within a batch, series by series (in the order of their first reading), each
    series' readings in arrival order: what the detectors judged, run by run."""

    def probes(seq: int, count: int) -> list[Reading]:
        return [Reading(f"probe-{n % 3}", Quantity.TEMPERATURE, TS + seq * 10_000 + n, float(n)) for n in range(count)]

    def series_by_series(readings: list[Reading]) -> list[Reading]:
        first = {sensor: n for n, sensor in reversed(list(enumerate(r.sensor_id for r in readings)))}
        return sorted(readings, key=lambda r: first[r.sensor_id])  # stable: arrival order within a series

    hub.process(telemetry("gw-b", 1, readings=probes(1, 7)), telemetry("gw-a", 1, readings=probes(1, 5)))
    hub.process(telemetry("gw-a", 2, readings=probes(2, 4)), telemetry("gw-c", 1, readings=[]))
    hub.process(telemetry("gw-c", 2, readings=probes(2, 3)[::-1]))
    expected = [
        (gateway_id, seq, reading.sensor_id, reading.ts_ms)
        for gateway_id, seq, readings in (
            ("gw-b", 1, probes(1, 7)),
            ("gw-a", 1, probes(1, 5)),
            ("gw-a", 2, probes(2, 4)),
            ("gw-c", 2, probes(2, 3)[::-1]),
        )
        for reading in series_by_series(readings)
    ]
    assert expected[:3] == [("gw-b", 1, "probe-0", TS + 10_000 + n) for n in (0, 3, 6)]
    assert [row[2] for row in expected[-3:]] == ["probe-2", "probe-1", "probe-0"]
    rows = hub.query("SELECT id, gateway_id, seq, sensor_id, ts_ms FROM series_readings ORDER BY id")
    assert [row[1:] for row in rows] == expected
    assert [row[0] for row in rows] == list(range(rows[0][0], rows[0][0] + len(expected)))


def test_a_receipt_carries_the_time_its_commit_completed(database_url):
    """Receipts vouch for what is stored, so their time is the commit's end, not the group's start
    (``batches.received_ms``); bench/alarm_latency.py times commits by it."""
    ticks = itertools.count()
    writer = IngestWriter(database_url)
    try:
        pipeline = IngestPipeline(writer, wall_clock=lambda: NOW_S + next(ticks))
        [receipt] = pipeline.process([telemetry("gw-1", 1)])
        [(received_ms,)] = query(database_url, "SELECT received_ms FROM batches")
        assert receipt.ts_ms > received_ms
        assert receipt.ts_ms == int((NOW_S + next(ticks) - 1) * 1000)  # the last time taken before returning
    finally:
        writer.close()
        writer.database.dispose()


def test_repeated_groups_store_each_batch_once(hub):
    assert hub.process(telemetry("gw-1", 1), telemetry("gw-1", 2)) == {"gw-1": 2}
    assert hub.process(telemetry("gw-1", 2), telemetry("gw-1", 1), telemetry("gw-1", 3)) == {"gw-1": 3}
    assert hub.process(telemetry("gw-1", 3), telemetry("gw-1", 3)) == {"gw-1": 3}
    assert hub.readings_per_batch() == {("gw-1", 1): 2, ("gw-1", 2): 2, ("gw-1", 3): 2}
    stats = hub.pipeline.stats.snapshot()
    assert stats["batches_stored"] == 3
    assert stats["duplicates"] == 4
    assert stats["messages"] == 7
    [row] = ReadStore(hub.url).gateways()
    assert (row.gateway_id, row.acked_seq, row.batches, row.readings) == ("gw-1", 3, 3, 6)


def test_receipts_per_touched_gateway(hub):
    receipts = hub.process(telemetry("gw-a", 1), telemetry("gw-b", 2), telemetry("gw-b", 1), telemetry("gw-c", 2))
    assert receipts == {"gw-a": 1, "gw-b": 2, "gw-c": 0}
    # only gateways in the group get a receipt, with their cumulative acked_seq
    assert hub.process(telemetry("gw-c", 1)) == {"gw-c": 2}
    assert hub.process(telemetry("gw-a", 1)) == {"gw-a": 1}


def test_restart_loads_cursors_including_seqs_committed_above_acked(hub):
    assert hub.process(telemetry("gw-1", 1), telemetry("gw-1", 3), telemetry("gw-1", 5)) == {"gw-1": 1}
    assert hub.process(telemetry("gw-2", 1), telemetry("gw-2", 2)) == {"gw-2": 2}
    hub.restart()
    # resends after the restart: 3 and 5 are already stored above acked, 1 below it
    assert hub.process(telemetry("gw-1", 3), telemetry("gw-1", 5), telemetry("gw-1", 1)) == {"gw-1": 1}
    assert hub.pipeline.stats.snapshot()["duplicates"] == 3
    assert hub.pipeline.stats.snapshot().get("batches_stored", 0) == 0
    assert hub.process(telemetry("gw-1", 2)) == {"gw-1": 3}
    hub.restart()
    assert hub.process(telemetry("gw-1", 4), telemetry("gw-2", 2)) == {"gw-1": 5, "gw-2": 2}
    assert hub.process(telemetry("gw-1", 6)) == {"gw-1": 6}
    assert hub.stored_batches() == [("gw-1", s) for s in range(1, 7)] + [("gw-2", 1), ("gw-2", 2)]
    assert set(hub.readings_per_batch().values()) == {2}


def test_gap_is_recorded_and_receipted_past(hub):
    assert hub.process(telemetry("gw-1", 1)) == {"gw-1": 1}
    assert hub.process(telemetry("gw-1", 6, oldest=5)) == {"gw-1": 4}
    assert hub.query("SELECT gateway_id, first_seq, last_seq, boot_id, detected_ms FROM gaps") == [
        ("gw-1", 2, 4, BOOT, NOW_MS)
    ]
    assert hub.pipeline.stats.snapshot()["gaps"] == 1
    assert hub.process(telemetry("gw-1", 5, oldest=5)) == {"gw-1": 6}
    hub.restart()
    assert hub.process(telemetry("gw-1", 6, oldest=5)) == {"gw-1": 6}
    assert len(hub.query("SELECT * FROM gaps")) == 1
    assert hub.stored_batches() == [("gw-1", 1), ("gw-1", 5), ("gw-1", 6)]


def rejected_rows(hub) -> list[tuple]:
    return hub.query("SELECT topic, reason, detail, payload_size, payload, received_ms FROM rejected ORDER BY id")


def test_malformed_payload_is_set_aside_truncated(hub):
    garbage = b"\x00not json" + b"x" * (REJECTED_PAYLOAD_KEEP_BYTES * 2)
    topic = topic_for("gw-1", Channel.TELEMETRY)
    assert hub.process(Inbound(topic, garbage, NOW_MS - 5), telemetry("gw-1", 1)) == {"gw-1": 1}
    [(row_topic, reason, detail, size, payload, received_ms)] = rejected_rows(hub)
    assert (row_topic, reason, size, received_ms) == (topic, "malformed", len(garbage), NOW_MS - 5)
    assert payload == garbage[:REJECTED_PAYLOAD_KEEP_BYTES]
    assert "not valid JSON" in detail
    stats = hub.pipeline.stats.snapshot()
    assert stats["rejected_malformed"] == 1
    assert stats["batches_stored"] == 1


def test_small_rejected_payload_is_kept_whole(hub):
    topic = topic_for("gw-1", Channel.TELEMETRY)
    hub.process(Inbound(topic, b"{", NOW_MS))
    [(_, reason, _, size, payload, _)] = rejected_rows(hub)
    assert (reason, size, payload) == ("malformed", 1, b"{")


def test_too_large_payload_is_rejected(database_url):
    hub = Hub(database_url, max_payload_bytes=200)
    try:
        big = telemetry("gw-1", 1, readings=[Reading("probe-1", Quantity.TEMPERATURE, TS, 1.0)] * 20)
        small = telemetry("gw-1", 2, readings=[Reading("probe-1", Quantity.TEMPERATURE, TS, 1.0)])
        assert len(big.payload) > 200 >= len(small.payload)
        assert hub.process(big, small) == {"gw-1": 0}
        [(_, reason, detail, size, payload, _)] = rejected_rows(hub)
        assert reason == "too_large"
        assert size == len(big.payload)
        assert payload == big.payload
        assert "200" in detail
        assert hub.pipeline.stats.snapshot()["rejected_too_large"] == 1
        assert hub.stored_batches() == [("gw-1", 2)]
    finally:
        hub.writer.close()


def test_contract_violations_are_set_aside_with_their_reason(hub):
    wrong_gateway = Inbound(topic_for("gw-1", Channel.TELEMETRY), encode(make_batch("gw-2", 1)), NOW_MS)
    bad_topic = Inbound("other/gw-1/telemetry", encode(make_batch("gw-1", 1)), NOW_MS)
    rfid = Inbound(topic_for("gw-1", Channel.RFID), b"{}", NOW_MS)
    invalid = Inbound(
        topic_for("gw-1", Channel.TELEMETRY),
        msgspec.json.encode({"schema": "cc.telemetry/1", "gateway_id": "gw-1", "seq": 0}),
        NOW_MS,
    )
    status_mismatch = Inbound(
        topic_for("gw-1", Channel.STATUS),
        encode(GatewayStatus(gateway_id="gw-9", boot_id=BOOT, state="online", ts_ms=TS, agent_version="x")),
        NOW_MS,
    )
    assert hub.process(wrong_gateway, bad_topic, rfid, invalid, status_mismatch) == {}
    reasons = [row[1] for row in rejected_rows(hub)]
    assert reasons == ["id_mismatch", "bad_topic", "unexpected_channel", "invalid", "id_mismatch"]
    details = [row[2] for row in rejected_rows(hub)]
    assert "gw-2" in details[0]
    assert "$.seq" in details[3]
    stats = hub.pipeline.stats.snapshot()
    assert stats["rejected_id_mismatch"] == 2
    assert stats["rejected_bad_topic"] == 1
    assert stats["rejected_unexpected_channel"] == 1
    assert stats["rejected_invalid"] == 1
    assert stats["messages"] == 5
    assert stats.get("batches_stored", 0) == 0
    assert hub.stored_batches() == []
    assert ReadStore(hub.url).gateways() == []


def test_invalid_readings_are_set_aside_and_the_batch_receipted(hub):
    good = Reading("probe-1", Quantity.TEMPERATURE, TS, 3.5)
    doc = msgspec.json.decode(encode(make_batch("gw-1", 1, readings=[good, good])))
    doc["readings"][1][3] = 900.0
    message = Inbound(topic_for("gw-1", Channel.TELEMETRY), msgspec.json.encode(doc), NOW_MS)
    assert hub.process(message) == {"gw-1": 1}
    assert hub.readings_per_batch() == {("gw-1", 1): 1}
    [(_, reason, detail, size, payload, _)] = rejected_rows(hub)
    assert reason == "invalid_reading"
    assert msgspec.json.decode(payload) == doc["readings"][1]
    assert size == len(payload)
    assert "reading 1 of seq 1" in detail
    stats = hub.pipeline.stats.snapshot()
    assert stats["rejected_invalid_reading"] == 1
    assert stats["readings_stored"] == 1
    # a resend of the same batch is a duplicate: neither the reading nor the rejection is stored again
    assert hub.process(message) == {"gw-1": 1}
    assert hub.readings_per_batch() == {("gw-1", 1): 1}


def test_status_messages_update_gateways(hub):
    hub.process(status("gw-1", "online", TS))
    [row] = ReadStore(hub.url).gateways()
    assert (row.gateway_id, row.status, row.status_ms, row.boot_id, row.acked_seq) == ("gw-1", "online", TS, BOOT, 0)
    hub.process(status("gw-1", "offline", TS + 10))
    [row] = ReadStore(hub.url).gateways()
    assert (row.status, row.status_ms) == ("offline", TS + 10)
    # a stale retained message arriving late does not overwrite a newer state
    hub.process(status("gw-1", "online", TS + 5))
    [row] = ReadStore(hub.url).gateways()
    assert (row.status, row.status_ms) == ("offline", TS + 10)
    hub.process(telemetry("gw-1", 1))
    [row] = ReadStore(hub.url).gateways()
    assert (row.status, row.acked_seq, row.batches) == ("offline", 1, 1)


def test_status_receives_no_receipt(hub):
    assert hub.pipeline.process([status("gw-1", "online", TS)]) == []


def test_gateways_are_listed_by_id(hub):
    hub.process(telemetry("gw-b", 1), telemetry("gw-a", 1), status("gw-c", "online", TS))
    assert [row.gateway_id for row in ReadStore(hub.url).gateways()] == ["gw-a", "gw-b", "gw-c"]


def test_latest_keeps_the_newest_by_timestamp_even_when_older_arrives_later(hub):
    def one(seq: int, ts_ms: int, value: float, quality: Quality = Quality.GOOD) -> Inbound:
        return telemetry("gw-1", seq, readings=[Reading("probe-1", Quantity.TEMPERATURE, ts_ms, value, quality)])

    hub.process(one(2, TS + 60_000, 5.5))
    hub.process(one(1, TS, 9.9, Quality.BAD))
    [latest] = ReadStore(hub.url).latest()
    assert (latest.gateway_id, latest.sensor_id, latest.quantity) == ("gw-1", "probe-1", "temperature")
    assert (latest.ts_ms, latest.value, latest.quality) == (TS + 60_000, 5.5, "good")
    # within one group too: the older reading of a later message does not win
    hub.process(one(4, TS + 120_000, 6.0), one(3, TS + 90_000, 7.0))
    [latest] = ReadStore(hub.url).latest()
    assert (latest.ts_ms, latest.value) == (TS + 120_000, 6.0)
    # within one batch
    hub.process(
        telemetry(
            "gw-1",
            5,
            readings=[
                Reading("probe-1", Quantity.TEMPERATURE, TS + 200_000, 1.0),
                Reading("probe-1", Quantity.TEMPERATURE, TS + 150_000, 2.0),
            ],
        )
    )
    [latest] = ReadStore(hub.url).latest()
    assert (latest.ts_ms, latest.value) == (TS + 200_000, 1.0)
    assert ReadStore(hub.url).reading_count() == 6


def test_latest_takes_the_later_of_two_readings_with_the_same_time(hub):
    same_time = [Reading("probe-1", Quantity.TEMPERATURE, TS, v) for v in (3.0, 3.5)]
    hub.process(telemetry("gw-1", 1, readings=same_time))
    [latest] = ReadStore(hub.url).latest()
    assert (latest.ts_ms, latest.value) == (TS, 3.5)


def test_rollups_fold_each_reading_into_its_five_minute_bucket_across_commits(hub):
    bucket = TS - TS % ROLLUP_BUCKET_MS

    def readings(sensor: str, *points: tuple[int, float]) -> list[Reading]:
        return [Reading(sensor, Quantity.TEMPERATURE, bucket + offset_ms, value) for offset_ms, value in points]

    # Two series in one group, each across two buckets, then a later commit adding to a bucket already stored.
    hub.process(
        telemetry("gw-1", 1, readings=readings("probe-1", (0, 4.0), (60_000, 2.5), (ROLLUP_BUCKET_MS, 7.0))),
        telemetry("gw-1", 2, readings=readings("probe-2", (1_000, -1.0), (2_000, -3.0))),
    )
    hub.process(telemetry("gw-1", 3, readings=readings("probe-1", (120_000, 6.0), (ROLLUP_BUCKET_MS + 1, 8.0))))
    rows = hub.query(
        "SELECT sensor_id, bucket_ms, min_value, max_value, sum_value, samples FROM rollups"
        " ORDER BY sensor_id, bucket_ms"
    )
    assert rows == [
        ("probe-1", bucket, 2.5, 6.0, 12.5, 3),
        ("probe-1", bucket + ROLLUP_BUCKET_MS, 7.0, 8.0, 15.0, 2),
        ("probe-2", bucket, -3.0, -1.0, -4.0, 2),
    ]


def test_latest_per_series_and_per_gateway(hub):
    hub.process(telemetry("gw-1", 1), telemetry("gw-2", 1))
    store = ReadStore(hub.url)
    assert [(r.gateway_id, r.quantity) for r in store.latest()] == [
        ("gw-1", "humidity"),
        ("gw-1", "temperature"),
        ("gw-2", "humidity"),
        ("gw-2", "temperature"),
    ]
    assert {r.gateway_id for r in store.latest("gw-2")} == {"gw-2"}
    assert store.latest("nobody") == []


def test_migrate_is_idempotent(hub):
    hub.process(telemetry("gw-1", 1))
    database = Database(hub.url)
    try:
        assert database.upgrade() == head()
        assert database.upgrade() == head()
        tables = set(sa.inspect(database.engine).get_table_names())
        assert {"gateways", "batches", "readings", "latest", "gaps", "rejected", "alembic_version"} <= tables
    finally:
        database.dispose()
    assert ReadStore(hub.url).reading_count() == 2
    hub.restart()
    assert hub.process(telemetry("gw-1", 1), telemetry("gw-1", 2)) == {"gw-1": 2}
    assert ReadStore(hub.url).reading_count() == 4


def test_fresh_sqlite_file_is_made_with_its_folders_and_migrated(tmp_path):
    path = tmp_path / "nested" / "dir" / "hub.db"
    writer = IngestWriter(path)
    writer.close()
    writer.database.dispose()
    with closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [(head(),)]
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_a_store_behind_the_code_is_refused_unless_migrating(database_url):
    Database(database_url).dispose()  # an empty database: never migrated
    with pytest.raises(StoreError, match="coldchain hub migrate"):
        IngestWriter(database_url, migrate=False)
    IngestWriter(database_url).close()  # migrating on start is the default
    IngestWriter(database_url, migrate=False).close()


def test_a_series_first_seen_in_a_failed_commit_gets_its_id_from_the_commit_that_stores_it(hub):
    """The writer remembers series ids only once their row is committed: the id a rolled-back insert
    read back may go to another series next, and readings must never be filed under it."""
    hub.process(telemetry("gw-1", 1))

    def probe(sensor_id: str, seq: int) -> list[Reading]:
        return [Reading(sensor_id, Quantity.TEMPERATURE, TS + seq * 1000, float(seq))]

    with refusing_inserts(hub.url, "rollups", "disk says no"), pytest.raises(StoreError, match="disk says no"):
        hub.pipeline.process([telemetry("gw-1", 2, readings=probe("probe-new", 2))])  # its series row rolls back
    hub.pipeline.rewind()
    assert hub.query("SELECT count(*) FROM series WHERE sensor_id = 'probe-new'") == [(0,)]

    assert hub.process(telemetry("gw-1", 3, readings=probe("probe-other", 3))) == {"gw-1": 1}
    assert hub.process(telemetry("gw-1", 2, readings=probe("probe-new", 2))) == {"gw-1": 3}
    assert hub.query("SELECT seq, sensor_id, value FROM series_readings WHERE seq > 1 ORDER BY seq") == [
        (2, "probe-new", 2.0),
        (3, "probe-other", 3.0),
    ]


def test_failed_commit_changes_nothing_and_a_retry_stores_once(hub):
    assert hub.process(telemetry("gw-1", 1)) == {"gw-1": 1}
    before_stats = hub.pipeline.stats.snapshot()
    before_gateways = ReadStore(hub.url).gateways()
    before_latest = ReadStore(hub.url).latest()

    # a second connection makes the last write of the transaction fail, after batches and readings went in
    refusal = refusing_inserts(hub.url, "rejected", "disk says no")
    refusal.__enter__()
    group = [
        telemetry("gw-1", 3),
        telemetry("gw-1", 2),
        telemetry("gw-2", 4, oldest=4),
        status("gw-1", "online", TS),
        Inbound(topic_for("gw-1", Channel.TELEMETRY), b"garbage", NOW_MS),
    ]
    with pytest.raises(StoreError, match="disk says no"):
        hub.pipeline.process(group)

    assert hub.stored_batches() == [("gw-1", 1)]
    assert ReadStore(hub.url).reading_count() == 2
    assert ReadStore(hub.url).gateways() == before_gateways
    assert ReadStore(hub.url).latest() == before_latest
    assert hub.query("SELECT count(*) FROM gaps") == [(0,)]
    assert hub.pipeline.stats.snapshot() == before_stats

    refusal.__exit__(None, None, None)
    # the same group again: the ledger did not adopt the failed plan, so everything is new
    assert hub.process(*group) == {"gw-1": 3, "gw-2": 4}
    assert hub.readings_per_batch() == {("gw-1", 1): 2, ("gw-1", 2): 2, ("gw-1", 3): 2, ("gw-2", 4): 2}
    assert hub.query("SELECT gateway_id, first_seq, last_seq FROM gaps") == []  # gw-2's first batch sets its start
    assert len(rejected_rows(hub)) == 1
    stats = hub.pipeline.stats.snapshot()
    assert stats["batches_stored"] == 4
    assert stats["duplicates"] == 0
    # and a further resend is a duplicate, also after a restart
    assert hub.process(*group[:3]) == {"gw-1": 3, "gw-2": 4}
    hub.restart()
    assert hub.process(*group[:3]) == {"gw-1": 3, "gw-2": 4}
    assert hub.readings_per_batch() == {("gw-1", 1): 2, ("gw-1", 2): 2, ("gw-1", 3): 2, ("gw-2", 4): 2}


def test_dropped_table_raises_store_error_and_keeps_the_ledger(hub):
    assert hub.process(telemetry("gw-1", 1)) == {"gw-1": 1}
    execute(hub.url, "ALTER TABLE latest RENAME TO latest_away")
    with pytest.raises(StoreError):
        hub.pipeline.process([telemetry("gw-1", 2)])
    assert hub.stored_batches() == [("gw-1", 1)]
    execute(hub.url, "ALTER TABLE latest_away RENAME TO latest")
    assert hub.process(telemetry("gw-1", 2)) == {"gw-1": 2}
    assert hub.readings_per_batch() == {("gw-1", 1): 2, ("gw-1", 2): 2}
