"""Every Grafana panel's query against a real VictoriaMetrics fed by a real hub.

A gateway simulated on the serial side (probe simulator + real agent) and a reefer truck speaking the
wire contract (readings through a cooling failure, health reports with serial errors) go through a
real Mosquitto into a real hub, whose series exporter writes line protocol to VictoriaMetrics; the
hub's ``/metrics`` is scraped into the same VictoriaMetrics as vmagent would. Then each PromQL query
of the boards and alert rules runs as Grafana would run it and must return series carrying the
labels its panel shows.
"""

from __future__ import annotations

import hashlib
import json
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from coldchain.messages import (
    GatewayHealth,
    GatewayStatus,
    Quantity,
    Reading,
    TelemetryBatch,
    UplinkHealth,
    encode,
)
from coldchain.topics import Channel, topic_for
from firmware_sims.probe import ProbeBusSimulator
from hub.grafana.boards import panel_queries
from hub.grafana.queries import ALL, PanelQuery
from tests.support.checks import wait_until
from tests.support.hub import Hub
from tests.support.mqtt import TestClient
from tests.support.processes import Child
from tests.support.servers import Mosquitto, VictoriaMetrics

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
METRICS_TOKEN = "grafana-queries-metrics-token-0123456789"
REEFER = "gw-reefer"  # bound to chilled-produce (0..4 °C) in config/profiles.toml
FREEZER = "gw-freezer"  # bound to frozen (<= -18 °C), read from the probe simulator by a real agent
TEA = "gw-tea-truck"  # fresh tea leaves: a humidity band too
STEP_S = 10


def hub_tables(vm: VictoriaMetrics, dead_port: int) -> str:
    return f"""
[series]
url = "{vm.url}"
band_interval_s = 1.0
flush_interval_s = 0.2

[alarms]
notify = ["ops"]

[[endpoints]]
name = "ops"
url = "http://127.0.0.1:{dead_port}/cgi-bin/webhook/send?key=k-1"
format = "wecom"

[[nodes]]
gateway_id = "{REEFER}"
kind = "reefer_truck"

[[nodes]]
gateway_id = "{FREEZER}"
kind = "cold_store"

[[nodes]]
gateway_id = "{TEA}"
kind = "reefer_truck"

[[api.tokens]]
name = "scraper"
sha256 = "{hashlib.sha256(METRICS_TOKEN.encode()).hexdigest()}"
scopes = ["metrics"]
"""


def reefer_readings(now_ms: int) -> list[Reading]:
    """An hour of a reefer: the rear probe's cooling fails after 10 minutes (9 °C, an excursion), and
    the door probe sees warm air rush in on the last reading (a door opening, still open)."""
    start = now_ms - 3600 * 1000
    count = 3600 // STEP_S
    readings = []
    for i in range(count):
        ts_ms = start + i * STEP_S * 1000
        readings += [
            Reading("reefer-rear", Quantity.TEMPERATURE, ts_ms, 2.0 if i < 60 else 9.0),
            Reading("reefer-rear", Quantity.HUMIDITY, ts_ms, 85.0),
            Reading("reefer-door", Quantity.TEMPERATURE, ts_ms, 2.0 if i < count - 1 else 14.0),
        ]
    return readings


def tea_readings(now_ms: int) -> list[Reading]:
    start = now_ms - 1800 * 1000
    return [
        Reading("leaf-bay", quantity, start + i * STEP_S * 1000, value)
        for i in range(1800 // STEP_S)
        for quantity, value in ((Quantity.TEMPERATURE, 3.0), (Quantity.HUMIDITY, 88.0 - (i % 7)))
    ]


def health(gateway_id: str, boot_id: str, ts_ms: int, crc_errors: int) -> bytes:
    return encode(
        GatewayHealth(
            gateway_id=gateway_id,
            boot_id=boot_id,
            ts_ms=ts_ms,
            uptime_s=ts_ms / 1000 % 86400,
            buffer_batches=2,
            buffer_items=40,
            buffer_bytes=8192,
            oldest_unsent_age_s=1.5,
            uplink=UplinkHealth(connected=True, acked_seq=1, resends=0),
            driver_errors={"reefer-rear": {"crc": crc_errors, "timeout": 1}},
            clock_offset_ms=120,
            cpu_percent=1.2,
            rss_bytes=34_000_000,
        )
    )


def publish_contract_gateways(client: TestClient, now_ms: int) -> None:
    for gateway_id, readings in ((REEFER, reefer_readings(now_ms)), (TEA, tea_readings(now_ms))):
        boot_id = uuid.uuid4().hex
        status = GatewayStatus(
            gateway_id=gateway_id, boot_id=boot_id, state="online", ts_ms=now_ms - 5000, agent_version="0.1.0"
        )
        client.publish(topic_for(gateway_id, Channel.STATUS), encode(status))
        chunks = [readings[i : i + 120] for i in range(0, len(readings), 120)]
        client.watch_receipts(gateway_id)
        client.publish_telemetry(
            gateway_id,
            [encode(TelemetryBatch(gateway_id, boot_id, seq, 1, chunk)) for seq, chunk in enumerate(chunks, 1)],
        )
        client.wait_receipt(gateway_id, len(chunks))
        for minutes_ago, crc in ((3, 4), (2, 9), (1, 15)):
            client.publish(
                topic_for(gateway_id, Channel.HEALTH), health(gateway_id, boot_id, now_ms - minutes_ago * 60_000, crc)
            )
    client.publish(topic_for(REEFER, Channel.TELEMETRY), b"\x00 not a batch")  # one rejection for its counter


def import_hub_metrics(hub: Hub, vm: VictoriaMetrics) -> None:
    """What vmagent does on a scrape: GET /metrics with the scraper's token, store it with job/instance."""
    answer = httpx.get(f"{hub.api_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=5)
    answer.raise_for_status()
    url = f"{vm.url}/api/v1/import/prometheus?extra_label=job=coldchain-hub&extra_label=instance=hub-1"
    httpx.post(url, content=answer.content, timeout=10).raise_for_status()


def run(vm: VictoriaMetrics, query: PanelQuery, expr: str, now_s: float) -> list[dict[str, Any]]:
    if query.instant:
        params = {"query": expr, "time": f"{now_s:.3f}"}
        path = "/api/v1/query"
    else:
        # The hub's state and metric samples are seconds old: end the grid a step past now so a
        # point of it falls after them (on a board, time moves on and the next refresh shows them).
        params = {"query": expr, "start": f"{now_s - 3600:.3f}", "end": f"{now_s + 60:.3f}", "step": "30s"}
        path = "/api/v1/query_range"
    url = f"{vm.url}{path}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=30) as response:
        body = json.load(response)
    assert body["status"] == "success", (query.title, expr, body)
    return list(body["data"]["result"])


def test_every_panel_query_returns_series_with_its_labels(
    broker: Mosquitto,
    victoria_metrics: VictoriaMetrics,
    hub_factory: Callable[..., Hub],
    agent_factory: Callable[..., Child],
    probe_bus: ProbeBusSimulator,
) -> None:
    vm = victoria_metrics
    hub = hub_factory(
        broker, top_toml=f'profiles_file = "{REPO / "config/profiles.toml"}"', tables_toml=hub_tables(vm, 9)
    ).start()
    agent = agent_factory(broker, probe_bus, gateway_id=FREEZER)
    agent.start()
    client = TestClient(broker.port)
    now_ms = int(time.time() * 1000)
    publish_contract_gateways(client, now_ms)
    wait_until(
        lambda: hub.scalar("SELECT count(*) FROM series_readings WHERE gateway_id = ?", FREEZER) > 20, 30, "agent"
    )
    wait_until(
        lambda: hub.scalar("SELECT count(*) FROM alarms WHERE gateway_id = ? AND state != 'closed'", REEFER) >= 2,
        30,
        "the cooling failure and the open door raised no alarms",
    )
    # Both scrapes must see the rejection's counter, or its rate has a single sample and is empty.
    wait_until(lambda: hub.scalar("SELECT count(*) FROM rejected") >= 1, 30, "the garbage message was not set aside")
    import_hub_metrics(hub, vm)
    time.sleep(2.5)  # a second scrape later: rates and histogram quantiles need two samples
    import_hub_metrics(hub, vm)
    stored = hub.scalar("SELECT count(*) FROM readings")
    wait_until(
        lambda: sum(len(s["values"]) for s in vm.export("cc_reading_value")) >= stored, 60, "readings not exported"
    )
    wait_until(lambda: vm.export("cc_alarm_active") and vm.export("cc_band_high"), 30, "snapshot points missing")
    client.close()
    vm.flush()

    now_s = time.time()
    empty: list[str] = []
    unlabelled: list[str] = []
    checked = 0
    for query in panel_queries():
        if query.language != "promql":
            continue  # the one hub-API panel is the API's own tested route
        # Per-node panels run for each contract gateway: the reefer has no humidity band, the tea truck
        # no excursion; each panel must show data for a node that has it.
        results = [
            (expr, run(vm, query, expr, now_s))
            for gateway_id in (REEFER, TEA)
            for expr in {query.render({"gateway_id": gateway_id, "sensor_id": ALL, "node_kind": ALL})}
        ]
        checked += 1
        expr, series = max(results, key=lambda result: len(result[1]))
        where = f"{query.board_uid} / {query.title}: {expr}"
        if not series:
            empty.append(where)
            continue
        missing = [label for label in query.labels if any(label not in s["metric"] for s in series)]
        if missing:
            unlabelled.append(f"{where} lacks {missing}")
    assert checked >= 60
    assert not empty, "queries returned nothing:\n" + "\n".join(empty)
    assert not unlabelled, "series without their labels:\n" + "\n".join(unlabelled)
