"""Baseline: the schema of the hub's system of record, on SQLite and PostgreSQL.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

Stores made before Alembic (SQLite files at ``PRAGMA user_version`` 1-6) are adopted by
``hub.migrations.legacy`` instead of this revision.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# The audit log is append-only in the database itself, not only in the code that writes it.
SQLITE_AUDIT_TRIGGERS = (
    """CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only: UPDATE refused');
END""",
    """CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only: DELETE refused');
END""",
)
POSTGRES_AUDIT_TRIGGERS = (
    """CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit is append-only: % refused', TG_OP;
END
$$""",
    "CREATE TRIGGER audit_no_update BEFORE UPDATE ON audit FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
    "CREATE TRIGGER audit_no_delete BEFORE DELETE ON audit FOR EACH ROW EXECUTE FUNCTION audit_append_only()",
    # TRUNCATE skips row triggers; refuse it with a statement trigger.
    "CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit EXECUTE FUNCTION audit_append_only()",
)


def upgrade() -> None:
    op.create_table(
        "alarms",
        sa.Column("alarm_id", sa.Text(), nullable=False),
        sa.Column("gateway_id", sa.Text(), nullable=False),
        sa.Column("sensor_id", sa.Text(), nullable=False),
        sa.Column("quantity", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("severity", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("started_ms", sa.BigInteger(), nullable=False),
        sa.Column("opened_ms", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.Column("closed_ms", sa.BigInteger(), nullable=True),
        sa.Column("ended_ms", sa.BigInteger(), nullable=True),
        sa.Column("peak_value", sa.Double(), nullable=True),
        sa.Column("duration_s", sa.Double(), server_default=sa.text("0"), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("acknowledged_by", sa.Text(), nullable=True),
        sa.Column("acknowledged_ms", sa.BigInteger(), nullable=True),
        sa.Column("ack_reason", sa.Text(), nullable=True),
        sa.Column("closed_by", sa.Text(), nullable=True),
        sa.Column("close_reason", sa.Text(), nullable=True),
        sa.Column("escalations", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("last_escalated_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("alarm_id", name=op.f("alarms_pkey")),
    )
    op.create_index("alarms_gateway", "alarms", ["gateway_id", "started_ms"], unique=False)
    op.create_index(
        "alarms_one_active",
        "alarms",
        ["gateway_id", "sensor_id", "quantity", "kind"],
        unique=True,
        sqlite_where=sa.text("state != 'closed'"),
        postgresql_where=sa.text("state != 'closed'"),
    )
    op.create_index("alarms_state", "alarms", ["state", "opened_ms"], unique=False)
    op.create_table(
        "audit",
        sa.Column("id", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("entity", sa.Text(), nullable=False),
        sa.Column("entity_id", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("actor", sa.Text(), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("prev_hash", sa.Text(), nullable=False),
        sa.Column("hash", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("audit_pkey")),
        sa.UniqueConstraint("hash", name=op.f("audit_hash_key")),
        sa.UniqueConstraint("prev_hash", name=op.f("audit_prev_hash_key")),
    )
    op.create_index("audit_entity", "audit", ["entity", "entity_id", "id"], unique=False)
    op.create_table(
        "batches",
        sa.Column("gateway_id", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("boot_id", sa.Text(), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.Column("reading_count", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("gateway_id", "seq", name=op.f("batches_pkey")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "commands",
        sa.Column("command_id", sa.Text(), nullable=False),
        sa.Column("gateway_id", sa.Text(), nullable=False),
        sa.Column("issued_ms", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("answered_ms", sa.BigInteger(), nullable=True),
        sa.Column("config_version", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("command_id", name=op.f("commands_pkey")),
    )
    op.create_table(
        "detector_checkpoint",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("readings_id", sa.BigInteger(), nullable=False),
        sa.Column("taken_ms", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.LargeBinary(), nullable=False),
        sa.CheckConstraint("id = 1", name=op.f("detector_checkpoint_single_row_check")),
        sa.PrimaryKeyConstraint("id", name=op.f("detector_checkpoint_pkey")),
    )
    op.create_table(
        "export_cursors",
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("position", sa.BigInteger(), nullable=False),
        sa.Column("updated_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("export_cursors_pkey")),
    )
    op.create_table(
        "gaps",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("gateway_id", sa.Text(), nullable=False),
        sa.Column("first_seq", sa.BigInteger(), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), nullable=False),
        sa.Column("boot_id", sa.Text(), nullable=False),
        sa.Column("detected_ms", sa.BigInteger(), nullable=False),
        sa.Column("source", sa.Text(), server_default=sa.text("'hub'"), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("readings", sa.BigInteger(), nullable=True),
        sa.Column("tag_reads", sa.BigInteger(), nullable=True),
        sa.Column("fixes", sa.BigInteger(), nullable=True),
        sa.Column("first_ts_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_ts_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("gaps_pkey")),
    )
    op.create_index("gaps_once", "gaps", ["gateway_id", "source", "first_seq", "last_seq"], unique=True)
    op.create_table(
        "gateway_health",
        sa.Column("gateway_id", sa.Text(), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("gateway_id", name=op.f("gateway_health_pkey")),
    )
    op.create_table(
        "gateway_health_history",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("gateway_id", sa.Text(), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("gateway_health_history_pkey")),
    )
    op.create_index("gateway_health_history_at", "gateway_health_history", ["gateway_id", "ts_ms"], unique=False)
    op.create_table(
        "gateways",
        sa.Column("gateway_id", sa.Text(), nullable=False),
        sa.Column("acked_seq", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("boot_id", sa.Text(), nullable=True),
        sa.Column("first_seen_ms", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_ms", sa.BigInteger(), nullable=False),
        sa.Column("batches", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("readings", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
        sa.Column("status", sa.Text(), nullable=True),
        sa.Column("status_ms", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("gateway_id", name=op.f("gateways_pkey")),
    )
    op.create_table(
        "gps_fixes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("gateway_id", sa.Text(), nullable=False),
        sa.Column("receiver_id", sa.Text(), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("gps_time_ms", sa.BigInteger(), nullable=True),
        sa.Column("lat", sa.Double(), nullable=False),
        sa.Column("lon", sa.Double(), nullable=False),
        sa.Column("fix_quality", sa.Integer(), nullable=False),
        sa.Column("satellites", sa.Integer(), nullable=True),
        sa.Column("hdop", sa.Double(), nullable=True),
        sa.Column("altitude_m", sa.Double(), nullable=True),
        sa.Column("speed_kmh", sa.Double(), nullable=True),
        sa.Column("course_deg", sa.Double(), nullable=True),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("gps_fixes_pkey")),
    )
    op.create_index("gps_fixes_gateway", "gps_fixes", ["gateway_id", "ts_ms"], unique=False)
    op.create_table(
        "latest",
        sa.Column("gateway_id", sa.Text(), nullable=False),
        sa.Column("sensor_id", sa.Text(), nullable=False),
        sa.Column("quantity", sa.Text(), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("quality", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("gateway_id", "sensor_id", "quantity", name=op.f("latest_pkey")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "local_alarms",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("gateway_id", sa.Text(), nullable=False),
        sa.Column("sensor_id", sa.Text(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("low_c", sa.Double(), nullable=False),
        sa.Column("high_c", sa.Double(), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("local_alarms_pkey")),
    )
    op.create_table(
        "lots",
        sa.Column("lot_id", sa.Text(), nullable=False),
        sa.Column("gtin", sa.Text(), nullable=False),
        sa.Column("product", sa.Text(), nullable=True),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("lot_id", name=op.f("lots_pkey")),
    )
    op.create_table(
        "orders",
        sa.Column("order_id", sa.Text(), nullable=False),
        sa.Column("buyer_ref", sa.Text(), nullable=False),
        sa.Column("product", sa.Text(), nullable=True),
        sa.Column("lot_id", sa.Text(), nullable=True),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("order_id", name=op.f("orders_pkey")),
    )
    op.create_table(
        "outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("endpoint", sa.Text(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("attempts", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column("next_attempt_ms", sa.BigInteger(), nullable=False),
        sa.Column("delivered_ms", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("outbox_pkey")),
        sa.UniqueConstraint("event_id", name=op.f("outbox_event_id_key")),
    )
    op.create_index("outbox_due", "outbox", ["delivered_ms", "next_attempt_ms"], unique=False)
    op.create_table(
        "readings",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("gateway_id", sa.Text(), nullable=False),
        sa.Column("sensor_id", sa.Text(), nullable=False),
        sa.Column("quantity", sa.Text(), nullable=False),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("quality", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("readings_pkey")),
    )
    op.create_index("readings_series", "readings", ["gateway_id", "sensor_id", "quantity", "ts_ms"], unique=False)
    op.create_table(
        "rejected",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("received_ms", sa.BigInteger(), nullable=False),
        sa.Column("topic", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("payload_size", sa.Integer(), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("rejected_pkey")),
    )
    op.create_table(
        "rollups",
        sa.Column("gateway_id", sa.Text(), nullable=False),
        sa.Column("sensor_id", sa.Text(), nullable=False),
        sa.Column("quantity", sa.Text(), nullable=False),
        sa.Column("bucket_ms", sa.BigInteger(), nullable=False),
        sa.Column("min_value", sa.Double(), nullable=False),
        sa.Column("max_value", sa.Double(), nullable=False),
        sa.Column("sum_value", sa.Double(), nullable=False),
        sa.Column("samples", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("gateway_id", "quantity", "bucket_ms", "sensor_id", name=op.f("rollups_pkey")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "tag_reads",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("gateway_id", sa.Text(), nullable=False),
        sa.Column("reader_id", sa.Text(), nullable=False),
        sa.Column("epc_hex", sa.Text(), nullable=False),
        sa.Column("epc_uri", sa.Text(), nullable=True),
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("rssi_dbm", sa.Double(), nullable=True),
        sa.Column("antenna", sa.Integer(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("tag_reads_pkey")),
    )
    op.create_index("tag_reads_epc", "tag_reads", ["epc_hex", "ts_ms"], unique=False)
    op.create_index("tag_reads_gateway", "tag_reads", ["gateway_id", "ts_ms"], unique=False)
    op.create_index("tag_reads_uri", "tag_reads", ["epc_uri", "ts_ms"], unique=False)
    op.create_table(
        "buyer_keys",
        sa.Column("key_hash", sa.Text(), nullable=False),
        sa.Column("order_id", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("expires_ms", sa.BigInteger(), nullable=False),
        sa.Column("revoked_ms", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["order_id"], ["orders.order_id"], name=op.f("buyer_keys_order_id_fkey")),
        sa.PrimaryKeyConstraint("key_hash", name=op.f("buyer_keys_pkey")),
    )
    op.create_index("buyer_keys_order", "buyer_keys", ["order_id"], unique=False)
    op.create_table(
        "claims",
        sa.Column("claim_id", sa.Text(), nullable=False),
        sa.Column("order_id", sa.Text(), nullable=False),
        sa.Column("alarm_id", sa.Text(), nullable=False),
        sa.Column("action", sa.Text(), nullable=False),
        sa.Column("refund_percent", sa.Double(), nullable=True),
        sa.Column("voucher_cny", sa.Double(), nullable=True),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("created_ms", sa.BigInteger(), nullable=False),
        sa.Column("delivered_ms", sa.BigInteger(), nullable=True),
        sa.ForeignKeyConstraint(["alarm_id"], ["alarms.alarm_id"], name=op.f("claims_alarm_id_fkey")),
        sa.ForeignKeyConstraint(["order_id"], ["orders.order_id"], name=op.f("claims_order_id_fkey")),
        sa.PrimaryKeyConstraint("claim_id", name=op.f("claims_pkey")),
        sa.UniqueConstraint("order_id", "alarm_id", name=op.f("claims_order_id_alarm_id_key")),
    )
    op.create_index("claims_alarm", "claims", ["alarm_id"], unique=False)
    op.create_table(
        "lot_items",
        sa.Column("lot_id", sa.Text(), nullable=False),
        sa.Column("epc", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["lot_id"], ["lots.lot_id"], name=op.f("lot_items_lot_id_fkey")),
        sa.PrimaryKeyConstraint("lot_id", "epc", name=op.f("lot_items_pkey")),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "order_items",
        sa.Column("order_id", sa.Text(), nullable=False),
        sa.Column("epc", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(["order_id"], ["orders.order_id"], name=op.f("order_items_order_id_fkey")),
        sa.PrimaryKeyConstraint("order_id", "epc", name=op.f("order_items_pkey")),
        sqlite_with_rowid=False,
    )
    op.create_index("order_items_epc", "order_items", ["epc"], unique=False)
    op.create_table(
        "investigations",
        sa.Column("investigation_id", sa.Text(), nullable=False),
        sa.Column("claim_id", sa.Text(), nullable=False),
        sa.Column("alarm_id", sa.Text(), nullable=False),
        sa.Column("opened_ms", sa.BigInteger(), nullable=False),
        sa.Column("evidence", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(["claim_id"], ["claims.claim_id"], name=op.f("investigations_claim_id_fkey")),
        sa.PrimaryKeyConstraint("investigation_id", name=op.f("investigations_pkey")),
        sa.UniqueConstraint("claim_id", name=op.f("investigations_claim_id_key")),
    )

    for statement in SQLITE_AUDIT_TRIGGERS if op.get_context().dialect.name == "sqlite" else POSTGRES_AUDIT_TRIGGERS:
        op.execute(statement)


def downgrade() -> None:
    op.drop_table("investigations")
    op.drop_table("order_items")
    op.drop_table("lot_items")
    op.drop_table("claims")
    op.drop_table("buyer_keys")
    op.drop_table("tag_reads")
    op.drop_table("rollups")
    op.drop_table("rejected")
    op.drop_table("readings")
    op.drop_table("outbox")
    op.drop_table("orders")
    op.drop_table("lots")
    op.drop_table("local_alarms")
    op.drop_table("latest")
    op.drop_table("gps_fixes")
    op.drop_table("gateways")
    op.drop_table("gateway_health_history")
    op.drop_table("gateway_health")
    op.drop_table("gaps")
    op.drop_table("export_cursors")
    op.drop_table("detector_checkpoint")
    op.drop_table("commands")
    op.drop_table("batches")
    op.drop_table("audit")
    op.drop_table("alarms")
    if op.get_context().dialect.name == "postgresql":
        op.execute("DROP FUNCTION audit_append_only()")
