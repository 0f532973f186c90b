"""hub.receiver: the claim receiver's contract, request by request, over real HTTP (uvicorn on a free port)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from coldchain.errors import ConfigError
from hub import webhooks
from hub.receiver import ReceiverServer, create_receiver_app, load_secrets

SECRET = b"shop-platform-secret-0001"
NEW_SECRET = b"shop-platform-secret-0002"
NOW = 1_717_000_000
CLAIM = json.dumps({"claim_id": "c-1", "order_id": "o-42", "amount_cents": 1500}).encode()


Client = Callable[..., httpx.Client]


@pytest.fixture
def client() -> Iterator[Client]:
    """Start a receiver (secrets, clock and tolerance as given) and return an HTTP client for it."""
    started: list[tuple[ReceiverServer, httpx.Client]] = []

    def make(*secrets: bytes, now: float = NOW, tolerance_s: int = 300) -> httpx.Client:
        app = create_receiver_app(list(secrets) or [SECRET], tolerance_s=tolerance_s, wall_clock=lambda: now)
        server = ReceiverServer(app).start()
        http = httpx.Client(base_url=server.url, timeout=5)
        started.append((server, http))
        return http

    yield make
    for server, http in started:
        http.close()
        server.stop()


def post(
    c: httpx.Client, body: bytes = CLAIM, *, secret: bytes = SECRET, t: int = NOW, event_id: str | None = "evt-1"
) -> httpx.Response:
    headers = {webhooks.SIGNATURE_HEADER: webhooks.sign(secret, body, timestamp_s=t)}
    if event_id is not None:
        headers[webhooks.EVENT_ID_HEADER] = event_id
    return c.post("/claims", content=body, headers=headers)


def test_a_signed_claim_is_accepted_and_listed(client: Client) -> None:
    c = client()
    answer = post(c)
    assert answer.status_code == 200
    assert answer.json() == {"status": "accepted", "event_id": "evt-1"}
    assert c.get("/claims").json() == [{"event_id": "evt-1", "body": json.loads(CLAIM)}]


def test_a_repeated_event_id_is_a_duplicate_with_a_2xx(client: Client) -> None:
    c = client()
    assert post(c, t=NOW - 60).json()["status"] == "accepted"
    # The sender's retry: same event, signed again at another time.
    again = post(c, t=NOW)
    assert again.status_code == 200
    assert again.json() == {"status": "duplicate", "event_id": "evt-1"}
    assert len(c.get("/claims").json()) == 1


def test_a_replay_under_a_new_event_id_is_still_a_duplicate(client: Client) -> None:
    c = client()
    headers = {
        webhooks.SIGNATURE_HEADER: webhooks.sign(SECRET, CLAIM, timestamp_s=NOW),
        webhooks.EVENT_ID_HEADER: "evt-1",
    }
    assert c.post("/claims", content=CLAIM, headers=headers).json()["status"] == "accepted"
    # The event id header is not signed: an attacker could change it, but not the signed timestamp and body.
    headers[webhooks.EVENT_ID_HEADER] = "evt-forged"
    headers[webhooks.SIGNATURE_HEADER] += ",v1=" + "0" * 64
    assert c.post("/claims", content=CLAIM, headers=headers).json()["status"] == "duplicate"
    assert [claim["event_id"] for claim in c.get("/claims").json()] == ["evt-1"]


def test_missing_signature_is_401(client: Client) -> None:
    answer = client().post("/claims", content=CLAIM, headers={webhooks.EVENT_ID_HEADER: "evt-1"})
    assert answer.status_code == 401
    assert answer.json()["error"] == "missing_signature"


def test_bad_signature_and_tampered_body_are_401(client: Client) -> None:
    c = client()
    assert post(c, secret=b"not-the-shop-secret-at-all").json()["error"] == "bad_signature"
    headers = {
        webhooks.SIGNATURE_HEADER: webhooks.sign(SECRET, CLAIM, timestamp_s=NOW),
        webhooks.EVENT_ID_HEADER: "evt-2",
    }
    tampered = c.post("/claims", content=CLAIM.replace(b"1500", b"150000"), headers=headers)
    assert tampered.status_code == 401
    assert tampered.json()["error"] == "bad_signature"
    assert c.get("/claims").json() == []


def test_stale_and_malformed_are_400_with_the_reason(client: Client) -> None:
    c = client()
    stale = post(c, t=NOW - 301)
    assert (stale.status_code, stale.json()["error"]) == (400, "stale_signature")
    future = post(c, t=NOW + 301)
    assert (future.status_code, future.json()["error"]) == (400, "stale_signature")
    malformed = c.post("/claims", content=CLAIM, headers={webhooks.SIGNATURE_HEADER: "t=soon,v1=abc"})
    assert (malformed.status_code, malformed.json()["error"]) == (400, "malformed_signature")
    assert c.get("/claims").json() == []


def test_the_tolerance_is_configurable(client: Client) -> None:
    c = client(tolerance_s=10)
    assert post(c, t=NOW - 11).json()["error"] == "stale_signature"
    assert post(c, t=NOW - 9).json()["status"] == "accepted"


def test_missing_event_id_and_non_json_bodies_are_400(client: Client) -> None:
    c = client()
    assert post(c, event_id=None).json()["error"] == "missing_event_id"
    answer = post(c, b"not json", event_id="evt-3")
    assert (answer.status_code, answer.json()["error"]) == (400, "malformed_body")


def test_rotation_accepts_the_old_and_the_new_secret(client: Client) -> None:
    c = client(SECRET, NEW_SECRET)
    assert post(c, b'{"claim_id": "a"}', secret=SECRET, event_id="a").json()["status"] == "accepted"
    assert post(c, b'{"claim_id": "b"}', secret=NEW_SECRET, event_id="b").json()["status"] == "accepted"


def test_a_receiver_needs_a_secret() -> None:
    with pytest.raises(ConfigError):
        create_receiver_app([])


def test_load_secrets_reads_one_per_line(tmp_path: Path) -> None:
    path = tmp_path / "receiver.secrets"
    path.write_text("shop-platform-secret-0001\n\n  shop-platform-secret-0002  \n")
    assert load_secrets(path) == [SECRET, NEW_SECRET]


@pytest.mark.parametrize("content", ["", "\n\n", "changeme\n", "tiny\n"])
def test_load_secrets_refuses_empty_placeholder_and_short(tmp_path: Path, content: str) -> None:
    path = tmp_path / "receiver.secrets"
    path.write_text(content)
    with pytest.raises(ConfigError) as caught:
        load_secrets(path)
    if content.strip():
        assert content.strip() not in str(caught.value)


def test_load_secrets_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_secrets(tmp_path / "absent")


def test_receiver_server_serves_on_a_free_port() -> None:
    server = ReceiverServer(create_receiver_app([SECRET]), port=0).start()
    try:
        assert not server.url.endswith(":0")
        body = CLAIM
        t = int(time.time())
        headers = {
            webhooks.SIGNATURE_HEADER: webhooks.sign(SECRET, body, timestamp_s=t),
            webhooks.EVENT_ID_HEADER: "evt-live",
        }
        assert httpx.post(f"{server.url}/claims", content=body, headers=headers, timeout=5).status_code == 200
        assert httpx.get(f"{server.url}/claims", timeout=5).json()[0]["event_id"] == "evt-live"
    finally:
        server.stop()
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/claims", timeout=2)
