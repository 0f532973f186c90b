"""``GET /metrics`` of a real hub process on a real Mosquitto, scraped as Prometheus / vmagent would."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support.checks import wait_until
from tests.support.hub import Hub
from tests.support.mqtt import TestClient, make_batches
from tests.support.servers import Mosquitto

pytestmark = pytest.mark.integration

METRICS_TOKEN = "integration-metrics-token-0123456789"
# A token that can scrape and do nothing else, beside the fixture's all-purpose one.
SCRAPER_TOML = f"""
[[api.tokens]]
name = "scraper"
sha256 = "{hashlib.sha256(METRICS_TOKEN.encode()).hexdigest()}"
scopes = ["metrics"]
"""


def scrape(hub: Hub) -> dict[str, float]:
    """Every unlabelled sample of the hub's /metrics, by sample name."""
    answer = httpx.get(f"{hub.api_url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=5)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(answer.text)
        for sample in family.samples
        if not sample.labels
    }


def test_scraped_counters_match_the_store_and_count_redelivered_batches(
    broker: Mosquitto, hub_factory: Callable[..., Hub]
) -> None:
    hub = hub_factory(broker, tables_toml=SCRAPER_TOML).start()
    assert httpx.get(f"{hub.api_url}/metrics", timeout=5).status_code == 401
    assert hub.get("/metrics").status_code == 403  # read, command, staff, orders: but not metrics
    assert (
        httpx.get(
            f"{hub.api_url}/api/v1/gateways", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=5
        ).status_code
        == 401
    )  # and the scraper's token reads nothing else

    client = TestClient(broker.port)
    client.watch_receipts("gw-metrics")
    payloads = make_batches("gw-metrics", count=12, readings_per_batch=5)
    client.publish_telemetry("gw-metrics", payloads)
    client.wait_receipt("gw-metrics", 12)

    stored = hub.scalar("SELECT count(*) FROM readings")
    assert stored == 60
    metrics = scrape(hub)
    # Receipts go out after the writer has counted their group as committed: nothing is left in the backlog.
    assert metrics["coldchain_hub_ingest_queue_messages"] == 0
    assert metrics["coldchain_hub_readings_stored_total"] == stored
    assert metrics["coldchain_hub_batches_stored_total"] == 12
    assert metrics["coldchain_hub_messages_total"] == 12
    assert metrics["coldchain_hub_duplicates_total"] == 0
    assert metrics["coldchain_hub_ingest_lag_seconds"] == 0
    assert metrics["coldchain_hub_commit_seconds_count"] >= 1

    client.publish_telemetry("gw-metrics", [payloads[2], payloads[6], payloads[11]])
    wait_until(lambda: scrape(hub)["coldchain_hub_duplicates_total"] == 3, 20, "re-published batches not counted")
    client.close()

    metrics = scrape(hub)
    assert metrics["coldchain_hub_readings_stored_total"] == hub.scalar("SELECT count(*) FROM readings") == 60
    assert metrics["coldchain_hub_messages_total"] == 15
