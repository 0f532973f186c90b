"""The append-only, hash-chained audit log of every state change of alarms and claims.

Each entry's hash covers the previous entry's hash, so editing, deleting, reordering or inserting
an entry breaks the chain at that point. "Append-only" is enforced by the database: triggers make
UPDATE and DELETE on ``audit`` fail, and ``prev_hash`` is UNIQUE, so two writers cannot fork the chain.

The hash of entry ``n`` (all text UTF-8, ``\\n`` a newline byte)::

    sha256( prev_hash + "\\n" + canonical({"action", "actor", "entity", "entity_id", "id", "ts_ms"}) + "\\n" + data )

where ``canonical`` is JSON with sorted keys, no spaces and no ASCII escaping, ``data`` is the stored
column (itself canonical JSON), and the first entry's ``prev_hash`` is 64 zeros.

A chain anyone can recompute cannot stop someone who rewrites every entry after the one they edit,
nor someone who drops the newest entries. Against both, record the head (:func:`head`) somewhere
else now and then (the operations log, a ticket, a message to the shop platform) and pass it to
:func:`verify_chain` as ``anchor``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from coldchain.errors import ColdchainError

GENESIS_HASH: Final = "0" * 64
"""The ``prev_hash`` of the first entry: there is nothing before it."""

AUDIT_DDL: Final = """
CREATE TABLE IF NOT EXISTS audit (
    id        INTEGER PRIMARY KEY,
    ts_ms     INTEGER NOT NULL,
    entity    TEXT NOT NULL,
    entity_id TEXT NOT NULL,
    action    TEXT NOT NULL,
    actor     TEXT NOT NULL,
    data      BLOB NOT NULL,
    prev_hash TEXT NOT NULL UNIQUE,
    hash      TEXT NOT NULL UNIQUE
);
CREATE INDEX IF NOT EXISTS audit_entity ON audit (entity, entity_id, id);
CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only: UPDATE refused');
END;
CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit
BEGIN
    SELECT RAISE(ABORT, 'audit is append-only: DELETE refused');
END;
"""


class AuditError(ColdchainError):
    """An entry could not be appended (data not JSON-serialisable, or a concurrent append won the race)."""


@dataclass(frozen=True)
class ChainReport:
    """The result of :func:`verify_chain`: where the chain first breaks, if it does, and its head."""

    ok: bool
    entries: int
    first_bad_id: int | None
    reason: str | None
    head_hash: str | None = None


def canonical_json(value: object) -> bytes:
    """Sorted keys, no whitespace, UTF-8 (no ``\\u`` escapes), no NaN: one byte string per value."""
    try:
        text = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise AuditError(f"audit data is not plain JSON: {exc}") from exc
    return text.encode("utf-8")


def entry_hash(
    prev_hash: str,
    *,
    entry_id: int,
    ts_ms: int,
    entity: str,
    entity_id: str,
    action: str,
    actor: str,
    data: bytes,
) -> str:
    """The hash of one entry, as the module docstring defines it."""
    header = canonical_json(
        {"action": action, "actor": actor, "entity": entity, "entity_id": entity_id, "id": entry_id, "ts_ms": ts_ms}
    )
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + header + b"\n" + data).hexdigest()


def append(
    conn: sqlite3.Connection,
    *,
    entity: str,
    entity_id: str,
    action: str,
    actor: str,
    data: Mapping[str, object],
    ts_ms: int,
) -> str:
    """Append an entry inside the caller's transaction and return its hash; never commits.

    The id is chosen here (last + 1) rather than by SQLite, so a concurrent append that read the
    same head fails on the primary key (or on the unique ``prev_hash``) instead of forking the chain.
    """
    body = canonical_json(dict(data))
    last = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    entry_id, prev_hash = (1, GENESIS_HASH) if last is None else (int(last[0]) + 1, str(last[1]))
    digest = entry_hash(
        prev_hash,
        entry_id=entry_id,
        ts_ms=ts_ms,
        entity=entity,
        entity_id=entity_id,
        action=action,
        actor=actor,
        data=body,
    )
    try:
        conn.execute(
            "INSERT INTO audit (id, ts_ms, entity, entity_id, action, actor, data, prev_hash, hash)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (entry_id, ts_ms, entity, entity_id, action, actor, body, prev_hash, digest),
        )
    except sqlite3.IntegrityError as exc:
        raise AuditError(f"audit entry {entry_id} was appended concurrently; retry the transaction") from exc
    return digest


def head(conn: sqlite3.Connection) -> tuple[int, str] | None:
    """The newest entry's id and hash: the anchor to record outside the database."""
    row = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
    return None if row is None else (int(row[0]), str(row[1]))


def verify_chain(path: Path, *, anchor: tuple[int, str] | None = None) -> ChainReport:
    """Re-walk the whole chain in ``path`` (opened read-only) and report the first entry that breaks it.

    Checks, in id order: ids without gaps from 1, each ``prev_hash`` equal to the previous ``hash``,
    and each ``hash`` recomputed from the entry. With ``anchor`` (an earlier :func:`head`), the
    entry with that id must still exist and still have that hash.
    """
    uri = f"{Path(path).resolve().as_uri()}?mode=ro"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.OperationalError as exc:
        return ChainReport(ok=False, entries=0, first_bad_id=None, reason=f"cannot open {path}: {exc}")
    with closing(conn):
        try:
            (count,) = conn.execute("SELECT COUNT(*) FROM audit").fetchone()
        except sqlite3.OperationalError as exc:
            return ChainReport(ok=False, entries=0, first_bad_id=None, reason=f"no audit table: {exc}")
        rows = conn.execute(
            "SELECT id, ts_ms, entity, entity_id, action, actor, data, prev_hash, hash FROM audit ORDER BY id"
        )
        expected_id, prev_hash = 1, GENESIS_HASH
        anchor_seen = False
        for row in rows:
            entry_id = int(row[0])
            reason = _entry_fault(row, expected_id, prev_hash, anchor)
            if reason is not None:
                return ChainReport(ok=False, entries=count, first_bad_id=entry_id, reason=reason)
            anchor_seen = anchor_seen or (anchor is not None and entry_id == anchor[0])
            expected_id, prev_hash = entry_id + 1, str(row[8])
    head_hash = prev_hash if count else None
    if anchor is not None and not anchor_seen:
        reason = f"anchored entry {anchor[0]} is missing: the newest entries were removed"
        return ChainReport(ok=False, entries=count, first_bad_id=None, reason=reason, head_hash=head_hash)
    return ChainReport(ok=True, entries=count, first_bad_id=None, reason=None, head_hash=head_hash)


def _entry_fault(row: tuple[Any, ...], expected_id: int, prev_hash: str, anchor: tuple[int, str] | None) -> str | None:
    """Why this entry breaks the chain, or None."""
    entry_id, ts_ms, entity, entity_id, action, actor, data, stored_prev, stored_hash = row
    if entry_id != expected_id:
        return f"id {entry_id} follows {expected_id - 1}: an entry is missing"
    if stored_prev != prev_hash:
        return "prev_hash does not match the previous entry's hash"
    recomputed = entry_hash(
        prev_hash,
        entry_id=expected_id,
        ts_ms=ts_ms,
        entity=entity,
        entity_id=entity_id,
        action=action,
        actor=actor,
        # A tamperer may have stored text where the log writes bytes; hash what is there either way.
        data=bytes(data) if isinstance(data, bytes | bytearray | memoryview) else str(data).encode(),
    )
    if recomputed != stored_hash:
        return "hash does not match the entry: it was edited"
    if anchor is not None and expected_id == anchor[0] and stored_hash != anchor[1]:
        return "hash differs from the anchor: the chain was rewritten"
    return None
