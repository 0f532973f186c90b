"""Writers of one process take turns on a SQLite store in Python, not in SQLite's busy handler (hub/db.py)."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest
import sqlalchemy as sa

from hub import db
from hub.db import Database
from hub.store import IngestWriter

HOLD_S = 0.6
BUSY_TIMEOUT_S = 0.1  # far shorter than HOLD_S: a writer left to SQLite's busy handler would fail
INSERT = "INSERT INTO export_cursors (name, position, updated_ms) VALUES (:name, :position, 0)"


@pytest.fixture
def database(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Database:
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", BUSY_TIMEOUT_S)
    database = Database(db.sqlite_url(tmp_path / "hub.sqlite3"))
    database.upgrade()
    return database


@contextmanager
def write_held_elsewhere(transaction: Callable[[], AbstractContextManager[sa.Connection]]) -> Iterator[None]:
    """While inside, another thread is in a write transaction (it has written a row) for ``HOLD_S``."""
    holding = threading.Event()

    def hold() -> None:
        with transaction() as conn:
            conn.execute(sa.text(INSERT), {"name": "held", "position": 1})
            holding.set()
            threading.Event().wait(HOLD_S)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert holding.wait(5)
        yield
    finally:
        holder.join()


def test_a_pooled_writer_waits_for_the_ingest_writer_instead_of_failing_as_locked(database: Database) -> None:
    writer = IngestWriter(database)
    with write_held_elsewhere(writer.transaction), database.writing() as conn:  # the outbox's kind of write
        conn.execute(sa.text(INSERT), {"name": "after", "position": 2})
    with database.reading() as conn:
        rows = conn.execute(sa.text("SELECT name FROM export_cursors ORDER BY position")).scalars().all()
    assert rows == ["held", "after"]


def test_without_the_gate_the_same_writes_fail_as_locked(database: Database) -> None:
    # The test above is only worth something if SQLite alone would refuse the second writer.
    other = Database(database.url)  # another Database has another gate, as another process would
    try:
        with (
            write_held_elsewhere(database.writing),
            pytest.raises(db.StoreError, match="locked"),
            other.writing() as conn,
        ):
            conn.execute(sa.text(INSERT), {"name": "after", "position": 2})
    finally:
        other.dispose()
