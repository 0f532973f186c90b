"""hub.outbox on SQLite and PostgreSQL: enqueue inside the caller's transaction, fair due order, backoff schedule."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from hub.db import Database
from hub.outbox import BACKOFF_BASE_S, BACKOFF_MAX_S, OutboxTable, backoff_s, enqueue
from tests.support.store import query


@pytest.fixture
def db(database_url: str) -> Iterator[Database]:
    database = Database(database_url)
    database.upgrade()  # as the hub's writer does before the dispatcher shares its database
    yield database
    database.dispose()


@pytest.fixture
def outbox(db: Database) -> Iterator[OutboxTable]:
    box = OutboxTable(db)
    yield box
    box.close()


def add(db: Database, event_id: str, endpoint: str = "shop", now_ms: int = 1000) -> bool:
    with db.writing() as conn:
        return enqueue(conn, event_id=event_id, endpoint=endpoint, kind="claim", payload=b"{}", now_ms=now_ms)


def test_enqueue_rides_the_callers_transaction(db: Database, outbox: OutboxTable) -> None:
    state_change = sa.text("INSERT INTO lots (lot_id, gtin, created_ms) VALUES ('L-1', '06901234567892', 1)")
    with db.engine.connect() as conn:
        with conn.begin() as transaction:
            conn.execute(state_change)
            assert enqueue(conn, event_id="claim:c-1", endpoint="shop", kind="claim", payload=b"{}", now_ms=5)
            assert outbox.pending_count() == 0  # not committed: the dispatcher cannot see it
            transaction.rollback()
        assert outbox.pending_count() == 0  # rolled back with the state change
        with conn.begin():
            conn.execute(state_change)
            enqueue(conn, event_id="claim:c-1", endpoint="shop", kind="claim", payload=b"{}", now_ms=5)
    assert outbox.pending_count() == 1


def test_enqueueing_the_same_event_twice_is_a_no_op(db: Database, outbox: OutboxTable) -> None:
    assert add(db, "claim:c-1") is True
    assert add(db, "claim:c-1", now_ms=99_999) is False
    assert outbox.pending_count() == 1
    [row] = outbox.due(10**12, 10)
    assert row.created_ms == 1000  # the first one stays as it was


def test_the_dispatchers_connection_creates_the_table(tmp_path: Path) -> None:
    box = OutboxTable(tmp_path / "fresh.sqlite3")
    try:
        assert box.pending_count() == 0
    finally:
        box.close()


def test_due_respects_next_attempt_and_delivery(db: Database, outbox: OutboxTable) -> None:
    add(db, "e1", now_ms=1000)
    add(db, "e2", now_ms=2000)
    assert [r.event_id for r in outbox.due(1500, 10)] == ["e1"]
    [first, second] = outbox.due(2000, 10)
    outbox.retry_later(first.id, 60_000, "HTTP 503")
    outbox.delivered(second.id, 2100)
    assert outbox.due(59_999, 10) == []
    [again] = outbox.due(60_000, 10)
    assert (again.event_id, again.attempts) == ("e1", 1)
    assert outbox.pending_count() == 1
    rows = query(db.display_url, "SELECT event_id, attempts, delivered_ms, last_error FROM outbox ORDER BY id")
    assert rows == [("e1", 1, None, "HTTP 503"), ("e2", 1, 2100, None)]


def test_due_interleaves_endpoints_so_a_backlog_cannot_starve_others(db: Database, outbox: OutboxTable) -> None:
    for i in range(50):
        add(db, f"dead-{i}", endpoint="dead", now_ms=i)
    add(db, "shop-1", endpoint="shop", now_ms=100)
    add(db, "robot-1", endpoint="robot", now_ms=200)
    heads = outbox.due(10_000, 3)
    assert sorted(r.endpoint for r in heads) == ["dead", "robot", "shop"]
    assert next(r for r in heads if r.endpoint == "dead").event_id == "dead-0"  # oldest first within one endpoint


def test_long_errors_are_cut(db: Database, outbox: OutboxTable) -> None:
    add(db, "e1")
    [row] = outbox.due(1000, 1)
    outbox.retry_later(row.id, 2000, "x" * 10_000)
    [(error,)] = query(db.display_url, "SELECT last_error FROM outbox")
    assert len(error) == 500


def test_backoff_doubles_from_5_s_to_an_hour() -> None:
    nominal = [backoff_s(n, 0.0) for n in range(1, 14)]
    assert nominal[:4] == [5.0, 10.0, 20.0, 40.0]
    assert nominal[-1] == BACKOFF_MAX_S == 3600.0
    assert backoff_s(10**6, 0.0) == BACKOFF_MAX_S  # forever, without overflow


@given(failures=st.integers(1, 10_000), jitter=st.floats(0.0, 1.0, exclude_max=True))
def test_jitter_keeps_each_wait_between_80_and_100_percent(failures: int, jitter: float) -> None:
    nominal = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2 ** min(failures - 1, 30))
    assert 0.8 * nominal - 1e-9 <= backoff_s(failures, jitter) <= nominal
