"""Wires the hub's parts together: store, ingest over MQTT and the HTTP API."""

from __future__ import annotations

import contextlib
import gc
import logging
import secrets as random_secrets
import signal
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Final

import uvicorn
from prometheus_client import CollectorRegistry

from coldchain.config import resolve_secret
from coldchain.errors import ConfigError
from hub.alarms import AlarmService, claim_delivered
from hub.api import create_app
from hub.compensation import load_policy
from hub.config import HubConfig
from hub.db import Database
from hub.detectors.detector_set import DetectorSet
from hub.ingest import IngestPipeline, MqttIngest
from hub.metrics import HistogramTimings, HubCollector
from hub.outbox import CLAIM_KIND, OutboxDispatcher, OutboxRow, OutboxTable
from hub.profiles import load_profile_book
from hub.series_export import SeriesExporter
from hub.store import IngestWriter, ReadStore, SeriesStoreSource
from hub.traceability.public import PublicService, add_public_routes

log = logging.getLogger(__name__)

GRACEFUL_SHUTDOWN_S: Final = 5
"""Open requests (a viewer's event stream) get this long to finish when the hub stops."""

GC_YOUNG_THRESHOLD: Final = 50_000
"""New container objects between collections of the youngest generation, not CPython's 700: an
ingest group holds tens of thousands of row tuples until it commits, and at 700 the collector ran
dozens of times per group and rescanned them (docs/benchmarks.md). Cyclic garbage waits a little
longer; memory stays bounded."""

GIL_SWITCH_INTERVAL_S: Final = 0.0005
"""How long a thread waiting for the GIL lets the holder run before asking for it, not CPython's 5 ms.
The writer thread takes the GIL back after each SQLite statement while the ingest thread judges the
next group: at 5 ms it waited that long each time, and the two barely overlapped (the e2e drain at
500 per batch went from 103,000 to 124,000 readings/s at 0.5 ms; 0.1 ms gave no more; docs/benchmarks.md)."""


def tune_interpreter_for_ingest() -> None:
    """Set the collector and the GIL switch interval for a long-running ingest process (call once,
    when everything is built).

    ``gc.freeze`` moves what exists now (modules, the app, the configuration: hundreds of thousands
    of objects that live as long as the process) out of the collector's sight, so full collections
    scan only what ingest creates; the youngest generation is collected every
    ``GC_YOUNG_THRESHOLD`` allocations.
    """
    gc.collect()  # what is garbage now would otherwise be frozen with the rest
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, oldest)
    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling.

    uvicorn re-raises a captured SIGTERM after serving, which would end the process before the
    ingest threads stop; the hub installs its own handlers instead.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class HubRuntime:
    """One hub process: ingest in background threads, the API served by uvicorn."""

    def __init__(self, config: HubConfig, *, demo: bool = False) -> None:
        self.database = Database(config.store.database_url(allow_placeholder=demo))
        log.info("system of record: %s", self.database.display_url)
        book = load_profile_book(Path(config.profiles_file)) if config.profiles_file else None
        policy = load_policy(Path(config.compensation_file)) if config.compensation_file else None
        endpoints = {endpoint.name: endpoint for endpoint in config.endpoints}
        if policy is not None and policy.endpoint not in endpoints:
            raise ConfigError(f"the compensation policy sends claims to unknown endpoint {policy.endpoint!r}")

        def product_of_gateway(gateway_id: str) -> str | None:
            profile = book.for_gateway(gateway_id) if book else None
            return profile.name if profile else None

        def make_detectors() -> DetectorSet:
            return DetectorSet(lambda key: book.for_gateway(key.gateway_id) if book else None)

        def product_of_lot(lot_id: str) -> str | None:
            profile = book.for_lot(lot_id) if book else None
            return profile.name if profile else None

        alarms = AlarmService(config.alarms, policy, product_of_gateway, product_of_lot)
        # This hub's own metrics registry, not prometheus_client's global one: the demo runs several parts
        # in one process.
        self.metrics = CollectorRegistry()
        self.pipeline = IngestPipeline(
            IngestWriter(self.database, alarms, migrate=config.store.migrate_on_start),
            max_payload_bytes=config.ingest.max_payload_bytes,
            detectors=make_detectors if book else None,
            timings=HistogramTimings(self.metrics),
        )
        secrets = {
            name: secret
            for name, endpoint in endpoints.items()
            if (secret := endpoint.load_secret(allow_placeholder=demo)) is not None
        }
        self.dispatcher = OutboxDispatcher(
            OutboxTable(self.database), endpoints, secrets=secrets, on_delivered=self._claim_delivered
        )
        self.pipeline.after_alarm_changes = lambda _changes: self.dispatcher.wake()
        self.ingest = MqttIngest(self.pipeline, config.mqtt, config.ingest, allow_placeholder_secret=demo)
        self.read_store = ReadStore(self.database)
        self.series = SeriesExporter.from_config(
            config.series,
            SeriesStoreSource(self.database),
            node_kinds={node.gateway_id: node.kind for node in config.nodes},
            profile_for=book.for_gateway if book else None,
            allow_placeholder_secret=demo,
        )
        if self.series is not None:
            self.pipeline.before_commit = self.series.admit
        self.metrics.register(
            HubCollector(self.pipeline.stats, backlog=self.ingest, series=self.series, store=self.read_store)
        )
        app = create_app(
            self.read_store,
            config.api.tokens,
            mqtt_connected=lambda: self.ingest.connected,
            ingest_counters=self._counters,
            pipeline=self.pipeline,
            send_command=self.ingest.send_command,
            metrics=self.metrics,
        )
        key_secret: bytes | None = None
        if config.public.key_secret_file or config.public.key_secret_env:
            key_secret = resolve_secret(
                name="buyer key secret",
                file=config.public.key_secret_file,
                env=config.public.key_secret_env,
                allow_placeholder=demo,
            ).encode()
        elif demo:
            key_secret = random_secrets.token_bytes(32)
        self.public = PublicService(self.database, {n.gateway_id: n for n in config.nodes}, config.public, key_secret)
        app.state.public = self.public
        add_public_routes(app, self.public)
        self._server = _Server(
            uvicorn.Config(
                app,
                host=config.api.host,
                port=config.api.port,
                log_level="warning",
                lifespan="off",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_S,
            )
        )
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        """Serve until SIGINT or SIGTERM, then stop cleanly."""

        def _request_exit(_signum: int, _frame: FrameType | None) -> None:
            self.public.closing.set()
            self._server.should_exit = True

        signal.signal(signal.SIGINT, _request_exit)
        signal.signal(signal.SIGTERM, _request_exit)
        tune_interpreter_for_ingest()
        self._start_background()
        try:
            self._server.run()
        finally:
            self._stop_background()

    def start_in_thread(self) -> None:
        """Start ingest and the API without blocking (the demo runs several parts in one process)."""
        self._start_background()
        self._thread = threading.Thread(target=self._server.run, name="hub-api", daemon=True)
        self._thread.start()

    @property
    def api_started(self) -> bool:
        """Whether the API socket is listening."""
        return bool(self._server.started)

    def stop(self) -> None:
        """Stop the API and ingest started by ``start_in_thread``."""
        self.public.closing.set()
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._stop_background()

    def _start_background(self) -> None:
        if self.series is not None:
            self.series.start()
        self.ingest.start()
        self.dispatcher.start()

    def _stop_background(self) -> None:
        # The exporter first: stopping it releases an ingest commit waiting in ``admit``.
        if self.series is not None:
            self.series.stop()
        self.dispatcher.stop()
        self.ingest.stop()
        self.database.dispose()

    def _counters(self) -> dict[str, int]:
        flat = self.pipeline.stats.snapshot()
        for name, per_endpoint in self.dispatcher.counters().items():
            for endpoint, value in per_endpoint.items():
                flat[f"outbox_{name}_{endpoint}"] = value
        return flat

    def _claim_delivered(self, row: OutboxRow, now_ms: int) -> None:
        """The shop platform acknowledged a claim: record it (state and audit) in one transaction."""
        if row.kind != CLAIM_KIND:
            return
        claim_id = row.event_id.removeprefix("claim-")

        def mark(writer: IngestWriter, _now_ms: int) -> None:
            with writer.transaction() as conn:
                claim_delivered(conn, claim_id, endpoint=row.endpoint, event_id=row.event_id, now_ms=now_ms)

        self.pipeline.staff_action(mark)
