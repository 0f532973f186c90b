"""The hub's own metrics (``GET /metrics``): ingest rate, lag, drops, duplicates and timings for Prometheus.

Names, types and labels are the contract of docs/metrics.md, which the Grafana boards query.

Counters are not kept twice: ``HubCollector`` reads, at scrape time, the counters the hub already keeps
(``IngestStats``, the series exporter's, the store's) and turns them into metric families, so the ingest
path pays nothing for them. Only the two timings are real ``Histogram``s, fed through
``hub.ingest.PipelineTimings``. Every hub gets its own ``CollectorRegistry`` (never the process-wide
default), so several hubs in one process (tests, the demo) do not collide.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hub.ingest import IngestBacklog

log = logging.getLogger(__name__)

TIMING_BUCKETS_S: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""1 ms to 5 s: a small group commits in a few ms, a full 2 MiB group with its fsync in a quarter to half a second."""

# Counters of IngestStats that map one to one onto a metric: (stats key, metric name, help).
INGEST_COUNTERS: Final = (
    ("messages", "coldchain_hub_messages_total", "MQTT messages taken off the broker."),
    ("readings_stored", "coldchain_hub_readings_stored_total", "Readings committed to the system of record."),
    ("batches_stored", "coldchain_hub_batches_stored_total", "Telemetry batches committed."),
    ("duplicates", "coldchain_hub_duplicates_total", "Batches dropped as already stored."),
    ("commit_failures", "coldchain_hub_commit_failures_total", "Commit groups that failed and will be redelivered."),
    ("claims_created", "coldchain_hub_claims_created_total", "Compensation claims created."),
)
# Gaps the hub detected (``gaps``) and gap records gateways reported (``gap_records``), summed.
GAP_KEYS: Final = ("gaps", "gap_records")
REJECTED_PREFIX: Final = "rejected_"
ALARM_PREFIX: Final = "alarms_"
POINTS_WRITTEN: Final = "points_written"
POINTS_FAILED_PREFIX: Final = "points_failed_"

# Values of the ``provider`` label of coldchain_hub_metrics_collect_errors_total.
PROVIDER_INGEST_STATS: Final = "ingest_stats"
PROVIDER_INGEST_QUEUE: Final = "ingest_queue"
PROVIDER_SERIES_EXPORT: Final = "series_export"
PROVIDER_ALARMS_ACTIVE: Final = "alarms_active"
PROVIDER_OUTBOX_PENDING: Final = "outbox_pending"


class CounterSource(Protocol):
    """Counters by name (``hub.ingest.IngestStats`` is one)."""

    def snapshot(self) -> Mapping[str, int]:
        """A consistent copy of every counter."""
        ...


class BacklogSource(Protocol):
    """Messages received and not yet committed (``hub.ingest.MqttIngest`` is one)."""

    def backlog(self) -> IngestBacklog:
        """How many, and when the oldest arrived."""
        ...


class SeriesExportSource(Protocol):
    """The raw-series exporter's progress (``hub.series_export``)."""

    def snapshot(self) -> Mapping[str, int]:
        """``points_written`` and ``points_failed_<reason>``, cumulative since start."""
        ...

    def lag_readings(self) -> int:
        """Stored readings not yet exported."""
        ...


class StoreGaugeSource(Protocol):
    """Gauges the system of record answers with a query at scrape time."""

    def alarms_active_by_severity(self) -> Mapping[str, int]:
        """Alarms not closed, per severity."""
        ...

    def outbox_pending_by_endpoint(self) -> Mapping[str, int]:
        """Webhook deliveries waiting, per endpoint."""
        ...


class HistogramTimings:
    """``hub.ingest.PipelineTimings`` as the two histograms of docs/metrics.md, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.commit = Histogram(
            "coldchain_hub_commit_seconds",
            "Wall time of one commit group (decode, dedup, detectors, write).",
            buckets=TIMING_BUCKETS_S,
            registry=registry,
        )
        self.detectors = Histogram(
            "coldchain_hub_detector_seconds",
            "Wall time of the detectors on one commit group.",
            buckets=TIMING_BUCKETS_S,
            registry=registry,
        )

    def observe_commit(self, seconds: float) -> None:
        """Record one committed group's wall time."""
        self.commit.observe(seconds)

    def observe_detectors(self, seconds: float) -> None:
        """Record the detectors' wall time on one group."""
        self.detectors.observe(seconds)


class HubCollector(Collector):
    """Reads the hub's counters and gauges at scrape time and yields them as metric families.

    Each source is optional and read on its own: one that raises is left out of that scrape, counted in
    ``coldchain_hub_metrics_collect_errors_total{provider}`` and logged once (until it recovers), and the
    rest are served.
    """

    def __init__(
        self,
        ingest_stats: CounterSource,
        *,
        backlog: BacklogSource | None = None,
        series: SeriesExportSource | None = None,
        store: StoreGaugeSource | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self._ingest_stats = ingest_stats
        self._backlog = backlog
        self._series = series
        self._store = store
        self._wall_clock = wall_clock
        self._lock = threading.Lock()  # two scrapes may run at once (uvicorn's thread pool)
        self._errors: Counter[str] = Counter()
        self._failing: set[str] = set()
        # Configured providers start at 0, so a scraper sees the first failure as an increase.
        self._providers = [PROVIDER_INGEST_STATS]
        if backlog is not None:
            self._providers.append(PROVIDER_INGEST_QUEUE)
        if series is not None:
            self._providers.append(PROVIDER_SERIES_EXPORT)
        if store is not None:
            self._providers += [PROVIDER_ALARMS_ACTIVE, PROVIDER_OUTBOX_PENDING]

    def collect(self) -> Iterable[Metric]:
        """Every family of docs/metrics.md this hub has a source for, then the collection errors."""
        yield from self._guarded(PROVIDER_INGEST_STATS, self._ingest_families)
        if (backlog := self._backlog) is not None:
            yield from self._guarded(PROVIDER_INGEST_QUEUE, lambda: self._backlog_families(backlog))
        if (series := self._series) is not None:
            yield from self._guarded(PROVIDER_SERIES_EXPORT, lambda: _series_families(series))
        if (store := self._store) is not None:
            yield from self._guarded(
                PROVIDER_ALARMS_ACTIVE,
                lambda: [
                    _labelled_gauge(
                        "coldchain_hub_alarms_active",
                        "Alarms not closed.",
                        "severity",
                        store.alarms_active_by_severity(),
                    )
                ],
            )
            yield from self._guarded(
                PROVIDER_OUTBOX_PENDING,
                lambda: [
                    _labelled_gauge(
                        "coldchain_hub_outbox_pending",
                        "Webhook deliveries waiting.",
                        "endpoint",
                        store.outbox_pending_by_endpoint(),
                    )
                ],
            )
        errors = CounterMetricFamily(
            "coldchain_hub_metrics_collect_errors_total",
            "Scrapes in which a metrics provider failed and its metrics were left out.",
            labels=["provider"],
        )
        with self._lock:
            counts = {provider: self._errors[provider] for provider in self._providers}
        for provider, count in counts.items():
            errors.add_metric([provider], count)
        yield errors

    def _guarded(self, provider: str, build: Callable[[], list[Metric]]) -> list[Metric]:
        """The families ``build`` makes, or none if it raises (whatever a provider throws, the scrape goes on)."""
        try:
            families = build()
        except Exception as exc:  # any failure of a provider is isolated, by design
            with self._lock:
                self._errors[provider] += 1
                first = provider not in self._failing
                self._failing.add(provider)
            if first:
                # The type only: a database error's text can carry a connection string.
                log.warning(
                    "metrics provider %s failed (%s); its metrics are left out until it recovers",
                    provider,
                    type(exc).__name__,
                )
            return []
        with self._lock:
            recovered = provider in self._failing
            self._failing.discard(provider)
        if recovered:
            # Same level as the failure: whoever saw that one at the hub's default level sees this one too.
            log.warning("metrics provider %s recovered", provider)
        return families

    def _ingest_families(self) -> list[Metric]:
        counts = self._ingest_stats.snapshot()
        families: list[Metric] = [
            CounterMetricFamily(name, help_text, value=counts.get(key, 0)) for key, name, help_text in INGEST_COUNTERS
        ]
        families.append(
            CounterMetricFamily(
                "coldchain_hub_gaps_total",
                "Gaps recorded (hub-detected and gateway-reported).",
                value=sum(counts.get(key, 0) for key in GAP_KEYS),
            )
        )
        families.append(
            _labelled_counter(
                "coldchain_hub_rejected_total",
                "Messages or readings set aside, per contract reason.",
                "reason",
                _with_prefix(counts, REJECTED_PREFIX),
            )
        )
        families.append(
            _labelled_counter(
                "coldchain_hub_alarms_total",
                "Alarm changes (opened, updated, escalated, closed, ...).",
                "action",
                _with_prefix(counts, ALARM_PREFIX),
            )
        )
        return families

    def _backlog_families(self, source: BacklogSource) -> list[Metric]:
        backlog = source.backlog()
        lag_s = 0.0
        if backlog.oldest_received_ms is not None:
            # A wall clock stepping back must not show a negative lag.
            lag_s = max(0.0, self._wall_clock() - backlog.oldest_received_ms / 1000)
        return [
            GaugeMetricFamily(
                "coldchain_hub_ingest_queue_messages",
                "Messages received and not yet committed.",
                value=backlog.messages,
            ),
            GaugeMetricFamily(
                "coldchain_hub_ingest_lag_seconds",
                "Age of the oldest message not yet committed (0 when idle).",
                value=lag_s,
            ),
        ]


def _series_families(source: SeriesExportSource) -> list[Metric]:
    counts = source.snapshot()
    lag = source.lag_readings()
    return [
        CounterMetricFamily(
            "coldchain_hub_series_points_written_total",
            "Points the time-series store accepted.",
            value=counts.get(POINTS_WRITTEN, 0),
        ),
        _labelled_counter(
            "coldchain_hub_series_points_failed_total",
            "Points that could not be written and were given up.",
            "reason",
            _with_prefix(counts, POINTS_FAILED_PREFIX),
        ),
        GaugeMetricFamily("coldchain_hub_series_export_lag_readings", "Stored readings not yet exported.", value=lag),
    ]


def _with_prefix(counts: Mapping[str, int], prefix: str) -> Iterator[tuple[str, int]]:
    """``(rest, value)`` for every key starting with ``prefix``."""
    return ((key.removeprefix(prefix), value) for key, value in counts.items() if key.startswith(prefix))


def _labelled_counter(name: str, help_text: str, label: str, values: Iterable[tuple[str, int]]) -> Metric:
    family = CounterMetricFamily(name, help_text, labels=[label])
    for label_value, value in sorted(values):
        family.add_metric([label_value], value)
    return family


def _labelled_gauge(name: str, help_text: str, label: str, values: Mapping[str, int]) -> Metric:
    family = GaugeMetricFamily(name, help_text, labels=[label])
    for label_value, value in sorted(values.items()):
        family.add_metric([label_value], value)
    return family


def exposition(registry: CollectorRegistry, accept: str | None) -> tuple[bytes, str]:
    """The registry rendered for a scraper's ``Accept`` header: OpenMetrics if asked for, else the Prometheus
    text format 0.0.4; returns the body and its content type."""
    encode, content_type = choose_encoder(accept or "")
    return encode(registry), content_type
