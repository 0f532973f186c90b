"""The hub's system of record: readings, per-gateway delivery state, gaps and set-aside messages.

SQLite (the embedded default) or PostgreSQL behind one SQLAlchemy Core code path (``hub.db``).
The ingest writer owns one long-lived write connection; API requests borrow pooled read
connections. The hub acknowledges MQTT and receipts a gateway only after a commit returns.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import msgspec
from sqlalchemy import Connection, Dialect, Table, insert, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from coldchain.messages import (
    Command,
    CommandAck,
    GatewayHealth,
    GatewayStatus,
    LocalAlarm,
    Quality,
    Quantity,
    Reading,
    TelemetryBatch,
    encode,
)
from hub import schema
from hub.alarms import AlarmChange, AlarmService
from hub.db import Database, StoreError
from hub.detectors.base import Finding
from hub.ledger import Cursor, Plan
from hub.series_export import ExportAlarm, ExportGateway, ExportHealth, ExportReading, ExportSnapshot
from hub.series_fold import LatestKey, SeriesFold

REJECTED_PAYLOAD_KEEP_BYTES: Final = 4096
"""Enough of a bad payload to diagnose it, without letting garbage fill the disk."""

READ_CHUNK_ROWS: Final = 10_000
"""Rows fetched at a time when the detectors replay readings after a restart."""


SideMessage = GatewayStatus | GatewayHealth | LocalAlarm | CommandAck
"""Messages beside telemetry: stored in the same transaction, not part of the delivery ledger."""


@dataclass(frozen=True)
class Rejection:
    """A message set aside: where it came from, why, and the start of its payload."""

    topic: str
    reason: str
    detail: str
    payload: bytes
    received_ms: int


@dataclass(frozen=True)
class GatewayRow:
    """A gateway as the API shows it."""

    gateway_id: str
    acked_seq: int
    boot_id: str | None
    first_seen_ms: int
    last_seen_ms: int
    batches: int
    readings: int
    status: str | None
    status_ms: int | None


@dataclass(frozen=True)
class LatestReading:
    """The newest reading of one series."""

    gateway_id: str
    sensor_id: str
    quantity: str
    ts_ms: int
    value: float
    quality: str


class IngestWriter:
    """The single writer of the system of record: one transaction per commit group or staff action."""

    def __init__(
        self, target: Database | Path | str, alarms: AlarmService | None = None, *, migrate: bool = True
    ) -> None:
        self.database = Database.of(target)
        if migrate:
            self.database.upgrade()
        else:
            self.database.require_current()
        self._conn = self.database.writer()
        self._alarms = alarms
        # Ids of the series in the table, read back by this writer: only committed ones are kept here.
        with self.transaction() as conn:
            self._series_ids = _series_ids(conn)

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A write transaction on the write connection, rolled back on any error."""
        try:
            with self.database.write_gate(), self._conn.begin():
                yield self._conn
        except SQLAlchemyError as exc:
            raise StoreError(f"transaction failed: {exc}") from exc

    def load_cursors(self) -> dict[str, Cursor]:
        """Read every gateway's delivery cursor, including seqs committed above ``acked_seq``."""
        with self.transaction() as conn:
            cursors = {
                gateway_id: Cursor(acked_seq)
                for gateway_id, acked_seq in conn.execute(text("SELECT gateway_id, acked_seq FROM gateways"))
            }
            rows = conn.execute(
                text(
                    "SELECT b.gateway_id, b.seq FROM batches b JOIN gateways g ON g.gateway_id = b.gateway_id"
                    " WHERE b.seq > g.acked_seq"
                )
            )
            for gateway_id, seq in rows:
                cursors[gateway_id].committed_above.add(seq)
        return cursors

    def commit(
        self,
        plan: Plan,
        rejections: Sequence[Rejection],
        side_messages: Sequence[SideMessage],
        now_ms: int,
        *,
        fold: SeriesFold,
        findings: Sequence[Finding] = (),
        tick_findings: Sequence[Finding] | None = None,
        checkpoint: bytes | None = None,
    ) -> list[AlarmChange]:
        """Write a plan's batches, gaps and cursors, rejections, side messages and the alarm changes
        the findings cause, atomically; return the alarm changes.

        ``fold`` holds the readings of ``plan.new_batches`` by series run, with their rollups and latest
        values (ingest folds them on the thread that prepares the group, beside the judging).

        The periodic work can ride on a commit that was going to happen anyway: with ``tick_findings``
        this transaction first does what ``commit_tick`` would have done just before it, and a
        ``checkpoint`` (the detectors' state once they judged these batches) is saved as of its last
        reading, as ``save_checkpoint`` would have done just after it.
        """
        new_series: dict[LatestKey, int] = {}
        try:
            with self.transaction() as conn:
                changes = self._apply_tick(conn, tick_findings, now_ms) if tick_findings is not None else []
                self._write_batches(plan.new_batches, now_ms, fold, new_series)
                self._write_cursors(plan.cursors, now_ms)
                _bulk_insert(
                    conn,
                    _GAP_COLUMNS,
                    [(g.gateway_id, g.first_seq, g.last_seq, g.boot_id, now_ms) for g in plan.gaps],
                )
                _bulk_insert(
                    conn,
                    _REJECTED_COLUMNS,
                    [
                        (
                            r.received_ms,
                            r.topic,
                            r.reason,
                            r.detail,
                            len(r.payload),
                            r.payload[:REJECTED_PAYLOAD_KEEP_BYTES],
                        )
                        for r in rejections
                    ],
                )
                for message in side_messages:
                    self._write_side_message(message, now_ms)
                if self._alarms and findings:
                    changes += self._alarms.apply(conn, findings, now_ms)
                if checkpoint is not None:
                    _save_checkpoint(conn, checkpoint, now_ms)
        except StoreError as exc:
            raise StoreError(f"commit of {len(plan.new_batches)} batches failed: {exc}") from exc
        # Only now: a series inserted by a transaction that rolled back has no row, and its id may be reused.
        self._series_ids.update(new_series)
        return changes

    def commit_tick(self, findings: Sequence[Finding], now_ms: int) -> list[AlarmChange]:
        """Apply time-driven findings (silence) and escalations in one transaction."""
        if self._alarms is None:
            return []
        with self.transaction() as conn:
            return self._apply_tick(conn, findings, now_ms)

    def _apply_tick(self, conn: Connection, findings: Sequence[Finding], now_ms: int) -> list[AlarmChange]:
        """A tick's findings and the due escalations, in ``conn``'s transaction (none without alarms)."""
        if self._alarms is None:
            return []
        return self._alarms.apply(conn, findings, now_ms) + self._alarms.escalate_due(conn, now_ms)

    def recent_readings(self, since_ms: int) -> Iterator[tuple[str, Reading]]:
        """Readings newer than ``since_ms`` in time order (warm-up when there is no checkpoint)."""
        yield from self._readings(
            "SELECT gateway_id, sensor_id, quantity, ts_ms, value, quality FROM series_readings"
            " WHERE ts_ms > :since ORDER BY ts_ms",
            since_ms,
        )

    def readings_after(self, reading_id: int) -> Iterator[tuple[str, Reading]]:
        """Readings committed after ``reading_id``, in commit order: exactly what detectors saw next."""
        yield from self._readings(
            "SELECT gateway_id, sensor_id, quantity, ts_ms, value, quality FROM series_readings"
            " WHERE id > :since ORDER BY id",
            reading_id,
        )

    def _readings(self, query: str, since: int) -> Iterator[tuple[str, Reading]]:
        with self.transaction() as conn:
            # Streamed, not fetched whole: a day of readings would not fit in memory on a small hub.
            rows = conn.execute(text(query), {"since": since}, execution_options={"yield_per": READ_CHUNK_ROWS})
            for gateway_id, sensor_id, quantity, ts_ms, value, quality in rows:
                yield gateway_id, Reading(sensor_id, Quantity(quantity), ts_ms, value, Quality(quality))

    def save_checkpoint(self, state: bytes, now_ms: int) -> int:
        """Store the detectors' state as of the last committed reading; return that reading's id."""
        with self.transaction() as conn:
            return _save_checkpoint(conn, state, now_ms)

    def _series_ids_of(self, keys: Sequence[LatestKey], new_series: dict[LatestKey, int]) -> Mapping[LatestKey, int]:
        """The ids of ``keys``, the series of a commit's readings. Those not known yet are inserted (if
        no other transaction did) and read back; they go into ``new_series``, kept once the commit is in."""
        missing = [key for key in keys if key not in self._series_ids]
        if not missing:
            return self._series_ids
        _insert_json(self._conn, _SERIES_COLUMNS, [(g, s, str(q)) for g, s, q in missing], _SERIES_CONFLICT)
        # A new series is rare (a probe's first reading): the table is read back whole, not just these.
        stored = _series_ids(self._conn)
        new_series.update((key, stored[key]) for key in missing)
        return stored

    def load_checkpoint(self) -> tuple[int, bytes] | None:
        """The last detector checkpoint (readings id, state), if any."""
        with self.transaction() as conn:
            row = conn.execute(text("SELECT readings_id, state FROM detector_checkpoint WHERE id = 1")).first()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def _write_batches(
        self, batches: Sequence[TelemetryBatch], now_ms: int, fold: SeriesFold, new_series: dict[LatestKey, int]
    ) -> None:
        conn = self._conn
        _insert_json(conn, _BATCH_COLUMNS, [(b.gateway_id, b.seq, b.boot_id, now_ms, b.item_count) for b in batches])
        if any(b.readings for b in batches):
            series_ids = self._series_ids_of(fold.series(), new_series)
            conn.exec_driver_sql(_INSERT_READINGS_SQL[conn.dialect.name], (fold.readings_json(series_ids).decode(),))
            _insert_json(conn, _ROLLUP_COLUMNS, fold.rollup_rows(), _ROLLUP_CONFLICT)
            _insert_json(conn, _LATEST_COLUMNS, fold.latest_rows(), _LATEST_CONFLICT)
        _bulk_insert(
            conn,
            _TAG_READ_COLUMNS,
            [
                (b.gateway_id, t.reader_id, t.epc_hex, t.epc_uri, t.ts_ms, t.rssi_dbm, t.antenna, t.action.value, b.seq)
                for b in batches
                for t in b.tag_reads
            ],
        )
        _bulk_insert(
            conn,
            _FIX_COLUMNS,
            [
                (
                    b.gateway_id,
                    f.receiver_id,
                    f.ts_ms,
                    f.gps_time_ms,
                    f.lat,
                    f.lon,
                    f.fix_quality,
                    f.satellites,
                    f.hdop,
                    f.altitude_m,
                    f.speed_kmh,
                    f.course_deg,
                    b.seq,
                )
                for b in batches
                for f in b.fixes
            ],
        )
        _execute_many(
            conn,
            # DO NOTHING: a gap record re-sent after its carrier was dropped unreceipted is kept once.
            "INSERT INTO gaps (gateway_id, first_seq, last_seq, boot_id, detected_ms, source, reason,"
            " readings, tag_reads, fixes, first_ts_ms, last_ts_ms)"
            " VALUES (:gateway_id, :first_seq, :last_seq, :boot_id, :now, 'gateway', :reason,"
            " :readings, :tag_reads, :fixes, :first_ts_ms, :last_ts_ms)"
            " ON CONFLICT (gateway_id, source, first_seq, last_seq) DO NOTHING",
            [
                {
                    "gateway_id": b.gateway_id,
                    "first_seq": r.first_seq,
                    "last_seq": r.last_seq,
                    "boot_id": b.boot_id,
                    "now": now_ms,
                    "reason": r.reason,
                    "readings": r.readings,
                    "tag_reads": r.tag_reads,
                    "fixes": r.fixes,
                    "first_ts_ms": r.first_ts_ms,
                    "last_ts_ms": r.last_ts_ms,
                }
                for b in batches
                for r in b.released
            ],
        )
        per_gateway: dict[str, tuple[str, int, int]] = {}
        for b in batches:
            _, count, readings = per_gateway.get(b.gateway_id, ("", 0, 0))
            per_gateway[b.gateway_id] = (b.boot_id, count + 1, readings + len(b.readings))
        _insert_json(
            conn,
            _GATEWAY_SEEN_COLUMNS,
            [(gw, boot, now_ms, now_ms, n, r) for gw, (boot, n, r) in per_gateway.items()],
            "ON CONFLICT (gateway_id) DO UPDATE SET boot_id = excluded.boot_id,"
            " last_seen_ms = excluded.last_seen_ms, batches = gateways.batches + excluded.batches,"
            " readings = gateways.readings + excluded.readings",
        )

    def _write_cursors(self, cursors: Mapping[str, Cursor], now_ms: int) -> None:
        _insert_json(
            self._conn,
            _CURSOR_COLUMNS,
            [(gw, cursor.acked_seq, now_ms, now_ms) for gw, cursor in cursors.items()],
            "ON CONFLICT (gateway_id) DO UPDATE SET acked_seq = excluded.acked_seq",
        )

    def _write_side_message(self, message: SideMessage, now_ms: int) -> None:
        conn = self._conn
        match message:
            case GatewayStatus():
                self._write_status(message, now_ms)
            case GatewayHealth():
                health = {"gateway_id": message.gateway_id, "ts_ms": message.ts_ms, "body": encode(message)}
                conn.execute(insert(schema.gateway_health_history), health)
                conn.execute(
                    text(
                        "INSERT INTO gateway_health (gateway_id, ts_ms, body) VALUES (:gateway_id, :ts_ms, :body)"
                        " ON CONFLICT (gateway_id) DO UPDATE SET ts_ms = excluded.ts_ms, body = excluded.body"
                        " WHERE excluded.ts_ms >= gateway_health.ts_ms"
                    ),
                    health,
                )
            case LocalAlarm():
                conn.execute(
                    insert(schema.local_alarms),
                    {
                        "gateway_id": message.gateway_id,
                        "sensor_id": message.sensor_id,
                        "state": message.state,
                        "value": message.value,
                        "low_c": message.low_c,
                        "high_c": message.high_c,
                        "ts_ms": message.ts_ms,
                        "received_ms": now_ms,
                    },
                )
            case CommandAck():
                conn.execute(
                    text(
                        "UPDATE commands SET status = :status, reason = :reason, answered_ms = :answered_ms,"
                        " config_version = :config_version WHERE command_id = :command_id AND gateway_id = :gateway_id"
                    ),
                    {
                        "status": "accepted" if message.accepted else "refused",
                        "reason": message.reason,
                        "answered_ms": message.ts_ms,
                        "config_version": message.config_version,
                        "command_id": message.command_id,
                        "gateway_id": message.gateway_id,
                    },
                )

    @property
    def alarms(self) -> AlarmService:
        """The alarm service writing inside this writer's transactions."""
        if self._alarms is None:
            raise StoreError("this hub was started without alarms")
        return self._alarms

    def record_command(self, command: Command, now_ms: int) -> None:
        """Remember a command before it is published, so its answer has a row to land in."""
        try:
            with self._conn.begin():
                self._conn.execute(
                    insert(schema.commands),
                    {
                        "command_id": command.command_id,
                        "gateway_id": command.gateway_id,
                        "issued_ms": now_ms,
                        "body": encode(command),
                        "status": "sent",
                    },
                )
        except IntegrityError as exc:
            raise StoreError(f"command id {command.command_id} was used before") from exc
        except SQLAlchemyError as exc:
            raise StoreError(f"recording command {command.command_id} failed: {exc}") from exc

    def _write_status(self, status: GatewayStatus, now_ms: int) -> None:
        self._conn.execute(
            text(
                "INSERT INTO gateways (gateway_id, boot_id, first_seen_ms, last_seen_ms, status, status_ms)"
                " VALUES (:gateway_id, :boot_id, :now, :now, :state, :status_ms)"
                " ON CONFLICT (gateway_id) DO UPDATE SET status = excluded.status, status_ms = excluded.status_ms"
                " WHERE gateways.status_ms IS NULL OR excluded.status_ms >= gateways.status_ms"
            ),
            {
                "gateway_id": status.gateway_id,
                "boot_id": status.boot_id,
                "now": now_ms,
                "state": status.state,
                "status_ms": status.ts_ms,
            },
        )

    def close(self) -> None:
        """Close the write connection."""
        self._conn.close()


_GAP_COLUMNS: Final = (schema.gaps, ("gateway_id", "first_seq", "last_seq", "boot_id", "detected_ms"))
_REJECTED_COLUMNS: Final = (
    schema.rejected,
    ("received_ms", "topic", "reason", "detail", "payload_size", "payload"),
)
_BATCH_COLUMNS: Final = (schema.batches, ("gateway_id", "seq", "boot_id", "received_ms", "reading_count"))
_ROLLUP_COLUMNS: Final = (
    schema.rollups,
    ("gateway_id", "quantity", "sensor_id", "bucket_ms", "min_value", "max_value", "sum_value", "samples"),
)
_SERIES_COLUMNS: Final = (schema.series, ("gateway_id", "sensor_id", "quantity"))
_LATEST_COLUMNS: Final = (schema.latest, ("gateway_id", "sensor_id", "quantity", "ts_ms", "value", "quality"))
_GATEWAY_SEEN_COLUMNS: Final = (
    schema.gateways,
    ("gateway_id", "boot_id", "first_seen_ms", "last_seen_ms", "batches", "readings"),
)
_CURSOR_COLUMNS: Final = (schema.gateways, ("gateway_id", "acked_seq", "first_seen_ms", "last_seen_ms"))
_TAG_READ_COLUMNS: Final = (
    schema.tag_reads,
    ("gateway_id", "reader_id", "epc_hex", "epc_uri", "ts_ms", "rssi_dbm", "antenna", "action", "seq"),
)
_FIX_COLUMNS: Final = (
    schema.gps_fixes,
    (
        "gateway_id",
        "receiver_id",
        "ts_ms",
        "gps_time_ms",
        "lat",
        "lon",
        "fix_quality",
        "satellites",
        "hdop",
        "altitude_m",
        "speed_kmh",
        "course_deg",
        "seq",
    ),
)


@functools.cache
def _insert_sql(table: Table, columns: tuple[str, ...], paramstyle: str) -> str:
    mark = "?" if paramstyle == "qmark" else "%s"
    unknown = set(columns) - set(table.c.keys())
    assert not unknown, f"{table.name} has no columns {unknown}"
    return f"INSERT INTO {table.name} ({', '.join(columns)}) VALUES ({', '.join([mark] * len(columns))})"  # noqa: S608 - names from schema.py


def _bulk_insert(conn: Connection, target: tuple[Table, tuple[str, ...]], rows: list[tuple[Any, ...]]) -> None:
    """Rows as tuples straight to the driver's ``executemany`` (none: nothing is sent).

    SQLAlchemy's per-row parameter processing cost twice the insert itself (bench/ingest_pipeline.py:
    81,500 against 270,000 readings/s on SQLite at 500 per batch); the columns and placeholders come
    from ``schema.py`` and the dialect, so the statement stays the same on both backends.
    """
    if rows:
        table, columns = target
        conn.exec_driver_sql(_insert_sql(table, columns, conn.dialect.paramstyle), rows)


_JSON_ROWS: Final = msgspec.json.Encoder()

# The readings of a commit go to the database as one JSON parameter, ``[[seq, series_id, [reading, ...]],
# ...]`` (SeriesFold.readings_json: a reading is its wire array), expanded by the database in one
# statement. sqlite3's executemany holds the GIL to bind every row and re-takes it after every row's
# step, so the ingest thread's judging could not run beside it; one statement releases the GIL for the
# whole insert (bench/ingest_e2e.py; docs/benchmarks.md "Commit beside judging"). ORDER BY keeps ids in
# commit order: batch by batch, series by series within a batch.
_INSERT_READINGS_SQL: Final = {
    # The runs' scalars are taken out once (MATERIALIZED): reading a run element's value per reading
    # renders its whole text each time, quadratic in the run's length (18,800 against 186,800
    # readings/s at 500 per batch in bench/ingest_pipeline.py).
    "sqlite": (
        "WITH b AS MATERIALIZED (SELECT key AS n, value ->> 0 AS seq, value ->> 1 AS series_id,"
        " value -> 2 AS readings FROM json_each(?))"
        " INSERT INTO readings (series_id, ts_ms, value, quality, seq)"
        " SELECT b.series_id, r.value ->> 2, r.value ->> 3, r.value ->> 4, b.seq"
        " FROM b, json_each(b.readings) AS r ORDER BY b.n, r.key"
    ),
    "postgresql": (
        "WITH b AS MATERIALIZED (SELECT e.n, (e.value ->> 0)::bigint AS seq, (e.value ->> 1)::bigint AS series_id,"
        " e.value -> 2 AS readings FROM json_array_elements(%s::json) WITH ORDINALITY AS e(value, n))"
        " INSERT INTO readings (series_id, ts_ms, value, quality, seq)"
        " SELECT b.series_id, (r.value ->> 2)::bigint, (r.value ->> 3)::double precision, r.value ->> 4, b.seq"
        " FROM b, json_array_elements(b.readings) WITH ORDINALITY AS r(value, m) ORDER BY b.n, r.m"
    ),
}

_SERIES_CONFLICT: Final = " ON CONFLICT (gateway_id, sensor_id, quantity) DO NOTHING"

_ROLLUP_CONFLICT: Final = (
    # CASE, not two-argument min()/max(): PostgreSQL spells those least()/greatest().
    " ON CONFLICT (gateway_id, quantity, bucket_ms, sensor_id) DO UPDATE SET"
    " min_value = CASE WHEN excluded.min_value < rollups.min_value THEN excluded.min_value ELSE rollups.min_value END,"
    " max_value = CASE WHEN excluded.max_value > rollups.max_value THEN excluded.max_value ELSE rollups.max_value END,"
    " sum_value = rollups.sum_value + excluded.sum_value, samples = rollups.samples + excluded.samples"
)
_LATEST_CONFLICT: Final = (
    " ON CONFLICT (gateway_id, sensor_id, quantity) DO UPDATE SET"
    " ts_ms = excluded.ts_ms, value = excluded.value, quality = excluded.quality WHERE excluded.ts_ms >= latest.ts_ms"
)


@functools.cache
def _json_insert_sql(table: Table, columns: tuple[str, ...], dialect: Dialect, on_conflict: str) -> str:
    unknown = set(columns) - set(table.c.keys())
    assert not unknown, f"{table.name} has no columns {unknown}"
    if dialect.name == "sqlite":
        # WHERE true: without it SQLite would read ON CONFLICT as a join constraint.
        values = ", ".join(f"value ->> {i}" for i in range(len(columns)))
        rows = f"SELECT {values} FROM json_each(?) WHERE true ORDER BY key"  # noqa: S608 - positions, no input
    else:
        values = ", ".join(
            f"(value ->> {i})::{table.c[name].type.compile(dialect=dialect)}" for i, name in enumerate(columns)
        )
        rows = f"SELECT {values} FROM json_array_elements(%s::json) WITH ORDINALITY AS e(value, n) ORDER BY n"  # noqa: S608
    # Names from schema.py, positions and casts: no input reaches the text.
    return f"INSERT INTO {table.name} ({', '.join(columns)}) {rows} {on_conflict}".rstrip()


def _insert_json(
    conn: Connection, target: tuple[Table, tuple[str, ...]], rows: list[tuple[Any, ...]], on_conflict: str = ""
) -> None:
    """Insert (or upsert, with an ``ON CONFLICT`` clause) ``rows`` in one statement, passed as one JSON array.

    One statement per commit instead of one step per row: each step hands the GIL back and forth with the
    thread preparing the next group (see ``_INSERT_READINGS_SQL``). Keys must be unique within ``rows``
    (PostgreSQL refuses to update a row twice in one statement).
    """
    if rows:
        table, columns = target
        statement = _json_insert_sql(table, columns, conn.dialect, on_conflict)
        conn.exec_driver_sql(statement, (_JSON_ROWS.encode(rows).decode(),))


def _save_checkpoint(conn: Connection, state: bytes, now_ms: int) -> int:
    """Store the detectors' state as of the last reading in ``conn``'s view; return that reading's id."""
    reading_id = int(conn.execute(text("SELECT coalesce(max(id), 0) FROM readings")).scalar_one())
    conn.execute(
        text(
            "INSERT INTO detector_checkpoint (id, readings_id, taken_ms, state) VALUES (1, :id, :now, :state)"
            " ON CONFLICT (id) DO UPDATE SET readings_id = excluded.readings_id,"
            " taken_ms = excluded.taken_ms, state = excluded.state"
        ),
        {"id": reading_id, "now": now_ms, "state": state},
    )
    return reading_id


def _series_ids(conn: Connection) -> dict[LatestKey, int]:
    """Every series in the table, by ``(gateway_id, sensor_id, quantity)``."""
    rows = conn.execute(text("SELECT series_id, gateway_id, sensor_id, quantity FROM series"))
    return {
        (gateway_id, sensor_id, Quantity(quantity)): int(series_id)
        for series_id, gateway_id, sensor_id, quantity in rows
    }


def _execute_many(conn: Connection, statement: str, rows: list[dict[str, Any]]) -> None:
    if rows:
        conn.execute(text(statement), rows)


@dataclass(frozen=True)
class CommandRow:
    """A command and where it stands."""

    command_id: str
    gateway_id: str
    issued_ms: int
    status: str
    reason: str | None
    answered_ms: int | None
    config_version: int | None


class ReadStore:
    """Queries for the API and the tools; each call borrows a pooled connection, so threads never share one."""

    def __init__(self, target: Database | Path | str) -> None:
        self.database = Database.of(target)

    def gateways(self) -> list[GatewayRow]:
        """Every gateway the hub has heard from, by id."""
        rows = self._tuples(
            "SELECT gateway_id, acked_seq, boot_id, first_seen_ms, last_seen_ms, batches, readings, status,"
            " status_ms FROM gateways ORDER BY gateway_id"
        )
        return [GatewayRow(*row) for row in rows]

    def latest(self, gateway_id: str | None = None) -> list[LatestReading]:
        """The newest reading of every series, optionally of one gateway only."""
        query = "SELECT gateway_id, sensor_id, quantity, ts_ms, value, quality FROM latest"
        if gateway_id is not None:
            query += " WHERE gateway_id = :gateway_id"
        rows = self._tuples(query + " ORDER BY gateway_id, sensor_id, quantity", gateway_id=gateway_id)
        return [LatestReading(*row) for row in rows]

    def reading_count(self) -> int:
        """Rows in the readings table (used by tests and the demo)."""
        [(count,)] = self._tuples("SELECT count(*) FROM readings")
        return int(count)

    def command(self, command_id: str) -> CommandRow | None:
        """A command sent to a gateway and its answer, if any."""
        rows = self._tuples(
            "SELECT command_id, gateway_id, issued_ms, status, reason, answered_ms, config_version FROM commands"
            " WHERE command_id = :command_id",
            command_id=command_id,
        )
        return CommandRow(*rows[0]) if rows else None

    def _tuples(self, query: str, **params: object) -> list[tuple[Any, ...]]:
        with self.database.reading() as conn:
            return [tuple(row) for row in conn.execute(text(query), params)]

    def _rows(self, query: str, **params: object) -> list[dict[str, Any]]:
        with self.database.reading() as conn:
            return [dict(row) for row in conn.execute(text(query), params).mappings()]

    def alarms(self, state: str | None = None) -> list[dict[str, Any]]:
        """Alarms newest first, optionally in one state (``active``: not closed)."""
        if state is None:
            rows = self._rows("SELECT * FROM alarms ORDER BY opened_ms DESC")
        elif state == "active":
            rows = self._rows("SELECT * FROM alarms WHERE state != 'closed' ORDER BY opened_ms DESC")
        else:
            rows = self._rows("SELECT * FROM alarms WHERE state = :state ORDER BY opened_ms DESC", state=state)
        return [_alarm_view(row) for row in rows]

    def alarm(self, alarm_id: str) -> dict[str, Any] | None:
        """One alarm, or ``None``."""
        rows = self._rows("SELECT * FROM alarms WHERE alarm_id = :alarm_id", alarm_id=alarm_id)
        return _alarm_view(rows[0]) if rows else None

    def order(self, order_id: str) -> dict[str, Any] | None:
        """An order with its items and claims, or ``None``."""
        rows = self._rows(
            "SELECT order_id, buyer_ref, product, lot_id, status FROM orders WHERE order_id = :order_id",
            order_id=order_id,
        )
        if not rows:
            return None
        items = [
            r["epc"]
            for r in self._rows(
                "SELECT epc FROM order_items WHERE order_id = :order_id ORDER BY epc", order_id=order_id
            )
        ]
        claims = self._rows(
            "SELECT claim_id, alarm_id, action, refund_percent, voucher_cny, state, created_ms, delivered_ms"
            " FROM claims WHERE order_id = :order_id ORDER BY created_ms",
            order_id=order_id,
        )
        return {**rows[0], "items": items, "claims": claims}

    def investigation(self, claim_id: str) -> dict[str, Any] | None:
        """The investigation of a claim with its evidence, exportable as JSON."""
        rows = self._rows("SELECT * FROM investigations WHERE claim_id = :claim_id", claim_id=claim_id)
        if not rows:
            return None
        row = rows[0]
        return {**row, "evidence": json.loads(bytes(row["evidence"]))}

    def alarms_active_by_severity(self) -> dict[str, int]:
        """How many alarms are not closed, per severity (a gauge for ``/metrics``)."""
        rows = self._tuples("SELECT severity, count(*) FROM alarms WHERE state != 'closed' GROUP BY severity")
        return {severity: int(count) for severity, count in rows}

    def outbox_pending_by_endpoint(self) -> dict[str, int]:
        """Deliveries not yet acknowledged, per endpoint (a gauge for ``/metrics``)."""
        rows = self._tuples("SELECT endpoint, count(*) FROM outbox WHERE delivered_ms IS NULL GROUP BY endpoint")
        return {endpoint: int(count) for endpoint, count in rows}


def _alarm_view(row: dict[str, Any]) -> dict[str, Any]:
    def utc(ms: int | None) -> datetime | None:
        return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=UTC)

    return {
        **{
            k: row[k]
            for k in (
                "alarm_id",
                "gateway_id",
                "sensor_id",
                "quantity",
                "kind",
                "severity",
                "state",
                "peak_value",
                "duration_s",
                "message",
                "acknowledged_by",
                "closed_by",
                "escalations",
            )
        },
        "started": utc(row["started_ms"]),
        "opened": utc(row["opened_ms"]),
        "closed": utc(row["closed_ms"]),
    }


class SeriesStoreSource:
    """The system of record as the series exporter's source: readings and health tailed by id."""

    def __init__(self, target: Database | Path | str) -> None:
        self.database = Database.of(target)

    def readings_after(self, after_id: int, limit: int) -> list[ExportReading]:
        """Stored readings with ``id > after_id``, oldest first, at most ``limit``."""
        with self.database.reading() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, gateway_id, sensor_id, quantity, ts_ms, value, quality FROM series_readings"
                    " WHERE id > :after ORDER BY id LIMIT :limit"
                ),
                {"after": after_id, "limit": limit},
            )
            return [ExportReading(*row) for row in rows]

    def health_after(self, after_id: int, limit: int) -> list[ExportHealth]:
        """Stored health reports with ``id > after_id``, oldest first, at most ``limit``."""
        with self.database.reading() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, gateway_id, ts_ms, body FROM gateway_health_history WHERE id > :after"
                    " ORDER BY id LIMIT :limit"
                ),
                {"after": after_id, "limit": limit},
            )
            return [ExportHealth(row[0], row[1], row[2], bytes(row[3])) for row in rows]

    def latest_reading_id(self) -> int:
        """The highest reading id committed (0 when there is none): one index lookup."""
        with self.database.reading() as conn:
            return int(conn.execute(text("SELECT coalesce(max(id), 0) FROM readings")).scalar_one())

    def snapshot(self, closed_since_ms: int) -> ExportSnapshot:
        """Every gateway with its last status; alarms not closed, and those closed since ``closed_since_ms``."""
        with self.database.reading() as conn:
            gateways = [
                ExportGateway(gateway_id, None if state is None else state == "online")
                for gateway_id, state in conn.execute(text("SELECT gateway_id, status FROM gateways"))
            ]
            alarms = [
                ExportAlarm(alarm_id, gateway_id, sensor_id, quantity, kind, severity, state != "closed")
                for alarm_id, gateway_id, sensor_id, quantity, kind, severity, state in conn.execute(
                    text(
                        "SELECT alarm_id, gateway_id, sensor_id, quantity, kind, severity, state FROM alarms"
                        " WHERE state != 'closed' OR closed_ms >= :since"
                    ),
                    {"since": closed_since_ms},
                )
            ]
        return ExportSnapshot(gateways=gateways, alarms=alarms)

    def cursor(self, name: str) -> int:
        """The saved position ``name`` (0 when never saved)."""
        with self.database.reading() as conn:
            position = conn.execute(
                text("SELECT position FROM export_cursors WHERE name = :name"), {"name": name}
            ).scalar_one_or_none()
        return 0 if position is None else int(position)

    def save_cursor(self, name: str, position: int) -> None:
        """Save position ``name``; committed when this returns."""
        with self.database.writing() as conn:
            conn.execute(
                text(
                    "INSERT INTO export_cursors (name, position, updated_ms) VALUES (:name, :position, :now)"
                    " ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_ms = excluded.updated_ms"
                ),
                {"name": name, "position": position, "now": int(time.time() * 1000)},
            )
