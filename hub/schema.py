"""The system of record's tables, for SQLite and PostgreSQL alike (SQLAlchemy Core metadata).

Migrations (``hub/migrations``) are the authority on what a database holds; this metadata is what
the code expects, and a test compares the two on both backends after ``upgrade head``. Queries are
written as portable SQL (``ON CONFLICT``, ``CASE`` instead of two-argument ``min``/``max``), so one
code path serves both.

Types are chosen for PostgreSQL's stricter rules: every millisecond timestamp and every ``seq``
(seeded from the clock on a new gateway buffer) is ``BIGINT``; values are ``DOUBLE PRECISION``
(PostgreSQL's ``REAL`` is 4 bytes); payloads are ``BYTEA``/``BLOB``.
"""

from __future__ import annotations

from typing import Final

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    PrimaryKeyConstraint,
    Table,
    Text,
    UniqueConstraint,
    text,
)

RowId: Final = BigInteger().with_variant(Integer(), "sqlite")
"""An auto-assigned 64-bit id: SQLite makes only a column typed exactly INTEGER an alias of its rowid."""

NAMING: Final = {
    "pk": "%(table_name)s_pkey",
    "uq": "%(table_name)s_%(column_0_N_name)s_key",
    "fk": "%(table_name)s_%(column_0_name)s_fkey",
    "ck": "%(table_name)s_%(constraint_name)s_check",
    "ix": "%(table_name)s_%(column_0_N_name)s_idx",
}
"""Constraint names fixed here, so a migration can refer to one by name on either backend."""

metadata = MetaData(naming_convention=NAMING)


def _ms(name: str, *, nullable: bool = False) -> Column[int]:
    return Column(name, BigInteger, nullable=nullable)


# -- ingest: delivery state and raw data ---------------------------------------------------------

gateways = Table(
    "gateways",
    metadata,
    Column("gateway_id", Text, primary_key=True),
    Column("acked_seq", BigInteger, nullable=False, server_default=text("0")),
    Column("boot_id", Text),
    _ms("first_seen_ms"),
    _ms("last_seen_ms"),
    Column("batches", BigInteger, nullable=False, server_default=text("0")),
    Column("readings", BigInteger, nullable=False, server_default=text("0")),
    Column("status", Text),
    _ms("status_ms", nullable=True),
)

batches = Table(
    "batches",
    metadata,
    Column("gateway_id", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Column("boot_id", Text, nullable=False),
    _ms("received_ms"),
    Column("reading_count", Integer, nullable=False),
    PrimaryKeyConstraint("gateway_id", "seq"),
    sqlite_with_rowid=False,
)

series = Table(
    "series",
    metadata,
    # Readings name their series by this id: an integer key keeps the readings row and index narrow
    # (SQLite's insert of a commit's readings, the drain's limit, ran 1.6x faster; docs/benchmarks.md).
    Column("series_id", RowId, primary_key=True, autoincrement=True),
    Column("gateway_id", Text, nullable=False),
    Column("sensor_id", Text, nullable=False),
    Column("quantity", Text, nullable=False),
    UniqueConstraint("gateway_id", "sensor_id", "quantity"),
)

readings = Table(
    "readings",
    metadata,
    # Commit order: detector checkpoints and the series exporter resume after an id.
    Column("id", RowId, primary_key=True, autoincrement=True),
    # No foreign key: checking it would cost a lookup per reading; only the ingest writer inserts
    # readings, and it names only series it has read back from the table in the same transaction.
    Column("series_id", BigInteger, nullable=False),
    _ms("ts_ms"),
    Column("value", Double, nullable=False),
    Column("quality", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Index("readings_series", "series_id", "ts_ms"),
)
# Readers query the view ``series_readings`` (readings with gateway_id, sensor_id and quantity spelled
# out), made by migration 0002: SQLAlchemy's metadata has no views.

latest = Table(
    "latest",
    metadata,
    Column("gateway_id", Text, nullable=False),
    Column("sensor_id", Text, nullable=False),
    Column("quantity", Text, nullable=False),
    _ms("ts_ms"),
    Column("value", Double, nullable=False),
    Column("quality", Text, nullable=False),
    PrimaryKeyConstraint("gateway_id", "sensor_id", "quantity"),
    sqlite_with_rowid=False,
)

gaps = Table(
    "gaps",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("gateway_id", Text, nullable=False),
    Column("first_seq", BigInteger, nullable=False),
    Column("last_seq", BigInteger, nullable=False),
    Column("boot_id", Text, nullable=False),
    _ms("detected_ms"),
    Column("source", Text, nullable=False, server_default=text("'hub'")),
    Column("reason", Text),
    Column("readings", BigInteger),
    Column("tag_reads", BigInteger),
    Column("fixes", BigInteger),
    _ms("first_ts_ms", nullable=True),
    _ms("last_ts_ms", nullable=True),
    Index("gaps_once", "gateway_id", "source", "first_seq", "last_seq", unique=True),
)

rejected = Table(
    "rejected",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    _ms("received_ms"),
    Column("topic", Text, nullable=False),
    Column("reason", Text, nullable=False),
    Column("detail", Text, nullable=False),
    Column("payload_size", Integer, nullable=False),
    Column("payload", LargeBinary, nullable=False),
)

tag_reads = Table(
    "tag_reads",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("gateway_id", Text, nullable=False),
    Column("reader_id", Text, nullable=False),
    Column("epc_hex", Text, nullable=False),
    Column("epc_uri", Text),
    _ms("ts_ms"),
    Column("rssi_dbm", Double),
    Column("antenna", Integer, nullable=False),
    Column("action", Text, nullable=False),
    Column("seq", BigInteger, nullable=False),
    Index("tag_reads_epc", "epc_hex", "ts_ms"),
    Index("tag_reads_gateway", "gateway_id", "ts_ms"),
    # Trails look items up by URI (bench/trail_query.py: a full scan made a lot's trail take 0.9 s).
    Index("tag_reads_uri", "epc_uri", "ts_ms"),
)

gps_fixes = Table(
    "gps_fixes",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("gateway_id", Text, nullable=False),
    Column("receiver_id", Text, nullable=False),
    _ms("ts_ms"),
    _ms("gps_time_ms", nullable=True),
    Column("lat", Double, nullable=False),
    Column("lon", Double, nullable=False),
    Column("fix_quality", Integer, nullable=False),
    Column("satellites", Integer),
    Column("hdop", Double),
    Column("altitude_m", Double),
    Column("speed_kmh", Double),
    Column("course_deg", Double),
    Column("seq", BigInteger, nullable=False),
    Index("gps_fixes_gateway", "gateway_id", "ts_ms"),
)

ROLLUP_BUCKET_MS: Final = 5 * 60 * 1000
"""Trails and lot pages read 5-minute min/max/mean per series, never the raw readings."""

rollups = Table(
    "rollups",
    metadata,
    Column("gateway_id", Text, nullable=False),
    Column("sensor_id", Text, nullable=False),
    Column("quantity", Text, nullable=False),
    _ms("bucket_ms"),
    Column("min_value", Double, nullable=False),
    Column("max_value", Double, nullable=False),
    Column("sum_value", Double, nullable=False),
    Column("samples", BigInteger, nullable=False),
    PrimaryKeyConstraint("gateway_id", "quantity", "bucket_ms", "sensor_id"),
    sqlite_with_rowid=False,
)

# -- gateways' side messages ------------------------------------------------------------------------

gateway_health = Table(
    "gateway_health",
    metadata,
    Column("gateway_id", Text, primary_key=True),
    _ms("ts_ms"),
    Column("body", LargeBinary, nullable=False),
)

gateway_health_history = Table(
    "gateway_health_history",
    metadata,
    # Commit order, for the series exporter.
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("gateway_id", Text, nullable=False),
    _ms("ts_ms"),
    Column("body", LargeBinary, nullable=False),
    Index("gateway_health_history_at", "gateway_id", "ts_ms"),
)

local_alarms = Table(
    "local_alarms",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("gateway_id", Text, nullable=False),
    Column("sensor_id", Text, nullable=False),
    Column("state", Text, nullable=False),
    Column("value", Double, nullable=False),
    Column("low_c", Double, nullable=False),
    Column("high_c", Double, nullable=False),
    _ms("ts_ms"),
    _ms("received_ms"),
)

commands = Table(
    "commands",
    metadata,
    Column("command_id", Text, primary_key=True),
    Column("gateway_id", Text, nullable=False),
    _ms("issued_ms"),
    Column("body", LargeBinary, nullable=False),
    Column("status", Text, nullable=False),
    Column("reason", Text),
    _ms("answered_ms", nullable=True),
    Column("config_version", BigInteger),
)

# -- alarms, orders, claims ---------------------------------------------------------------------------

alarms = Table(
    "alarms",
    metadata,
    Column("alarm_id", Text, primary_key=True),
    Column("gateway_id", Text, nullable=False),
    Column("sensor_id", Text, nullable=False),
    Column("quantity", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("severity", Text, nullable=False),
    Column("state", Text, nullable=False),
    _ms("started_ms"),
    _ms("opened_ms"),
    _ms("updated_ms"),
    _ms("closed_ms", nullable=True),
    _ms("ended_ms", nullable=True),
    Column("peak_value", Double),
    Column("duration_s", Double, nullable=False, server_default=text("0")),
    Column("message", Text, nullable=False),
    Column("acknowledged_by", Text),
    _ms("acknowledged_ms", nullable=True),
    Column("ack_reason", Text),
    Column("closed_by", Text),
    Column("close_reason", Text),
    Column("escalations", Integer, nullable=False, server_default=text("0")),
    _ms("last_escalated_ms", nullable=True),
    # One active alarm per (series, kind): a repeated finding updates it instead of duplicating.
    Index(
        "alarms_one_active",
        "gateway_id",
        "sensor_id",
        "quantity",
        "kind",
        unique=True,
        sqlite_where=text("state != 'closed'"),
        postgresql_where=text("state != 'closed'"),
    ),
    Index("alarms_state", "state", "opened_ms"),
    Index("alarms_gateway", "gateway_id", "started_ms"),
)

orders = Table(
    "orders",
    metadata,
    Column("order_id", Text, primary_key=True),
    Column("buyer_ref", Text, nullable=False),
    Column("product", Text),
    Column("lot_id", Text),
    Column("status", Text, nullable=False),
    _ms("created_ms"),
)

order_items = Table(
    "order_items",
    metadata,
    Column("order_id", Text, ForeignKey("orders.order_id"), nullable=False),
    Column("epc", Text, nullable=False),
    PrimaryKeyConstraint("order_id", "epc"),
    Index("order_items_epc", "epc"),
    sqlite_with_rowid=False,
)

claims = Table(
    "claims",
    metadata,
    Column("claim_id", Text, primary_key=True),
    Column("order_id", Text, ForeignKey("orders.order_id"), nullable=False),
    Column("alarm_id", Text, ForeignKey("alarms.alarm_id"), nullable=False),
    Column("action", Text, nullable=False),
    Column("refund_percent", Double),
    Column("voucher_cny", Double),
    Column("state", Text, nullable=False),
    _ms("created_ms"),
    _ms("delivered_ms", nullable=True),
    # Exactly one claim per (order, excursion), whatever re-runs the policy.
    UniqueConstraint("order_id", "alarm_id"),
    Index("claims_alarm", "alarm_id"),
)

investigations = Table(
    "investigations",
    metadata,
    Column("investigation_id", Text, primary_key=True),
    Column("claim_id", Text, ForeignKey("claims.claim_id"), nullable=False, unique=True),
    Column("alarm_id", Text, nullable=False),
    _ms("opened_ms"),
    Column("evidence", LargeBinary, nullable=False),
)

outbox = Table(
    "outbox",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("event_id", Text, nullable=False, unique=True),
    Column("endpoint", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("payload", LargeBinary, nullable=False),
    _ms("created_ms"),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    _ms("next_attempt_ms"),
    _ms("delivered_ms", nullable=True),
    Column("last_error", Text),
    Index("outbox_due", "delivered_ms", "next_attempt_ms"),
)

audit = Table(
    "audit",
    metadata,
    # Chosen by the appender (last + 1), never by the database: see hub/audit.py.
    Column("id", BigInteger, primary_key=True, autoincrement=False),
    _ms("ts_ms"),
    Column("entity", Text, nullable=False),
    Column("entity_id", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("actor", Text, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("prev_hash", Text, nullable=False, unique=True),
    Column("hash", Text, nullable=False, unique=True),
    Index("audit_entity", "entity", "entity_id", "id"),
)

# -- traceability -------------------------------------------------------------------------------------

lots = Table(
    "lots",
    metadata,
    Column("lot_id", Text, primary_key=True),
    Column("gtin", Text, nullable=False),
    Column("product", Text),
    _ms("created_ms"),
)

lot_items = Table(
    "lot_items",
    metadata,
    Column("lot_id", Text, ForeignKey("lots.lot_id"), nullable=False),
    Column("epc", Text, nullable=False),
    PrimaryKeyConstraint("lot_id", "epc"),
    sqlite_with_rowid=False,
)

buyer_keys = Table(
    "buyer_keys",
    metadata,
    Column("key_hash", Text, primary_key=True),
    Column("order_id", Text, ForeignKey("orders.order_id"), nullable=False),
    _ms("created_ms"),
    _ms("expires_ms"),
    _ms("revoked_ms", nullable=True),
    Index("buyer_keys_order", "order_id"),
)

# -- the hub's own progress -----------------------------------------------------------------------------

detector_checkpoint = Table(
    "detector_checkpoint",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("readings_id", BigInteger, nullable=False),
    _ms("taken_ms"),
    Column("state", LargeBinary, nullable=False),
    CheckConstraint("id = 1", name="single_row"),
)

export_cursors = Table(
    "export_cursors",
    metadata,
    # Where each exporter (raw series, health) stands, advanced only after the receiver accepted.
    Column("name", Text, primary_key=True),
    Column("position", BigInteger, nullable=False),
    _ms("updated_ms"),
)
