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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlalchemy import Connection, inspect, text
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from coldchain.errors import ColdchainError
from hub.db import Database, StoreError

GENESIS_HASH: Final = "0" * 64
"""The ``prev_hash`` of the first entry: there is nothing before it."""


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
    conn: Connection,
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
    last = conn.execute(text("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")).first()
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
            text(
                "INSERT INTO audit (id, ts_ms, entity, entity_id, action, actor, data, prev_hash, hash)"
                " VALUES (:id, :ts_ms, :entity, :entity_id, :action, :actor, :data, :prev_hash, :hash)"
            ),
            {
                "id": entry_id,
                "ts_ms": ts_ms,
                "entity": entity,
                "entity_id": entity_id,
                "action": action,
                "actor": actor,
                "data": body,
                "prev_hash": prev_hash,
                "hash": digest,
            },
        )
    except IntegrityError as exc:
        raise AuditError(f"audit entry {entry_id} was appended concurrently; retry the transaction") from exc
    return digest


def head(conn: Connection) -> tuple[int, str] | None:
    """The newest entry's id and hash: the anchor to record outside the database."""
    row = conn.execute(text("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1")).first()
    return None if row is None else (int(row[0]), str(row[1]))


def verify_chain(target: Database | Path | str, *, anchor: tuple[int, str] | None = None) -> ChainReport:
    """Re-walk the whole chain in ``target`` (a SQLite file is opened read-only) and report the first
    entry that breaks it.

    Checks, in id order: ids without gaps from 1, each ``prev_hash`` equal to the previous ``hash``,
    and each ``hash`` recomputed from the entry. With ``anchor`` (an earlier :func:`head`), the
    entry with that id must still exist and still have that hash.
    """
    try:
        database = Database.of(target, read_only=True)
    except StoreError as exc:
        return ChainReport(ok=False, entries=0, first_bad_id=None, reason=str(exc))
    try:
        with database.engine.connect() as conn:
            if not inspect(conn).has_table("audit"):
                return ChainReport(ok=False, entries=0, first_bad_id=None, reason="no audit table in this database")
            return _walk(conn, anchor)
    except SQLAlchemyError as exc:
        reason = f"cannot read the audit log of {database.display_url}: {exc}"
        return ChainReport(ok=False, entries=0, first_bad_id=None, reason=reason)
    finally:
        if database is not target:  # a caller's database keeps its pool
            database.dispose()


def _walk(conn: Connection, anchor: tuple[int, str] | None) -> ChainReport:
    count = int(conn.execute(text("SELECT COUNT(*) FROM audit")).scalar_one())
    rows = conn.execute(
        text("SELECT id, ts_ms, entity, entity_id, action, actor, data, prev_hash, hash FROM audit ORDER BY id")
    )
    expected_id, prev_hash = 1, GENESIS_HASH
    anchor_seen = False
    for row in rows:
        entry_id = int(row[0])
        reason = _entry_fault(tuple(row), expected_id, prev_hash, anchor)
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
