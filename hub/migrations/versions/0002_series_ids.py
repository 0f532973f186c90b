"""Readings name their series by an integer id; the ``series_readings`` view spells it out.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28

The readings row and its index held the gateway, sensor and quantity as text. With a ``series`` table
and an integer ``series_id``, SQLite inserts a commit's readings 1.6x faster (the drain's limit) and
the store is half the size (docs/benchmarks.md, docs/decisions.md). Existing readings keep their ids,
so detector checkpoints and the series exporter's cursor stay valid.

SQLite rebuilds the table (a narrower row needs a new table there); PostgreSQL alters it in place.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_ROW_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")
_SERIES_KEY = ("gateway_id", "sensor_id", "quantity")
"""The text columns a reading named its series by before this revision."""

CREATE_VIEW = (
    "CREATE VIEW series_readings AS SELECT r.id, s.gateway_id, s.sensor_id, s.quantity, r.ts_ms, r.value,"
    " r.quality, r.seq, r.series_id FROM readings r JOIN series s ON s.series_id = r.series_id"
)


def upgrade() -> None:
    op.create_table(
        "series",
        sa.Column("series_id", _ROW_ID, autoincrement=True, nullable=False),
        *_series_key_columns(),
        sa.PrimaryKeyConstraint("series_id", name=op.f("series_pkey")),
        sa.UniqueConstraint(*_SERIES_KEY, name=op.f("series_gateway_id_sensor_id_quantity_key")),
    )
    # Series numbered in the order they first appeared; the old index serves the GROUP BY.
    op.execute(
        "INSERT INTO series (gateway_id, sensor_id, quantity) SELECT gateway_id, sensor_id, quantity FROM readings"
        " GROUP BY gateway_id, sensor_id, quantity ORDER BY min(id)"
    )
    op.drop_index("readings_series", table_name="readings")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_readings(
            [sa.Column("series_id", sa.BigInteger(), nullable=False)],
            "SELECT r.id, s.series_id, r.ts_ms, r.value, r.quality, r.seq FROM readings r"
            " JOIN series s ON s.gateway_id = r.gateway_id AND s.sensor_id = r.sensor_id AND s.quantity = r.quantity",
        )
    else:
        op.add_column("readings", sa.Column("series_id", sa.BigInteger(), nullable=True))
        op.execute(
            "UPDATE readings r SET series_id = s.series_id FROM series s"
            " WHERE s.gateway_id = r.gateway_id AND s.sensor_id = r.sensor_id AND s.quantity = r.quantity"
        )
        op.alter_column("readings", "series_id", nullable=False)
        for column in _SERIES_KEY:
            op.drop_column("readings", column)
    op.create_index("readings_series", "readings", ["series_id", "ts_ms"], unique=False)
    op.execute(CREATE_VIEW)


def downgrade() -> None:
    op.execute("DROP VIEW series_readings")
    op.drop_index("readings_series", table_name="readings")
    if op.get_bind().dialect.name == "sqlite":
        _rebuild_readings(
            _series_key_columns(),
            "SELECT r.id, s.gateway_id, s.sensor_id, s.quantity, r.ts_ms, r.value, r.quality, r.seq"
            " FROM readings r JOIN series s ON s.series_id = r.series_id",
        )
    else:
        for column in _SERIES_KEY:
            op.add_column("readings", sa.Column(column, sa.Text(), nullable=True))
        op.execute(
            "UPDATE readings r SET gateway_id = s.gateway_id, sensor_id = s.sensor_id, quantity = s.quantity"
            " FROM series s WHERE s.series_id = r.series_id"
        )
        for column in _SERIES_KEY:
            op.alter_column("readings", column, nullable=False)
        op.drop_column("readings", "series_id")
    op.create_index("readings_series", "readings", [*_SERIES_KEY, "ts_ms"], unique=False)
    op.drop_table("series")


def _series_key_columns() -> list[sa.Column[object]]:
    return [sa.Column(column, sa.Text(), nullable=False) for column in _SERIES_KEY]


def _rebuild_readings(series_columns: list[sa.Column[object]], select: str) -> None:
    """SQLite: replace ``readings`` by a copy whose series is named by ``series_columns``, filled by
    ``select`` (id, the series columns, ts_ms, value, quality, seq), ids kept and inserted in order."""
    op.create_table(
        "readings_rebuilt",
        sa.Column("id", _ROW_ID, autoincrement=True, nullable=False),
        *series_columns,
        sa.Column("ts_ms", sa.BigInteger(), nullable=False),
        sa.Column("value", sa.Double(), nullable=False),
        sa.Column("quality", sa.Text(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("readings_pkey")),
    )
    names = ", ".join(["id", *(column.name for column in series_columns), "ts_ms", "value", "quality", "seq"])
    op.execute(f"INSERT INTO readings_rebuilt ({names}) {select} ORDER BY r.id")
    op.drop_table("readings")
    op.rename_table("readings_rebuilt", "readings")
