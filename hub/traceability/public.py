"""Public endpoints for livestream viewers and buyers: lot pages, the widget's data and live
updates, QR codes, GS1 Digital Link resolution, and buyer keys.

Thousands of viewers watch one live room, so a lot's view is computed at most once per
``LOT_CACHE_S`` and shared: the lot route answers from that cache without leaving the event loop
(the store is read in a thread only on a miss), and one poller per watched lot feeds every live
stream of it (``LotBroadcaster``). Answers carry an ETag and ``Cache-Control`` so CDNs and browsers
can keep them. Public paths are rate-limited per client by a plain ASGI middleware
(``PublicRateLimit``) that the staff and shop APIs pass through untouched, and are open to
embedding (CORS ``*``, GET only, no credentials).
Nothing here carries buyer personal data; positions are never exposed, only the node's city.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Annotated, Final

import msgspec
from fastapi import APIRouter, FastAPI, HTTPException, Request, Response, status
from fastapi import Path as PathParam
from fastapi.responses import RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Connection, text
from starlette.types import ASGIApp, Receive, Scope, Send

from hub import orders
from hub.db import Database
from hub.traceability import keys
from hub.traceability.digital_link import lot_uri
from hub.traceability.epcis import trail_document
from hub.traceability.model import LotView, NodeInfo, Trail
from hub.traceability.qr import qr_svg
from hub.traceability.settings import PublicSettings
from hub.traceability.trail import build_trail

LOT_CACHE_S: Final = 0.5
"""Lot data is recomputed at most this often, however many viewers ask."""
SSE_TICK_S: Final = 0.25
"""With the cache age this bounds a change's delivery to about 0.75 s (bench/public_api.py)."""
SSE_KEEPALIVE_S: Final = 15.0
"""Proxies close idle streams after 30-60 s; a comment line keeps the live room's stream open."""
SSE_WAKE_S: Final = 1.0
"""An idle stream wakes this often to notice a gone client or a hub shutdown; updates wake it at once."""
PUBLIC_PREFIXES: Final = ("/public/", "/k/", "/01/", "/widget/")
"""Paths open without a token, hence rate-limited per client."""
PUBLIC_MAX_AGE_S: Final = 5
STATIC_DIR: Final = Path(__file__).resolve().parents[1] / "static"
LOT_ID_PATTERN: Final = r"^[A-Za-z0-9_.:-]{1,64}$"
_ENCODER: Final = msgspec.json.Encoder()
LotId = Annotated[str, PathParam(pattern=LOT_ID_PATTERN)]
log = logging.getLogger(__name__)


class RateLimiter:
    """A token bucket per client address; old buckets are forgotten so memory stays bounded."""

    def __init__(self, rate: float, burst: int, monotonic: Callable[[], float] = time.monotonic) -> None:
        self._rate, self._burst, self._monotonic = rate, float(burst), monotonic
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def allow(self, client: str) -> bool:
        """Take one token for ``client``; False when it has none left."""
        now = self._monotonic()
        with self._lock:
            tokens, updated = self._buckets.get(client, (self._burst, now))
            tokens = min(self._burst, tokens + (now - updated) * self._rate)
            if len(self._buckets) > 100_000:  # a flood of addresses must not grow memory without bound
                self._buckets.clear()
            if tokens < 1:
                self._buckets[client] = (tokens, now)
                return False
            self._buckets[client] = (tokens - 1, now)
            return True


class PublicRateLimit:
    """ASGI middleware applying ``limiter`` to requests under ``prefixes``, keyed by client address.

    Plain ASGI rather than ``@app.middleware("http")``: that wraps every request of the app in extra
    tasks and streams, whereas here other requests and non-HTTP scopes cost one prefix check.
    """

    def __init__(self, app: ASGIApp, limiter: RateLimiter, prefixes: tuple[str, ...] = PUBLIC_PREFIXES) -> None:
        self.app, self.limiter, self.prefixes = app, limiter, prefixes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer 429 when the client's budget is spent, else hand the request on."""
        if scope["type"] == "http" and scope["path"].startswith(self.prefixes):
            client = scope.get("client")
            if not self.limiter.allow(client[0] if client else "unknown"):
                response = Response(
                    '{"detail":"too many requests"}',
                    status_code=status.HTTP_429_TOO_MANY_REQUESTS,
                    media_type="application/json",
                    headers={"Retry-After": "1", "Access-Control-Allow-Origin": "*"},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class _Feed:
    """One watched lot: its subscribers' queues, the body they were last given, and its poller."""

    def __init__(self) -> None:
        self.subscribers: set[asyncio.Queue[bytes | None]] = set()
        self.body: bytes | None = None
        self.etag: str | None = None
        self.task: asyncio.Task[None] | None = None


def _offer(queue: asyncio.Queue[bytes | None], item: bytes | None) -> None:
    # Never waits: a newer item replaces one a slow viewer has not taken, so the poller never
    # blocks on it and its memory stays at one item.
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


class LotBroadcaster:
    """Live updates of lots: one poller per watched lot, however many viewers watch it.

    The first subscriber of a lot starts a task that calls ``lot`` in a thread every ``tick_s`` and
    hands each new body (new ETag) to every subscriber; the last one to leave stops it. A subscriber
    reads a queue of bodies ending with None when the lot disappears or ``closing`` is set.
    Use from the event loop only.
    """

    def __init__(
        self, lot: Callable[[str], tuple[bytes, str]], closing: threading.Event, tick_s: float = SSE_TICK_S
    ) -> None:
        self._lot, self._closing, self._tick_s = lot, closing, tick_s
        self._feeds: dict[str, _Feed] = {}

    @contextmanager
    def subscribe(self, lot_id: str) -> Iterator[asyncio.Queue[bytes | None]]:
        """A queue of the lot's bodies, starting with the current one; None means the stream is over."""
        feed = self._feeds.get(lot_id)
        if feed is None:
            feed = _Feed()
            feed.task = asyncio.create_task(self._poll(lot_id, feed), name=f"lot-feed:{lot_id}")
            self._feeds[lot_id] = feed
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=1)
        if feed.body is not None:
            queue.put_nowait(feed.body)
        feed.subscribers.add(queue)
        try:
            yield queue
        finally:
            feed.subscribers.discard(queue)
            if not feed.subscribers:
                if feed.task is not None:
                    feed.task.cancel()
                if self._feeds.get(lot_id) is feed:
                    del self._feeds[lot_id]

    def poller(self, lot_id: str) -> asyncio.Task[None] | None:
        """The task polling ``lot_id`` for its subscribers, if anyone watches it."""
        feed = self._feeds.get(lot_id)
        return feed.task if feed else None

    async def _poll(self, lot_id: str, feed: _Feed) -> None:
        failing = False
        while not self._closing.is_set():
            try:
                body, etag = await asyncio.to_thread(self._lot, lot_id)
            except Exception as exc:
                if isinstance(exc, HTTPException) and exc.status_code == status.HTTP_404_NOT_FOUND:
                    break
                if not failing:  # once per outage: a down store would otherwise log every tick per lot
                    log.warning("live updates of lot %s failed; retrying", lot_id, exc_info=True)
                failing = True
            else:
                failing = False
                if etag != feed.etag:
                    feed.body, feed.etag = body, etag
                    for queue in feed.subscribers:
                        _offer(queue, body)
            await asyncio.sleep(self._tick_s)
        if self._feeds.get(lot_id) is feed:
            del self._feeds[lot_id]  # a later subscriber (the lot recreated) starts afresh
        for queue in feed.subscribers:
            _offer(queue, None)


class PublicService:
    """Builds lot views and buyer views from the store, with per-lot caching and live feeds."""

    def __init__(
        self,
        database: Database | Path,
        nodes: Mapping[str, NodeInfo],
        settings: PublicSettings,
        key_secret: bytes | None,
    ) -> None:
        self.database = Database.of(database)
        self.nodes = dict(nodes)
        self.settings = settings
        self.key_secret = key_secret
        self._cache: dict[str, tuple[float, bytes, str]] = {}
        self._lock = threading.Lock()
        self.closing = threading.Event()
        """Set when the hub stops: live streams end so the server can shut down promptly."""
        self.feeds = LotBroadcaster(self.lot, self.closing)
        """Live updates of watched lots for the SSE route."""

    def connection(self) -> AbstractContextManager[Connection]:
        """A pooled read connection for one view."""
        return self.database.reading()

    def cached_lot(self, lot_id: str) -> tuple[bytes, str] | None:
        """The lot's JSON and ETag if computed less than ``LOT_CACHE_S`` ago, else None.

        Never reads the store, so it may run on the event loop.
        """
        with self._lock:
            cached = self._cache.get(lot_id)
        if cached and time.monotonic() - cached[0] < LOT_CACHE_S:
            return cached[1], cached[2]
        return None

    async def current_lot(self, lot_id: str) -> tuple[bytes, str]:
        """``lot`` for the event loop: a fresh cache entry as it is, else computed in a thread."""
        cached = self.cached_lot(lot_id)
        return cached if cached is not None else await asyncio.to_thread(self.lot, lot_id)

    def lot(self, lot_id: str) -> tuple[bytes, str]:
        """The lot's view as JSON and its ETag, recomputed at most once per ``LOT_CACHE_S``."""
        cached = self.cached_lot(lot_id)
        if cached is not None:
            return cached
        now = time.monotonic()
        view = self._lot_view(lot_id)
        body = _ENCODER.encode(view)
        etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
        with self._lock:
            self._cache[lot_id] = (now, body, etag)
        return body, etag

    def _lot_view(self, lot_id: str) -> LotView:
        with self.connection() as conn:
            row = conn.execute(
                text("SELECT gtin, product FROM lots WHERE lot_id = :lot_id"), {"lot_id": lot_id}
            ).first()
            if row is None:
                raise HTTPException(status.HTTP_404_NOT_FOUND, "no such lot")
            gtin, product = row
            epcs = orders.lot_items(conn, lot_id)
            trail = build_trail(conn, f"lot:{lot_id}", epcs, self.nodes)
            current = None
            if trail.legs and trail.legs[-1].end_ms is None:
                current = conn.execute(
                    text(
                        "SELECT value, ts_ms FROM latest WHERE gateway_id = :gateway_id AND quantity = 'temperature'"
                        " ORDER BY ts_ms DESC LIMIT 1"
                    ),
                    {"gateway_id": trail.legs[-1].node.gateway_id},
                ).first()
        link = self.digital_link(gtin, lot_id)
        return LotView(
            lot_id=lot_id,
            gtin=gtin,
            product_zh=product or "",
            product_en=product or "",
            status=trail.status,
            current_temperature_c=current[0] if current else None,
            current_ts_ms=current[1] if current else None,
            current_node_kind=trail.legs[-1].node.kind if trail.legs else "unknown",
            legs=trail.legs,  # node labels and cities only: raw GPS positions never leave the hub publicly
            digital_link=link,
            qr_svg_url=f"{self.settings.base_url}/public/v1/lots/{lot_id}/qr.svg",
            # The newest data time, not the clock: the body (and its ETag) changes only when the data does.
            updated_ms=max([current[1] if current else 0, *(leg.start_ms for leg in trail.legs)]),
        )

    def digital_link(self, gtin: str, lot_id: str) -> str:
        """The lot's GS1 Digital Link URI (resolved by this hub unless another base is configured)."""
        return lot_uri(gtin, lot_id, base=self.settings.digital_link_base or self.settings.base_url)

    def order_trail(self, key: str) -> tuple[str, Trail, list[dict[str, object]]]:
        """The order a key opens, its trail and its claims' status; raises the key errors."""
        if self.key_secret is None:
            raise keys.UnknownKeyError("buyer keys are not configured on this hub")
        with self.connection() as conn:
            order_id = keys.resolve(conn, self.key_secret, key, now_ms=int(time.time() * 1000))
            epcs = list(
                conn.execute(
                    text("SELECT epc FROM order_items WHERE order_id = :order_id"), {"order_id": order_id}
                ).scalars()
            )
            lot = conn.execute(
                text("SELECT lot_id FROM orders WHERE order_id = :order_id"), {"order_id": order_id}
            ).first()
            if lot and lot[0]:
                epcs += orders.lot_items(conn, lot[0])
            trail = build_trail(conn, f"order:{order_id}", sorted(set(epcs)), self.nodes)
            claims = [
                {"action": action, "refund_percent": percent, "voucher_cny": voucher, "state": state}
                for action, percent, voucher, state in conn.execute(
                    text("SELECT action, refund_percent, voucher_cny, state FROM claims WHERE order_id = :order_id"),
                    {"order_id": order_id},
                )
            ]
        return order_id, trail, claims


def _public_headers(response: Response, etag: str | None = None, max_age: int = PUBLIC_MAX_AGE_S) -> None:
    response.headers["Cache-Control"] = f"public, max-age={max_age}"
    response.headers["Access-Control-Allow-Origin"] = "*"
    if etag:
        response.headers["ETag"] = etag


def add_public_routes(app: FastAPI, service: PublicService) -> None:
    """Mount the public routes, the widget's static files and the per-client rate limit."""
    limiter = RateLimiter(service.settings.rate_per_s, service.settings.rate_burst)
    app.add_middleware(PublicRateLimit, limiter=limiter)  # before the app starts: Starlette refuses later
    router = APIRouter(tags=["public"])

    @router.get("/public/v1/lots/{lot_id}", response_model=None)
    async def lot(lot_id: LotId, request: Request) -> Response:
        body, etag = await service.current_lot(lot_id)  # 404 for an unknown lot
        if request.headers.get("if-none-match") == etag:
            response = Response(status_code=status.HTTP_304_NOT_MODIFIED)
        else:
            response = Response(body, media_type="application/json")
        _public_headers(response, etag)
        return response

    @router.get("/public/v1/lots/{lot_id}/events", response_model=None)
    async def lot_events(lot_id: LotId, request: Request) -> StreamingResponse:
        await service.current_lot(lot_id)  # 404 before the stream starts

        async def stream() -> AsyncIterator[bytes]:
            with service.feeds.subscribe(lot_id) as updates:
                last_sent = time.monotonic()
                while not service.closing.is_set() and not await request.is_disconnected():
                    try:
                        async with asyncio.timeout(SSE_WAKE_S):
                            body = await updates.get()
                    except TimeoutError:
                        if time.monotonic() - last_sent > SSE_KEEPALIVE_S:
                            last_sent = time.monotonic()
                            yield b": keepalive\n\n"
                        continue
                    if body is None:  # the lot is gone or the hub is stopping
                        return
                    last_sent = time.monotonic()
                    yield b"event: lot\ndata: " + body + b"\n\n"

        headers = {"Cache-Control": "no-cache", "Access-Control-Allow-Origin": "*", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    @router.get("/public/v1/lots/{lot_id}/qr.svg", response_model=None)
    def lot_qr(lot_id: LotId, transparent: bool = False) -> Response:
        with service.connection() as conn:
            row = conn.execute(text("SELECT gtin FROM lots WHERE lot_id = :lot_id"), {"lot_id": lot_id}).first()
        if row is None:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such lot")
        svg = qr_svg(service.digital_link(row[0], lot_id), light=None if transparent else "#fff")
        response = Response(svg, media_type="image/svg+xml")
        _public_headers(response, max_age=86400)
        return response

    @router.get("/01/{gtin}/10/{lot_id}", response_model=None)
    def resolve_digital_link(gtin: Annotated[str, PathParam(pattern=r"^\d{14}$")], lot_id: LotId) -> RedirectResponse:
        with service.connection() as conn:
            row = conn.execute(text("SELECT gtin FROM lots WHERE lot_id = :lot_id"), {"lot_id": lot_id}).first()
        if row is None or row[0] != gtin:
            raise HTTPException(status.HTTP_404_NOT_FOUND, "no such product lot")
        return RedirectResponse(
            f"/widget/index.html?lot={lot_id}&layout=landscape&page=1", status.HTTP_307_TEMPORARY_REDIRECT
        )

    _add_key_routes(router, service)
    app.include_router(router)
    widget = STATIC_DIR / "widget"
    if widget.is_dir():
        app.mount("/widget", StaticFiles(directory=widget, html=True), name="widget")


def _add_key_routes(router: APIRouter, service: PublicService) -> None:
    """A buyer's key opens that order's trail (JSON, EPCIS, a page) and nothing else."""

    @router.get("/public/v1/keys/{key}", response_model=None)
    def buyer_view(key: str) -> Response:
        order_id, trail, claims = _resolve(service, key)
        body = _ENCODER.encode({"order_id": order_id, "trail": trail, "claims": claims})
        return Response(body, media_type="application/json", headers=_private_headers())

    @router.get("/public/v1/keys/{key}/epcis", response_model=None)
    def buyer_epcis(key: str) -> Response:
        _, trail, _ = _resolve(service, key)
        body = _ENCODER.encode(trail_document(trail, now_ms=int(time.time() * 1000)))
        return Response(body, media_type="application/ld+json", headers=_private_headers())

    @router.get("/k/{key}", response_model=None)
    def buyer_page(key: str) -> Response:
        _resolve(service, key)
        page = (STATIC_DIR / "key" / "index.html").read_bytes()
        return Response(page, media_type="text/html; charset=utf-8", headers=_private_headers())


def _private_headers() -> dict[str, str]:
    # A key is a bearer secret in the URL: never cached by shared caches, never sent as a Referer.
    return {"Cache-Control": "private, no-store", "Referrer-Policy": "no-referrer"}


def _resolve(service: PublicService, key: str) -> tuple[str, Trail, list[dict[str, object]]]:
    try:
        return service.order_trail(key)
    except keys.UnknownKeyError as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no such link") from exc
    except keys.GoneKeyError as exc:
        raise HTTPException(status.HTTP_410_GONE, str(exc)) from exc
