"""The transactional outbox and its dispatcher: what the hub owes the outside world, sent until acknowledged.

A claim or an alarm notification is written to ``outbox`` in the same transaction as the state
change that caused it, with :func:`enqueue`. The dispatcher, on its own thread and its own
connection, posts each due row and marks it delivered on a 2xx; anything else is retried with
exponential backoff, forever. Together with the receiver's event-id dedup this is "exactly once":

- a crash before the commit loses both the state change and the row: nothing was promised;
- a crash between the commit and the send leaves the row due: it is sent after the restart;
- a crash between the receiver's 2xx and our ``delivered`` mark re-sends the row: the receiver
  recognises the event id and answers "duplicate", which is a 2xx, and the row is marked.

Re-running the policy that created a claim enqueues the same event id again, which is a no-op.
Several dispatchers on one outbox (a second hub process) can at worst send a row twice, which the
same event-id dedup absorbs.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import httpx
import msgspec
from sqlalchemy import Connection, text

from hub import webhooks
from hub.db import Database, StoreError
from hub.notify import CLAIM_FORMAT, AlarmNotice, Endpoint, NotificationFormat, NotifyError, PreparedRequest, render

log = logging.getLogger(__name__)

CLAIM_KIND: Final = "claim"
"""Rows of this kind are posted as their own JSON payload; every other kind is an :class:`AlarmNotice`."""

BACKOFF_BASE_S: Final = 5.0
"""First retry after about 5 s: a receiver restarting or a brief network blip is over by then."""

BACKOFF_MAX_S: Final = 3600.0
"""Never wait more than an hour: a shop platform down for a day hears from us within the hour it returns."""

BACKOFF_JITTER: Final = 0.2
"""Each wait is 80-100 % of the nominal one, so rows that failed together do not retry in lockstep."""

POLL_INTERVAL_S: Final = 0.5
"""How often the thread looks for due rows; a new claim goes out within half a second."""

BATCH_LIMIT: Final = 100
"""Rows read per poll; the fair ordering of :meth:`OutboxTable.due` puts every endpoint's head first."""

ERROR_KEEP_CHARS: Final = 500
"""Enough of an error to diagnose it in ``last_error`` without storing a whole HTML error page."""

ROBOT_FORMATS: Final = frozenset({"dingtalk", "wecom", "feishu"})
"""Group robots answer HTTP 200 even when they refuse a message; the body's code says which."""

_MAX_EXPONENT: Final = 30  # 5 s * 2**30 is far past the cap; bounding it keeps the float finite


@dataclass(frozen=True)
class OutboxRow:
    """One undelivered message as the dispatcher sees it."""

    id: int
    event_id: str
    endpoint: str
    kind: str
    payload: bytes
    created_ms: int
    attempts: int
    next_attempt_ms: int


def enqueue(conn: Connection, *, event_id: str, endpoint: str, kind: str, payload: bytes, now_ms: int) -> bool:
    """Add a message inside the caller's open transaction; False if ``event_id`` is already queued.

    Never commits: the row must become visible together with the state change that caused it.
    """
    cursor = conn.execute(
        text(
            "INSERT INTO outbox (event_id, endpoint, kind, payload, created_ms, next_attempt_ms)"
            " VALUES (:event_id, :endpoint, :kind, :payload, :now, :now) ON CONFLICT (event_id) DO NOTHING"
        ),
        {"event_id": event_id, "endpoint": endpoint, "kind": kind, "payload": payload, "now": now_ms},
    )
    return cursor.rowcount == 1


def backoff_s(failures: int, jitter: float) -> float:
    """Seconds to wait after ``failures`` consecutive failures; ``jitter`` is uniform in [0, 1)."""
    nominal = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0 ** min(max(failures, 1) - 1, _MAX_EXPONENT))
    return nominal * (1.0 - BACKOFF_JITTER * jitter)


class OutboxTable:
    """The dispatcher's access to the outbox table, on pooled connections of the system of record.

    Each call is one short statement in its own transaction, safe from any of the dispatcher's workers.
    """

    def __init__(self, target: Database | Path | str) -> None:
        self._owns_database = not isinstance(target, Database)
        self.database = Database.of(target)
        if self._owns_database:  # a shared database was migrated (or checked) by its owner already
            self.database.upgrade()

    def due(self, now_ms: int, limit: int) -> list[OutboxRow]:
        """Undelivered rows whose time has come, in enqueue order per endpoint, endpoints interleaved.

        Interleaving (every endpoint's first row, then every endpoint's second, ...) keeps a dead
        endpoint's backlog from filling ``limit`` and starving the healthy ones.
        """
        with self.database.reading() as conn:
            rows = conn.execute(
                text(
                    "SELECT id, event_id, endpoint, kind, payload, created_ms, attempts, next_attempt_ms FROM ("
                    " SELECT *, ROW_NUMBER() OVER (PARTITION BY endpoint ORDER BY id) AS turn"
                    " FROM outbox WHERE delivered_ms IS NULL AND next_attempt_ms <= :now"
                    ") AS due_rows ORDER BY turn, id LIMIT :limit"
                ),
                {"now": now_ms, "limit": limit},
            ).all()
        return [OutboxRow(row[0], row[1], row[2], row[3], bytes(row[4]), row[5], row[6], row[7]) for row in rows]

    def delivered(self, row_id: int, now_ms: int) -> None:
        """Mark a row acknowledged by its receiver."""
        with self.database.writing() as conn:
            conn.execute(
                text(
                    "UPDATE outbox SET delivered_ms = :now, attempts = attempts + 1, last_error = NULL WHERE id = :id"
                ),
                {"now": now_ms, "id": row_id},
            )

    def retry_later(self, row_id: int, next_attempt_ms: int, error: str) -> None:
        """Count a failed attempt and schedule the next one."""
        with self.database.writing() as conn:
            conn.execute(
                text(
                    "UPDATE outbox SET attempts = attempts + 1, next_attempt_ms = :next, last_error = :error"
                    " WHERE id = :id"
                ),
                {"next": next_attempt_ms, "error": error[:ERROR_KEEP_CHARS], "id": row_id},
            )

    def pending_count(self) -> int:
        """Rows not yet acknowledged, due or waiting for a retry."""
        with self.database.reading() as conn:
            return int(conn.execute(text("SELECT COUNT(*) FROM outbox WHERE delivered_ms IS NULL")).scalar_one())

    def close(self) -> None:
        """Close the pool if this table opened the database itself (a shared one is its owner's)."""
        if self._owns_database:
            self.database.dispose()


class DeliveryError(Exception):
    """One attempt failed; the message is safe to store and log (no secret, no credential-bearing URL).

    ``endpoint_down`` is False when only this row is at fault (its payload cannot be rendered): the
    endpoint's next rows still go out, so one poison row cannot block a queue forever.
    """

    def __init__(self, message: str, *, endpoint_down: bool = True) -> None:
        super().__init__(message)
        self.endpoint_down = endpoint_down


class OutboxDispatcher:
    """Posts due outbox rows to their endpoints on a daemon thread, never blocking the hub's ingest.

    Each endpoint gets at most one worker at a time, sending its rows in enqueue order and stopping
    when the endpoint fails (transport error, non-2xx, a robot's error code); the endpoint is then
    left alone until its failed row is due again, so a dead receiver is probed once per backoff step
    rather than once per queued row. A row that cannot be rendered is rescheduled on its own and the
    rows behind it go on. Endpoints run side by side, so one that times out delays nobody else.
    """

    def __init__(
        self,
        outbox: OutboxTable,
        endpoints: Mapping[str, Endpoint],
        *,
        secrets: Mapping[str, bytes],
        client: httpx.Client | None = None,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        on_delivered: Callable[[OutboxRow, int], None] | None = None,
        jitter: Callable[[], float] = random.random,
        language: str = "zh",
    ) -> None:
        self._outbox = outbox
        self._endpoints = dict(endpoints)
        self._secrets = dict(secrets)
        self._own_client = client is None
        # No redirects: a signed claim must reach the configured URL, not wherever a 3xx points.
        self._client = client if client is not None else httpx.Client(follow_redirects=False)
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._on_delivered = on_delivered
        self._jitter = jitter
        self._language = language
        self._lock = threading.Lock()
        self._dispatch_lock = threading.Lock()  # run_once() and the thread never read due rows at the same time
        self._busy: set[str] = set()
        self._hold_until_ms: dict[str, int] = {}
        self._delivered: Counter[str] = Counter()
        self._failed: Counter[str] = Counter()
        self._executor = ThreadPoolExecutor(max_workers=max(1, len(self._endpoints)), thread_name_prefix="outbox")
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Run the dispatcher on a daemon thread until :meth:`stop` (a stopped dispatcher is not restarted)."""
        if self._thread is not None:
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="outbox-dispatcher", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """New rows were committed: look now instead of at the next poll (alarm and claim latency)."""
        self._wake.set()

    def stop(self) -> None:
        """Stop the thread, let in-flight sends finish (each bounded by its timeout) and release the client."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        self._executor.shutdown(wait=True)
        if self._own_client:
            self._client.close()

    def run_once(self, now_ms: int) -> int:
        """Send what is due at ``now_ms`` and wait for it; returns how many rows were delivered."""
        return sum(future.result() for future in self._dispatch(now_ms))

    def counters(self) -> dict[str, dict[str, int]]:
        """``{"delivered": {endpoint: n}, "failed_attempts": {endpoint: n}}`` since start, for /healthz."""
        with self._lock:
            return {"delivered": dict(self._delivered), "failed_attempts": dict(self._failed)}

    def _loop(self) -> None:
        while not self._stop.is_set():
            started = self._monotonic()
            try:
                self._dispatch(int(self._wall_clock() * 1000))
            except StoreError:
                # The database is the hub's; a locked file or a restarting server is retried next poll.
                log.exception("outbox: cannot read due rows")
            # Polling stays as the fallback (retries falling due); a commit that queued rows wakes us at once.
            self._wake.wait(max(0.0, POLL_INTERVAL_S - (self._monotonic() - started)))
            self._wake.clear()

    def _dispatch(self, now_ms: int) -> list[Future[int]]:
        with self._dispatch_lock:
            # Busy endpoints are noted BEFORE reading the rows: a worker marks its rows delivered before it
            # leaves the busy set, so an endpoint idle at this point has no stale row in what we read next.
            with self._lock:
                skip = set(self._busy) | {name for name, until in self._hold_until_ms.items() if until > now_ms}
            by_endpoint: dict[str, list[OutboxRow]] = {}
            for row in self._outbox.due(now_ms, BATCH_LIMIT):
                if row.endpoint not in skip:
                    by_endpoint.setdefault(row.endpoint, []).append(row)
            with self._lock:
                self._busy.update(by_endpoint)
            return [self._executor.submit(self._drain, name, rows, now_ms) for name, rows in by_endpoint.items()]

    def _drain(self, name: str, rows: list[OutboxRow], now_ms: int) -> int:
        """Send one endpoint's due rows in order; stop when the endpoint fails."""
        sent = 0
        try:
            for row in rows:
                try:
                    self._attempt(row, now_ms)
                except DeliveryError as exc:
                    if exc.endpoint_down:
                        break
                    continue
                sent += 1
        except Exception:
            # On the thread nobody reads the future: say it here (run_once still sees the exception).
            log.exception("outbox: worker for %s stopped on an unexpected error", name)
            raise
        finally:
            with self._lock:
                self._busy.discard(name)
        return sent

    def _attempt(self, row: OutboxRow, now_ms: int) -> None:
        """Send one row and record the outcome; a failure is recorded, then re-raised for :meth:`_drain`."""
        endpoint = self._endpoints.get(row.endpoint)
        try:
            if endpoint is None:
                raise DeliveryError(f"unknown endpoint {row.endpoint!r}; kept until it is configured")
            self._send(endpoint, row, now_ms)
        except DeliveryError as exc:
            next_ms = now_ms + int(backoff_s(row.attempts + 1, self._jitter()) * 1000)
            with self._lock:
                self._failed[row.endpoint] += 1
                if exc.endpoint_down:
                    self._hold_until_ms[row.endpoint] = next_ms
            self._outbox.retry_later(row.id, next_ms, str(exc))
            log.warning(
                "outbox: %s to %s failed (attempt %d): %s; next try in %.0f s",
                row.event_id,
                row.endpoint,
                row.attempts + 1,
                exc,
                (next_ms - now_ms) / 1000,
            )
            raise
        delivered_ms = int(self._wall_clock() * 1000)
        self._outbox.delivered(row.id, delivered_ms)
        with self._lock:
            self._delivered[row.endpoint] += 1
            self._hold_until_ms.pop(row.endpoint, None)
        log.info("outbox: %s delivered to %s", row.event_id, row.endpoint)
        if self._on_delivered is not None:
            self._on_delivered(row, delivered_ms)

    def _send(self, endpoint: Endpoint, row: OutboxRow, now_ms: int) -> None:
        request = self._prepare(endpoint, row, now_ms)
        try:
            response = self._client.post(
                request.url, content=request.body, headers=request.headers, timeout=endpoint.timeout_s
            )
        except httpx.HTTPError as exc:
            # httpx messages name the failure ("Connection refused", "timed out"); the URL is redacted anyway.
            raise DeliveryError(f"{type(exc).__name__}: {_without(str(exc), endpoint.url)}") from None
        if not response.is_success:
            raise DeliveryError(f"HTTP {response.status_code}")
        robot_error = _robot_error(endpoint, response)
        if robot_error is not None:
            raise DeliveryError(robot_error)

    def _prepare(self, endpoint: Endpoint, row: OutboxRow, now_ms: int) -> PreparedRequest:
        secret = self._secrets.get(endpoint.name)
        if row.kind == CLAIM_KIND or endpoint.format == CLAIM_FORMAT:
            if secret is None:
                raise DeliveryError(f"endpoint {endpoint.name} has no secret to sign with")
            headers = {
                "Content-Type": "application/json",
                webhooks.SIGNATURE_HEADER: webhooks.sign(secret, row.payload, timestamp_s=now_ms // 1000),
                webhooks.EVENT_ID_HEADER: row.event_id,
            }
            return PreparedRequest(endpoint.url, row.payload, headers)
        try:
            notice = msgspec.json.decode(row.payload, type=AlarmNotice)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            # Kept and retried rather than dropped: a fix to the code that wrote it lets it through.
            raise DeliveryError(f"cannot render {row.kind} for {endpoint.name}: {exc}", endpoint_down=False) from None
        try:
            return render(
                NotificationFormat(endpoint.format),
                notice,
                url=endpoint.url,
                secret=secret,
                now_ms=now_ms,
                language=self._language,
                event_id=row.event_id,
            )
        except NotifyError as exc:
            # A configuration fault of the endpoint (no secret for a signed format): every row would fail alike.
            raise DeliveryError(f"endpoint {endpoint.name}: {exc}") from None


def _without(text: str, url: str) -> str:
    return text.replace(url, "<endpoint url>")


def _robot_error(endpoint: Endpoint, response: httpx.Response) -> str | None:
    """The robots answer HTTP 200 with an error code in the body (bad signature, rate limit, keyword)."""
    if endpoint.format not in ROBOT_FORMATS:
        return None
    try:
        answer = response.json()
    except ValueError:
        return None  # not JSON: nothing more to learn than the 2xx
    if not isinstance(answer, dict):
        return None
    code = answer.get("errcode", answer.get("code", 0))
    if code in (0, None):
        return None
    detail = answer.get("errmsg", answer.get("msg", ""))
    return f"{endpoint.format} answered code {code}: {str(detail)[:200]}"
