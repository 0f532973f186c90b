"""MqttIngest prepares the next group while the one before it commits, and a failed commit in that
overlap loses nothing and judges nothing twice (hub/ingest.py), on a real store (SQLite and PostgreSQL).

No broker: messages are handed to ``_on_message`` as paho's network thread would, and the ingest
thread runs on its own.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import pytest

import hub.ingest
from coldchain.messages import Quantity, Reading, TelemetryBatch, encode
from coldchain.mqtt import MqttConfig
from coldchain.topics import Channel, topic_for
from hub.alarms import AlarmService, AlarmSettings
from hub.detectors.detector_set import DetectorSet
from hub.ingest import Inbound, IngestConfig, IngestPipeline, MqttIngest, PreparedGroup
from hub.profiles import load_profile_book
from hub.store import IngestWriter
from tests.support.checks import wait_until
from tests.support.store import GatedWriter, query, refusing_inserts

REPO = Path(__file__).resolve().parents[2]
BOOK = load_profile_book(REPO / "config/profiles.toml")
T0_MS = 1_800_000_000_000
BOOT = "0" * 32
GATEWAY = "gw-reefer"  # bound to a chilled profile in config/profiles.toml: every detector judges it
STEP_MS = 10_000
# A reefer failure in four batches: 5 min at 2 °C, 20 min at 9 °C (an excursion with an alarm), 5 min at 2 °C.
PLAN = ([2.0] * 30, [9.0] * 60, [9.0] * 60, [2.0] * 30)
NOW_S = (T0_MS + sum(map(len, PLAN)) * STEP_MS) / 1000 + 1  # just after the last reading: nothing is silent


def messages() -> list[Inbound]:
    out: list[Inbound] = []
    start = 0
    for seq, values in enumerate(PLAN, start=1):
        readings = [
            Reading("reefer-rear", Quantity.TEMPERATURE, T0_MS + (start + i) * STEP_MS, value)
            for i, value in enumerate(values)
        ]
        start += len(values)
        payload = encode(TelemetryBatch(GATEWAY, BOOT, seq, 1, readings))
        out.append(Inbound(topic_for(GATEWAY, Channel.TELEMETRY), payload, readings[-1].ts_ms))
    return out


def as_delivered(message: Inbound, mid: int) -> paho.MQTTMessage:
    delivered = paho.MQTTMessage(mid, message.topic.encode())
    delivered.payload = message.payload
    return delivered


def writer_for(url: str, writer_type: type[IngestWriter] = IngestWriter) -> IngestWriter:
    def product(gateway_id: str) -> str | None:
        profile = BOOK.for_gateway(gateway_id)
        return profile.name if profile else None

    return writer_type(url, AlarmService(AlarmSettings(notify=["ops"]), None, product))


def pipeline_for(writer: IngestWriter, pipeline_type: type[IngestPipeline] = IngestPipeline) -> IngestPipeline:
    return pipeline_type(
        writer,
        wall_clock=lambda: NOW_S,
        detectors=lambda: DetectorSet(lambda key: BOOK.for_gateway(key.gateway_id)),
    )


def committed(url: str) -> dict[str, list[tuple[Any, ...]]]:
    """Everything the groups leave in the store that does not depend on ids made at random."""
    return {
        "readings": query(
            url, "SELECT gateway_id, sensor_id, ts_ms, value, quality, seq FROM series_readings ORDER BY id"
        ),
        "alarms": query(
            url,
            "SELECT kind, severity, state, peak_value, duration_s, message FROM alarms ORDER BY kind, severity",
        ),
        "latest": query(url, "SELECT gateway_id, sensor_id, ts_ms, value FROM latest"),
        "rollups": query(url, "SELECT bucket_ms, min_value, max_value, samples FROM rollups ORDER BY bucket_ms"),
        "gateways": query(url, "SELECT gateway_id, acked_seq, batches, readings FROM gateways"),
    }


class RecordingPipeline(IngestPipeline):
    """Notes the seq of every group it prepares, and the seqs of those a tick rode on."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prepared_seqs: list[int] = []
        self.ticked_seqs: list[int] = []
        self.prepared_second = threading.Event()

    def prepare(self, group: Sequence[Inbound], *, tick: bool = False, checkpoint: bool = False) -> PreparedGroup:
        prepared = super().prepare(group, tick=tick, checkpoint=checkpoint)
        seqs = [batch.seq for batch in prepared.plan.new_batches]
        self.prepared_seqs += seqs
        if tick:
            self.ticked_seqs += seqs
        if 2 in self.prepared_seqs:
            self.prepared_second.set()
        return prepared


def gated_ingest(url: str) -> tuple[GatedWriter, RecordingPipeline, MqttIngest]:
    """An ingest thread running on ``url`` with every message of ``messages()`` delivered, one group each;
    commits are held until the test opens ``writer.gate``."""
    writer = writer_for(url, GatedWriter)
    assert isinstance(writer, GatedWriter)
    pipeline = pipeline_for(writer, RecordingPipeline)
    assert isinstance(pipeline, RecordingPipeline)
    ingest = MqttIngest(pipeline, MqttConfig(), IngestConfig(group_max_messages=1))
    for mid, message in enumerate(messages(), start=1):
        ingest._on_message(ingest._client, None, as_delivered(message, mid))
    ingest._ingest_thread.start()
    return writer, pipeline, ingest


def test_the_reference_run_opens_and_closes_an_excursion(tmp_path: Path) -> None:
    # The comparison below is only worth something if the groups make findings the rewind could lose.
    url = f"sqlite:///{tmp_path / 'reference.sqlite3'}"
    pipeline = pipeline_for(writer_for(url))
    for message in messages():
        pipeline.process([message])
    kinds = {kind for kind, *_ in committed(url)["alarms"]}
    assert "out_of_range" in kinds, kinds


def test_a_commit_failing_while_the_next_group_is_prepared_loses_nothing_and_judges_nothing_twice(
    database_url: str, tmp_path: Path
) -> None:
    reference = f"sqlite:///{tmp_path / 'reference.sqlite3'}"
    sequential = pipeline_for(writer_for(reference))
    for message in messages():
        sequential.process([message])

    writer, pipeline, ingest = gated_ingest(database_url)
    try:
        assert writer.entered.wait(10)
        # Group 1's commit is held: group 2 is prepared beside it (judged, planned) all the same.
        assert pipeline.prepared_second.wait(10), pipeline.prepared_seqs
        assert pipeline.prepared_seqs == [1, 2]
        with refusing_inserts(database_url, "readings", "disk says no"):
            writer.gate.set()  # group 1's commit now fails, with group 2 prepared on top of it
            wait_until(lambda: pipeline.stats.snapshot().get("commit_failures", 0) >= 1, 20, "no commit failed")
        wait_until(lambda: ingest.backlog().messages == 0, 20, "the groups were not committed again")
    finally:
        writer.gate.set()
        ingest.stop()

    # Groups 1 and 2 were prepared again after the rewind (else 1 would be a duplicate of the ledger's
    # plan and skipped, or judged as late by detectors that had already seen it), then 3 and 4.
    assert pipeline.prepared_seqs[:2] == [1, 2]
    assert pipeline.prepared_seqs[-4:] == [1, 2, 3, 4], pipeline.prepared_seqs
    assert committed(database_url) == committed(reference)
    assert pipeline.stats.snapshot()["readings_stored"] == sum(map(len, PLAN))


def test_a_tick_falling_due_while_a_commit_is_in_flight_rides_on_the_next_group_without_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub.ingest, "TICK_INTERVAL_S", 0.0)  # a tick falls due before every group
    writer, pipeline, ingest = gated_ingest(f"sqlite:///{tmp_path / 'hub.sqlite3'}")
    try:
        assert writer.entered.wait(10)
        # Group 1's commit is held. Waiting for it to tick alone would stop the work until it ends;
        # instead group 2 is prepared beside it, carrying the tick.
        assert pipeline.prepared_second.wait(10), pipeline.prepared_seqs
        assert pipeline.ticked_seqs[:2] == [1, 2]
        assert pipeline.stats.snapshot().get("messages", 0) == 0  # and group 1 is still not committed
        writer.gate.set()
        wait_until(lambda: ingest.backlog().messages == 0, 20, "the groups were not committed")
    finally:
        writer.gate.set()
        ingest.stop()
    assert pipeline.ticked_seqs == [1, 2, 3, 4]
    assert pipeline.stats.snapshot()["readings_stored"] == sum(map(len, PLAN))
