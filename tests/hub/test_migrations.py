"""Schema migrations keep the data: a store made by an older revision reads the same after upgrading,
and the schema they build is the one ``hub/schema.py`` declares."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext

import hub.migrations
from coldchain.messages import Quantity, Reading, TelemetryBatch, encode
from coldchain.topics import Channel, topic_for
from hub.db import Database
from hub.ingest import Inbound, IngestPipeline
from hub.schema import metadata
from hub.store import IngestWriter
from tests.support.store import query

TS = 1_700_000_000_000

WIDE_READINGS = [
    # (id, gateway_id, sensor_id, quantity, ts_ms, value, quality, seq): two gateways, interleaved series
    (1, "gw-b", "probe-1", "temperature", TS + 1_000, 4.0, "good", 1),
    (2, "gw-b", "probe-1", "humidity", TS + 1_000, 80.0, "good", 1),
    (3, "gw-a", "probe-1", "temperature", TS + 1_000, 3.0, "suspect", 1),
    (4, "gw-b", "probe-1", "temperature", TS + 2_000, 4.5, "good", 2),
    (5, "gw-a", "probe-2", "temperature", TS + 2_000, -18.0, "good", 2),
    (9, "gw-a", "probe-1", "temperature", TS + 3_000, 3.5, "good", 3),  # ids need not be dense
]
"""Readings as revision 0001 stored them."""


def _alembic(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(Path(hub.migrations.__file__).parent))
    config.attributes["connection"] = connection
    return config


def _migrate(database: Database, action: str, revision: str) -> None:
    with database.engine.connect() as connection, connection.begin():
        getattr(command, action)(_alembic(connection), revision)


def _store_at_0001(database_url: str) -> Database:
    database = Database(database_url)
    _migrate(database, "upgrade", "0001")
    with database.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO readings (id, gateway_id, sensor_id, quantity, ts_ms, value, quality, seq)"
                " VALUES (:id, :g, :s, :q, :ts, :v, :quality, :seq)"
            ),
            [
                {"id": i, "g": g, "s": s, "q": q, "ts": ts, "v": v, "quality": quality, "seq": seq}
                for i, g, s, q, ts, v, quality, seq in WIDE_READINGS
            ],
        )
        if conn.dialect.name == "postgresql":  # ids given here, not drawn: move the sequence past them
            conn.execute(sa.text("SELECT setval(pg_get_serial_sequence('readings', 'id'), max(id)) FROM readings"))
    return database


def test_readings_keep_their_ids_and_series_through_the_upgrade_and_back(database_url: str) -> None:
    database = _store_at_0001(database_url)
    try:
        database.upgrade()
        assert query(database_url, "SELECT series_id, gateway_id, sensor_id, quantity FROM series ORDER BY 1") == [
            (1, "gw-b", "probe-1", "temperature"),  # numbered in the order they first appeared
            (2, "gw-b", "probe-1", "humidity"),
            (3, "gw-a", "probe-1", "temperature"),
            (4, "gw-a", "probe-2", "temperature"),
        ]
        view = "SELECT id, gateway_id, sensor_id, quantity, ts_ms, value, quality, seq FROM series_readings ORDER BY id"
        assert query(database_url, view) == WIDE_READINGS
        assert query(database_url, "SELECT id, series_id FROM readings ORDER BY id") == [
            (1, 1),
            (2, 2),
            (3, 3),
            (4, 1),
            (5, 4),
            (9, 3),
        ]

        _migrate(database, "downgrade", "0001")
        wide = "SELECT id, gateway_id, sensor_id, quantity, ts_ms, value, quality, seq FROM readings ORDER BY id"
        assert query(database_url, wide) == WIDE_READINGS
    finally:
        database.dispose()


def test_ingest_after_the_upgrade_continues_the_ids_and_reuses_the_series(database_url: str) -> None:
    _store_at_0001(database_url).dispose()
    writer = IngestWriter(database_url)  # upgrades on start
    try:
        batch = TelemetryBatch(
            gateway_id="gw-a",
            boot_id="0123456789abcdef0123456789abcdef",
            seq=4,
            oldest_held_seq=1,
            readings=[
                Reading("probe-2", Quantity.TEMPERATURE, TS + 4_000, -17.5),
                Reading("probe-3", Quantity.TEMPERATURE, TS + 4_000, -19.0),
            ],
        )
        pipeline = IngestPipeline(writer, wall_clock=lambda: 1_800_000_000.0)
        pipeline.process([Inbound(topic_for("gw-a", Channel.TELEMETRY), encode(batch), 1_800_000_000_000)])
        new_rows = "SELECT id, series_id, sensor_id, ts_ms, value FROM series_readings WHERE id > 9 ORDER BY id"
        [migrated, new] = query(database_url, new_rows)
        assert migrated == (10, 4, "probe-2", TS + 4_000, -17.5)  # the migrated series of gw-a probe-2
        assert new[0] == 11
        assert new[2:] == ("probe-3", TS + 4_000, -19.0)
        assert query(database_url, "SELECT count(*), max(series_id) FROM series") == [(5, new[1])]
    finally:
        writer.close()
        writer.database.dispose()


def test_the_migrations_build_the_schema_the_code_declares(database_url: str) -> None:
    database = Database(database_url)
    try:
        database.upgrade()
        with database.engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), metadata)
        assert differences == []
        assert query(database_url, "SELECT count(*) FROM series_readings") == [(0,)]
    finally:
        database.dispose()
