"""hub.audit: the database refuses UPDATE and DELETE, and verify_chain finds every kind of tampering.

On SQLite and PostgreSQL. Tampering goes through a second connection that first drops the
triggers, as an intruder with database access would.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError, IntegrityError

from hub.audit import GENESIS_HASH, AuditError, append, canonical_json, entry_hash, head, verify_chain
from hub.db import Database
from tests.support.postgres import PostgresServer

ENTRIES = [
    ("alarm", "al-1", "opened", "detector", {"value": 9.5, "sensor": "probe-1"}),
    ("claim", "cl-1", "created", "policy", {"order_id": "o-42", "amount_cents": 1500}),
    ("alarm", "al-1", "acknowledged", "staff:王芳", {"note": "门已关好"}),
    ("claim", "cl-1", "sent", "outbox", {"event_id": "claim:cl-1"}),
    ("alarm", "al-1", "closed", "detector", {}),
]


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.upgrade()
    for i, (entity, entity_id, action, actor, data) in enumerate(ENTRIES):
        with database.writing() as conn:
            append(conn, entity=entity, entity_id=entity_id, action=action, actor=actor, data=data, ts_ms=1000 + i)
    yield database
    database.dispose()


class Intruder:
    """Someone with database access who dropped the append-only triggers; every statement autocommits."""

    def __init__(self, database: Database) -> None:
        self.conn = database.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        on_table = " ON audit" if database.backend == "postgresql" else ""
        for trigger in ("audit_no_update", "audit_no_delete"):
            self.conn.execute(sa.text(f"DROP TRIGGER {trigger}{on_table}"))

    def run(self, sql: str, **params: Any) -> list[Any]:
        result = self.conn.execute(sa.text(sql), params)
        return list(result) if result.returns_rows else []


@pytest.fixture
def intruder(db: Database) -> Iterator[Intruder]:
    someone = Intruder(db)
    yield someone
    someone.conn.close()


def rows(db: Database, sql: str, **params: Any) -> list[Any]:
    with db.reading() as conn:
        return list(conn.execute(sa.text(sql), params))


def test_an_untouched_chain_verifies(db: Database) -> None:
    report = verify_chain(db)
    assert (report.ok, report.entries, report.first_bad_id, report.reason) == (True, 5, None, None)
    assert report.head_hash == rows(db, "SELECT hash FROM audit WHERE id = 5")[0][0]


def test_hashes_follow_the_documented_recipe(db: Database) -> None:
    prev = "0" * 64
    for entry_id, ts_ms, entity, entity_id, action, actor, stored, prev_hash, digest in rows(
        db, "SELECT id, ts_ms, entity, entity_id, action, actor, data, prev_hash, hash FROM audit ORDER BY id"
    ):
        data = bytes(stored)
        header = {
            "action": action,
            "actor": actor,
            "entity": entity,
            "entity_id": entity_id,
            "id": entry_id,
            "ts_ms": ts_ms,
        }
        canonical = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        assert prev_hash == prev
        assert digest == hashlib.sha256(prev.encode() + b"\n" + canonical + b"\n" + data).hexdigest()
        assert data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
        prev = digest
    assert GENESIS_HASH == "0" * 64


@pytest.mark.parametrize(
    "statement", ["UPDATE audit SET actor = 'someone else' WHERE id = 2", "DELETE FROM audit WHERE id = 5"]
)
def test_the_database_refuses_update_and_delete(db: Database, statement: str) -> None:
    with pytest.raises(DBAPIError, match="append-only"), db.engine.begin() as conn:
        conn.execute(sa.text(statement))
    assert verify_chain(db).ok


def test_postgresql_refuses_truncate_too(postgres_server: PostgresServer) -> None:
    # TRUNCATE skips row triggers; SQLite has no TRUNCATE (its DELETE trigger covers the fast path).
    url = postgres_server.create_database()
    database = Database(url)
    try:
        database.upgrade()
        with database.writing() as conn:
            append(conn, entity="alarm", entity_id="al-1", action="open", actor="detector", data={}, ts_ms=1)
        with pytest.raises(DBAPIError, match="append-only"), database.engine.begin() as conn:
            conn.execute(sa.text("TRUNCATE audit"))
        assert verify_chain(database).entries == 1
    finally:
        database.dispose()
        postgres_server.drop_database(url)


def test_a_fork_is_refused_by_the_database(db: Database) -> None:
    # A second entry claiming the same predecessor as entry 3.
    prev = rows(db, "SELECT prev_hash FROM audit WHERE id = 3")[0][0]
    with pytest.raises(IntegrityError), db.engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO audit (id, ts_ms, entity, entity_id, action, actor, data, prev_hash, hash)"
                " VALUES (99, 0, 'claim', 'x', 'paid', 'me', :data, :prev, 'f')"
            ),
            {"data": b"{}", "prev": prev},
        )


def test_append_rides_the_callers_transaction(db: Database) -> None:
    with db.engine.connect() as conn:
        with conn.begin() as transaction:
            append(conn, entity="claim", entity_id="cl-2", action="created", actor="policy", data={}, ts_ms=9)
            transaction.rollback()
        with conn.begin():
            assert head(conn) is not None
            assert head(conn)[0] == 5  # type: ignore[index]
            digest = append(conn, entity="claim", entity_id="cl-2", action="created", actor="policy", data={}, ts_ms=9)
        with conn.begin():
            assert head(conn) == (6, digest)
    assert verify_chain(db).entries == 6


def test_data_must_be_plain_json(db: Database) -> None:
    with db.engine.begin() as conn:
        with pytest.raises(AuditError):
            append(conn, entity="a", entity_id="1", action="x", actor="y", data={"when": object()}, ts_ms=1)
        with pytest.raises(AuditError):
            append(conn, entity="a", entity_id="1", action="x", actor="y", data={"v": float("nan")}, ts_ms=1)


def test_edited_data_is_found(db: Database, intruder: Intruder) -> None:
    intruder.run("UPDATE audit SET data = :data WHERE id = 2", data=b'{"amount_cents":150000,"order_id":"o-42"}')
    report = verify_chain(db)
    assert (report.ok, report.first_bad_id) == (False, 2)
    assert report.reason is not None
    assert "edited" in report.reason


def test_an_edited_actor_is_found(db: Database, intruder: Intruder) -> None:
    intruder.run("UPDATE audit SET actor = 'staff:someone-else' WHERE id = 3")
    assert verify_chain(db).first_bad_id == 3


def test_a_deleted_middle_entry_is_found(db: Database, intruder: Intruder) -> None:
    intruder.run("DELETE FROM audit WHERE id = 3")
    report = verify_chain(db)
    assert (report.ok, report.first_bad_id, report.entries) == (False, 4, 4)
    assert "missing" in (report.reason or "")


def test_a_deleted_first_entry_is_found(db: Database, intruder: Intruder) -> None:
    intruder.run("DELETE FROM audit WHERE id = 1")
    assert verify_chain(db).first_bad_id == 2


def test_a_deletion_with_renumbered_ids_is_found_by_the_links(db: Database, intruder: Intruder) -> None:
    intruder.run("DELETE FROM audit WHERE id = 3")
    for entry_id in (4, 5):  # one row at a time: PostgreSQL checks the primary key per row
        intruder.run("UPDATE audit SET id = id - 1 WHERE id = :id", id=entry_id)
    report = verify_chain(db)
    assert (report.ok, report.first_bad_id) == (False, 3)
    assert "prev_hash" in (report.reason or "")


def test_reordered_entries_are_found(db: Database, intruder: Intruder) -> None:
    # Swap entries 2 and 4 (ids stay in place, contents move).
    intruder.run("UPDATE audit SET id = -2 WHERE id = 2")
    intruder.run("UPDATE audit SET id = 2 WHERE id = 4")
    intruder.run("UPDATE audit SET id = 4 WHERE id = -2")
    assert verify_chain(db).first_bad_id == 2


def forge_entry_3(intruder: Intruder, *, prev_suffix: str = "") -> None:
    prev = intruder.run("SELECT hash FROM audit WHERE id = 2")[0][0]
    data = canonical_json({"amount_cents": 99_900})
    forged = entry_hash(
        prev, entry_id=3, ts_ms=1, entity="claim", entity_id="cl-1", action="paid", actor="x", data=data
    )
    intruder.run(
        "INSERT INTO audit (id, ts_ms, entity, entity_id, action, actor, data, prev_hash, hash)"
        " VALUES (3, 1, 'claim', 'cl-1', 'paid', 'x', :data, :prev, :hash)",
        data=data,
        prev=prev + prev_suffix,
        hash=forged,
    )


def test_an_entry_inserted_in_the_middle_is_found(db: Database, intruder: Intruder) -> None:
    # A determined intruder rebuilds the table without its constraints, makes room after entry 2
    # and inserts an entry with a correct link to entry 2 and a correctly computed hash.
    intruder.run("CREATE TABLE loose AS SELECT * FROM audit")
    intruder.run("DROP TABLE audit")
    intruder.run("ALTER TABLE loose RENAME TO audit")
    intruder.run("UPDATE audit SET id = id + 1 WHERE id >= 3")
    forge_entry_3(intruder)
    report = verify_chain(db)
    # The forged entry itself checks out; the entry after it still links to entry 2.
    assert (report.ok, report.first_bad_id, report.entries) == (False, 4, 6)
    assert "prev_hash" in (report.reason or "")


def test_an_inserted_entry_with_a_recomputed_hash_still_breaks_the_next_link(db: Database, intruder: Intruder) -> None:
    for entry_id in (5, 4, 3):
        intruder.run("UPDATE audit SET id = id + 1 WHERE id = :id", id=entry_id)
    forge_entry_3(intruder, prev_suffix="x")  # prev_hash is UNIQUE: the forger cannot even reuse entry 3's link
    assert verify_chain(db).first_bad_id == 3


def test_an_anchor_finds_truncation_and_a_rewritten_chain(db: Database, intruder: Intruder) -> None:
    with db.reading() as conn:
        anchor = head(conn)
    assert anchor is not None
    assert verify_chain(db, anchor=anchor).ok
    # Dropping the newest entry leaves a valid shorter chain: only the anchor tells.
    intruder.run("DELETE FROM audit WHERE id = 5")
    assert verify_chain(db).ok
    truncated = verify_chain(db, anchor=anchor)
    assert truncated.ok is False
    assert "missing" in (truncated.reason or "")
    # Re-appending a different entry 5 makes a valid chain again, but not the anchored one.
    with db.engine.begin() as conn:
        append(conn, entity="alarm", entity_id="al-1", action="closed", actor="intruder", data={}, ts_ms=1)
    assert verify_chain(db).ok
    rewritten = verify_chain(db, anchor=anchor)
    assert (rewritten.ok, rewritten.first_bad_id) == (False, 5)


def test_an_empty_log_verifies_and_a_missing_table_does_not(database_url: str) -> None:
    empty = Database(database_url)
    empty.upgrade()
    assert verify_chain(empty) == verify_chain(empty)
    assert verify_chain(empty).ok
    assert verify_chain(empty).entries == 0
    with empty.engine.begin() as conn:
        conn.execute(sa.text("DROP TABLE audit"))
    report = verify_chain(empty)
    assert report.ok is False
    assert "no audit table" in (report.reason or "")


def test_a_missing_file_is_reported_not_raised(tmp_path: Path) -> None:
    report = verify_chain(tmp_path / "absent.sqlite3")
    assert report.ok is False
    assert "cannot open" in (report.reason or "")
    assert not (tmp_path / "absent.sqlite3").exists()  # read-only: verifying never creates a database


def test_a_sqlite_file_is_verified_read_only(tmp_path: Path) -> None:
    path = tmp_path / "hub.sqlite3"
    database = Database.of(path)
    database.upgrade()
    database.dispose()
    before = path.stat().st_mtime_ns
    assert verify_chain(path).ok
    assert path.stat().st_mtime_ns == before
