"""Live lot updates (SSE): one poller per watched lot broadcasting to every viewer.

The broadcaster is tested with a fake ``lot`` function; the route end to end through the ASGI app
with a minimal in-process ASGI client, since the test clients buffer whole responses."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

import pytest
from fastapi import HTTPException

from coldchain.messages import Quantity, Reading
from hub.traceability import public
from hub.traceability.public import LotBroadcaster
from tests.support.trace import T0, Setup

STEP = 5.0  # generous bound on any single wait, so a broken feature fails instead of hanging


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class FakeLot:
    """A lot whose body is its version; counts calls and can fail."""

    def __init__(self) -> None:
        self.version = 1
        self.calls = 0
        self.error: Exception | None = None

    def __call__(self, lot_id: str) -> tuple[bytes, str]:
        self.calls += 1
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return f"v{self.version}".encode(), f'"{self.version}"'


async def take(queue: asyncio.Queue[bytes | None]) -> bytes | None:
    async with asyncio.timeout(STEP):
        return await queue.get()


async def gone(broadcaster: LotBroadcaster, lot_id: str, task: asyncio.Task[None]) -> bool:
    """Whether the lot's poller is unregistered and has finished."""
    await asyncio.wait([task], timeout=STEP)
    return broadcaster.poller(lot_id) is None and task.done()


@pytest.mark.anyio
async def test_twenty_viewers_share_one_poll_per_tick_and_all_see_each_change() -> None:
    lot, tick = FakeLot(), 0.02
    broadcaster = LotBroadcaster(lot, threading.Event(), tick_s=tick)
    started = time.monotonic()
    with ExitStack() as stack:
        queues = [stack.enter_context(broadcaster.subscribe("LOT-7")) for _ in range(20)]
        assert [await take(q) for q in queues] == [b"v1"] * 20
        for version in (2, 3, 4):
            lot.version = version
            assert [await take(q) for q in queues] == [f"v{version}".encode()] * 20
        elapsed = time.monotonic() - started
        task = broadcaster.poller("LOT-7")
        assert task is not None
    # Each poll is followed by a tick's sleep; a poller per viewer would call 20 times as often.
    assert 1 <= lot.calls <= elapsed / tick + 2
    assert await gone(broadcaster, "LOT-7", task)


@pytest.mark.anyio
async def test_a_viewer_that_never_reads_holds_only_the_newest_body_and_blocks_no_one() -> None:
    lot = FakeLot()
    broadcaster = LotBroadcaster(lot, threading.Event(), tick_s=0.01)
    with broadcaster.subscribe("LOT-7") as idle, broadcaster.subscribe("LOT-7") as reader:
        assert await take(reader) == b"v1"
        for version in range(2, 12):
            lot.version = version
            assert await take(reader) == f"v{version}".encode()
        assert idle.qsize() == 1
        assert idle.get_nowait() == b"v11"  # older undelivered bodies were replaced, not queued


@pytest.mark.anyio
async def test_a_late_viewer_gets_the_current_body_at_once() -> None:
    lot = FakeLot()
    broadcaster = LotBroadcaster(lot, threading.Event(), tick_s=3600)  # no second poll during the test
    with broadcaster.subscribe("LOT-7") as early:
        assert await take(early) == b"v1"
        with broadcaster.subscribe("LOT-7") as late:
            assert late.get_nowait() == b"v1"
    assert lot.calls == 1


@pytest.mark.anyio
async def test_the_poller_survives_an_error_and_ends_the_streams_when_the_lot_disappears(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lot = FakeLot()
    lot.error = RuntimeError("store unavailable")
    broadcaster = LotBroadcaster(lot, threading.Event(), tick_s=0.01)
    with caplog.at_level(logging.WARNING, logger=public.__name__), broadcaster.subscribe("LOT-7") as queue:
        assert await take(queue) == b"v1"  # the next tick after the failure
        assert any("LOT-7" in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
        task = broadcaster.poller("LOT-7")
        assert task is not None
        lot.error = HTTPException(404, "no such lot")
        assert await take(queue) is None
        assert await gone(broadcaster, "LOT-7", task)
    lot.version = 2  # the lot is created again: a new viewer gets a new poller
    with broadcaster.subscribe("LOT-7") as again:
        assert await take(again) == b"v2"


@pytest.mark.anyio
async def test_hub_shutdown_ends_the_streams() -> None:
    closing = threading.Event()
    broadcaster = LotBroadcaster(FakeLot(), closing, tick_s=0.01)
    with broadcaster.subscribe("LOT-7") as queue:
        assert await take(queue) == b"v1"
        task = broadcaster.poller("LOT-7")
        assert task is not None
        closing.set()
        assert await take(queue) is None
        assert await gone(broadcaster, "LOT-7", task)


# -- through the app ---------------------------------------------------------------------------


class SseViewer:
    """One GET of an SSE route driven straight through the ASGI app, as uvicorn would (ASGI 2.3)."""

    def __init__(self, app: Callable[..., object], path: str) -> None:
        self._app, self._path = app, path
        self.status: int | None = None
        self.chunks: asyncio.Queue[bytes] = asyncio.Queue()
        self._left = asyncio.Event()
        self._requested = False
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": self._path,
            "raw_path": self._path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"host", b"testserver"), (b"accept", b"text/event-stream")],
            "client": ("203.0.113.9", 50000),
            "server": ("testserver", 80),
        }
        await self._app(scope, self._receive, self._send)

    async def _receive(self) -> dict[str, object]:
        if not self._requested:
            self._requested = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await self._left.wait()
        return {"type": "http.disconnect"}

    async def _send(self, message: dict[str, object]) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif message.get("body"):
            self.chunks.put_nowait(message["body"])

    async def event(self) -> dict[str, object]:
        """The next ``lot`` event's view, skipping keepalives."""
        while True:
            chunk = await self.chunk()
            if chunk.startswith(b"event: lot\ndata: "):
                assert chunk.endswith(b"\n\n")
                return json.loads(chunk.removeprefix(b"event: lot\ndata: "))

    async def chunk(self) -> bytes:
        async with asyncio.timeout(STEP):
            return await self.chunks.get()

    async def leave(self) -> None:
        """Disconnect and wait for the app to finish the request."""
        self._left.set()
        async with asyncio.timeout(STEP):
            await self.task


@pytest.fixture
def live(tmp_path: Path) -> Setup:
    s = Setup(tmp_path)
    s.journey()
    return s


@pytest.mark.anyio
async def test_viewers_of_a_lot_get_its_view_then_its_changes_from_one_poller(live: Setup) -> None:
    service = live.service
    calls = 0
    lot = service.lot

    def counting(lot_id: str) -> tuple[bytes, str]:
        nonlocal calls
        calls += 1
        return lot(lot_id)

    service.feeds = LotBroadcaster(counting, service.closing)
    started = time.monotonic()
    viewers = [SseViewer(live.app, "/public/v1/lots/LOT-7/events") for _ in range(20)]
    firsts = [await v.event() for v in viewers]
    assert {v.status for v in viewers} == {200}
    assert [f["current_temperature_c"] for f in firsts] == [6.0] * 20
    reading = Reading("t", Quantity.TEMPERATURE, T0 + 3_600_000 + 30 * 60_000, 7.5)
    await asyncio.to_thread(live.send, "gw-truck", [reading])
    changed = [await v.event() for v in viewers]
    assert [c["current_temperature_c"] for c in changed] == [7.5] * 20
    assert calls <= (time.monotonic() - started) / public.SSE_TICK_S + 2  # not 20 per tick
    task = service.feeds.poller("LOT-7")
    assert task is not None
    for viewer in viewers:
        await viewer.leave()
    assert await gone(service.feeds, "LOT-7", task)


@pytest.mark.anyio
async def test_an_idle_stream_sends_keepalives_and_ends_when_the_hub_stops(
    live: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(public, "SSE_WAKE_S", 0.01)
    monkeypatch.setattr(public, "SSE_KEEPALIVE_S", 0.05)
    viewer = SseViewer(live.app, "/public/v1/lots/LOT-7/events")
    await viewer.event()
    assert await viewer.chunk() == b": keepalive\n\n"
    live.service.closing.set()
    async with asyncio.timeout(STEP):
        await viewer.task  # the response ends without the client leaving


def test_an_unknown_lot_answers_404_before_any_stream(live: Setup) -> None:
    response = live.client.get("/public/v1/lots/NOPE/events")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"
