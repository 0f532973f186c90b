"""The hub's own metrics: the collector over a real pipeline and SQLite store, the backlog of a real
MqttIngest (no broker: messages enter through paho's callback), provider failures, and ``GET /metrics``."""

from __future__ import annotations

import hashlib
import logging
import re
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families

from coldchain.messages import Quantity, Reading, TelemetryBatch, encode
from coldchain.mqtt import MqttConfig
from coldchain.topics import Channel, topic_for
from hub.alarms import AlarmService, AlarmSettings
from hub.api import create_app
from hub.config import ApiToken
from hub.detectors.detector_set import DetectorSet
from hub.ingest import Inbound, IngestBacklog, IngestConfig, IngestPipeline, IngestStats, MqttIngest
from hub.metrics import HistogramTimings, HubCollector
from hub.profiles import load_profile_book
from hub.store import IngestWriter, ReadStore
from tests.support.store import GatedWriter

REPO = Path(__file__).resolve().parents[2]
BOOK = load_profile_book(REPO / "config/profiles.toml")
BOOT = "0123456789abcdef0123456789abcdef"
T0_MS = 1_800_000_000_000
SCRAPER = "scraper-token-0123456789"
READER = "reader-token-012345678"


def scrape(registry: CollectorRegistry) -> dict[str, Metric]:
    """The registry as a scraper parses it: families by name (counters without ``_total``)."""
    return {family.name: family for family in text_string_to_metric_families(generate_latest(registry).decode())}


def value(families: Mapping[str, Metric], sample_name: str, **labels: str) -> float:
    """The one sample called ``sample_name`` with exactly ``labels``."""
    found = [
        sample.value
        for family in families.values()
        for sample in family.samples
        if sample.name == sample_name and sample.labels == labels
    ]
    assert len(found) == 1, f"{sample_name}{labels}: {found}"
    return found[0]


def batch(gateway_id: str, seq: int, values: list[float], *, oldest: int = 1, start_ms: int = T0_MS) -> Inbound:
    """A telemetry message of ``values`` one minute apart, received at the last reading's time."""
    readings = [Reading("probe-1", Quantity.TEMPERATURE, start_ms + i * 60_000, v) for i, v in enumerate(values)]
    payload = encode(TelemetryBatch(gateway_id, BOOT, seq, oldest, readings))
    return Inbound(topic_for(gateway_id, Channel.TELEMETRY), payload, readings[-1].ts_ms)


class Hub:
    """A pipeline with detectors and alarms on a SQLite file, and the hub's registry around it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.clock = T0_MS / 1000
        alarms = AlarmService(AlarmSettings(), None, lambda _: "chilled-produce")
        self.writer = IngestWriter(path, alarms)
        self.registry = CollectorRegistry()
        self.pipeline = IngestPipeline(
            self.writer,
            wall_clock=lambda: self.clock,
            detectors=lambda: DetectorSet(lambda key: BOOK.for_gateway(key.gateway_id)),
            timings=HistogramTimings(self.registry),
        )
        self.registry.register(HubCollector(self.pipeline.stats))

    def process(self, *messages: Inbound) -> None:
        self.clock = max(m.received_ms for m in messages) / 1000
        self.pipeline.process(list(messages))


@pytest.fixture
def hub(tmp_path: Path) -> Hub:
    return Hub(tmp_path / "hub.sqlite3")


def test_counters_and_timings_follow_the_pipeline(hub: Hub) -> None:
    # gw-reefer is bound to chilled-produce (0..4 °C): twenty minutes at 9 °C opens an alarm.
    hub.process(batch("gw-reefer", 1, [2.0, 2.5, 3.0]))
    hub.process(batch("gw-reefer", 2, [9.0] * 21, start_ms=T0_MS + 180_000))
    hub.process(batch("gw-reefer", 2, [9.0] * 21, start_ms=T0_MS + 180_000))  # redelivered: a duplicate
    garbage = Inbound(topic_for("gw-reefer", Channel.TELEMETRY), b"\x00not json", T0_MS + 3_600_000)
    hub.process(garbage, batch("gw-reefer", 6, [3.0], oldest=5, start_ms=T0_MS + 3_600_000))  # seqs 3-4 released

    families = scrape(hub.registry)
    stats = hub.pipeline.stats.snapshot()
    assert value(families, "coldchain_hub_messages_total") == 5 == stats["messages"]
    assert value(families, "coldchain_hub_batches_stored_total") == 3
    assert value(families, "coldchain_hub_readings_stored_total") == 25 == ReadStore(hub.path).reading_count()
    assert value(families, "coldchain_hub_duplicates_total") == 1
    assert value(families, "coldchain_hub_gaps_total") == 1
    assert value(families, "coldchain_hub_rejected_total", reason="malformed") == 1
    alarm_actions = {key.removeprefix("alarms_"): n for key, n in stats.items() if key.startswith("alarms_")}
    assert alarm_actions["open"] >= 1
    for action, count in alarm_actions.items():
        assert value(families, "coldchain_hub_alarms_total", action=action) == count
    assert value(families, "coldchain_hub_commit_failures_total") == 0
    assert value(families, "coldchain_hub_claims_created_total") == 0
    # One observation per committed group, for the whole group and for its detectors.
    for name in ("coldchain_hub_commit_seconds", "coldchain_hub_detector_seconds"):
        assert value(families, f"{name}_count") == 4
        assert value(families, f"{name}_bucket", le="+Inf") == 4
        assert 0 < value(families, f"{name}_sum") < 10
    assert value(families, "coldchain_hub_detector_seconds_sum") <= value(families, "coldchain_hub_commit_seconds_sum")
    assert {s.labels["le"] for s in families["coldchain_hub_commit_seconds"].samples if "le" in s.labels} >= {
        "0.001",
        "5.0",
    }


def test_every_stats_key_lands_on_its_metric() -> None:
    stats = IngestStats()
    for name, amount in {
        "messages": 10,
        "readings_stored": 70,
        "batches_stored": 7,
        "duplicates": 2,
        "gaps": 1,
        "gap_records": 2,
        "commit_failures": 3,
        "rejected_too_large": 4,
        "rejected_id_mismatch": 5,
        "alarms_open": 6,
        "alarms_escalate": 1,
        "claims_created": 2,
        "tag_reads_stored": 9,  # counted by the pipeline but not part of the metrics contract
    }.items():
        stats.add(name, amount)
    registry = CollectorRegistry()
    registry.register(HubCollector(stats))
    families = scrape(registry)
    assert value(families, "coldchain_hub_messages_total") == 10
    assert value(families, "coldchain_hub_readings_stored_total") == 70
    assert value(families, "coldchain_hub_batches_stored_total") == 7
    assert value(families, "coldchain_hub_duplicates_total") == 2
    assert value(families, "coldchain_hub_gaps_total") == 3  # hub-detected and gateway-reported
    assert value(families, "coldchain_hub_commit_failures_total") == 3
    assert value(families, "coldchain_hub_rejected_total", reason="too_large") == 4
    assert value(families, "coldchain_hub_rejected_total", reason="id_mismatch") == 5
    assert value(families, "coldchain_hub_alarms_total", action="open") == 6
    assert value(families, "coldchain_hub_alarms_total", action="escalate") == 1
    assert value(families, "coldchain_hub_claims_created_total") == 2
    assert not [name for name in families if "tag_reads" in name]


def test_a_fresh_hub_exposes_zeros_not_nothing() -> None:
    registry = CollectorRegistry()
    registry.register(HubCollector(IngestStats()))
    families = scrape(registry)
    assert value(families, "coldchain_hub_readings_stored_total") == 0
    assert value(families, "coldchain_hub_duplicates_total") == 0
    assert value(families, "coldchain_hub_metrics_collect_errors_total", provider="ingest_stats") == 0


class FixedBacklog:
    def __init__(self, backlog: IngestBacklog) -> None:
        self.value = backlog

    def backlog(self) -> IngestBacklog:
        return self.value


def test_queue_depth_and_lag_come_from_the_backlog() -> None:
    source = FixedBacklog(IngestBacklog(3, T0_MS - 2_500))
    registry = CollectorRegistry()
    registry.register(HubCollector(IngestStats(), backlog=source, wall_clock=lambda: T0_MS / 1000))
    families = scrape(registry)
    assert value(families, "coldchain_hub_ingest_queue_messages") == 3
    assert value(families, "coldchain_hub_ingest_lag_seconds") == pytest.approx(2.5)
    source.value = IngestBacklog(0, None)
    families = scrape(registry)
    assert value(families, "coldchain_hub_ingest_queue_messages") == 0
    assert value(families, "coldchain_hub_ingest_lag_seconds") == 0
    source.value = IngestBacklog(1, T0_MS + 60_000)  # the wall clock stepped back: no negative lag
    assert value(scrape(registry), "coldchain_hub_ingest_lag_seconds") == 0


def delivered(gateway_id: str, seq: int, mid: int) -> paho.MQTTMessage:
    """A QoS 0 message as paho hands it to ``on_message``."""
    message = paho.MQTTMessage(mid, topic_for(gateway_id, Channel.TELEMETRY).encode())
    message.payload = batch(gateway_id, seq, [3.0]).payload
    return message


def test_mqtt_ingest_backlog_counts_queued_and_in_hand_messages(tmp_path: Path) -> None:
    writer = GatedWriter(tmp_path / "hub.sqlite3")
    ingest = MqttIngest(IngestPipeline(writer), MqttConfig(), IngestConfig(group_max_messages=2))
    assert ingest.backlog() == IngestBacklog(0, None)
    before_ms = int(time.time() * 1000)
    for seq in (1, 2, 3):
        ingest._on_message(ingest._client, None, delivered("gw-q", seq, seq))
    backlog = ingest.backlog()
    assert backlog.messages == 3
    assert backlog.oldest_received_ms is not None
    assert before_ms <= backlog.oldest_received_ms <= int(time.time() * 1000)
    oldest_ms = backlog.oldest_received_ms

    ingest._ingest_thread.start()  # the writer only: no broker connection
    try:
        assert writer.entered.wait(10)
        # The first group (two messages) is in hand, blocked in its commit: still counted, still the oldest.
        assert ingest.backlog() == IngestBacklog(3, oldest_ms)
        writer.gate.set()
        deadline = time.monotonic() + 10
        while ingest.backlog().messages and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ingest.backlog() == IngestBacklog(0, None)
        assert ReadStore(writer.database).reading_count() == 3
    finally:
        writer.gate.set()
        ingest.stop()


class SeriesStats:
    def __init__(self) -> None:
        self.counts = {"points_written": 1200, "points_failed_rejected": 3, "points_failed_timeout": 1}
        self.lag = 42

    def snapshot(self) -> Mapping[str, int]:
        return dict(self.counts)

    def lag_readings(self) -> int:
        return self.lag


class StoreGauges:
    def __init__(self) -> None:
        self.fail_alarms = False

    def alarms_active_by_severity(self) -> Mapping[str, int]:
        if self.fail_alarms:
            raise RuntimeError("connection to postgresql://hub:s3cret-password@db/hub lost")
        return {"critical": 1, "warning": 2}

    def outbox_pending_by_endpoint(self) -> Mapping[str, int]:
        return {"shop": 4, "ops-dingtalk": 0}


def test_series_and_store_providers() -> None:
    registry = CollectorRegistry()
    registry.register(HubCollector(IngestStats(), series=SeriesStats(), store=StoreGauges()))
    families = scrape(registry)
    assert value(families, "coldchain_hub_series_points_written_total") == 1200
    assert value(families, "coldchain_hub_series_points_failed_total", reason="rejected") == 3
    assert value(families, "coldchain_hub_series_points_failed_total", reason="timeout") == 1
    assert value(families, "coldchain_hub_series_export_lag_readings") == 42
    assert value(families, "coldchain_hub_alarms_active", severity="critical") == 1
    assert value(families, "coldchain_hub_alarms_active", severity="warning") == 2
    assert value(families, "coldchain_hub_outbox_pending", endpoint="shop") == 4
    assert value(families, "coldchain_hub_outbox_pending", endpoint="ops-dingtalk") == 0


def test_a_failing_provider_is_left_out_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    store = StoreGauges()
    store.fail_alarms = True
    stats = IngestStats()
    stats.add("readings_stored", 5)
    registry = CollectorRegistry()
    registry.register(HubCollector(stats, series=SeriesStats(), store=store))
    with caplog.at_level(logging.WARNING, logger="hub.metrics"):
        first = scrape(registry)
        second = scrape(registry)
    assert "coldchain_hub_alarms_active" not in first
    assert value(second, "coldchain_hub_readings_stored_total") == 5
    assert value(second, "coldchain_hub_outbox_pending", endpoint="shop") == 4
    assert value(second, "coldchain_hub_series_points_written_total") == 1200
    assert value(first, "coldchain_hub_metrics_collect_errors_total", provider="alarms_active") == 1
    assert value(second, "coldchain_hub_metrics_collect_errors_total", provider="alarms_active") == 2
    assert value(second, "coldchain_hub_metrics_collect_errors_total", provider="outbox_pending") == 0
    [record] = caplog.records
    assert "alarms_active" in record.getMessage()
    assert "s3cret" not in caplog.text

    caplog.clear()
    store.fail_alarms = False
    with caplog.at_level(logging.WARNING, logger="hub.metrics"):
        recovered = scrape(registry)
        scrape(registry)
    assert value(recovered, "coldchain_hub_alarms_active", severity="critical") == 1
    assert value(recovered, "coldchain_hub_metrics_collect_errors_total", provider="alarms_active") == 2
    assert [r.getMessage() for r in caplog.records] == ["metrics provider alarms_active recovered"]


def contract() -> dict[str, tuple[str, set[str]]]:
    """docs/metrics.md's table of the hub's own metrics: name -> (type, labels)."""
    rows = re.findall(
        r"^\| `(coldchain_hub_\w+)` \|\s*(\w+)\s*\|([^|]*)\|", (REPO / "docs/metrics.md").read_text(), re.MULTILINE
    )
    return {name: (kind, set(re.findall(r"`(\w+)`", labels))) for name, kind, labels in rows}


def test_the_exposition_matches_docs_metrics_md() -> None:
    stats = IngestStats()
    stats.add("rejected_malformed")
    stats.add("alarms_open")
    registry = CollectorRegistry()
    timings = HistogramTimings(registry)
    timings.observe_commit(0.01)
    timings.observe_detectors(0.002)
    registry.register(
        HubCollector(stats, backlog=FixedBacklog(IngestBacklog(1, T0_MS)), series=SeriesStats(), store=StoreGauges())
    )
    families = scrape(registry)
    # prometheus-client adds a histogram's creation time as a series of its own; not part of the contract.
    created = {f"{family.name}_created" for family in families.values() if family.type == "histogram"}
    exposed = {
        family.name + ("_total" if family.type == "counter" else ""): (
            family.type,
            {key for sample in family.samples for key in sample.labels if key != "le"},
        )
        for family in families.values()
        if family.name not in created
    }
    assert exposed == contract()


def api_client(registry: CollectorRegistry | None, tmp_path: Path) -> TestClient:
    tokens = [
        ApiToken(name="scraper", sha256=hashlib.sha256(SCRAPER.encode()).hexdigest(), scopes=["metrics"]),
        ApiToken(name="dashboard", sha256=hashlib.sha256(READER.encode()).hexdigest(), scopes=["read"]),
    ]
    db = tmp_path / "hub.sqlite3"
    IngestWriter(db)  # creates the schema
    app = create_app(
        ReadStore(db),
        tokens,
        mqtt_connected=lambda: True,
        ingest_counters=dict,
        send_command=lambda _: None,
        metrics=registry,
    )
    return TestClient(app)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_metrics_endpoint_needs_the_metrics_scope(hub: Hub, tmp_path: Path) -> None:
    hub.process(batch("gw-reefer", 1, [2.0, 3.0]))
    client = api_client(hub.registry, tmp_path)

    assert client.get("/metrics").status_code == 401
    assert client.get("/metrics", headers=bearer("not-a-known-token-000")).status_code == 401
    assert client.get("/metrics", headers=bearer(READER)).status_code == 403
    # The scraper's token reads nothing else.
    assert client.get("/api/v1/gateways", headers=bearer(SCRAPER)).status_code == 401
    assert client.get("/api/v1/gateways", headers=bearer(READER)).status_code == 200

    answer = client.get("/metrics", headers=bearer(SCRAPER))
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
    families = {family.name: family for family in text_string_to_metric_families(answer.text)}
    assert value(families, "coldchain_hub_readings_stored_total") == 2
    assert value(families, "coldchain_hub_commit_seconds_count") == 1


def test_metrics_endpoint_speaks_openmetrics_when_asked(hub: Hub, tmp_path: Path) -> None:
    client = api_client(hub.registry, tmp_path)
    answer = client.get(
        "/metrics", headers={**bearer(SCRAPER), "Accept": "application/openmetrics-text; version=1.0.0"}
    )
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/openmetrics-text")
    assert answer.text.endswith("# EOF\n")
    assert "coldchain_hub_readings_stored_total 0.0" in answer.text


def test_without_a_registry_there_is_no_metrics_route(tmp_path: Path) -> None:
    assert api_client(None, tmp_path).get("/metrics", headers=bearer(SCRAPER)).status_code == 404


def test_a_full_inbox_holds_paho_back_until_the_writer_takes_messages(tmp_path: Path) -> None:
    # Bounded memory under overload: past inbox_max_bytes the network thread waits (TCP then pushes back
    # to the broker, which queues) instead of the hub holding everything the broker sends.
    writer = GatedWriter(tmp_path / "hub.sqlite3")
    first = delivered("gw-q", 1, 1)
    ingest = MqttIngest(
        IngestPipeline(writer), MqttConfig(), IngestConfig(group_max_messages=1, inbox_max_bytes=len(first.payload))
    )
    ingest._on_message(ingest._client, None, first)  # an empty inbox takes any message
    second_in = threading.Event()

    def network_thread() -> None:
        ingest._on_message(ingest._client, None, delivered("gw-q", 2, 2))
        second_in.set()

    threading.Thread(target=network_thread, daemon=True).start()
    assert not second_in.wait(1.0)  # the inbox is full: paho's thread is held back
    assert ingest.backlog().messages == 1
    ingest._ingest_thread.start()  # the writer takes the first message into its group: room again
    try:
        assert second_in.wait(10)
        writer.gate.set()
        deadline = time.monotonic() + 10
        while ingest.backlog().messages and time.monotonic() < deadline:
            time.sleep(0.01)
        assert ReadStore(writer.database).reading_count() == 2
    finally:
        writer.gate.set()
        ingest.stop()
