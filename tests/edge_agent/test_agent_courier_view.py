"""The courier view against a real server on an ephemeral port, spoken to with httpx and raw sockets."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import logging
import re
import socket
import threading
from html.parser import HTMLParser

import httpx
import msgspec
import pytest

from coldchain.messages import TagAction
from edge_agent.courier_view import MAX_BODY_BYTES, CourierState, CourierView, HandoverView, SensorView

TS = 1_700_000_000_000
VOID_ELEMENTS = {"meta", "link", "br", "hr", "img", "input", "source", "wbr", "area", "base", "col", "embed", "track"}


def sample_state() -> CourierState:
    return CourierState(
        gateway_id="gw-冷库-01",
        sensors=[
            SensorView("probe-1", 4.5, 81.0, TS, 2.0, 8.0, alarm=False),
            SensorView("probe-2", 9.25, None, TS - 5_000, 2.0, 8.0, alarm=True),
            SensorView("probe-3", None, None, None, None, None, alarm=False),
        ],
        connected=False,
        acked_seq=41,
        backlog_batches=3,
        backlog_items=120,
        oldest_unsent_age_s=37.5,
        custody_mode="observe",
        handover_armed=None,
        handover_armed_until_ms=None,
        recent_handovers=[
            HandoverView("pickup", "3034257bf7194e4000001a85", "urn:epc:id:sgtin:0614141.812345.6789", TS - 60_000),
            HandoverView("delivery", "e2801160600002084bfe5c36", None, TS - 1_000),
        ],
        alarms_active=["probe-2 above 8.0 °C for 12 min"],
    )


class Gateway:
    """The agent's side: a state to show and the handovers armed, both thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.current = sample_state()
        self.armed: list[TagAction] = []

    def state(self) -> CourierState:
        with self._lock:
            return self.current

    def arm(self, action: TagAction) -> None:
        with self._lock:
            self.armed.append(action)
            self.current = dataclasses.replace(
                self.current, handover_armed=action.value, handover_armed_until_ms=TS + 15_000
            )


@pytest.fixture
def gateway() -> Gateway:
    return Gateway()


@pytest.fixture
def view(gateway):
    courier_view = CourierView(gateway.state, gateway.arm, port=0)
    courier_view.start()
    yield courier_view
    courier_view.stop()


@pytest.fixture
def client(view):
    with httpx.Client(base_url=view.url, timeout=5.0) as http:
        yield http


def post_json(client: httpx.Client, body: object, **kwargs) -> httpx.Response:
    return client.post(
        "/api/handover", content=msgspec.json.encode(body), headers={"Content-Type": "application/json"}, **kwargs
    )


def host_of(view: CourierView) -> str:
    return view.url.removeprefix("http://").rstrip("/")


def raw_request(view: CourierView, request: bytes) -> bytes:
    port = int(view.url.rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


class PageParser(HTMLParser):
    """Collects what the page checks need: the tag nesting, ids, inline script and style text."""

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.mismatches: list[str] = []
        self.ids: set[str] = set()
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []

    def handle_starttag(self, tag, attrs):
        self.attrs.extend((tag, name, value) for name, value in attrs)
        self.ids.update(value for name, value in attrs if name == "id" and value)
        if tag not in VOID_ELEMENTS:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.mismatches.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
            return
        self.stack.pop()

    def handle_data(self, data):
        if self.stack and self.stack[-1] == "script":
            self.scripts.append(data)
        elif self.stack and self.stack[-1] == "style":
            self.styles.append(data)


def parse_page(client: httpx.Client) -> tuple[httpx.Response, PageParser]:
    response = client.get("/")
    parser = PageParser()
    parser.feed(response.text)
    parser.close()
    return response, parser


def csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


# ---------------------------------------------------------------------------------------------
# The page
# ---------------------------------------------------------------------------------------------


def test_page_is_served_self_contained(client):
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/html; charset=utf-8"
    page = response.text
    # nothing fetched from beyond the gateway: no absolute URL, no external script, style or font
    assert "http://" not in page
    assert "https://" not in page
    assert not re.search(r"<script[^>]*\ssrc=", page)
    assert "<link" not in page
    assert "@import" not in page
    assert "url(" not in page
    assert "<iframe" not in page


def test_page_parses_with_balanced_tags_and_its_script_finds_its_elements(client):
    _, parser = parse_page(client)
    assert parser.mismatches == []
    assert parser.stack == []
    assert len(parser.scripts) == 1
    assert len(parser.styles) == 1
    referenced = set(re.findall(r'\$\("([\w-]+)"\)', parser.scripts[0]))
    assert referenced  # the check below means something
    assert referenced <= parser.ids
    assert {value for tag, name, value in parser.attrs if name == "data-action"} == {"pickup", "delivery"}


def test_page_is_bilingual_with_chinese_first(client):
    page = client.get("/").text
    assert '<html lang="zh-CN">' in page
    for chinese, english in [
        ("取件", "Pickup"),
        ("交付", "Delivery"),
        ("温湿度", "Temperature"),
        ("待发送", "Waiting"),
    ]:
        assert chinese in page
        assert english in page
        assert page.index(chinese) < page.index(english)


def test_page_csp_allows_only_its_own_inline_script_and_style(client):
    response, parser = parse_page(client)
    csp = response.headers["content-security-policy"]
    directives = dict(part.strip().split(" ", 1) for part in csp.split(";"))
    assert directives["default-src"] == "'none'"
    assert directives["script-src"] == csp_hash(parser.scripts[0])
    assert directives["style-src"] == csp_hash(parser.styles[0])
    assert directives["connect-src"] == "'self'"
    assert directives["frame-ancestors"] == "'none'"
    assert "unsafe" not in csp
    # the CSP blocks inline event handlers and style attributes: the page must use neither
    assert [(tag, name) for tag, name, _ in parser.attrs if name == "style" or name.startswith("on")] == []


# ---------------------------------------------------------------------------------------------
# The state
# ---------------------------------------------------------------------------------------------


def test_state_round_trips_as_json(client, gateway):
    response = client.get("/api/state")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["cache-control"] == "no-store"
    assert int(response.headers["x-gateway-time-ms"]) > TS
    assert "access-control-allow-origin" not in response.headers
    assert msgspec.json.decode(response.content, type=CourierState) == gateway.current
    assert response.json()["sensors"][2] == {
        "sensor_id": "probe-3",
        "temperature_c": None,
        "humidity_rh": None,
        "ts_ms": None,
        "low_c": None,
        "high_c": None,
        "alarm": False,
    }


def test_state_is_read_fresh_on_each_request(client, gateway):
    gateway.current = dataclasses.replace(gateway.current, connected=True, backlog_batches=0, oldest_unsent_age_s=None)
    body = client.get("/api/state?t=1").json()
    assert (body["connected"], body["backlog_batches"], body["oldest_unsent_age_s"]) == (True, 0, None)


# ---------------------------------------------------------------------------------------------
# Arming a handover
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("action", "expected"), [("pickup", TagAction.PICKUP), ("delivery", TagAction.DELIVERY)])
def test_arming_a_handover_calls_back_and_answers_the_new_state(client, gateway, action, expected):
    response = post_json(client, {"action": action})
    assert response.status_code == 202
    assert response.headers["cache-control"] == "no-store"
    assert gateway.armed == [expected]
    assert response.json()["handover_armed"] == action
    assert response.json()["handover_armed_until_ms"] == TS + 15_000


def test_a_charset_parameter_and_a_same_origin_origin_are_accepted(client, gateway, view):
    response = client.post(
        "/api/handover",
        content=b'{"action": "delivery"}',
        headers={"Content-Type": "application/json; charset=utf-8", "Origin": f"http://{host_of(view)}"},
    )
    assert response.status_code == 202
    assert gateway.armed == [TagAction.DELIVERY]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/api/handover", "POST"),
        ("POST", "/api/state", "GET"),
        ("POST", "/", "GET"),
        ("PUT", "/api/handover", "POST"),
        ("DELETE", "/api/state", "GET"),
        ("PATCH", "/api/handover", "POST"),
    ],
)
def test_a_wrong_method_is_405(client, gateway, method, path, allow):
    response = client.request(
        method, path, content=b'{"action": "pickup"}', headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert "error" in response.json()
    assert gateway.armed == []


def test_head_is_405_without_a_body(client):
    response = client.head("/")
    assert response.status_code == 405
    assert response.content == b""


def test_a_cors_preflight_is_refused_without_cors_headers(client, gateway, view):
    response = client.options(
        "/api/handover",
        headers={
            "Origin": "http://shop.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    )
    assert response.status_code in (403, 405)
    assert not [name for name in response.headers if name.startswith("access-control-")]
    assert gateway.armed == []


@pytest.mark.parametrize("path", ["/index.html", "/api", "/api/state/", "/../etc/passwd"])
def test_an_unknown_path_is_404(client, path):
    response = client.get(path)
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/json"


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None]
)
def test_a_body_that_is_not_declared_json_is_415(client, gateway, content_type):
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = client.post("/api/handover", content=b'{"action": "pickup"}', headers=headers)
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]
    assert gateway.armed == []


def test_a_form_post_from_a_browser_is_415(client, gateway):
    response = client.post("/api/handover", data={"action": "pickup"})
    assert response.status_code == 415
    assert gateway.armed == []


@pytest.mark.parametrize("size", [MAX_BODY_BYTES + 1, 200_000])
def test_an_oversized_body_is_413(client, gateway, size):
    body = b'{"action": "pickup", "pad": "' + b"x" * size + b'"}'
    response = client.post("/api/handover", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert gateway.armed == []


def test_a_body_of_exactly_the_limit_is_read(client, gateway):
    body = b'{"action": "pickup"}'.ljust(MAX_BODY_BYTES, b" ")
    response = client.post("/api/handover", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 202
    assert gateway.armed == [TagAction.PICKUP]


@pytest.mark.parametrize("body", [b"", b"{", b"action=pickup", b'{"action": "pickup"', b"\xff\xfe"])
def test_malformed_json_is_400(client, gateway, body):
    response = client.post("/api/handover", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]
    assert gateway.armed == []


@pytest.mark.parametrize(
    "body",
    [
        {"action": "observe"},
        {"action": "steal"},
        {"action": "PICKUP"},
        {"action": 1},
        {},
        {"action": "pickup", "epc": "3034257bf7194e4000001a85"},
        ["pickup"],
        "pickup",
    ],
)
def test_a_request_that_is_not_a_handover_is_400(client, gateway, body):
    response = post_json(client, body)
    assert response.status_code == 400
    assert "pickup" in response.json()["error"]
    assert gateway.armed == []


def test_a_post_without_content_length_is_411(view, gateway):
    head = f"POST /api/handover HTTP/1.1\r\nHost: {host_of(view)}\r\nContent-Type: application/json\r\n"
    for extra in ["Connection: close\r\n", "Transfer-Encoding: chunked\r\n"]:
        reply = raw_request(view, (head + extra + "\r\n").encode())
        assert reply.startswith(b"HTTP/1.0 411 ")
    assert gateway.armed == []


def test_a_bad_content_length_is_400(view, gateway):
    head = f"POST /api/handover HTTP/1.1\r\nHost: {host_of(view)}\r\nContent-Type: application/json\r\n"
    assert raw_request(view, (head + "Content-Length: -1\r\n\r\n").encode()).startswith(b"HTTP/1.0 400 ")
    assert raw_request(view, (head + "Content-Length: ten\r\n\r\n").encode()).startswith(b"HTTP/1.0 400 ")
    assert gateway.armed == []


def test_a_failing_callback_is_a_500_and_the_server_keeps_serving(gateway):
    def refuse(action: TagAction) -> None:
        raise RuntimeError("reader offline")

    courier_view = CourierView(gateway.state, refuse, port=0)
    courier_view.start()
    try:
        with httpx.Client(base_url=courier_view.url, timeout=5.0) as http:
            assert post_json(http, {"action": "pickup"}).status_code == 500
            assert http.get("/api/state").status_code == 200
    finally:
        courier_view.stop()


# ---------------------------------------------------------------------------------------------
# Host and Origin: another site's page must not drive the gateway
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "127.0.0.1", "a@127.0.0.1:{port}"]
)
def test_a_foreign_host_header_is_403_on_every_route(client, gateway, view, host):
    port = host_of(view).rsplit(":", 1)[1]
    headers = {"Host": host.format(port=port), "Content-Type": "application/json"}
    for method, path in [("GET", "/"), ("GET", "/api/state"), ("POST", "/api/handover")]:
        response = client.request(method, path, content=b'{"action": "pickup"}', headers=headers)
        assert response.status_code == 403, (method, path)
    assert gateway.armed == []


def test_a_missing_host_header_is_400(view):
    assert raw_request(view, b"GET /api/state HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.0 400 ")


def test_localhost_is_accepted_on_a_loopback_bind(client, view):
    port = host_of(view).rsplit(":", 1)[1]
    assert client.get("/api/state", headers={"Host": f"LocalHost:{port}"}).status_code == 200


def test_allow_listed_hosts_are_accepted(gateway):
    courier_view = CourierView(gateway.state, gateway.arm, port=0, allowed_hosts=["gateway.local", "192.168.4.1:80"])
    courier_view.start()
    try:
        port = host_of(courier_view).rsplit(":", 1)[1]
        with httpx.Client(base_url=courier_view.url, timeout=5.0) as http:
            assert http.get("/", headers={"Host": f"gateway.local:{port}"}).status_code == 200
            assert http.get("/", headers={"Host": "192.168.4.1"}).status_code == 200
            assert http.get("/", headers={"Host": f"192.168.4.1:{port}"}).status_code == 403
            assert http.get("/", headers={"Host": "gateway.local"}).status_code == 403
    finally:
        courier_view.stop()


def test_an_invalid_allow_list_entry_is_refused_at_construction(gateway):
    with pytest.raises(ValueError, match="allowed host"):
        CourierView(gateway.state, gateway.arm, allowed_hosts=["http://gateway.local/"])


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "https://{host}", "http://127.0.0.1:1"])
def test_a_post_from_a_foreign_origin_is_403(client, gateway, view, origin):
    headers = {"Content-Type": "application/json", "Origin": origin.format(host=host_of(view))}
    response = client.post("/api/handover", content=b'{"action": "pickup"}', headers=headers)
    assert response.status_code == 403
    assert gateway.armed == []


# ---------------------------------------------------------------------------------------------
# Lifecycle and logging
# ---------------------------------------------------------------------------------------------


def test_stop_frees_the_port(gateway):
    first = CourierView(gateway.state, gateway.arm, port=0)
    first.start()
    url = first.url
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    assert httpx.get(url + "api/state", timeout=5.0).status_code == 200
    first.stop()
    first.stop()  # a second stop does nothing
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    second = CourierView(gateway.state, gateway.arm, port=port)
    second.start()
    try:
        assert second.url == url
        assert httpx.get(url + "api/state", timeout=5.0).status_code == 200
    finally:
        second.stop()


def test_url_needs_a_started_view_and_start_runs_once(gateway):
    courier_view = CourierView(gateway.state, gateway.arm, port=0)
    with pytest.raises(RuntimeError, match="not started"):
        _ = courier_view.url
    courier_view.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            courier_view.start()
    finally:
        courier_view.stop()


def test_requests_are_logged_at_debug_and_not_written_to_stderr(client, capfd, caplog):
    caplog.set_level(logging.DEBUG, logger="edge_agent.courier_view")
    assert client.get("/api/state").status_code == 200
    assert client.get("/nowhere").status_code == 404
    assert capfd.readouterr().err == ""
    messages = [record.getMessage() for record in caplog.records if record.levelno == logging.DEBUG]
    assert any("GET /api/state" in message for message in messages)
    assert any("/nowhere" in message for message in messages)
