"""hub.outbox dispatcher against real HTTP: the reference receiver under uvicorn, a dead port, a flaky receiver."""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import closing
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI, Request, Response

from hub import webhooks
from hub.db import Database
from hub.notify import Endpoint
from hub.outbox import OutboxDispatcher, OutboxRow, OutboxTable, enqueue
from hub.receiver import ReceiverServer, create_receiver_app
from tests.support.store import writing

SECRET = b"shop-platform-secret-0001"
T0_MS = int(time.time() * 1000)
"""The clock of dispatchers driven by ``run_once``, and of their receivers (``receiver_at_t0``): a receiver on the
real clock refused their signatures as stale when a slow suite reached these tests more than its 5-minute
tolerance after import."""


def receiver_at_t0() -> FastAPI:
    return create_receiver_app([SECRET], wall_clock=lambda: T0_MS / 1000)


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def claim(i: int) -> bytes:
    return json.dumps({"claim_id": f"c-{i}", "order_id": f"o-{i}", "amount_cents": 100 * i}).encode()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "hub.sqlite3"
    Database.of(path).upgrade()
    return path


def add(db: Path, event_id: str, endpoint: str, payload: bytes, now_ms: int = T0_MS) -> bool:
    with writing(db) as conn:
        return enqueue(conn, event_id=event_id, endpoint=endpoint, kind="claim", payload=payload, now_ms=now_ms)


def rows(db: Path) -> dict[str, tuple[int, int | None, int, str | None]]:
    with closing(sqlite3.connect(db)) as conn:
        found = conn.execute("SELECT event_id, attempts, delivered_ms, next_attempt_ms, last_error FROM outbox")
        return {event: (attempts, delivered, next_ms, error) for event, attempts, delivered, next_ms, error in found}


@pytest.fixture
def receiver() -> Iterator[ReceiverServer]:
    """For dispatchers driven by ``run_once`` at ``T0_MS``."""
    server = ReceiverServer(receiver_at_t0()).start()
    yield server
    server.stop()


@pytest.fixture
def live_receiver() -> Iterator[ReceiverServer]:
    """On the real clock, for dispatcher threads on the real clock."""
    server = ReceiverServer(create_receiver_app([SECRET])).start()
    yield server
    server.stop()


def accepted(server: ReceiverServer) -> list[dict[str, object]]:
    listing: list[dict[str, object]] = httpx.get(f"{server.url}/claims", timeout=5).json()
    return listing


def dispatcher(db: Path, endpoints: dict[str, str], **kwargs: object) -> tuple[OutboxDispatcher, OutboxTable]:
    outbox = OutboxTable(db)
    configured = {name: Endpoint(name=name, url=url, format="claim", timeout_s=2.0) for name, url in endpoints.items()}
    secrets = dict.fromkeys(configured, SECRET)
    return OutboxDispatcher(outbox, configured, secrets=secrets, jitter=lambda: 0.0, **kwargs), outbox  # type: ignore[arg-type]


def test_claims_reach_the_receiver_signed_and_are_marked_delivered(db: Path, receiver: ReceiverServer) -> None:
    for i in range(3):
        add(db, f"claim:c-{i}", "shop", claim(i))
    seen: list[tuple[str, int]] = []
    d, outbox = dispatcher(
        db, {"shop": f"{receiver.url}/claims"}, on_delivered=lambda row, ms: seen.append((row.event_id, ms))
    )
    try:
        assert d.run_once(T0_MS) == 3
        assert outbox.pending_count() == 0
        assert d.run_once(T0_MS + 60_000) == 0  # nothing is sent twice
    finally:
        d.stop()
        outbox.close()
    assert [c["event_id"] for c in accepted(receiver)] == ["claim:c-0", "claim:c-1", "claim:c-2"]
    assert [c["body"] for c in accepted(receiver)] == [json.loads(claim(i)) for i in range(3)]
    assert [event for event, _ in seen] == ["claim:c-0", "claim:c-1", "claim:c-2"]
    assert d.counters() == {"delivered": {"shop": 3}, "failed_attempts": {}}
    assert all(delivered is not None and attempts == 1 for attempts, delivered, _, _ in rows(db).values())


def test_a_resend_after_a_lost_acknowledgement_is_dropped_as_duplicate(
    db: Path, tmp_path: Path, receiver: ReceiverServer
) -> None:
    # The crash between the receiver's 2xx and our "delivered" mark: the same row goes out again.
    # Replayed here with a second outbox holding the same event, as the restarted hub would.
    add(db, "claim:c-1", "shop", claim(1))
    replay_db = tmp_path / "replay.sqlite3"
    Database.of(replay_db).upgrade()
    add(replay_db, "claim:c-1", "shop", claim(1), now_ms=T0_MS + 1000)
    for path, now_ms in ((db, T0_MS), (replay_db, T0_MS + 1000)):
        d, outbox = dispatcher(path, {"shop": f"{receiver.url}/claims"})
        try:
            assert d.run_once(now_ms) == 1  # "duplicate" is a 2xx: the sender stops retrying
        finally:
            d.stop()
            outbox.close()
    assert [c["event_id"] for c in accepted(receiver)] == ["claim:c-1"]


def test_a_tampered_signature_is_refused_by_the_receiver(receiver: ReceiverServer) -> None:
    body = claim(1)
    header = webhooks.sign(SECRET, body, timestamp_s=T0_MS // 1000)
    tampered = header[:-1] + ("0" if header[-1] != "0" else "1")
    answer = httpx.post(
        f"{receiver.url}/claims",
        content=body,
        headers={webhooks.SIGNATURE_HEADER: tampered, webhooks.EVENT_ID_HEADER: "claim:c-1"},
        timeout=5,
    )
    assert (answer.status_code, answer.json()["error"]) == (401, "bad_signature")
    assert accepted(receiver) == []


def test_a_dead_endpoint_is_retried_with_backoff_and_holds_up_no_one(db: Path, receiver: ReceiverServer) -> None:
    dead_url = f"http://127.0.0.1:{free_port()}/claims"
    add(db, "dead:1", "dead", claim(1))
    add(db, "dead:2", "dead", claim(2))
    add(db, "shop:1", "shop", claim(3))
    d, outbox = dispatcher(db, {"dead": dead_url, "shop": f"{receiver.url}/claims"})
    try:
        assert d.run_once(T0_MS) == 1
        state = rows(db)
        assert state["shop:1"][1] is not None
        attempts, delivered, next_ms, error = state["dead:1"]
        assert (attempts, delivered, next_ms) == (1, None, T0_MS + 5000)  # jitter 0: the nominal 5 s
        assert error is not None
        assert error.startswith("ConnectError")
        # The second queued row is not tried while the endpoint is known dead: one probe per backoff step.
        assert state["dead:2"][0] == 0
        assert d.run_once(T0_MS + 4999) == 0
        assert d.counters()["failed_attempts"] == {"dead": 1}
        # Due again: probed again, and the wait doubles.
        assert d.run_once(T0_MS + 5000) == 0
        assert rows(db)["dead:1"][:3] == (2, None, T0_MS + 5000 + 10_000)
        # New work for the healthy endpoint flows meanwhile.
        add(db, "shop:2", "shop", claim(4), now_ms=T0_MS + 6000)
        assert d.run_once(T0_MS + 6000) == 1
        assert outbox.pending_count() == 2
    finally:
        d.stop()
        outbox.close()
    assert d.counters() == {"delivered": {"shop": 2}, "failed_attempts": {"dead": 2}}


def test_a_slow_endpoint_does_not_delay_the_others_in_the_thread(db: Path, live_receiver: ReceiverServer) -> None:
    # A listener that accepts and never answers: each attempt waits for the full timeout.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        add(db, "slow:1", "slow", claim(1), now_ms=0)
        outbox = OutboxTable(db)
        endpoints = {
            "slow": Endpoint(
                name="slow", url=f"http://127.0.0.1:{silent.getsockname()[1]}/", format="claim", timeout_s=3
            ),
            "shop": Endpoint(name="shop", url=f"{live_receiver.url}/claims", format="claim"),
        }
        d = OutboxDispatcher(outbox, endpoints, secrets=dict.fromkeys(endpoints, SECRET))
        d.start()
        try:
            time.sleep(0.7)  # the slow send is in flight
            add(db, "shop:1", "shop", claim(2), now_ms=int(time.time() * 1000))
            deadline = time.monotonic() + 2.0  # well inside the slow endpoint's 3 s timeout
            while not accepted(live_receiver) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert [c["event_id"] for c in accepted(live_receiver)] == ["shop:1"]
        finally:
            d.stop()
            outbox.close()
    assert rows(db)["slow:1"][3] is not None  # the slow one timed out and was rescheduled
    assert rows(db)["slow:1"][3].startswith("ReadTimeout")  # type: ignore[union-attr]


def test_a_flaky_receiver_gets_the_claim_exactly_once(db: Path) -> None:
    app = receiver_at_t0()
    failures_left = [3]
    lock = threading.Lock()

    @app.middleware("http")
    async def fail_first_posts(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        with lock:
            fail = request.method == "POST" and failures_left[0] > 0
            failures_left[0] -= fail
        if fail:
            return Response("temporarily broken", status_code=500)
        return await call_next(request)

    server = ReceiverServer(app).start()
    add(db, "claim:c-9", "shop", claim(9))
    d, outbox = dispatcher(db, {"shop": f"{server.url}/claims"})
    now = T0_MS
    try:
        results = []
        for _ in range(6):
            results.append(d.run_once(now))
            now = rows(db)["claim:c-9"][2]  # jump to the next scheduled attempt
        assert results == [0, 0, 0, 1, 0, 0]
        attempts, delivered, _, error = rows(db)["claim:c-9"]
        assert (attempts, error) == (4, None)
        assert delivered is not None
        assert d.counters() == {"delivered": {"shop": 1}, "failed_attempts": {"shop": 3}}
        assert [c["event_id"] for c in accepted(server)] == ["claim:c-9"]
    finally:
        d.stop()
        outbox.close()
        server.stop()


def test_an_unknown_endpoint_is_kept_and_retried(db: Path) -> None:
    add(db, "claim:c-1", "retired-shop", claim(1))
    d, outbox = dispatcher(db, {})
    try:
        assert d.run_once(T0_MS) == 0
        attempts, delivered, next_ms, error = rows(db)["claim:c-1"]
        assert (attempts, delivered, next_ms) == (1, None, T0_MS + 5000)
        assert error is not None
        assert "unknown endpoint" in error
        assert outbox.pending_count() == 1
    finally:
        d.stop()
        outbox.close()


def test_the_thread_delivers_with_real_clocks(db: Path, live_receiver: ReceiverServer) -> None:
    delivered = threading.Event()

    def note(row: OutboxRow, ms: int) -> None:
        delivered.set()

    d, outbox = dispatcher(db, {"shop": f"{live_receiver.url}/claims"}, on_delivered=note)
    d.start()
    try:
        add(db, "claim:live", "shop", claim(5), now_ms=int(time.time() * 1000))
        assert delivered.wait(5)
        assert outbox.pending_count() == 0
    finally:
        d.stop()
        outbox.close()
    assert [c["event_id"] for c in accepted(live_receiver)] == ["claim:live"]


def test_the_url_never_reaches_the_error_column(db: Path) -> None:
    secret_url = f"http://127.0.0.1:{free_port()}/claims?token=very-secret-token"
    add(db, "claim:c-1", "shop", claim(1))
    d, outbox = dispatcher(db, {"shop": secret_url})
    try:
        d.run_once(T0_MS)
    finally:
        d.stop()
        outbox.close()
    error = rows(db)["claim:c-1"][3]
    assert error is not None
    assert "very-secret-token" not in error
