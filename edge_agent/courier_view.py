"""The courier view: a small local web page the gateway serves to the person carrying it.

A courier, a reefer driver or a cold-room worker opens it on a phone joined to the gateway's own
Wi-Fi hotspot, or on a small screen on the gateway. It shows each sensor's temperature and humidity
against its product range, the link to the hub and what waits to be sent, the custody mode, and lets
them record a handover: press "取件 Pickup" or "交付 Delivery", then hold the case to the antenna.

There is no network beyond the gateway, so the page is one HTML document with its style and script
inline: no CDN, no web font, no external script. A gateway installs no web framework, so this is the
standard library's ``ThreadingHTTPServer`` in a daemon thread.

Routes:

- ``GET /``: the page; it polls ``/api/state`` every 2 s and says "offline / stale" when it cannot.
- ``GET /api/state``: the ``CourierState`` as JSON, with the gateway's clock in ``X-Gateway-Time-Ms``
  so the page computes ages and countdowns on the gateway's clock rather than the phone's.
- ``POST /api/handover`` with ``{"action": "pickup" | "delivery"}``: arms a handover scan, answers
  202 with the new state.

A web page from another origin must not drive the gateway (CSRF, DNS rebinding). So a POST must carry
``Content-Type: application/json``, which a cross-origin page cannot send without a CORS preflight,
and no CORS header is ever sent; the ``Host`` header must name this server (its bound address or an
allow-listed name), which a rebound DNS name does not; and a browser's ``Origin``, when sent, must
name it too.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Iterable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Final, Literal, cast
from urllib.parse import urlsplit

import msgspec

from coldchain.messages import TagAction

log = logging.getLogger(__name__)

MAX_BODY_BYTES: Final = 1024
"""Largest request body accepted; a handover request is a few dozen bytes."""
DRAIN_LIMIT_BYTES: Final = 64 * 1024
"""How much of a refused oversized body is read and dropped before answering (see ``_discard``)."""
REQUEST_TIMEOUT_S: Final = 10.0
"""Socket timeout per connection: a stalled phone must not hold a handler thread forever."""
GATEWAY_TIME_HEADER: Final = "X-Gateway-Time-Ms"
SHUTDOWN_POLL_S: Final = 0.1
"""How often the serving loop checks for ``stop()``: bounds how long a stop takes (the default is 0.5 s)."""


@dataclasses.dataclass(frozen=True, slots=True)
class SensorView:
    """One sensor's latest reading and the range of the product it watches (``None``: not known)."""

    sensor_id: str
    temperature_c: float | None
    humidity_rh: float | None
    ts_ms: int | None
    low_c: float | None
    high_c: float | None
    alarm: bool


@dataclasses.dataclass(frozen=True, slots=True)
class HandoverView:
    """A tag recorded by a handover scan: ``action`` is a ``TagAction`` value, ``epc_uri`` ``None`` if not decoded."""

    action: str
    epc_hex: str
    epc_uri: str | None
    ts_ms: int


@dataclasses.dataclass(frozen=True, slots=True)
class CourierState:
    """Everything the courier view shows, as the agent sees it at one moment.

    ``handover_armed`` is the ``TagAction`` value of the armed scan (``None`` when none is) and
    ``handover_armed_until_ms`` when it ends, on the gateway's clock (UTC milliseconds).
    """

    gateway_id: str
    sensors: list[SensorView]
    connected: bool
    acked_seq: int
    backlog_batches: int
    backlog_items: int
    oldest_unsent_age_s: float | None
    custody_mode: str
    handover_armed: str | None
    handover_armed_until_ms: int | None
    recent_handovers: list[HandoverView]
    alarms_active: list[str]


class _HandoverRequest(msgspec.Struct, forbid_unknown_fields=True):
    # Only the two handover actions: "observe" is the reader's resting mode, not something to arm.
    action: Literal["pickup", "delivery"]


class _HttpError(Exception):
    """A request refused with ``status`` and a message the client can show."""

    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


HostPort = tuple[str, int]


def _parse_host(value: str, default_port: int) -> HostPort | None:
    """``host[:port]`` as (lower-case host, port), or ``None`` if it is not a plain authority."""
    # urlsplit would accept user info, paths and the like; a Host header has none of them.
    if not value or any(c in value for c in "@/?#\\ \t"):
        return None
    try:
        parts = urlsplit("//" + value)
        port = parts.port
    except ValueError:
        return None
    if not parts.hostname:
        return None
    return parts.hostname, default_port if port is None else port


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


_STYLE: Final = """
:root { color-scheme: light; font-family: system-ui, -apple-system, "PingFang SC", "Noto Sans CJK SC",
  "Microsoft YaHei", sans-serif; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; background: #fff; color: #000; font-size: 20px; line-height: 1.35; }
header { display: flex; flex-wrap: wrap; gap: .5rem 1rem; align-items: center; justify-content: space-between;
  padding: .75rem 1rem; border-bottom: 3px solid #000; }
h1 { font-size: 1.3rem; margin: 0; }
h2 { font-size: 1.2rem; margin: 0 0 .5rem; }
h3 { font-size: 1.05rem; margin: .75rem 0 .25rem; }
.en { font-weight: 400; }
main { padding: 0 1rem 2rem; }
section { margin-top: 1.25rem; }
.banner { margin: 0; padding: 1rem; font-size: 1.3rem; font-weight: 800; }
.banner ul { margin: .25rem 0 0; padding-left: 1.25rem; font-size: 1.1rem; }
.alarm-banner { background: #c00000; color: #fff; }
.stale-banner { background: #ffd400; color: #000; border-bottom: 3px solid #000; }
body.stale main { opacity: .5; }
.pill { display: inline-block; padding: .25rem .75rem; border: 3px solid #000; border-radius: 999px; font-weight: 800; }
.pill.ok { background: #006b1f; color: #fff; }
.pill.bad { background: #c00000; color: #fff; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(15rem, 1fr)); gap: .75rem; }
.card { border: 3px solid #000; border-radius: .5rem; padding: .75rem; }
.card h3 { margin: 0; word-break: break-all; }
.card.alarm { border: 6px solid #c00000; background: #ffe5e5; }
.temp { font-size: 3rem; font-weight: 800; line-height: 1.1; font-variant-numeric: tabular-nums; }
.state { font-weight: 800; }
.card.alarm .state { color: #c00000; }
.buttons { display: grid; grid-template-columns: 1fr 1fr; gap: .75rem; }
button { min-height: 5.5rem; font: inherit; font-size: 1.6rem; font-weight: 800; border: 3px solid #000;
  border-radius: .5rem; background: #003da5; color: #fff; touch-action: manipulation; cursor: pointer; }
button .en { display: block; font-size: 1.1rem; }
button[aria-pressed="true"] { background: #ffd400; color: #000; }
button:disabled { opacity: .6; }
button:focus-visible { outline: 4px solid #ffd400; outline-offset: 2px; }
.armed { margin: .75rem 0 0; padding: .75rem; border: 3px dashed #000; background: #ffd400; font-size: 1.3rem;
  font-weight: 800; }
.error { color: #c00000; font-weight: 800; }
.handovers { list-style: none; margin: 0; padding: 0; }
.handovers li { padding: .5rem 0; border-bottom: 2px solid #000; }
.epc { font-family: ui-monospace, Menlo, Consolas, monospace; font-weight: 700; word-break: break-all; }
.sub { color: #333; font-size: .9rem; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: .4rem 1rem; margin: 0; }
dt { font-weight: 800; }
dd { margin: 0; }
"""

_SCRIPT: Final = """
"use strict";
const POLL_MS = 2000, STALE_MS = 6000, FETCH_TIMEOUT_MS = 4000;
const ACTIONS = {observe: "观察 Observe", pickup: "取件 Pickup", delivery: "交付 Delivery"};
let state = null, skewMs = 0, lastOkMs = 0, failed = false;
const $ = (id) => document.getElementById(id);

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}
function gatewayNow() { return Date.now() + skewMs; }
function num(v, digits, unit) { return v === null ? "—" : v.toFixed(digits) + unit; }
function dur(s) {
  s = Math.max(0, Math.round(s));
  if (s < 120) return [s + " 秒", s + " s"];
  if (s < 7200) { const m = Math.round(s / 60); return [m + " 分钟", m + " min"]; }
  const h = (s / 3600).toFixed(1);
  return [h + " 小时", h + " h"];
}
function ago(ms) { const d = dur((gatewayNow() - ms) / 1000); return d[0] + "前 · " + d[1] + " ago"; }
function clock(ms) { return new Date(ms).toLocaleTimeString("zh-CN", {hour12: false}); }
function range(lo, hi) {
  if (lo === null && hi === null) return "—";
  return (lo === null ? "…" : lo.toFixed(1)) + " ~ " + (hi === null ? "…" : hi.toFixed(1)) + " °C";
}
function action(a) { return ACTIONS[a] || a; }

function renderAlarms() {
  const items = state.alarms_active.slice();
  for (const s of state.sensors) if (s.alarm) items.push(s.sensor_id + " " + num(s.temperature_c, 1, " °C"));
  const box = $("alarm");
  box.hidden = items.length === 0;
  const list = el("ul");
  list.append(...items.map((t) => el("li", "", t)));
  box.replaceChildren(el("span", "", "⚠ 报警 ALARM"), list);
}

function renderSensors() {
  const cards = state.sensors.map((s) => {
    const card = el("article", s.alarm ? "card alarm" : "card");
    card.append(
      el("h3", "", s.sensor_id),
      el("div", "temp", num(s.temperature_c, 1, " °C")),
      el("div", "", "湿度 RH " + num(s.humidity_rh, 0, " %")),
      el("div", "", "范围 Range " + range(s.low_c, s.high_c)),
      el("div", "sub", "更新 Updated " + (s.ts_ms === null ? "—" : ago(s.ts_ms))),
      el("div", "state", s.alarm ? "报警 ALARM" : "正常 OK"),
    );
    return card;
  });
  $("sensors").replaceChildren(...(cards.length ? cards : [el("p", "", "无传感器 No sensors")]));
}

function renderHandover() {
  const until = state.handover_armed_until_ms;
  const left = until === null ? null : Math.ceil((until - gatewayNow()) / 1000);
  const armed = state.handover_armed !== null && (left === null || left > 0) ? state.handover_armed : null;
  for (const b of document.querySelectorAll("button[data-action]")) {
    b.setAttribute("aria-pressed", String(b.dataset.action === armed));
  }
  const note = $("armed");
  note.hidden = armed === null;
  if (armed !== null) {
    const secs = left === null ? "" : " " + left + " 秒内 · within " + left + " s";
    note.textContent = action(armed) + ": 请将箱子靠近天线 · Hold the case to the antenna" + secs;
  }
  const rows = state.recent_handovers.slice().sort((a, b) => b.ts_ms - a.ts_ms).map((h) => {
    const li = el("li");
    li.append(
      el("div", "", action(h.action) + " · " + clock(h.ts_ms) + " · " + ago(h.ts_ms)),
      el("div", "epc", h.epc_uri || h.epc_hex),
    );
    if (h.epc_uri) li.append(el("div", "sub epc", h.epc_hex));
    return li;
  });
  $("handovers").replaceChildren(...(rows.length ? rows : [el("li", "sub", "暂无记录 None yet")]));
}

function renderStatus() {
  $("gateway").textContent = state.gateway_id;
  const link = $("link");
  link.className = state.connected ? "pill ok" : "pill bad";
  link.textContent = state.connected ? "已连接 Connected" : "未连接 Offline";
  $("backlog").textContent = state.backlog_batches + " 批 batches · " + state.backlog_items + " 条 items";
  const oldest = state.oldest_unsent_age_s;
  $("oldest").textContent = oldest === null ? "无 None" : dur(oldest).join(" · ");
  $("acked").textContent = String(state.acked_seq);
  $("custody").textContent = action(state.custody_mode);
}

function render() {
  const stale = failed || (lastOkMs > 0 && Date.now() - lastOkMs > STALE_MS);
  $("stale").hidden = !stale;
  document.body.classList.toggle("stale", stale);
  if (state === null) return;
  renderAlarms();
  renderSensors();
  renderHandover();
  renderStatus();
}

async function fetchJson(url, init) {
  const ctrl = new AbortController();
  const timer = setTimeout(() => ctrl.abort(), FETCH_TIMEOUT_MS);
  try {
    const resp = await fetch(url, {...init, cache: "no-store", signal: ctrl.signal});
    return {resp, body: await resp.json()};
  } finally {
    clearTimeout(timer);
  }
}

function accept(resp, body) {
  const t = Number(resp.headers.get("X-Gateway-Time-Ms"));
  if (t > 0) skewMs = t - Date.now();
  state = body;
  lastOkMs = Date.now();
  failed = false;
  render();
}

async function poll() {
  try {
    const {resp, body} = await fetchJson("/api/state");
    if (!resp.ok) throw new Error(body.error || "HTTP " + resp.status);
    accept(resp, body);
  } catch (e) {
    failed = true;
    render();
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

async function arm(what) {
  const buttons = document.querySelectorAll("button[data-action]");
  for (const b of buttons) b.disabled = true;
  const error = $("handover-error");
  error.hidden = true;
  try {
    const {resp, body} = await fetchJson("/api/handover", {
      method: "POST",
      headers: {"Content-Type": "application/json"},
      body: JSON.stringify({action: what}),
    });
    if (resp.status !== 202) throw new Error(body.error || "HTTP " + resp.status);
    accept(resp, body);
  } catch (e) {
    error.textContent = "未能开始扫描 · Could not start the scan: " + e.message;
    error.hidden = false;
  } finally {
    for (const b of buttons) b.disabled = false;
  }
}

for (const b of document.querySelectorAll("button[data-action]")) {
  b.addEventListener("click", () => arm(b.dataset.action));
}
setInterval(render, 1000);
poll();
"""

_PAGE: Final = f"""<!doctype html>
<html lang="zh-CN">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>冷链网关 Cold-chain gateway</title>
<style>{_STYLE}</style>
</head>
<body>
<div id="alarm" class="banner alarm-banner" role="alert" hidden></div>
<p id="stale" class="banner stale-banner" role="status" hidden>与网关失去联系 · 数据可能已过期 ·
<span class="en" lang="en">Gateway unreachable: data may be stale</span></p>
<header>
<h1>冷链网关 <span class="en" lang="en">Gateway</span> <span id="gateway"></span></h1>
<span id="link" class="pill">连接中 <span class="en" lang="en">Connecting</span></span>
</header>
<noscript><p class="banner stale-banner">需要启用 JavaScript ·
<span class="en" lang="en">JavaScript is required</span></p></noscript>
<main>
<section aria-labelledby="h-sensors">
<h2 id="h-sensors">温湿度 <span class="en" lang="en">Temperature &amp; humidity</span></h2>
<div id="sensors" class="grid"></div>
</section>
<section aria-labelledby="h-handover">
<h2 id="h-handover">交接扫描 <span class="en" lang="en">Handover scan</span></h2>
<div class="buttons">
<button type="button" data-action="pickup" aria-pressed="false">取件
<span class="en" lang="en">Pickup</span></button>
<button type="button" data-action="delivery" aria-pressed="false">交付
<span class="en" lang="en">Delivery</span></button>
</div>
<p id="armed" class="armed" role="status" hidden></p>
<p id="handover-error" class="error" role="alert" hidden></p>
<h3>最近记录 <span class="en" lang="en">Recent handovers</span></h3>
<ol id="handovers" class="handovers"></ol>
</section>
<section aria-labelledby="h-status">
<h2 id="h-status">网关状态 <span class="en" lang="en">Gateway status</span></h2>
<dl class="facts">
<dt>待发送 <span class="en" lang="en">Waiting to send</span></dt><dd id="backlog">—</dd>
<dt>最早未发送 <span class="en" lang="en">Oldest unsent</span></dt><dd id="oldest">—</dd>
<dt>已确认序号 <span class="en" lang="en">Acked seq</span></dt><dd id="acked">—</dd>
<dt>托管模式 <span class="en" lang="en">Custody mode</span></dt><dd id="custody">—</dd>
</dl>
</section>
</main>
<script>{_SCRIPT}</script>
</body>
</html>
""".encode()

# Hashes rather than 'unsafe-inline': the page is fixed, so only its own script and style can run.
_PAGE_CSP: Final = "; ".join(
    (
        "default-src 'none'",
        f"script-src {_csp_hash(_SCRIPT)}",
        f"style-src {_csp_hash(_STYLE)}",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)


class _Server(ThreadingHTTPServer):
    """The HTTP server, carrying the view its handlers serve."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], view: CourierView) -> None:
        self.view = view
        super().__init__(address, _Handler)

    def handle_error(self, request: object, client_address: object) -> None:
        """Log at DEBUG: a phone leaving the hotspot mid-request is routine (handlers catch real bugs)."""
        log.debug("courier view: connection from %s failed", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0 closes the connection after each response: polling every 2 s on a LAN costs one
    # connect, and stop() leaves no keep-alive connection that a lingering thread would go on serving.
    protocol_version = "HTTP/1.0"
    timeout = REQUEST_TIMEOUT_S
    server_version = "coldchain-courier-view"
    sys_version = ""

    @property
    def view(self) -> CourierView:
        return cast(_Server, self.server).view

    def do_GET(self) -> None:
        """Serve a GET."""
        self._handle()

    def do_POST(self) -> None:
        """Serve a POST."""
        self._handle()

    # Without these, http.server answers 501 with an HTML body; a wrong method is a 405 here.
    def do_HEAD(self) -> None:
        """Refuse a HEAD (405)."""
        self._handle()

    def do_PUT(self) -> None:
        """Refuse a PUT (405)."""
        self._handle()

    def do_DELETE(self) -> None:
        """Refuse a DELETE (405)."""
        self._handle()

    def do_PATCH(self) -> None:
        """Refuse a PATCH (405)."""
        self._handle()

    def do_OPTIONS(self) -> None:
        """Refuse a CORS preflight (405, no CORS headers), so no other origin may POST JSON."""
        self._handle()

    def log_message(self, format: str, *args: object) -> None:
        """Log at DEBUG instead of writing a line to stderr per request."""
        log.debug("courier view: %s %s", self.address_string(), format % args)

    def _handle(self) -> None:
        path = urlsplit(self.path).path
        try:
            self._route(path)
        except _HttpError as exc:
            log.debug("courier view: %s %s refused: %s %s", self.command, path, exc.status.value, exc.message)
            self._send_json(exc.status, {"error": exc.message}, exc.headers)
        except Exception:
            log.exception("courier view: %s %s failed", self.command, path)
            self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": "internal error, see the agent's log"})

    def _route(self, path: str) -> None:
        self._check_host()
        routes: dict[str, tuple[str, Callable[[], None]]] = {
            "/": ("GET", self._page),
            "/api/state": ("GET", self._state),
            "/api/handover": ("POST", self._handover),
        }
        if path not in routes:
            raise _HttpError(HTTPStatus.NOT_FOUND, f"no such page: {path}")
        method, serve = routes[path]
        if self.command != method:
            raise _HttpError(
                HTTPStatus.METHOD_NOT_ALLOWED, f"{path} accepts {method} only, not {self.command}", {"Allow": method}
            )
        serve()

    def _check_host(self) -> None:
        host = self.headers.get("Host")
        if host is None:
            raise _HttpError(HTTPStatus.BAD_REQUEST, "Host header required")
        if _parse_host(host, 80) not in self.view.allowed_hosts:
            raise _HttpError(HTTPStatus.FORBIDDEN, f"this gateway does not answer to the host {host!r}")

    def _check_origin(self) -> None:
        # Browsers send Origin on every POST; a tool such as curl sends none and is no CSRF vector.
        origin = self.headers.get("Origin")
        if origin is None:
            return
        parts = urlsplit(origin)
        if parts.scheme != "http" or _parse_host(parts.netloc, 80) not in self.view.allowed_hosts:
            raise _HttpError(HTTPStatus.FORBIDDEN, f"requests from the origin {origin!r} are not accepted")

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding") is not None:
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "send the body with a Content-Length, not chunked")
        declared = self.headers.get("Content-Length")
        if declared is None:
            raise _HttpError(HTTPStatus.LENGTH_REQUIRED, "Content-Length required")
        try:
            length = int(declared)
        except ValueError:
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"bad Content-Length: {declared!r}") from None
        if length < 0:
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"bad Content-Length: {declared!r}")
        if length > MAX_BODY_BYTES:
            self._discard(length)
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"body over {MAX_BODY_BYTES} bytes")
        return self.rfile.read(length)

    def _discard(self, length: int) -> None:
        # Closing a socket with unread data makes the kernel send a reset, which can reach the client
        # before the 413 and hide it. Read a bounded amount so a huge upload cannot tie up the thread.
        remaining = min(length, DRAIN_LIMIT_BYTES)
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 8192))
                if not chunk:
                    return
                remaining -= len(chunk)
        except OSError:
            return

    def _page(self) -> None:
        self._send(HTTPStatus.OK, _PAGE, "text/html; charset=utf-8", {"Content-Security-Policy": _PAGE_CSP})

    def _state(self) -> None:
        self._send_state(HTTPStatus.OK)

    def _handover(self) -> None:
        self._check_origin()
        # The body is read before the Content-Type is judged, so that nothing unread is left behind.
        body = self._read_body()
        content_type = self.headers.get("Content-Type")
        if content_type is None or self.headers.get_content_type() != "application/json":
            raise _HttpError(
                HTTPStatus.UNSUPPORTED_MEDIA_TYPE, f"Content-Type must be application/json, not {content_type!r}"
            )
        try:
            request = msgspec.json.decode(body, type=_HandoverRequest)
        except msgspec.ValidationError as exc:
            raise _HttpError(HTTPStatus.BAD_REQUEST, f'expected {{"action": "pickup" | "delivery"}}: {exc}') from None
        except msgspec.DecodeError as exc:
            raise _HttpError(HTTPStatus.BAD_REQUEST, f"body is not valid JSON: {exc}") from None
        action = TagAction(request.action)
        log.info("courier view: handover %s armed from %s", action.value, self.address_string())
        self.view.arm_handover(action)
        self._send_state(HTTPStatus.ACCEPTED)

    def _send_state(self, status: HTTPStatus) -> None:
        self._send(status, msgspec.json.encode(self.view.state()), "application/json")

    def _send_json(self, status: HTTPStatus, payload: dict[str, str], headers: dict[str, str] | None = None) -> None:
        self._send(status, msgspec.json.encode(payload), "application/json", headers)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header(GATEWAY_TIME_HEADER, str(time.time_ns() // 1_000_000))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class CourierView:
    """The courier's local web page, served from a daemon thread.

    ``state`` and ``arm_handover`` are called from the server's handler threads, possibly at the same
    time: they must be thread-safe. ``host`` is the address to bind (an IPv4 address or a name);
    ``allowed_hosts`` lists the other names or addresses (``host`` or ``host:port``, the port defaulting
    to the served one) that browsers may use to reach it, such as the gateway's hotspot address when
    bound to ``0.0.0.0``. Requests naming any other host are refused.
    """

    def __init__(
        self,
        state: Callable[[], CourierState],
        arm_handover: Callable[[TagAction], None],
        *,
        host: str = "127.0.0.1",
        port: int = 8081,
        allowed_hosts: Iterable[str] = (),
    ) -> None:
        self.state = state
        self.arm_handover = arm_handover
        self._host = host
        self._port = port
        self._extra_hosts: list[tuple[str, int | None]] = []
        for entry in allowed_hosts:
            # Port 0 as a placeholder: the served port is known only once bound.
            parsed = _parse_host(entry, 0)
            if parsed is None:
                raise ValueError(f"allowed host {entry!r} is not host or host:port")
            self._extra_hosts.append((parsed[0], parsed[1] or None))
        self.allowed_hosts: frozenset[HostPort] = frozenset()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The page's address, with the port actually bound."""
        if self._server is None:
            raise RuntimeError("the courier view is not started")
        return f"http://{self._host}:{self._server.server_address[1]}/"

    def start(self) -> None:
        """Bind the port and serve in a daemon thread."""
        if self._server is not None:
            raise RuntimeError("the courier view is already started")
        server = _Server((self._host, self._port), self)
        port = server.server_address[1]
        allowed = {(self._host.lower(), port)}
        if _is_loopback(self._host):
            allowed.add(("localhost", port))
        allowed.update((name, port if entry_port is None else entry_port) for name, entry_port in self._extra_hosts)
        self.allowed_hosts = frozenset(allowed)
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, args=(SHUTDOWN_POLL_S,), name="courier-view", daemon=True
        )
        self._thread.start()
        log.info("courier view: serving %s", self.url)

    def stop(self) -> None:
        """Stop serving and free the port; does nothing if not started."""
        server, thread = self._server, self._thread
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join()
        self._server = self._thread = None
        log.info("courier view: stopped")
