"""Robot notifications over real HTTP: the dispatcher posts to a tiny local server that records each request.

The local server stands in for oapi.dingtalk.com, qyapi.weixin.qq.com and open.feishu.cn (no
network here); each request is checked against the vendor's documented format and signing rule.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import msgspec
import pytest

from hub import webhooks
from hub.db import Database
from hub.notify import AlarmNotice, Endpoint
from hub.outbox import OutboxDispatcher, OutboxTable, enqueue
from tests.support.store import writing

NOW_MS = 1_717_000_123_456
DING_SECRET = b"SECdingdingdingding0123456789"
FEISHU_SECRET = b"feishu-secret-0123456789"
HOOK_SECRET = b"generic-hook-secret-0123456789"
NOTICE = AlarmNotice(
    alarm_id="al-1",
    gateway_id="gw-cold-room-1",
    sensor_id="probe-2",
    kind="out_of_range",
    severity="warning",
    state="open",
    value=8.6,
    started_ms=NOW_MS - 600_000,
    message="冷库温度超过上限",
)


@dataclass
class Recorded:
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


@dataclass
class Recorder:
    """What the local server saw, and what it answers next (status and JSON body)."""

    requests: list[Recorded] = field(default_factory=list)
    answers: list[tuple[int, dict[str, object]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


@pytest.fixture
def robot() -> Iterator[tuple[str, Recorder]]:
    recorder = Recorder()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            parts = urllib.parse.urlsplit(self.path)
            with recorder.lock:
                recorder.requests.append(
                    Recorded(parts.path, urllib.parse.parse_qs(parts.query), dict(self.headers.items()), body)
                )
                status, answer = recorder.answers.pop(0) if recorder.answers else (200, {"errcode": 0, "errmsg": "ok"})
            payload = json.dumps(answer).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:  # quiet test output
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", recorder
    server.shutdown()
    server.server_close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "hub.sqlite3"
    Database.of(path).upgrade()
    return path


def enqueue_alarm(db: Path, endpoint: str, event_id: str, payload: bytes | None = None) -> None:
    with writing(db) as conn:
        enqueue(
            conn,
            event_id=event_id,
            endpoint=endpoint,
            kind="alarm",
            payload=msgspec.json.encode(NOTICE) if payload is None else payload,
            now_ms=NOW_MS,
        )


def dispatch(db: Path, endpoints: list[Endpoint], secrets: dict[str, bytes], now_ms: int = NOW_MS) -> int:
    outbox = OutboxTable(db)
    d = OutboxDispatcher(outbox, {e.name: e for e in endpoints}, secrets=secrets, jitter=lambda: 0.0)
    try:
        return d.run_once(now_ms)
    finally:
        d.stop()
        outbox.close()


def pending(db: Path) -> list[tuple[str, int, str | None]]:
    with closing(sqlite3.connect(db)) as conn:
        return conn.execute(
            "SELECT event_id, attempts, last_error FROM outbox WHERE delivered_ms IS NULL ORDER BY id"
        ).fetchall()


def test_all_robot_formats_arrive_as_documented(db: Path, robot: tuple[str, Recorder]) -> None:
    base, recorder = robot
    endpoints = [
        Endpoint(name="ding", url=f"{base}/robot/send?access_token=tok", format="dingtalk", secret_env="X"),
        Endpoint(name="wecom", url=f"{base}/cgi-bin/webhook/send?key=k-1", format="wecom"),
        Endpoint(name="feishu", url=f"{base}/open-apis/bot/v2/hook/h-1", format="feishu", secret_env="X"),
        Endpoint(name="hook", url=f"{base}/alarms", format="generic", secret_env="X"),
    ]
    for endpoint in endpoints:
        enqueue_alarm(db, endpoint.name, f"alarm:al-1:open:0@{endpoint.name}")
    secrets = {"ding": DING_SECRET, "feishu": FEISHU_SECRET, "hook": HOOK_SECRET}
    assert dispatch(db, endpoints, secrets) == 4
    by_path = {r.path: r for r in recorder.requests}

    ding = by_path["/robot/send"]
    expected = base64.b64encode(
        hmac.new(DING_SECRET, f"{NOW_MS}\n".encode() + DING_SECRET, hashlib.sha256).digest()
    ).decode()
    assert ding.query == {"access_token": ["tok"], "timestamp": [str(NOW_MS)], "sign": [expected]}
    ding_body = json.loads(ding.body)
    assert ding_body["msgtype"] == "markdown"
    assert "【冷链告警】" in ding_body["markdown"]["title"]

    wecom = by_path["/cgi-bin/webhook/send"]
    assert wecom.query == {"key": ["k-1"]}
    assert json.loads(wecom.body)["msgtype"] == "markdown"
    assert "冷库温度超过上限" in json.loads(wecom.body)["markdown"]["content"]

    feishu = json.loads(by_path["/open-apis/bot/v2/hook/h-1"].body)
    key = f"{NOW_MS // 1000}\n".encode() + FEISHU_SECRET
    assert feishu["timestamp"] == str(NOW_MS // 1000)
    assert feishu["sign"] == base64.b64encode(hmac.new(key, b"", hashlib.sha256).digest()).decode()
    assert feishu["msg_type"] == "text"
    assert feishu["content"]["text"].startswith("【冷链告警】")

    hook = by_path["/alarms"]
    headers = {k.lower(): v for k, v in hook.headers.items()}
    assert webhooks.verify(
        HOOK_SECRET, headers[webhooks.SIGNATURE_HEADER.lower()], hook.body, now_s=NOW_MS // 1000
    ) == (NOW_MS // 1000)
    assert headers[webhooks.EVENT_ID_HEADER.lower()] == "alarm:al-1:open:0@hook"
    assert json.loads(hook.body)["notice"]["alarm_id"] == "al-1"
    assert pending(db) == []


def test_a_robot_error_code_in_a_200_is_a_failure(db: Path, robot: tuple[str, Recorder]) -> None:
    base, recorder = robot
    # DingTalk answers HTTP 200 with errcode 310000 when the signature or keyword check fails.
    recorder.answers.append((200, {"errcode": 310000, "errmsg": "sign not match"}))
    endpoint = Endpoint(name="ding", url=f"{base}/robot/send?access_token=tok", format="dingtalk", secret_env="X")
    enqueue_alarm(db, "ding", "alarm:al-1:open:0")
    assert dispatch(db, [endpoint], {"ding": DING_SECRET}) == 0
    [(event, attempts, error)] = pending(db)
    assert (event, attempts) == ("alarm:al-1:open:0", 1)
    assert error == "dingtalk answered code 310000: sign not match"
    # Feishu reports errors as "code"; the retry goes through once the robot accepts.
    assert dispatch(db, [endpoint], {"ding": DING_SECRET}, now_ms=NOW_MS + 5000) == 1
    assert len(recorder.requests) == 2


def test_feishu_code_and_http_errors_are_failures(db: Path, robot: tuple[str, Recorder]) -> None:
    base, recorder = robot
    recorder.answers.append((200, {"code": 19021, "msg": "sign match fail or timestamp is not within one hour"}))
    endpoint = Endpoint(name="fs", url=f"{base}/open-apis/bot/v2/hook/h", format="feishu", secret_env="X")
    enqueue_alarm(db, "fs", "a1")
    assert dispatch(db, [endpoint], {"fs": FEISHU_SECRET}) == 0
    assert pending(db)[0][2].startswith("feishu answered code 19021")  # type: ignore[union-attr]
    recorder.answers.append((502, {"error": "bad gateway"}))
    assert dispatch(db, [endpoint], {"fs": FEISHU_SECRET}, now_ms=NOW_MS + 5000) == 0
    assert pending(db)[0][1:] == (2, "HTTP 502")


def test_a_poison_row_does_not_block_the_rows_behind_it(db: Path, robot: tuple[str, Recorder]) -> None:
    base, recorder = robot
    endpoint = Endpoint(name="wecom", url=f"{base}/cgi-bin/webhook/send?key=k", format="wecom")
    enqueue_alarm(db, "wecom", "broken", payload=b'{"alarm_id": 1}')
    enqueue_alarm(db, "wecom", "good")
    assert dispatch(db, [endpoint], {}) == 1
    [(event, attempts, error)] = pending(db)
    assert (event, attempts) == ("broken", 1)
    assert error is not None
    assert error.startswith("cannot render alarm for wecom")
    assert len(recorder.requests) == 1


def test_a_signed_format_without_a_secret_is_retried_not_dropped(db: Path, robot: tuple[str, Recorder]) -> None:
    base, recorder = robot
    endpoint = Endpoint(name="hook", url=f"{base}/alarms", format="generic", secret_env="X")
    enqueue_alarm(db, "hook", "a1")
    assert dispatch(db, [endpoint], {}) == 0
    assert pending(db)[0][0] == "a1"
    assert recorder.requests == []
