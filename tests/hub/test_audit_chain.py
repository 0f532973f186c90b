"""hub.audit: the database refuses UPDATE and DELETE, and verify_chain finds every kind of tampering.

Tampering goes through a second connection that first drops the triggers, as an intruder with
file access would.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from hub.audit import AUDIT_DDL, GENESIS_HASH, AuditError, append, canonical_json, entry_hash, head, verify_chain

ENTRIES = [
    ("alarm", "al-1", "opened", "detector", {"value": 9.5, "sensor": "probe-1"}),
    ("claim", "cl-1", "created", "policy", {"order_id": "o-42", "amount_cents": 1500}),
    ("alarm", "al-1", "acknowledged", "staff:王芳", {"note": "门已关好"}),
    ("claim", "cl-1", "sent", "outbox", {"event_id": "claim:cl-1"}),
    ("alarm", "al-1", "closed", "detector", {}),
]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "hub.sqlite3"
    with closing(sqlite3.connect(path)) as conn:
        conn.executescript(AUDIT_DDL)
        for i, (entity, entity_id, action, actor, data) in enumerate(ENTRIES):
            with conn:
                append(conn, entity=entity, entity_id=entity_id, action=action, actor=actor, data=data, ts_ms=1000 + i)
    return path


@pytest.fixture
def intruder(db: Path) -> Iterator[sqlite3.Connection]:
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER audit_no_update")
    conn.execute("DROP TRIGGER audit_no_delete")
    yield conn
    conn.close()


def test_an_untouched_chain_verifies(db: Path) -> None:
    report = verify_chain(db)
    assert (report.ok, report.entries, report.first_bad_id, report.reason) == (True, 5, None, None)
    with closing(sqlite3.connect(db)) as conn:
        assert report.head_hash == conn.execute("SELECT hash FROM audit WHERE id = 5").fetchone()[0]


def test_hashes_follow_the_documented_recipe(db: Path) -> None:
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT id, ts_ms, entity, entity_id, action, actor, data, prev_hash, hash FROM audit")
        prev = "0" * 64
        for entry_id, ts_ms, entity, entity_id, action, actor, data, prev_hash, digest in rows:
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
            assert (
                data == json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
            )
            prev = digest
    assert GENESIS_HASH == "0" * 64


def test_the_database_refuses_update_and_delete(db: Path) -> None:
    with closing(sqlite3.connect(db)) as conn:
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("UPDATE audit SET actor = 'someone else' WHERE id = 2")
        with pytest.raises(sqlite3.DatabaseError, match="append-only"):
            conn.execute("DELETE FROM audit WHERE id = 5")
    assert verify_chain(db).ok


def test_a_fork_is_refused_by_the_database(db: Path) -> None:
    with closing(sqlite3.connect(db)) as conn:
        # A second entry claiming the same predecessor as entry 3.
        prev = conn.execute("SELECT prev_hash FROM audit WHERE id = 3").fetchone()[0]
        fork = (
            "INSERT INTO audit (id, ts_ms, entity, entity_id, action, actor, data, prev_hash, hash)"
            " VALUES (99, 0, 'claim', 'x', 'paid', 'me', X'7B7D', ?, 'f')"
        )
        with pytest.raises(sqlite3.IntegrityError):
            conn.execute(fork, (prev,))


def test_append_rides_the_callers_transaction(db: Path) -> None:
    with closing(sqlite3.connect(db)) as conn:
        append(conn, entity="claim", entity_id="cl-2", action="created", actor="policy", data={}, ts_ms=9)
        conn.rollback()
        assert head(conn) is not None
        assert head(conn)[0] == 5  # type: ignore[index]
        digest = append(conn, entity="claim", entity_id="cl-2", action="created", actor="policy", data={}, ts_ms=9)
        conn.commit()
        assert head(conn) == (6, digest)
    assert verify_chain(db).entries == 6


def test_data_must_be_plain_json(db: Path) -> None:
    with closing(sqlite3.connect(db)) as conn:
        with pytest.raises(AuditError):
            append(conn, entity="a", entity_id="1", action="x", actor="y", data={"when": object()}, ts_ms=1)
        with pytest.raises(AuditError):
            append(conn, entity="a", entity_id="1", action="x", actor="y", data={"v": float("nan")}, ts_ms=1)


def test_edited_data_is_found(db: Path, intruder: sqlite3.Connection) -> None:
    intruder.execute("UPDATE audit SET data = ? WHERE id = 2", (b'{"amount_cents":150000,"order_id":"o-42"}',))
    report = verify_chain(db)
    assert (report.ok, report.first_bad_id) == (False, 2)
    assert report.reason is not None
    assert "edited" in report.reason


def test_an_edited_actor_is_found(db: Path, intruder: sqlite3.Connection) -> None:
    intruder.execute("UPDATE audit SET actor = 'staff:someone-else' WHERE id = 3")
    assert verify_chain(db).first_bad_id == 3


def test_a_deleted_middle_entry_is_found(db: Path, intruder: sqlite3.Connection) -> None:
    intruder.execute("DELETE FROM audit WHERE id = 3")
    report = verify_chain(db)
    assert (report.ok, report.first_bad_id, report.entries) == (False, 4, 4)
    assert "missing" in (report.reason or "")


def test_a_deleted_first_entry_is_found(db: Path, intruder: sqlite3.Connection) -> None:
    intruder.execute("DELETE FROM audit WHERE id = 1")
    assert verify_chain(db).first_bad_id == 2


def test_a_deletion_with_renumbered_ids_is_found_by_the_links(db: Path, intruder: sqlite3.Connection) -> None:
    intruder.execute("DELETE FROM audit WHERE id = 3")
    intruder.execute("UPDATE audit SET id = id - 1 WHERE id > 3")
    report = verify_chain(db)
    assert (report.ok, report.first_bad_id) == (False, 3)
    assert "prev_hash" in (report.reason or "")


def test_reordered_entries_are_found(db: Path, intruder: sqlite3.Connection) -> None:
    # Swap entries 2 and 4 (ids stay in place, contents move).
    intruder.execute("UPDATE audit SET id = -2 WHERE id = 2")
    intruder.execute("UPDATE audit SET id = 2 WHERE id = 4")
    intruder.execute("UPDATE audit SET id = 4 WHERE id = -2")
    assert verify_chain(db).first_bad_id == 2


def test_an_entry_inserted_in_the_middle_is_found(db: Path, intruder: sqlite3.Connection) -> None:
    # A determined intruder rebuilds the table without its constraints, makes room after entry 2
    # and inserts an entry with a correct link to entry 2 and a correctly computed hash.
    intruder.executescript(
        "CREATE TABLE loose AS SELECT * FROM audit; DROP TABLE audit; ALTER TABLE loose RENAME TO audit;"
        "UPDATE audit SET id = id + 1 WHERE id >= 3;"
    )
    prev = intruder.execute("SELECT hash FROM audit WHERE id = 2").fetchone()[0]
    data = canonical_json({"amount_cents": 99_900})
    forged = entry_hash(
        prev, entry_id=3, ts_ms=1, entity="claim", entity_id="cl-1", action="paid", actor="x", data=data
    )
    intruder.execute(
        "INSERT INTO audit (id, ts_ms, entity, entity_id, action, actor, data, prev_hash, hash)"
        " VALUES (3, 1, 'claim', 'cl-1', 'paid', 'x', ?, ?, ?)",
        (data, prev, forged),
    )
    report = verify_chain(db)
    # The forged entry itself checks out; the entry after it still links to entry 2.
    assert (report.ok, report.first_bad_id, report.entries) == (False, 4, 6)
    assert "prev_hash" in (report.reason or "")


def test_an_inserted_entry_with_a_recomputed_hash_still_breaks_the_next_link(
    db: Path, intruder: sqlite3.Connection
) -> None:
    for entry_id in (5, 4, 3):
        intruder.execute("UPDATE audit SET id = id + 1 WHERE id = ?", (entry_id,))
    prev = intruder.execute("SELECT hash FROM audit WHERE id = 2").fetchone()[0]
    data = canonical_json({"amount_cents": 99_900})
    forged = entry_hash(
        prev, entry_id=3, ts_ms=1, entity="claim", entity_id="cl-1", action="paid", actor="x", data=data
    )
    intruder.execute(
        "INSERT INTO audit (id, ts_ms, entity, entity_id, action, actor, data, prev_hash, hash)"
        " VALUES (3, 1, 'claim', 'cl-1', 'paid', 'x', ?, ?, ?)",
        (data, prev + "x", forged),  # prev_hash is UNIQUE: the forger cannot even reuse entry 3's link
    )
    assert verify_chain(db).first_bad_id == 3


def test_an_anchor_finds_truncation_and_a_rewritten_chain(db: Path, intruder: sqlite3.Connection) -> None:
    with closing(sqlite3.connect(db)) as conn:
        anchor = head(conn)
    assert anchor is not None
    assert verify_chain(db, anchor=anchor).ok
    # Dropping the newest entry leaves a valid shorter chain: only the anchor tells.
    intruder.execute("DELETE FROM audit WHERE id = 5")
    assert verify_chain(db).ok
    truncated = verify_chain(db, anchor=anchor)
    assert truncated.ok is False
    assert "missing" in (truncated.reason or "")
    # Re-appending a different entry 5 makes a valid chain again, but not the anchored one.
    intruder.execute("BEGIN")
    append(intruder, entity="alarm", entity_id="al-1", action="closed", actor="intruder", data={}, ts_ms=1)
    intruder.execute("COMMIT")
    assert verify_chain(db).ok
    rewritten = verify_chain(db, anchor=anchor)
    assert (rewritten.ok, rewritten.first_bad_id) == (False, 5)


def test_an_empty_log_verifies_and_a_missing_table_does_not(tmp_path: Path) -> None:
    empty = tmp_path / "empty.sqlite3"
    with closing(sqlite3.connect(empty)) as conn:
        conn.executescript(AUDIT_DDL)
    assert verify_chain(empty) == verify_chain(empty)
    assert verify_chain(empty).ok
    assert verify_chain(empty).entries == 0
    bare = tmp_path / "bare.sqlite3"
    sqlite3.connect(bare).close()
    report = verify_chain(bare)
    assert report.ok is False
    assert "no audit table" in (report.reason or "")


def test_a_missing_file_is_reported_not_raised(tmp_path: Path) -> None:
    report = verify_chain(tmp_path / "absent.sqlite3")
    assert report.ok is False
    assert "cannot open" in (report.reason or "")
    assert not (tmp_path / "absent.sqlite3").exists()  # read-only: verifying never creates a database
