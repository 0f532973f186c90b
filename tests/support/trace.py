"""A hub app over a real pipeline and store, with the public routes, for the traceability tests."""

from __future__ import annotations

import hashlib
from pathlib import Path

from fastapi.testclient import TestClient

from coldchain.messages import Quantity, Reading, TagAction, TagRead, TelemetryBatch, encode
from coldchain.topics import Channel, topic_for
from hub.alarms import AlarmService, AlarmSettings
from hub.api import create_app
from hub.config import ApiToken
from hub.ingest import Inbound, IngestPipeline
from hub.store import IngestWriter, ReadStore
from hub.traceability.model import NodeInfo
from hub.traceability.public import PublicService, add_public_routes
from hub.traceability.settings import PublicSettings

T0 = 1_800_000_000_000
SECRET = b"buyer-key-secret-for-tests-0123456"
SHOP = {"Authorization": "Bearer shop-token-0123456789"}
READER = {"Authorization": "Bearer reader-token-0123456"}
CASE_A = "urn:epc:id:sgtin:0614141.812345.11"
CASE_B = "urn:epc:id:sgtin:0614141.812345.12"
GTIN = "80614141123458"
NODES = [
    NodeInfo("gw-store", "cold_store", "产地冷库", "Packhouse cold store", "0614141000012", "大理", "Dali"),
    NodeInfo("gw-truck", "reefer_truck", "冷藏车", "Reefer truck", None, "昆明", "Kunming"),
]


class Setup:
    """The app, its store and pipeline; ``journey`` fills them with a lot of two cases and two orders."""

    def __init__(self, tmp_path: Path, *, rate_burst: int = 1000) -> None:
        db = tmp_path / "hub.sqlite3"
        self.pipeline = IngestPipeline(IngestWriter(db, AlarmService(AlarmSettings(), None, lambda _: None)))
        tokens = [
            ApiToken("shop", hashlib.sha256(b"shop-token-0123456789").hexdigest(), ["orders"]),
            ApiToken("reader", hashlib.sha256(b"reader-token-0123456").hexdigest(), ["read"]),
        ]
        self.app = create_app(
            ReadStore(db),
            tokens,
            mqtt_connected=lambda: True,
            ingest_counters=dict,
            send_command=lambda _: None,
            pipeline=self.pipeline,
        )
        settings = PublicSettings(base_url="https://trace.example.com", rate_burst=rate_burst, rate_per_s=0.001)
        self.service = PublicService(db, {n.gateway_id: n for n in NODES}, settings, SECRET)
        self.app.state.public = self.service
        add_public_routes(self.app, self.service)
        self.client = TestClient(self.app)
        self.seq: dict[str, int] = {}

    def send(self, gateway_id: str, readings: list[Reading] | None = None, tags: list[TagRead] | None = None) -> None:
        seq = self.seq[gateway_id] = self.seq.get(gateway_id, 0) + 1
        batch = TelemetryBatch(gateway_id, "0" * 32, seq, 1, readings or [], tags or [])
        self.pipeline.process([Inbound(topic_for(gateway_id, Channel.TELEMETRY), encode(batch), T0)])

    def journey(self) -> None:
        """Both cases at the cold store (2..3 °C), then case A alone on the truck (4..6 °C)."""
        read = lambda epc, at, action: TagRead("r", "3074257bf7194e4000001a85", epc, T0 + at, None, 1, action)  # noqa: E731
        self.send("gw-store", tags=[read(CASE_A, 0, TagAction.PICKUP), read(CASE_B, 0, TagAction.PICKUP)])
        self.send("gw-store", [Reading("s", Quantity.TEMPERATURE, T0 + i * 60_000, 2.0 + (i % 2)) for i in range(60)])
        self.send("gw-truck", tags=[read(CASE_A, 3_600_000, TagAction.PICKUP)])
        self.send(
            "gw-truck",
            [Reading("t", Quantity.TEMPERATURE, T0 + 3_600_000 + i * 60_000, 4.0 + i % 3) for i in range(30)],
        )
        self.client.post(
            "/api/v1/lots",
            json={"lot_id": "LOT-7", "gtin": GTIN, "product": "blueberries", "items": [CASE_A, CASE_B]},
            headers=SHOP,
        )
        for order, case in (("order-a", CASE_A), ("order-b", CASE_B)):
            self.client.post(
                "/api/v1/orders", json={"order_id": order, "buyer_ref": f"ref-{order}", "items": [case]}, headers=SHOP
            )
