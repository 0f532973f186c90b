"""Store-and-forward on disk: every batch is written before it is published and deleted only
after the hub's receipt covers it.

One SQLite file (WAL) holds the batches, the seq counter and pending gap records, each change in
one transaction, so ``kill -9`` loses nothing that was committed and power loss loses at most the
commits the sync policy had not yet made durable. The file is bounded by a disk budget: when a new
batch would not fit, the oldest batches are dropped and a gap record saying exactly what was
dropped rides in the next batch to the hub, where it is audited.

SQLite is in the standard library, so the gateway still installs no database driver.
"""

from __future__ import annotations

import enum
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import msgspec

from coldchain.messages import GpsFix, Observation, Reading, ReleasedRange, TagRead, TelemetryBatch, encode
from edge_agent.buffer import BufferError, StoredBatch

ROW_OVERHEAD_BYTES: Final = 64
"""SQLite page and index cost per batch row beyond its payload, so the budget is not exceeded."""
SEQ_SEED_SHIFT: Final = 10
"""A new buffer starts its seq at wall-clock ms x 1024, above anything a lost earlier buffer sent."""
MAX_RELEASED_PER_BATCH: Final = 64


class SyncPolicy(enum.StrEnum):
    """How hard each commit is pushed to the storage medium."""

    FULL = "full"  # fsync every commit: power loss loses nothing committed
    NORMAL = "normal"  # fsync at WAL checkpoints: power loss may lose the last commits, kill -9 none


class BufferConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Where and how big the buffer is."""

    budget_bytes: int = 64 * 1024 * 1024
    """64 MiB holds about a week of 16 sensors at 5 s in 500-reading batches; an SD card has room."""
    sync: SyncPolicy = SyncPolicy.FULL


_SCHEMA: Final = (
    "CREATE TABLE IF NOT EXISTS batches (seq INTEGER PRIMARY KEY, created_ms INTEGER NOT NULL,"
    " readings INTEGER NOT NULL, tag_reads INTEGER NOT NULL, fixes INTEGER NOT NULL,"
    " first_ts_ms INTEGER, last_ts_ms INTEGER, payload BLOB NOT NULL, carried BLOB)",
    "CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS released (id INTEGER PRIMARY KEY, body BLOB NOT NULL)",
)


class DiskBuffer:
    """A durable, budgeted ``BatchBuffer``. Safe to use from the sampler and the uplink threads."""

    def __init__(
        self,
        path: Path,
        gateway_id: str,
        boot_id: str,
        config: BufferConfig,
        *,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._gateway_id = gateway_id
        self._boot_id = boot_id
        self._config = config
        self._wall_clock = wall_clock
        self._lock = threading.Lock()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(f"PRAGMA synchronous={config.sync.value.upper()}")
            for statement in _SCHEMA:
                self._conn.execute(statement)
            self._conn.execute(
                "INSERT OR IGNORE INTO counters VALUES ('last_seq', ?), ('released_batches', 0)",
                (int(wall_clock() * 1000) << SEQ_SEED_SHIFT,),
            )
            self._last_seq = self._counter("last_seq")
            self._released_batches = self._counter("released_batches")
            row = self._conn.execute("SELECT count(*), coalesce(sum(length(payload)), 0) FROM batches").fetchone()
            self._count, self._bytes = int(row[0]), int(row[1]) + int(row[0]) * ROW_OVERHEAD_BYTES
            items = self._conn.execute("SELECT coalesce(sum(readings + tag_reads + fixes), 0) FROM batches")
            self._items = int(items.fetchone()[0])
        except sqlite3.Error as exc:
            raise BufferError(f"cannot open the buffer {path}: {exc}") from exc

    def _counter(self, name: str) -> int:
        return int(self._conn.execute("SELECT value FROM counters WHERE name = ?", (name,)).fetchone()[0])

    @property
    def last_seq(self) -> int:
        """The last seq handed out."""
        return self._last_seq

    @property
    def released_batches(self) -> int:
        """Batches dropped by the disk budget since the buffer was created."""
        return self._released_batches

    def append(self, items: Sequence[Observation]) -> StoredBatch:
        """Number, encode and durably store a batch, evicting the oldest ones if over budget."""
        readings = [i for i in items if isinstance(i, Reading)]
        tag_reads = [i for i in items if isinstance(i, TagRead)]
        fixes = [i for i in items if isinstance(i, GpsFix)]
        stamps = [i.ts_ms for i in items]
        with self._lock:
            conn = self._conn
            try:
                conn.execute("BEGIN IMMEDIATE")
                seq = self._last_seq + 1
                released_rows = conn.execute(
                    "SELECT id, body FROM released ORDER BY id LIMIT ?", (MAX_RELEASED_PER_BATCH,)
                ).fetchall()
                released = [msgspec.json.decode(body, type=ReleasedRange) for _, body in released_rows]
                payload = self._encode(
                    seq, readings=readings, tag_reads=tag_reads, fixes=fixes, released=released, conn=conn
                )
                size = len(payload) + ROW_OVERHEAD_BYTES
                # A record made by this eviction rides the next batch; this one already has its list.
                if self._evict_for(size, conn):  # the floor moved: encode again so oldest_held_seq says so
                    payload = self._encode(
                        seq, readings=readings, tag_reads=tag_reads, fixes=fixes, released=released, conn=conn
                    )
                    size = len(payload) + ROW_OVERHEAD_BYTES
                created_ms = int(self._wall_clock() * 1000)
                conn.execute(
                    "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        seq,
                        created_ms,
                        len(readings),
                        len(tag_reads),
                        len(fixes),
                        min(stamps, default=None),
                        max(stamps, default=None),
                        payload,
                        msgspec.json.encode(released) if released else None,
                    ),
                )
                conn.execute("UPDATE counters SET value = ? WHERE name = 'last_seq'", (seq,))
                conn.executemany("DELETE FROM released WHERE id = ?", [(row_id,) for row_id, _ in released_rows])
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise BufferError(f"cannot store batch: {exc}") from exc
            self._last_seq = seq
            self._count += 1
            self._bytes += size
            self._items += len(items)
            return StoredBatch(seq, payload, len(items), created_ms)

    def _encode(
        self,
        seq: int,
        *,
        readings: list[Reading],
        tag_reads: list[TagRead],
        fixes: list[GpsFix],
        released: list[ReleasedRange],
        conn: sqlite3.Connection,
    ) -> bytes:
        (oldest,) = conn.execute("SELECT min(seq) FROM batches").fetchone()
        batch = TelemetryBatch(
            gateway_id=self._gateway_id,
            boot_id=self._boot_id,
            seq=seq,
            oldest_held_seq=oldest if oldest is not None else seq,
            readings=readings,
            tag_reads=tag_reads,
            fixes=fixes,
            released=released,
        )
        return encode(batch)

    def _evict_for(self, size: int, conn: sqlite3.Connection) -> bool:
        """Drop the oldest batches until ``size`` more bytes fit, and record what went.

        The records the dropped batches were carrying go back in line before the new one (they
        would otherwise vanish with them). A carrier that reached the hub unreceipted makes the
        hub see its records twice; the hub keeps one of each (same gateway and seq range).
        """
        excess = self._bytes + size - self._config.budget_bytes
        if excess <= 0:
            return False
        victims: list[tuple[int, int, int, int, int, int | None, int | None, bytes | None]] = []
        freed = 0
        for row in conn.execute(
            "SELECT seq, length(payload), readings, tag_reads, fixes, first_ts_ms, last_ts_ms, carried"
            " FROM batches ORDER BY seq"
        ):
            victims.append(row)
            freed += row[1] + ROW_OVERHEAD_BYTES
            if freed >= excess:
                break
        if not victims:
            return False
        first_stamps = [v[5] for v in victims if v[5] is not None]
        last_stamps = [v[6] for v in victims if v[6] is not None]
        records = [
            record
            for victim in victims
            if victim[7] is not None
            for record in msgspec.json.decode(victim[7], type=list[ReleasedRange])
        ]
        records.append(
            ReleasedRange(
                first_seq=victims[0][0],
                last_seq=victims[-1][0],
                reason="disk_budget",
                readings=sum(v[2] for v in victims),
                tag_reads=sum(v[3] for v in victims),
                fixes=sum(v[4] for v in victims),
                first_ts_ms=min(first_stamps, default=None),
                last_ts_ms=max(last_stamps, default=None),
            )
        )
        conn.execute("DELETE FROM batches WHERE seq <= ?", (victims[-1][0],))
        for record in records:
            conn.execute("INSERT INTO released (body) VALUES (?)", (msgspec.json.encode(record),))
        conn.execute("UPDATE counters SET value = value + ? WHERE name = 'released_batches'", (len(victims),))
        self._count -= len(victims)
        self._bytes -= freed
        self._items -= sum(v[2] + v[3] + v[4] for v in victims)
        self._released_batches += len(victims)
        return True

    def pending(self, after_seq: int, limit: int, *, below_seq: int | None = None) -> list[StoredBatch]:
        """Up to ``limit`` held batches with ``after_seq < seq`` (and ``seq < below_seq``), oldest first."""
        upper = below_seq if below_seq is not None else self._last_seq + 1
        with self._lock:
            rows = self._conn.execute(
                "SELECT seq, payload, readings + tag_reads + fixes, created_ms FROM batches"
                " WHERE seq > ? AND seq < ? ORDER BY seq LIMIT ?",
                (after_seq, upper, limit),
            ).fetchall()
        return [StoredBatch(seq, payload, items, created_ms) for seq, payload, items, created_ms in rows]

    def release_through(self, seq: int) -> int:
        """Delete every batch up to ``seq``: the hub has committed them."""
        with self._lock:
            try:
                row = self._conn.execute(
                    "SELECT count(*), coalesce(sum(length(payload)), 0),"
                    " coalesce(sum(readings + tag_reads + fixes), 0) FROM batches WHERE seq <= ?",
                    (seq,),
                ).fetchone()
                if not row[0]:
                    return 0
                self._conn.execute("DELETE FROM batches WHERE seq <= ?", (seq,))
            except sqlite3.Error as exc:
                raise BufferError(f"cannot release batches through {seq}: {exc}") from exc
            count = int(row[0])
            self._count -= count
            self._bytes -= int(row[1]) + count * ROW_OVERHEAD_BYTES
            self._items -= int(row[2])
            return count

    def raise_seq_floor(self, seq: int) -> None:
        """Never hand out a seq at or below ``seq`` (a receipt showed the hub already has it)."""
        with self._lock:
            if seq > self._last_seq:
                self._conn.execute("UPDATE counters SET value = ? WHERE name = 'last_seq'", (seq,))
                self._last_seq = seq

    def depth(self) -> tuple[int, int]:
        """Batches and items (readings, tag reads, fixes) held."""
        with self._lock:
            return self._count, self._items

    @property
    def size_bytes(self) -> int:
        """Bytes counted against the budget."""
        return self._bytes

    def oldest_created_ms(self) -> int | None:
        """Creation time of the oldest held batch."""
        with self._lock:
            (oldest,) = self._conn.execute("SELECT min(created_ms) FROM batches").fetchone()
        return int(oldest) if oldest is not None else None

    def close(self) -> None:
        """Close the file; every committed batch stays for the next start."""
        with self._lock:
            self._conn.close()
