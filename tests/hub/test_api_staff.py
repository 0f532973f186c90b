"""The staff, order and investigation routes over a real pipeline and SQLite store (no broker)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from coldchain.messages import Quantity, Reading, TagAction, TagRead, TelemetryBatch, encode
from coldchain.topics import Channel, topic_for
from hub.alarms import AlarmService, AlarmSettings
from hub.api import create_app
from hub.compensation import load_policy
from hub.config import ApiToken
from hub.detectors.detector_set import DetectorSet
from hub.ingest import Inbound, IngestPipeline
from hub.profiles import load_profile_book
from hub.store import IngestWriter, ReadStore

REPO = Path(__file__).resolve().parents[2]
BOOK = load_profile_book(REPO / "config/profiles.toml")
T0 = 1_800_000_000_000
CASE = "urn:epc:id:sgtin:0614141.812345.7"
TOKENS = {"staff-token-0123456789": ["staff"], "shop-token-0123456789": ["orders"], "reader-token-01234567": ["read"]}


def token(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {name}"}


@pytest.fixture
def api(tmp_path: Path) -> tuple[TestClient, IngestPipeline]:
    db = tmp_path / "hub.sqlite3"
    clock = [T0 / 1000]
    alarms = AlarmService(AlarmSettings(), load_policy(REPO / "config/compensation.toml"), lambda _: "chilled-produce")
    pipeline = IngestPipeline(
        IngestWriter(db, alarms),
        wall_clock=lambda: clock[0],
        detectors=lambda: DetectorSet(lambda key: BOOK.for_gateway(key.gateway_id)),
    )
    tokens = [
        ApiToken(name=f"user-{i}", sha256=hashlib.sha256(t.encode()).hexdigest(), scopes=scopes)  # type: ignore[arg-type]
        for i, (t, scopes) in enumerate(TOKENS.items())
    ]
    app = create_app(
        ReadStore(db),
        tokens,
        mqtt_connected=lambda: True,
        ingest_counters=dict,
        send_command=lambda _: None,
        pipeline=pipeline,
    )
    # 2 °C, then 9 °C for over an hour: a critical excursion that stays open
    for seq, start in enumerate(range(0, 600, 30), start=1):
        values = [2.0 if start + i < 60 else 9.0 for i in range(30)]
        readings = [
            Reading("reefer-rear", Quantity.TEMPERATURE, T0 + (start + i) * 10_000, v) for i, v in enumerate(values)
        ]
        tags = [TagRead("reader", "3074257bf7194e4000001a85", CASE, T0, None, 1, TagAction.PICKUP)] if seq == 1 else []
        clock[0] = readings[-1].ts_ms / 1000
        batch = TelemetryBatch("gw-reefer", "0" * 32, seq, 1, readings, tags)
        pipeline.process([Inbound(topic_for("gw-reefer", Channel.TELEMETRY), encode(batch), int(clock[0] * 1000))])
    return TestClient(app), pipeline


def test_orders_are_created_once_and_read_back_without_personal_data(api: tuple[TestClient, IngestPipeline]) -> None:
    client, _ = api
    order = {"order_id": "o-1", "buyer_ref": "ref-77", "items": [CASE]}
    assert client.post("/api/v1/orders", json=order, headers=token("shop-token-0123456789")).status_code == 201
    assert client.post("/api/v1/orders", json=order, headers=token("shop-token-0123456789")).status_code == 201
    clash = client.post(
        "/api/v1/orders", json={**order, "buyer_ref": "someone-else"}, headers=token("shop-token-0123456789")
    )
    assert clash.status_code == 409
    assert (
        client.post(
            "/api/v1/orders", json={**order, "buyer_ref": "Li Lei +86 138"}, headers=token("shop-token-0123456789")
        ).status_code
        == 422
    )  # names and phones refused
    got = client.get("/api/v1/orders/o-1", headers=token("shop-token-0123456789")).json()
    assert (got["items"], got["status"], got["claims"]) == ([CASE], "active", [])
    assert client.get("/api/v1/orders/o-1", headers=token("staff-token-0123456789")).status_code == 401
    assert client.get("/api/v1/orders/nope", headers=token("shop-token-0123456789")).status_code == 404


def test_staff_list_acknowledge_and_close_with_their_name_then_the_claim_and_evidence_appear(
    api: tuple[TestClient, IngestPipeline],
) -> None:
    client, _ = api
    client.post(
        "/api/v1/orders",
        json={"order_id": "o-1", "buyer_ref": "ref-77", "items": [CASE]},
        headers=token("shop-token-0123456789"),
    )
    assert client.get("/api/v1/alarms", headers=token("reader-token-01234567")).status_code == 401
    active = client.get("/api/v1/alarms?state=active", headers=token("staff-token-0123456789")).json()
    excursion = next(a for a in active if a["kind"] == "out_of_range")
    assert excursion["severity"] == "critical"
    alarm = f"/api/v1/alarms/{excursion['alarm_id']}"

    assert (
        client.post(f"{alarm}/acknowledge", json={"reason": "x"}, headers=token("staff-token-0123456789")).status_code
        == 422
    )
    acked = client.post(
        f"{alarm}/acknowledge", json={"reason": "calling the driver"}, headers=token("staff-token-0123456789")
    )
    assert acked.status_code == 200, acked.text
    assert (acked.json()["state"], acked.json()["acknowledged_by"]) == ("acknowledged", "user-0")
    again = client.post(f"{alarm}/acknowledge", json={"reason": "twice"}, headers=token("staff-token-0123456789"))
    assert again.status_code == 409
    closed = client.post(
        f"{alarm}/close", json={"reason": "cargo moved to a spare reefer"}, headers=token("staff-token-0123456789")
    ).json()
    assert (closed["state"], closed["closed_by"]) == ("closed", "user-0")

    claims = client.get("/api/v1/orders/o-1", headers=token("shop-token-0123456789")).json()["claims"]
    assert [(c["action"], c["refund_percent"]) for c in claims] == [("refund", 50.0)]
    investigation = client.get(
        f"/api/v1/investigations/{claims[0]['claim_id']}", headers=token("staff-token-0123456789")
    )
    evidence = investigation.json()["evidence"]
    assert max(r["value"] for r in evidence["readings"]) == 9.0
    assert evidence["items"][0]["epc"] == CASE
    assert client.get("/api/v1/investigations/nope", headers=token("staff-token-0123456789")).status_code == 404
