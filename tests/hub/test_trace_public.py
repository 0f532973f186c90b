"""Public traceability over a real pipeline and store: buyer keys, lot pages, caching, rate limits,
Digital Link resolution and EPCIS queries."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from hub.traceability import keys, public
from hub.traceability.epcis import validate_document
from hub.traceability.public import PublicRateLimit, RateLimiter
from tests.support.trace import CASE_B, GTIN, READER, SECRET, SHOP, Setup


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    s = Setup(tmp_path)
    s.journey()
    return s


def key_of(setup: Setup, order_id: str) -> str:
    response = setup.client.post(f"/api/v1/orders/{order_id}/keys", headers=SHOP)
    assert response.status_code == 201, response.text
    url = response.json()["url"]
    assert url.startswith("https://trace.example.com/k/")
    return url.rsplit("/", 1)[1]


def test_a_buyer_key_shows_that_order_and_nothing_else(setup: Setup) -> None:
    key_a, key_b = key_of(setup, "order-a"), key_of(setup, "order-b")
    view_a = setup.client.get(f"/public/v1/keys/{key_a}")
    assert view_a.status_code == 200
    assert view_a.headers["cache-control"] == "private, no-store"
    body_a = view_a.json()
    assert body_a["order_id"] == "order-a"
    assert [leg["node"]["gateway_id"] for leg in body_a["trail"]["legs"]] == ["gw-store", "gw-truck"]
    assert "ref-order-a" not in view_a.text  # no buyer reference on the buyer's own page either
    body_b = setup.client.get(f"/public/v1/keys/{key_b}").json()
    assert body_b["order_id"] == "order-b"
    assert [leg["node"]["gateway_id"] for leg in body_b["trail"]["legs"]] == ["gw-store"]  # B never rode the truck
    band = body_a["trail"]["legs"][1]["band"]
    assert (band["min_c"], band["max_c"]) == (4.0, 6.0)  # from the 5-minute rollups, exact


def test_tampered_unknown_expired_and_revoked_keys_are_refused(setup: Setup) -> None:
    key = key_of(setup, "order-a")
    key_id, tag = key.split(".")
    tampered = f"{key_id[:-1]}{'A' if key_id[-1] != 'A' else 'B'}.{tag}"
    assert setup.client.get(f"/public/v1/keys/{tampered}").status_code == 404
    assert setup.client.get("/public/v1/keys/not-a-key").status_code == 404
    assert setup.client.get("/k/not-a-key").status_code == 404
    with setup.pipeline.staff_action(lambda w, _now: w.transaction()) as conn:
        expired = keys.issue(conn, SECRET, "order-a", ttl_s=60, now_ms=int(time.time() * 1000) - 61_000)
    assert setup.client.get(f"/public/v1/keys/{expired}").status_code == 410
    assert setup.client.post("/api/v1/orders/order-a/keys/revoke", headers=SHOP).json()["revoked"] >= 1
    assert setup.client.get(f"/public/v1/keys/{key}").status_code == 410
    other = key_of(setup, "order-b")
    assert setup.client.post("/api/v1/orders/order-b/cancel", headers=SHOP).json()["status"] == "cancelled"
    assert setup.client.get(f"/public/v1/keys/{other}").status_code == 410  # cancelling revokes the links


def test_the_lot_page_data_is_cacheable_embeddable_and_free_of_personal_data(setup: Setup) -> None:
    first = setup.client.get("/public/v1/lots/LOT-7")
    assert first.status_code == 200
    assert first.headers["cache-control"].startswith("public, max-age=")
    assert first.headers["access-control-allow-origin"] == "*"
    view = first.json()
    assert view["status"] == "intact"
    assert view["current_node_kind"] == "reefer_truck"
    assert view["current_temperature_c"] == 6.0
    assert view["digital_link"] == f"https://trace.example.com/01/{GTIN}/10/LOT-7"
    assert "ref-order" not in first.text
    assert "lat" not in json.dumps(view["legs"])  # cities, never positions
    again = setup.client.get("/public/v1/lots/LOT-7", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert setup.client.get("/public/v1/lots/NOPE").status_code == 404
    qr = setup.client.get("/public/v1/lots/LOT-7/qr.svg")
    assert qr.headers["content-type"].startswith("image/svg+xml")
    assert b"<svg" in qr.content


def test_a_digital_link_resolves_to_the_lot_page(setup: Setup) -> None:
    found = setup.client.get(f"/01/{GTIN}/10/LOT-7", follow_redirects=False)
    assert found.status_code == 307
    assert "lot=LOT-7" in found.headers["location"]
    assert setup.client.get("/01/00000000000000/10/LOT-7", follow_redirects=False).status_code == 404


def test_public_requests_are_rate_limited_per_client(tmp_path: Path) -> None:
    limited = Setup(tmp_path, rate_burst=5)
    limited.journey()
    codes = [limited.client.get("/public/v1/lots/LOT-7").status_code for _ in range(8)]
    assert codes[:5] == [200] * 5
    assert codes[5:] == [429] * 3
    assert limited.client.get("/api/v1/orders/order-a", headers=SHOP).status_code == 200  # staff APIs unaffected


def test_other_paths_are_never_throttled_once_the_public_budget_is_spent(tmp_path: Path) -> None:
    limited = Setup(tmp_path, rate_burst=2)
    limited.journey()  # staff and shop calls: they spend none of the public budget
    assert [limited.client.get("/public/v1/lots/LOT-7").status_code for _ in range(2)] == [200, 200]
    refused = limited.client.get("/public/v1/lots/LOT-7")
    assert refused.status_code == 429
    assert refused.content == b'{"detail":"too many requests"}'
    assert refused.headers["content-type"] == "application/json"
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["access-control-allow-origin"] == "*"
    for _ in range(10):
        assert limited.client.get("/healthz").status_code == 200
        assert limited.client.get("/api/v1/orders/order-a", headers=SHOP).status_code == 200
    assert limited.client.get("/k/not-a-key").status_code == 429  # every public prefix shares the budget


@pytest.mark.anyio
async def test_the_rate_limit_keys_on_the_client_and_lets_other_scopes_through() -> None:
    reached: list[tuple[str, str | None]] = []
    sent: list[dict[str, object]] = []

    async def inner(scope, receive, send) -> None:
        reached.append((scope["type"], scope.get("path")))

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    middleware = PublicRateLimit(inner, RateLimiter(rate=0.001, burst=1))

    async def get(path: str, client: tuple[str, int] | None) -> None:
        await middleware({"type": "http", "path": path, "client": client, "headers": []}, receive, send)

    await get("/public/v1/lots/LOT-7", None)
    await get("/public/v1/lots/LOT-7", None)  # "unknown" has spent its token
    await get("/widget/index.html", ("198.51.100.7", 1))  # another client has its own bucket
    await get("/healthz", None)
    await middleware({"type": "lifespan"}, receive, send)
    await middleware({"type": "websocket", "path": "/public/v1/lots/LOT-7", "client": None}, receive, send)
    assert reached == [
        ("http", "/public/v1/lots/LOT-7"),
        ("http", "/widget/index.html"),
        ("http", "/healthz"),
        ("lifespan", None),
        ("websocket", "/public/v1/lots/LOT-7"),
    ]
    assert [m["status"] for m in sent if m["type"] == "http.response.start"] == [429]


def test_a_fresh_lot_is_answered_from_the_cache_and_a_miss_reads_the_store_off_the_event_loop(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(public, "LOT_CACHE_S", 3600.0)  # every request after the first is a hit
    computed: list[str] = []
    lot = setup.service.lot

    def counting_lot(lot_id: str) -> tuple[bytes, str]:
        try:
            asyncio.get_running_loop()
            computed.append("on the event loop")
        except RuntimeError:
            computed.append("in a thread")
        return lot(lot_id)

    monkeypatch.setattr(setup.service, "lot", counting_lot)
    responses = [setup.client.get("/public/v1/lots/LOT-7") for _ in range(5)]
    assert [r.status_code for r in responses] == [200] * 5
    assert len({(r.content, r.headers["etag"]) for r in responses}) == 1
    assert computed == ["in a thread"]
    etag = responses[0].headers["etag"]
    cached = setup.client.get("/public/v1/lots/LOT-7", headers={"If-None-Match": etag})
    assert cached.status_code == 304
    assert cached.headers["etag"] == etag
    assert cached.headers["access-control-allow-origin"] == "*"
    assert setup.client.get("/public/v1/lots/NOPE").status_code == 404
    assert computed == ["in a thread"] * 2


def test_epcis_query_by_lot_and_by_item_validates_against_the_gs1_schema(setup: Setup) -> None:
    by_lot = setup.client.get("/api/v1/epcis/events", params={"lot": "LOT-7"}, headers=READER)
    assert by_lot.status_code == 200
    validate_document(by_lot.json())
    events = by_lot.json()["epcisBody"]["eventList"]
    assert len(events) == 4  # per leg: the arrival, and the sensor report of the stay
    assert sum(1 for e in events if e.get("sensorElementList")) == 2
    by_item = setup.client.get("/api/v1/epcis/events", params={"epc": CASE_B}, headers=READER).json()
    validate_document(by_item)
    assert all(CASE_B in e.get("epcList", []) for e in by_item["epcisBody"]["eventList"])
    assert setup.client.get("/api/v1/epcis/events", params={"lot": "LOT-7"}).status_code == 401
    key = key_of(setup, "order-a")
    validate_document(setup.client.get(f"/public/v1/keys/{key}/epcis").json())
