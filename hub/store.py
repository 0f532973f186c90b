"""The hub's SQLite store: readings, per-gateway delivery state, gaps and set-aside messages.

One connection per thread: the ingest writer owns a write connection, API requests open read
connections (WAL lets them read while the writer commits). ``synchronous=FULL`` because the hub
acknowledges MQTT and receipts a gateway only after a commit: a commit that a power cut could
undo would turn that receipt into a lost batch.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from coldchain.errors import ColdchainError
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
from hub.alarms import ALARMS_DDL, AlarmChange, AlarmService
from hub.audit import AUDIT_DDL
from hub.detectors.base import Finding
from hub.ledger import Cursor, Plan
from hub.outbox import OUTBOX_DDL

BUSY_TIMEOUT_S: Final = 10.0
"""A reader never blocks the writer in WAL mode; this only covers checkpoints and migrations."""

REJECTED_PAYLOAD_KEEP_BYTES: Final = 4096
"""Enough of a bad payload to diagnose it, without letting garbage fill the disk."""

# Each entry moves the schema one version up; applied in order inside a transaction.
MIGRATIONS: Final[tuple[str, ...]] = (
    """
    CREATE TABLE gateways (
        gateway_id   TEXT PRIMARY KEY,
        acked_seq    INTEGER NOT NULL DEFAULT 0,
        boot_id      TEXT,
        first_seen_ms INTEGER NOT NULL,
        last_seen_ms INTEGER NOT NULL,
        batches      INTEGER NOT NULL DEFAULT 0,
        readings     INTEGER NOT NULL DEFAULT 0,
        status       TEXT,
        status_ms    INTEGER
    );
    CREATE TABLE batches (
        gateway_id  TEXT NOT NULL,
        seq         INTEGER NOT NULL,
        boot_id     TEXT NOT NULL,
        received_ms INTEGER NOT NULL,
        reading_count INTEGER NOT NULL,
        PRIMARY KEY (gateway_id, seq)
    ) WITHOUT ROWID;
    CREATE TABLE readings (
        gateway_id TEXT NOT NULL,
        sensor_id  TEXT NOT NULL,
        quantity   TEXT NOT NULL,
        ts_ms      INTEGER NOT NULL,
        value      REAL NOT NULL,
        quality    TEXT NOT NULL,
        seq        INTEGER NOT NULL
    );
    CREATE INDEX readings_series ON readings (gateway_id, sensor_id, quantity, ts_ms);
    CREATE TABLE latest (
        gateway_id TEXT NOT NULL,
        sensor_id  TEXT NOT NULL,
        quantity   TEXT NOT NULL,
        ts_ms      INTEGER NOT NULL,
        value      REAL NOT NULL,
        quality    TEXT NOT NULL,
        PRIMARY KEY (gateway_id, sensor_id, quantity)
    ) WITHOUT ROWID;
    CREATE TABLE gaps (
        gateway_id  TEXT NOT NULL,
        first_seq   INTEGER NOT NULL,
        last_seq    INTEGER NOT NULL,
        boot_id     TEXT NOT NULL,
        detected_ms INTEGER NOT NULL
    );
    CREATE TABLE rejected (
        id          INTEGER PRIMARY KEY,
        received_ms INTEGER NOT NULL,
        topic       TEXT NOT NULL,
        reason      TEXT NOT NULL,
        detail      TEXT NOT NULL,
        payload_size INTEGER NOT NULL,
        payload     BLOB NOT NULL
    );
    """,
    """
    CREATE TABLE tag_reads (
        gateway_id TEXT NOT NULL,
        reader_id  TEXT NOT NULL,
        epc_hex    TEXT NOT NULL,
        epc_uri    TEXT,
        ts_ms      INTEGER NOT NULL,
        rssi_dbm   REAL,
        antenna    INTEGER NOT NULL,
        action     TEXT NOT NULL,
        seq        INTEGER NOT NULL
    );
    CREATE INDEX tag_reads_epc ON tag_reads (epc_hex, ts_ms);
    CREATE INDEX tag_reads_gateway ON tag_reads (gateway_id, ts_ms);
    CREATE TABLE gps_fixes (
        gateway_id  TEXT NOT NULL,
        receiver_id TEXT NOT NULL,
        ts_ms       INTEGER NOT NULL,
        gps_time_ms INTEGER,
        lat         REAL NOT NULL,
        lon         REAL NOT NULL,
        fix_quality INTEGER NOT NULL,
        satellites  INTEGER,
        hdop        REAL,
        altitude_m  REAL,
        speed_kmh   REAL,
        course_deg  REAL,
        seq         INTEGER NOT NULL
    );
    CREATE INDEX gps_fixes_gateway ON gps_fixes (gateway_id, ts_ms);
    ALTER TABLE gaps ADD COLUMN source TEXT NOT NULL DEFAULT 'hub';
    ALTER TABLE gaps ADD COLUMN reason TEXT;
    ALTER TABLE gaps ADD COLUMN readings INTEGER;
    ALTER TABLE gaps ADD COLUMN tag_reads INTEGER;
    ALTER TABLE gaps ADD COLUMN fixes INTEGER;
    ALTER TABLE gaps ADD COLUMN first_ts_ms INTEGER;
    ALTER TABLE gaps ADD COLUMN last_ts_ms INTEGER;
    CREATE UNIQUE INDEX gaps_once ON gaps (gateway_id, source, first_seq, last_seq);
    CREATE TABLE gateway_health (
        gateway_id TEXT PRIMARY KEY,
        ts_ms      INTEGER NOT NULL,
        body       BLOB NOT NULL
    );
    CREATE TABLE local_alarms (
        gateway_id  TEXT NOT NULL,
        sensor_id   TEXT NOT NULL,
        state       TEXT NOT NULL,
        value       REAL NOT NULL,
        low_c       REAL NOT NULL,
        high_c      REAL NOT NULL,
        ts_ms       INTEGER NOT NULL,
        received_ms INTEGER NOT NULL
    );
    CREATE TABLE commands (
        command_id  TEXT PRIMARY KEY,
        gateway_id  TEXT NOT NULL,
        issued_ms   INTEGER NOT NULL,
        body        BLOB NOT NULL,
        status      TEXT NOT NULL,
        reason      TEXT,
        answered_ms INTEGER,
        config_version INTEGER
    );
    """,
    ALARMS_DDL + OUTBOX_DDL + AUDIT_DDL,
    """
    CREATE TABLE rollups (
        gateway_id TEXT NOT NULL,
        sensor_id  TEXT NOT NULL,
        quantity   TEXT NOT NULL,
        bucket_ms  INTEGER NOT NULL,
        min_value  REAL NOT NULL,
        max_value  REAL NOT NULL,
        sum_value  REAL NOT NULL,
        samples    INTEGER NOT NULL,
        PRIMARY KEY (gateway_id, quantity, bucket_ms, sensor_id)
    ) WITHOUT ROWID;
    CREATE TABLE lots (
        lot_id     TEXT PRIMARY KEY,
        gtin       TEXT NOT NULL,
        product    TEXT,
        created_ms INTEGER NOT NULL
    );
    CREATE TABLE lot_items (
        lot_id TEXT NOT NULL REFERENCES lots (lot_id),
        epc    TEXT NOT NULL,
        PRIMARY KEY (lot_id, epc)
    ) WITHOUT ROWID;
    CREATE TABLE buyer_keys (
        key_hash   TEXT PRIMARY KEY,
        order_id   TEXT NOT NULL REFERENCES orders (order_id),
        created_ms INTEGER NOT NULL,
        expires_ms INTEGER NOT NULL,
        revoked_ms INTEGER
    );
    CREATE INDEX buyer_keys_order ON buyer_keys (order_id);
    """,
    # Trails look items up by URI and excursions by gateway and alarm (bench/trail_query.py: full
    # scans of tag_reads made a 25-case lot's trail take 0.9 s on a month of data).
    """
    CREATE INDEX tag_reads_uri ON tag_reads (epc_uri, ts_ms);
    CREATE INDEX alarms_gateway ON alarms (gateway_id, started_ms);
    CREATE INDEX claims_alarm ON claims (alarm_id);
    """,
    """
    CREATE TABLE detector_checkpoint (
        id             INTEGER PRIMARY KEY CHECK (id = 1),
        readings_rowid INTEGER NOT NULL,
        taken_ms       INTEGER NOT NULL,
        state          BLOB NOT NULL
    );
    """,
)

ROLLUP_BUCKET_MS: Final = 5 * 60 * 1000
"""Trails and lot pages read 5-minute min/max/mean per series, never the raw readings."""


SideMessage = GatewayStatus | GatewayHealth | LocalAlarm | CommandAck
"""Messages beside telemetry: stored in the same transaction, not part of the delivery ledger."""


class StoreError(ColdchainError):
    """The store could not be opened, migrated or written."""


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


def connect(path: Path) -> sqlite3.Connection:
    """Open ``path`` with the pragmas every connection of the hub uses."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
    except (OSError, sqlite3.Error) as exc:
        raise StoreError(f"cannot open store {path}: {exc}") from exc
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Bring the schema up to date; return the version it is now at."""
    (version,) = conn.execute("PRAGMA user_version").fetchone()
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        try:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _statements(script):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            conn.execute("ROLLBACK")
            raise StoreError(f"migration to schema {number} failed: {exc}") from exc
    return len(MIGRATIONS)


def _statements(script: str) -> list[str]:
    """Split a script into statements, keeping trigger bodies (which contain ';') whole."""
    statements: list[str] = []
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            statements.append(pending.strip())
            pending = ""
    if pending.strip():
        statements.append(pending.strip())
    return [s for s in statements if s and s != ";"]


class IngestWriter:
    """The single writer of the system of record: one transaction per commit group or staff action."""

    def __init__(self, path: Path, alarms: AlarmService | None = None) -> None:
        self._conn = connect(path)
        migrate(self._conn)
        self._alarms = alarms

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate transaction on the write connection, rolled back on any error."""
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"transaction failed: {exc}") from exc
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    def load_cursors(self) -> dict[str, Cursor]:
        """Read every gateway's delivery cursor, including seqs committed above ``acked_seq``."""
        cursors = {
            gateway_id: Cursor(acked_seq)
            for gateway_id, acked_seq in self._conn.execute("SELECT gateway_id, acked_seq FROM gateways")
        }
        rows = self._conn.execute(
            "SELECT b.gateway_id, b.seq FROM batches b JOIN gateways g USING (gateway_id) WHERE b.seq > g.acked_seq"
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
        findings: Sequence[Finding] = (),
    ) -> list[AlarmChange]:
        """Write a plan's batches, gaps and cursors, rejections, side messages and the alarm changes
        the findings cause, atomically; return the alarm changes."""
        try:
            with self.transaction() as conn:
                self._write_batches(plan.new_batches, now_ms)
                self._write_cursors(plan.cursors, now_ms)
                conn.executemany(
                    "INSERT INTO gaps (gateway_id, first_seq, last_seq, boot_id, detected_ms) VALUES (?, ?, ?, ?, ?)",
                    [(g.gateway_id, g.first_seq, g.last_seq, g.boot_id, now_ms) for g in plan.gaps],
                )
                conn.executemany(
                    "INSERT INTO rejected (received_ms, topic, reason, detail, payload_size, payload)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
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
                return self._alarms.apply(conn, findings, now_ms) if self._alarms and findings else []
        except StoreError as exc:
            raise StoreError(f"commit of {len(plan.new_batches)} batches failed: {exc}") from exc

    def commit_tick(self, findings: Sequence[Finding], now_ms: int) -> list[AlarmChange]:
        """Apply time-driven findings (silence) and escalations in one transaction."""
        if self._alarms is None:
            return []
        with self.transaction() as conn:
            return self._alarms.apply(conn, findings, now_ms) + self._alarms.escalate_due(conn, now_ms)

    def recent_readings(self, since_ms: int) -> Iterator[tuple[str, Reading]]:
        """Readings newer than ``since_ms`` in time order (warm-up when there is no checkpoint)."""
        for gateway_id, sensor_id, quantity, ts_ms, value, quality in self._conn.execute(
            "SELECT gateway_id, sensor_id, quantity, ts_ms, value, quality FROM readings WHERE ts_ms > ?"
            " ORDER BY ts_ms",
            (since_ms,),
        ):
            yield gateway_id, Reading(sensor_id, Quantity(quantity), ts_ms, value, Quality(quality))

    def readings_after(self, rowid: int) -> Iterator[tuple[str, Reading]]:
        """Readings committed after row ``rowid``, in commit order: exactly what detectors saw next."""
        for gateway_id, sensor_id, quantity, ts_ms, value, quality in self._conn.execute(
            "SELECT gateway_id, sensor_id, quantity, ts_ms, value, quality FROM readings WHERE rowid > ?"
            " ORDER BY rowid",
            (rowid,),
        ):
            yield gateway_id, Reading(sensor_id, Quantity(quantity), ts_ms, value, Quality(quality))

    def save_checkpoint(self, state: bytes, now_ms: int) -> int:
        """Store the detectors' state as of the last committed reading; return that reading's rowid."""
        with self.transaction() as conn:
            (rowid,) = conn.execute("SELECT coalesce(max(rowid), 0) FROM readings").fetchone()
            conn.execute(
                "INSERT INTO detector_checkpoint VALUES (1, ?, ?, ?) ON CONFLICT (id) DO UPDATE SET"
                " readings_rowid = excluded.readings_rowid, taken_ms = excluded.taken_ms, state = excluded.state",
                (rowid, now_ms, state),
            )
        return int(rowid)

    def load_checkpoint(self) -> tuple[int, bytes] | None:
        """The last detector checkpoint (readings rowid, state), if any."""
        row = self._conn.execute("SELECT readings_rowid, state FROM detector_checkpoint WHERE id = 1").fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]))

    def _write_batches(self, batches: Sequence[TelemetryBatch], now_ms: int) -> None:
        conn = self._conn
        conn.executemany(
            "INSERT INTO batches (gateway_id, seq, boot_id, received_ms, reading_count) VALUES (?, ?, ?, ?, ?)",
            [(b.gateway_id, b.seq, b.boot_id, now_ms, b.item_count) for b in batches],
        )
        conn.executemany(
            "INSERT INTO readings (gateway_id, sensor_id, quantity, ts_ms, value, quality, seq)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                # StrEnum members are str: sqlite3 stores them as text without the .value lookup.
                (b.gateway_id, r.sensor_id, r.quantity, r.ts_ms, r.value, r.quality, b.seq)
                for b in batches
                for r in b.readings
            ],
        )
        self._write_rollups(batches)
        newest: dict[tuple[str, str, str], tuple[int, float, str]] = {}
        for b in batches:
            for r in b.readings:
                key = (b.gateway_id, r.sensor_id, r.quantity)
                if key not in newest or r.ts_ms >= newest[key][0]:
                    newest[key] = (r.ts_ms, r.value, r.quality)
        conn.executemany(
            "INSERT INTO latest (gateway_id, sensor_id, quantity, ts_ms, value, quality) VALUES (?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (gateway_id, sensor_id, quantity) DO UPDATE SET"
            " ts_ms = excluded.ts_ms, value = excluded.value, quality = excluded.quality"
            " WHERE excluded.ts_ms >= latest.ts_ms",
            [(*key, *val) for key, val in newest.items()],
        )
        conn.executemany(
            "INSERT INTO tag_reads (gateway_id, reader_id, epc_hex, epc_uri, ts_ms, rssi_dbm, antenna, action, seq)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (b.gateway_id, t.reader_id, t.epc_hex, t.epc_uri, t.ts_ms, t.rssi_dbm, t.antenna, t.action.value, b.seq)
                for b in batches
                for t in b.tag_reads
            ],
        )
        conn.executemany(
            "INSERT INTO gps_fixes (gateway_id, receiver_id, ts_ms, gps_time_ms, lat, lon, fix_quality, satellites,"
            " hdop, altitude_m, speed_kmh, course_deg, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
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
        conn.executemany(
            # OR IGNORE: a gap record re-sent after its carrier was dropped unreceipted is kept once.
            "INSERT OR IGNORE INTO gaps (gateway_id, first_seq, last_seq, boot_id, detected_ms, source, reason,"
            " readings, tag_reads, fixes, first_ts_ms, last_ts_ms)"
            " VALUES (?, ?, ?, ?, ?, 'gateway', ?, ?, ?, ?, ?, ?)",
            [
                (
                    b.gateway_id,
                    r.first_seq,
                    r.last_seq,
                    b.boot_id,
                    now_ms,
                    r.reason,
                    r.readings,
                    r.tag_reads,
                    r.fixes,
                    r.first_ts_ms,
                    r.last_ts_ms,
                )
                for b in batches
                for r in b.released
            ],
        )
        per_gateway: dict[str, tuple[str, int, int]] = {}
        for b in batches:
            _, count, readings = per_gateway.get(b.gateway_id, ("", 0, 0))
            per_gateway[b.gateway_id] = (b.boot_id, count + 1, readings + len(b.readings))
        conn.executemany(
            "INSERT INTO gateways (gateway_id, boot_id, first_seen_ms, last_seen_ms, batches, readings)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (gateway_id) DO UPDATE SET boot_id = excluded.boot_id,"
            " last_seen_ms = excluded.last_seen_ms, batches = batches + excluded.batches,"
            " readings = readings + excluded.readings",
            [(gw, boot, now_ms, now_ms, n, r) for gw, (boot, n, r) in per_gateway.items()],
        )

    def _write_rollups(self, batches: Sequence[TelemetryBatch]) -> None:
        buckets: dict[tuple[str, str, str, int], list[float]] = {}
        for b in batches:
            for r in b.readings:
                key = (b.gateway_id, r.quantity, r.sensor_id, r.ts_ms - r.ts_ms % ROLLUP_BUCKET_MS)
                agg = buckets.get(key)
                if agg is None:
                    buckets[key] = [r.value, r.value, r.value, 1.0]
                else:
                    agg[0] = min(agg[0], r.value)
                    agg[1] = max(agg[1], r.value)
                    agg[2] += r.value
                    agg[3] += 1
        self._conn.executemany(
            "INSERT INTO rollups (gateway_id, quantity, sensor_id, bucket_ms, min_value, max_value, sum_value, samples)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (gateway_id, quantity, bucket_ms, sensor_id) DO UPDATE SET"
            " min_value = min(min_value, excluded.min_value), max_value = max(max_value, excluded.max_value),"
            " sum_value = sum_value + excluded.sum_value, samples = samples + excluded.samples",
            [(*key, low, high, total, int(count)) for key, (low, high, total, count) in buckets.items()],
        )

    def _write_cursors(self, cursors: Mapping[str, Cursor], now_ms: int) -> None:
        self._conn.executemany(
            "INSERT INTO gateways (gateway_id, acked_seq, first_seen_ms, last_seen_ms) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (gateway_id) DO UPDATE SET acked_seq = excluded.acked_seq",
            [(gw, cursor.acked_seq, now_ms, now_ms) for gw, cursor in cursors.items()],
        )

    def _write_side_message(self, message: SideMessage, now_ms: int) -> None:
        match message:
            case GatewayStatus():
                self._write_status(message, now_ms)
            case GatewayHealth():
                self._conn.execute(
                    "INSERT INTO gateway_health_history VALUES (?, ?, ?)",
                    (message.gateway_id, message.ts_ms, encode(message)),
                )
                self._conn.execute(
                    "INSERT INTO gateway_health VALUES (?, ?, ?) ON CONFLICT (gateway_id) DO UPDATE SET"
                    " ts_ms = excluded.ts_ms, body = excluded.body WHERE excluded.ts_ms >= gateway_health.ts_ms",
                    (message.gateway_id, message.ts_ms, encode(message)),
                )
            case LocalAlarm():
                self._conn.execute(
                    "INSERT INTO local_alarms VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        message.gateway_id,
                        message.sensor_id,
                        message.state,
                        message.value,
                        message.low_c,
                        message.high_c,
                        message.ts_ms,
                        now_ms,
                    ),
                )
            case CommandAck():
                self._conn.execute(
                    "UPDATE commands SET status = ?, reason = ?, answered_ms = ?, config_version = ?"
                    " WHERE command_id = ? AND gateway_id = ?",
                    (
                        "accepted" if message.accepted else "refused",
                        message.reason,
                        message.ts_ms,
                        message.config_version,
                        message.command_id,
                        message.gateway_id,
                    ),
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
            self._conn.execute(
                "INSERT INTO commands (command_id, gateway_id, issued_ms, body, status) VALUES (?, ?, ?, ?, 'sent')",
                (command.command_id, command.gateway_id, now_ms, encode(command)),
            )
        except sqlite3.IntegrityError as exc:
            raise StoreError(f"command id {command.command_id} was used before") from exc

    def _write_status(self, status: GatewayStatus, now_ms: int) -> None:
        self._conn.execute(
            "INSERT INTO gateways (gateway_id, boot_id, first_seen_ms, last_seen_ms, status, status_ms)"
            " VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (gateway_id) DO UPDATE SET status = excluded.status,"
            " status_ms = excluded.status_ms"
            " WHERE gateways.status_ms IS NULL OR excluded.status_ms >= gateways.status_ms",
            (status.gateway_id, status.boot_id, now_ms, now_ms, status.state, status.ts_ms),
        )

    def close(self) -> None:
        """Close the write connection."""
        self._conn.close()


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
    """Queries for the API; opens a short-lived connection per call so threads never share one."""

    def __init__(self, path: Path) -> None:
        self._path = path

    @contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        with closing(connect(self._path)) as conn:
            yield conn

    def gateways(self) -> list[GatewayRow]:
        """Every gateway the hub has heard from, by id."""
        with self._connection() as conn:
            rows = conn.execute(
                "SELECT gateway_id, acked_seq, boot_id, first_seen_ms, last_seen_ms, batches, readings, status,"
                " status_ms FROM gateways ORDER BY gateway_id"
            ).fetchall()
        return [GatewayRow(*row) for row in rows]

    def latest(self, gateway_id: str | None = None) -> list[LatestReading]:
        """The newest reading of every series, optionally of one gateway only."""
        query = "SELECT gateway_id, sensor_id, quantity, ts_ms, value, quality FROM latest"
        params: tuple[str, ...] = ()
        if gateway_id is not None:
            query += " WHERE gateway_id = ?"
            params = (gateway_id,)
        with self._connection() as conn:
            rows = conn.execute(query + " ORDER BY gateway_id, sensor_id, quantity", params).fetchall()
        return [LatestReading(*row) for row in rows]

    def reading_count(self) -> int:
        """Rows in the readings table (used by tests and the demo)."""
        with self._connection() as conn:
            (count,) = conn.execute("SELECT count(*) FROM readings").fetchone()
        return int(count)

    def command(self, command_id: str) -> CommandRow | None:
        """A command sent to a gateway and its answer, if any."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT command_id, gateway_id, issued_ms, status, reason, answered_ms, config_version FROM commands"
                " WHERE command_id = ?",
                (command_id,),
            ).fetchone()
        return CommandRow(*row) if row else None

    def _rows(self, query: str, params: tuple[object, ...] = ()) -> list[dict[str, Any]]:
        with self._connection() as conn:
            cursor = conn.execute(query, params)
            columns = [d[0] for d in cursor.description]
            return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]

    def alarms(self, state: str | None = None) -> list[dict[str, Any]]:
        """Alarms newest first, optionally in one state (``active``: not closed)."""
        if state is None:
            rows = self._rows("SELECT * FROM alarms ORDER BY opened_ms DESC")
        elif state == "active":
            rows = self._rows("SELECT * FROM alarms WHERE state != 'closed' ORDER BY opened_ms DESC")
        else:
            rows = self._rows("SELECT * FROM alarms WHERE state = ? ORDER BY opened_ms DESC", (state,))
        return [_alarm_view(row) for row in rows]

    def alarm(self, alarm_id: str) -> dict[str, Any] | None:
        """One alarm, or ``None``."""
        rows = self._rows("SELECT * FROM alarms WHERE alarm_id = ?", (alarm_id,))
        return _alarm_view(rows[0]) if rows else None

    def order(self, order_id: str) -> dict[str, Any] | None:
        """An order with its items and claims, or ``None``."""
        rows = self._rows(
            "SELECT order_id, buyer_ref, product, lot_id, status FROM orders WHERE order_id = ?", (order_id,)
        )
        if not rows:
            return None
        items = [
            r["epc"] for r in self._rows("SELECT epc FROM order_items WHERE order_id = ? ORDER BY epc", (order_id,))
        ]
        claims = self._rows(
            "SELECT claim_id, alarm_id, action, refund_percent, voucher_cny, state, created_ms, delivered_ms"
            " FROM claims WHERE order_id = ? ORDER BY created_ms",
            (order_id,),
        )
        return {**rows[0], "items": items, "claims": claims}

    def investigation(self, claim_id: str) -> dict[str, Any] | None:
        """The investigation of a claim with its evidence, exportable as JSON."""
        rows = self._rows("SELECT * FROM investigations WHERE claim_id = ?", (claim_id,))
        if not rows:
            return None
        row = rows[0]
        return {**row, "evidence": json.loads(row["evidence"])}


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
