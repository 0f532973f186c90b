"""Raw series out to a time-series store (VictoriaMetrics, InfluxDB 2/3) as InfluxDB line protocol.

The exporter tails the system of record instead of holding a queue of its own: every stored reading
(and every stored ``cc.health/1``) has an integer ``id`` that grows in commit order, and the exporter
keeps a cursor per table in the store. One round reads at most ``batch_points`` rows after the cursor,
writes them through ``influxdb-client`` with ``SYNCHRONOUS`` write options (so the store has answered
before anything moves) and only then saves the cursor. A hub crash or a time-series store outage
therefore loses nothing, and memory holds at most one batch of rows whatever the backlog.

Errors are split in two. A store that cannot take the batch now (connection refused, timeout, 429,
5xx, and also 401/403/404, which an operator fixes) gets the same batch again after a full-jitter
exponential backoff, forever: nothing is given up because the store is down or misconfigured. A store
that refuses the points themselves (400 parse error, 413, 422) gets the batch split in halves until
each refused point stands alone; that point is counted in ``points_failed_<reason>`` and skipped, so
one bad point never stalls the pipe and never costs the good points beside it.

Delivery is at least once: a batch whose answer was lost, or the halves of a split batch, may reach
the store twice. InfluxDB overwrites a point with the same series and timestamp; VictoriaMetrics needs
``-dedup.minScrapeInterval=1ms`` for the same effect (docs/series-export.md).

Formatting is pure (rows in, line-protocol strings out) and follows docs/metrics.md; I/O happens only
in ``InfluxLineWriter`` and in the ``SeriesSource`` the store implements; clock, sleep and the jitter's
random draw are injected so the loop can be driven by tests.
"""

from __future__ import annotations

import functools
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Final, Protocol, cast

import msgspec

from coldchain.config import resolve_secret
from coldchain.errors import ColdchainError, ContractError
from coldchain.messages import GatewayHealth, decode
from hub.profiles import ProductProfile

if TYPE_CHECKING:
    from influxdb_client.client.exceptions import InfluxDBError
    from influxdb_client.client.influxdb_client import InfluxDBClient
    from influxdb_client.client.write_api import WriteApi
    from influxdb_client.domain.write_precision import WritePrecision

log = logging.getLogger(__name__)

# --- tuning -------------------------------------------------------------------------------------

DEFAULT_BATCH_POINTS: Final = 5000
"""InfluxData's recommended write size; VictoriaMetrics takes it in a few milliseconds."""

MAX_BATCH_POINTS: Final = 100_000
"""About 12 MB of line protocol: well under VictoriaMetrics' 32 MB request limit and InfluxDB's defaults."""

DEFAULT_FLUSH_INTERVAL_S: Final = 1.0
"""A caught-up exporter looks for new rows this often: Grafana boards refresh every few seconds at best."""

DEFAULT_BAND_INTERVAL_S: Final = 60.0
"""Bands, online states and active alarms change rarely; once a minute keeps them within a dashboard's lookback."""

DEFAULT_TIMEOUT_S: Final = 10.0
"""One write of a full batch takes milliseconds; ten seconds without an answer is a store in trouble."""

BACKOFF_BASE_S: Final = 0.5
"""A restarting VictoriaMetrics answers again within a second or two: the first retries come quickly."""

BACKOFF_CAP_S: Final = 30.0
"""During an outage of hours the store sees one attempt per 30 s at most, and recovery is noticed as soon."""

LAG_REFRESH_S: Final = 1.0
"""While waiting, the stored-reading count behind the lag (and ``admit``) is re-read this often."""

CLOSED_ALARM_OVERLAP_S: Final = 10.0
"""An alarm's close is stamped before its transaction commits; looking back this much further catches
a close that committed just after the previous snapshot (alarms already sent are skipped by id)."""

PREFIX_CACHE_SIZE: Final = 65_536
"""Series whose tag prefix is kept formatted: more than a hub's sensors, bounded whatever the data."""

ERROR_TEXT_LIMIT: Final = 300
"""VictoriaMetrics echoes the whole request in some error bodies: logs and exceptions keep this much."""

STOP_GRACE_S: Final = 5.0
"""``stop`` waits the write timeout plus this for the thread to finish its round."""

# --- names of the contract (docs/metrics.md) ----------------------------------------------------

READING_MEASUREMENT: Final = "cc_reading"
BAND_MEASUREMENT: Final = "cc_band"
GATEWAY_MEASUREMENT: Final = "cc_gateway"
DRIVER_ERRORS_MEASUREMENT: Final = "cc_driver_errors"
ALARM_MEASUREMENT: Final = "cc_alarm"
UNKNOWN_NODE_KIND: Final = "unknown"

READINGS_CURSOR: Final = "series_export.readings"
HEALTH_CURSOR: Final = "series_export.health"
ALARMS_CLOSED_CURSOR: Final = "series_export.alarms_closed_ms"
"""Cursor names in the store; the last one holds a wall-clock time (ms), the others row ids."""

POINTS_WRITTEN: Final = "points_written"
POINTS_FAILED_PREFIX: Final = "points_failed_"
RETRIES: Final = "retries"
ERRORS: Final = "errors"
ADMIT_WAITS: Final = "admit_waits"

# Why a point was given up: the label values of coldchain_hub_series_points_failed_total.
REASON_INVALID: Final = "invalid"  # not writable at all: non-finite value, undecodable health body
REASON_REFUSED: Final = "refused"  # HTTP 400: the store cannot parse or accept the point
REASON_TOO_LARGE: Final = "too_large"  # HTTP 413 for a single point
REASON_UNPROCESSABLE: Final = "unprocessable"  # HTTP 422: e.g. a field type conflict, beyond retention
FAILURE_REASONS: Final = (REASON_INVALID, REASON_REFUSED, REASON_TOO_LARGE, REASON_UNPROCESSABLE)

REFUSED_STATUSES: Final = {400: REASON_REFUSED, 413: REASON_TOO_LARGE, 422: REASON_UNPROCESSABLE}
"""Statuses that blame the points: the batch is split to find them. Any other status is retried."""


# --- configuration ------------------------------------------------------------------------------


class SeriesConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``[series]``: where raw series go. Without ``url`` the exporter is off (the embedded default:
    the system of record keeps every reading and the API reads it from there)."""

    url: str | None = None
    """Base URL of the store: ``http://vm:8428`` (VictoriaMetrics), ``http://influxdb:8086`` (InfluxDB 2),
    ``http://influxdb3:8181`` (InfluxDB 3); the client posts to ``{url}/api/v2/write``."""
    org: str = "coldchain"
    """InfluxDB 2 organisation; InfluxDB 3 and VictoriaMetrics ignore it."""
    bucket: str = "coldchain"
    """InfluxDB 2 bucket, InfluxDB 3 database; VictoriaMetrics ignores it unless told otherwise."""
    token_file: str | None = None
    """File holding the API token (first choice)."""
    token_env: str | None = None
    """Environment variable holding the API token. Neither: no Authorization header (VictoriaMetrics)."""
    batch_points: Annotated[int, msgspec.Meta(ge=1, le=MAX_BATCH_POINTS)] = DEFAULT_BATCH_POINTS
    """Rows read, and points written, per request at most."""
    flush_interval_s: Annotated[float, msgspec.Meta(gt=0)] = DEFAULT_FLUSH_INTERVAL_S
    """How often a caught-up exporter looks for new rows: the longest a stored reading waits."""
    band_interval_s: Annotated[float, msgspec.Meta(gt=0)] = DEFAULT_BAND_INTERVAL_S
    """How often bands, gateway online states and active alarms are written."""
    max_lag_readings: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Ingest waits while more stored readings than this are not exported yet; 0: never waits."""
    timeout_s: Annotated[float, msgspec.Meta(gt=0)] = DEFAULT_TIMEOUT_S
    """Longest wait for the store's answer to one write."""


def resolve_token(config: SeriesConfig, *, allow_placeholder: bool = False) -> str | None:
    """The API token from ``token_file`` or ``token_env`` (never logged), or ``None`` when neither is set."""
    if config.token_file is None and config.token_env is None:
        return None
    return resolve_secret(
        name="time-series store token",
        file=config.token_file,
        env=config.token_env,
        allow_placeholder=allow_placeholder,
    )


# --- what the store hands over ------------------------------------------------------------------


class ExportReading(msgspec.Struct, frozen=True, gc=False):
    """One stored reading; ``id`` grows in commit order. ``quantity`` and ``quality`` as stored."""

    id: int
    gateway_id: str
    sensor_id: str
    quantity: str
    ts_ms: int
    value: float
    quality: str


class ExportHealth(msgspec.Struct, frozen=True, gc=False):
    """One stored health report: ``body`` is the ``cc.health/1`` JSON as received."""

    id: int
    gateway_id: str
    ts_ms: int
    body: bytes


class ExportGateway(msgspec.Struct, frozen=True):
    """A known gateway and its last status: ``True`` online, ``False`` offline, ``None`` none seen yet."""

    gateway_id: str
    online: bool | None


class ExportAlarm(msgspec.Struct, frozen=True):
    """An alarm not closed (``active``), or one closed since the time the snapshot was asked for."""

    alarm_id: str
    gateway_id: str
    sensor_id: str
    quantity: str
    kind: str
    severity: str
    active: bool


class ExportSnapshot(msgspec.Struct, frozen=True):
    """The state behind the periodic points: gateways, and alarms active or recently closed."""

    gateways: Sequence[ExportGateway]
    alarms: Sequence[ExportAlarm]


class SeriesSource(Protocol):
    """What the exporter needs from the system of record (the store implements it).

    Rows come in ascending ``id`` order, only ids above ``after_id``, at most ``limit`` of them; ids
    must grow in commit order (a row never becomes visible with an id below one already returned), or
    the tail would step over it. Methods are called from the exporter's thread.
    """

    def readings_after(self, after_id: int, limit: int) -> Sequence[ExportReading]:
        """Stored readings with ``id > after_id``, oldest first, at most ``limit``."""
        ...

    def health_after(self, after_id: int, limit: int) -> Sequence[ExportHealth]:
        """Stored health reports with ``id > after_id``, oldest first, at most ``limit``."""
        ...

    def latest_reading_id(self) -> int:
        """The highest reading id committed (0 when there is none); must be cheap, it is polled."""
        ...

    def snapshot(self, closed_since_ms: int) -> ExportSnapshot:
        """Every gateway with its last status; alarms not closed, and alarms closed at or after
        ``closed_since_ms`` (wall clock, ms) with ``active=False``."""
        ...

    def cursor(self, name: str) -> int:
        """The saved position ``name`` (0 when never saved)."""
        ...

    def save_cursor(self, name: str, position: int) -> None:
        """Save position ``name`` durably (committed when this returns)."""
        ...


# --- line protocol (pure) -----------------------------------------------------------------------
#
# Lines are built by hand rather than with influxdb_client's Point: measured on this project's machine,
# Point formats about 100,000 readings/s, which alone would cap the exporter there, while the cached
# tag prefix below formats about 1,000,000/s (bench/series_export.py prints both). The escaping, tag
# and field order and number formats are Point's own, and tests/hub/test_series_points.py checks the
# output against Point byte for byte.

_TAG_ESCAPES: Final = str.maketrans({",": r"\,", "=": r"\=", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})
_MEASUREMENT_ESCAPES: Final = str.maketrans({",": r"\,", " ": r"\ ", "\n": r"\n", "\t": r"\t", "\r": r"\r"})

FieldValue = float | int | None
"""A field: float, integer (written with the ``i`` suffix) or ``None`` (left out)."""


def escape_tag(text: str) -> str:
    """Escape a tag key or value (commas, equals signs, spaces, line breaks), as Point does."""
    escaped = text.translate(_TAG_ESCAPES)
    # Point's rule: a trailing backslash would escape the separator after it, so a space follows it.
    return escaped + " " if escaped.endswith("\\") else escaped


def format_float(value: float) -> str:
    """A float field as Point writes it (``3.0`` becomes ``3``, still a float in line protocol)."""
    text = repr(float(value))
    return text[:-2] if text.endswith(".0") else text


def _tag_set(tags: Mapping[str, str]) -> str:
    # Sorted by key as InfluxDB stores them (and as Point writes them); empty values have no tag.
    return "".join(f",{escape_tag(key)}={escape_tag(value)}" for key, value in sorted(tags.items()) if value)


def _field_set(fields: Mapping[str, FieldValue]) -> str:
    parts = []
    for key, value in sorted(fields.items()):
        if value is None:
            continue
        if isinstance(value, int) and not isinstance(value, bool):
            parts.append(f"{escape_tag(key)}={value}i")
        elif math.isfinite(value):
            parts.append(f"{escape_tag(key)}={format_float(value)}")
    return ",".join(parts)


def point_line(measurement: str, tags: Mapping[str, str], fields: Mapping[str, FieldValue], ts_ms: int) -> str | None:
    """One line-protocol point at ``ts_ms`` (ms precision); ``None`` when no field can be written."""
    field_set = _field_set(fields)
    if not field_set:
        return None
    return f"{measurement.translate(_MEASUREMENT_ESCAPES)}{_tag_set(tags)} {field_set} {int(ts_ms)}"


@functools.lru_cache(maxsize=PREFIX_CACHE_SIZE)
def _reading_prefix(gateway_id: str, sensor_id: str, quantity: str, node_kind: str) -> str:
    tags = {"gateway_id": gateway_id, "sensor_id": sensor_id, "quantity": quantity, "node_kind": node_kind}
    return f"{READING_MEASUREMENT}{_tag_set(tags)} "


def reading_line(row: ExportReading, node_kind: str) -> str | None:
    """``cc_reading``: ``value`` and ``quality_ok`` (1 for ``good``) at the reading's own time.

    ``None`` for a value that is not a finite number: line protocol has no NaN or infinity.
    """
    value = float(row.value)
    if not math.isfinite(value):
        return None
    prefix = _reading_prefix(row.gateway_id, row.sensor_id, row.quantity, node_kind)
    quality_ok = 1 if row.quality == "good" else 0
    return f"{prefix}quality_ok={quality_ok}i,value={format_float(value)} {int(row.ts_ms)}"


def health_lines(row: ExportHealth, node_kind: str) -> list[str]:
    """``cc_gateway`` (buffer, clock, process figures) and ``cc_driver_errors`` from one health report.

    Raises ``ContractError`` when the stored body is not a valid ``cc.health/1``.
    """
    health = decode(row.body, GatewayHealth, max_bytes=max(len(row.body), 1))
    return health_message_lines(health, gateway_id=row.gateway_id, node_kind=node_kind, ts_ms=row.ts_ms)


def health_message_lines(health: GatewayHealth, *, gateway_id: str, node_kind: str, ts_ms: int) -> list[str]:
    """The points of a decoded health report, stamped ``ts_ms`` (the stored report's time)."""
    fields: dict[str, FieldValue] = {
        "buffer_batches": health.buffer_batches,
        "buffer_items": health.buffer_items,
        "buffer_bytes": health.buffer_bytes,
        # Durations and percentages are floats even when whole, so InfluxDB sees one type per field.
        "oldest_unsent_age_s": None if health.oldest_unsent_age_s is None else float(health.oldest_unsent_age_s),
        "clock_offset_ms": health.clock_offset_ms,
        "cpu_percent": float(health.cpu_percent),
        "rss_bytes": health.rss_bytes,
        "uptime_s": float(health.uptime_s),
        "alarms_active": len(health.alarms_active),
    }
    lines = [point_line(GATEWAY_MEASUREMENT, {"gateway_id": gateway_id, "node_kind": node_kind}, fields, ts_ms)]
    for sensor_id, errors in sorted(health.driver_errors.items()):
        for error, count in sorted(errors.items()):
            tags = {"gateway_id": gateway_id, "sensor_id": sensor_id, "error": error}
            lines.append(point_line(DRIVER_ERRORS_MEASUREMENT, tags, {"count": int(count)}, ts_ms))
    return [line for line in lines if line is not None]


def band_lines(gateway_id: str, profile: ProductProfile, ts_ms: int) -> list[str]:
    """``cc_band``: the profile's ``low`` / ``high`` per quantity; an open side is left out, and a
    quantity with no bound at all has no point."""
    lines = []
    for quantity, (low, high) in (
        ("temperature", profile.temperature_range()),
        ("humidity", profile.humidity_range()),
    ):
        tags = {"gateway_id": gateway_id, "quantity": quantity, "profile": profile.name}
        line = point_line(
            BAND_MEASUREMENT,
            tags,
            {"low": None if low is None else float(low), "high": None if high is None else float(high)},
            ts_ms,
        )
        if line is not None:
            lines.append(line)
    return lines


def gateway_online_line(gateway_id: str, node_kind: str, online: bool, ts_ms: int) -> str:
    """``cc_gateway`` ``online`` (1 / 0) from the gateway's last status."""
    line = point_line(
        GATEWAY_MEASUREMENT, {"gateway_id": gateway_id, "node_kind": node_kind}, {"online": int(online)}, ts_ms
    )
    assert line is not None  # an integer field is always written
    return line


def alarm_line(alarm: ExportAlarm, ts_ms: int) -> str:
    """``cc_alarm`` ``active`` (1 not closed, 0 closed)."""
    tags = {
        "gateway_id": alarm.gateway_id,
        "sensor_id": alarm.sensor_id,
        "quantity": alarm.quantity,
        "kind": alarm.kind,
        "severity": alarm.severity,
    }
    line = point_line(ALARM_MEASUREMENT, tags, {"active": int(alarm.active)}, ts_ms)
    assert line is not None  # an integer field is always written
    return line


def snapshot_lines(
    snapshot: ExportSnapshot,
    ts_ms: int,
    *,
    node_kind: Callable[[str], str],
    profile_for: Callable[[str], ProductProfile | None],
) -> list[str]:
    """The periodic points at ``ts_ms``: bands of gateways bound to a profile, online states, alarms."""
    lines: list[str] = []
    for gateway in snapshot.gateways:
        profile = profile_for(gateway.gateway_id)
        if profile is not None:
            lines.extend(band_lines(gateway.gateway_id, profile, ts_ms))
        if gateway.online is not None:
            lines.append(gateway_online_line(gateway.gateway_id, node_kind(gateway.gateway_id), gateway.online, ts_ms))
    lines.extend(alarm_line(alarm, ts_ms) for alarm in snapshot.alarms)
    return lines


def backoff_delay(attempt: int, draw: float, *, base_s: float = BACKOFF_BASE_S, cap_s: float = BACKOFF_CAP_S) -> float:
    """Full-jitter exponential backoff: ``draw`` (uniform in [0, 1)) times ``min(cap, base * 2**(attempt-1))``.

    Full jitter spreads the retries of several hubs after a shared outage instead of synchronising them.
    """
    ceiling = min(cap_s, base_s * 2.0 ** min(max(attempt, 1) - 1, 60))
    return draw * ceiling


# --- writing ------------------------------------------------------------------------------------


class SeriesExportError(ColdchainError):
    """A write to the time-series store failed; ``reason`` is a short stable label."""

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)


class StoreUnavailableError(SeriesExportError):
    """The store cannot take the write now (down, overloaded, misconfigured): retry the same batch."""

    def __init__(self, reason: str, message: str, *, retry_after_s: float | None = None) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(reason, message)


class PointsRefusedError(SeriesExportError):
    """The store refuses what was sent (a point it cannot parse or accept): retrying it cannot help."""


class LineWriter(Protocol):
    """Something that writes line-protocol lines to a store and says how it failed."""

    def write(self, lines: Sequence[str]) -> None:
        """Write ``lines`` (ms precision); raise ``StoreUnavailableError`` or ``PointsRefusedError``."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class InfluxLineWriter:
    """Writes through ``influxdb-client``'s v2 write API, synchronously: success means stored.

    Works against InfluxDB 2, InfluxDB 3 (its v2-compatible ``/api/v2/write``; bucket = database) and
    VictoriaMetrics (which serves ``/api/v2/write`` and ignores org, bucket and token).
    """

    def __init__(self, *, url: str, org: str, bucket: str, token: str | None, timeout_s: float) -> None:
        """Open a client for ``url``; nothing is sent until the first write."""
        # Imported here: the client and its dependencies take about 0.3 s to import, and only a hub
        # with [series] url set needs them (hub.config imports this module for SeriesConfig).
        from influxdb_client.client.influxdb_client import InfluxDBClient  # noqa: PLC0415
        from influxdb_client.client.write_api import SYNCHRONOUS  # noqa: PLC0415
        from influxdb_client.domain.write_precision import WritePrecision  # noqa: PLC0415

        self._org = org
        self._bucket = bucket
        # The library's precision constants are plain strings though ``write`` is annotated with the class.
        self._precision = cast("WritePrecision", WritePrecision.MS)
        # retries=False: the exporter retries on its own, with backoff, keeping the batch it owns.
        # An empty token sends no Authorization header (VictoriaMetrics needs none).
        self._client: InfluxDBClient = InfluxDBClient(
            url=url, token=token or "", org=org, timeout=max(1, round(timeout_s * 1000)), retries=False
        )
        self._write_api: WriteApi = self._client.write_api(write_options=SYNCHRONOUS)

    def write(self, lines: Sequence[str]) -> None:
        """Post ``lines`` as one request; classify any failure (see ``classify_failure``)."""
        body = "\n".join(lines)
        try:
            self._write_api.write(bucket=self._bucket, org=self._org, record=body, write_precision=self._precision)
        except Exception as exc:
            failure = classify_failure(exc)
            if failure is None:
                raise
            raise failure from exc

    def close(self) -> None:
        """Close the write API and the HTTP connection pool."""
        self._write_api.close()  # type: ignore[no-untyped-call]
        self._client.close()  # type: ignore[no-untyped-call]


def classify_failure(exc: BaseException) -> SeriesExportError | None:
    """Map an influxdb-client / urllib3 exception to ``PointsRefusedError`` or ``StoreUnavailableError``;
    ``None`` for anything else (a bug, re-raised as it is)."""
    import urllib3  # noqa: PLC0415
    from influxdb_client.client.exceptions import InfluxDBError  # noqa: PLC0415

    if isinstance(exc, InfluxDBError):
        return _classify_answer(exc)
    if isinstance(exc, urllib3.exceptions.NewConnectionError):
        # Checked before timeouts: urllib3 makes a refused connection a kind of connect timeout.
        reason = "connection"
    elif isinstance(exc, urllib3.exceptions.TimeoutError):
        reason = "timeout"
    elif isinstance(exc, urllib3.exceptions.HTTPError | OSError):
        reason = "connection"
    else:
        return None
    return StoreUnavailableError(reason, _short(f"time-series store unreachable ({reason}): {exc}"))


def _classify_answer(exc: InfluxDBError) -> SeriesExportError:
    status = getattr(exc, "status", None)
    if not isinstance(status, int) or status == 0:
        # No HTTP answer (e.g. a TLS failure): the client reports status 0.
        return StoreUnavailableError("no_response", _short(f"time-series store gave no answer: {exc}"))
    body = getattr(exc, "body", None) or getattr(exc, "message", "") or ""
    text = _short(f"HTTP {status} from the time-series store: {body}")
    reason = REFUSED_STATUSES.get(status)
    if reason is not None:
        return PointsRefusedError(reason, text)
    return StoreUnavailableError(f"http_{status}", text, retry_after_s=_retry_after(exc.retry_after))


def _retry_after(header: object) -> float | None:
    try:
        seconds = float(str(header))
    except ValueError:
        return None  # absent, or an HTTP date: the backoff decides
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_TEXT_LIMIT else text[:ERROR_TEXT_LIMIT] + "..."


# --- the exporter -------------------------------------------------------------------------------


class _Delivery:
    """What one batch cost: points accepted, and points given up per reason."""

    __slots__ = ("failed", "written")

    def __init__(self) -> None:
        self.written = 0
        self.failed: dict[str, int] = {}

    def fail(self, reason: str, count: int = 1) -> None:
        self.failed[reason] = self.failed.get(reason, 0) + count


class SeriesExporter:
    """Tails the system of record into a time-series store on a background thread.

    Counters (``snapshot``) and ``lag_readings`` may be read from any thread; ``admit`` is for the
    ingest loop. One ``start`` / ``stop`` per instance.
    """

    def __init__(
        self,
        source: SeriesSource,
        writer: LineWriter,
        *,
        node_kinds: Mapping[str, str] | None = None,
        profile_for: Callable[[str], ProductProfile | None] | None = None,
        batch_points: int = DEFAULT_BATCH_POINTS,
        flush_interval_s: float = DEFAULT_FLUSH_INTERVAL_S,
        band_interval_s: float = DEFAULT_BAND_INTERVAL_S,
        max_lag_readings: int = 0,
        stop_timeout_s: float = DEFAULT_TIMEOUT_S + STOP_GRACE_S,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] | None = None,
        draw: Callable[[], float] = random.random,
    ) -> None:
        """``node_kinds``: gateway id -> node kind (``[[nodes]] kind``; others are ``unknown``);
        ``profile_for``: gateway id -> its profile (``ProfileBook.for_gateway``) for ``cc_band``;
        ``clock`` is wall time (point timestamps), ``monotonic`` schedules; ``sleep`` defaults to a
        wait that ``stop`` interrupts; ``draw`` is the jitter's uniform [0, 1) random source."""
        if batch_points < 1:
            raise ValueError(f"batch_points must be >= 1, got {batch_points}")
        self._source = source
        self._writer = writer
        self._node_kinds = dict(node_kinds or {})
        self._profile_for = profile_for or (lambda _gateway_id: None)
        self._batch_points = batch_points
        self._flush_interval_s = flush_interval_s
        self._band_interval_s = band_interval_s
        self._max_lag = max_lag_readings
        self._stop_timeout_s = stop_timeout_s
        self._backoff_base_s = backoff_base_s
        self._backoff_cap_s = backoff_cap_s
        self._clock = clock
        self._monotonic = monotonic
        self._stopping = threading.Event()
        self._sleep: Callable[[float], object] = sleep if sleep is not None else self._stopping.wait
        self._draw = draw
        # One lock for counters, cursors and the lag; admit() waits on its condition.
        self._cond = threading.Condition()
        self._counters: dict[str, int] = {POINTS_WRITTEN: 0, RETRIES: 0, ERRORS: 0, ADMIT_WAITS: 0}
        self._counters.update({POINTS_FAILED_PREFIX + reason: 0 for reason in FAILURE_REASONS})
        self._readings_cursor = 0
        self._health_cursor = 0
        self._latest_reading_id = 0
        self._cursors_loaded = False
        self._next_snapshot: float | None = None
        self._closed_seen: set[str] = set()
        self._thread: threading.Thread | None = None
        self._running = False
        self._unavailable_since: float | None = None

    @classmethod
    def from_config(
        cls,
        config: SeriesConfig,
        source: SeriesSource,
        *,
        node_kinds: Mapping[str, str] | None = None,
        profile_for: Callable[[str], ProductProfile | None] | None = None,
        allow_placeholder_secret: bool = False,
    ) -> SeriesExporter | None:
        """An exporter writing through ``influxdb-client`` as ``[series]`` says; ``None`` when ``url``
        is not set (the embedded default). Raises ``ConfigError`` for an unreadable token."""
        if config.url is None:
            return None
        writer = InfluxLineWriter(
            url=config.url,
            org=config.org,
            bucket=config.bucket,
            token=resolve_token(config, allow_placeholder=allow_placeholder_secret),
            timeout_s=config.timeout_s,
        )
        return cls(
            source,
            writer,
            node_kinds=node_kinds,
            profile_for=profile_for,
            batch_points=config.batch_points,
            flush_interval_s=config.flush_interval_s,
            band_interval_s=config.band_interval_s,
            max_lag_readings=config.max_lag_readings,
            stop_timeout_s=config.timeout_s + STOP_GRACE_S,
        )

    # --- life cycle ---

    def start(self) -> None:
        """Load the cursors (in the caller's thread, so a store error shows here) and start the thread."""
        if self._thread is not None:
            raise RuntimeError("SeriesExporter.start may be called once")
        self._load_cursors()
        self._refresh_latest()
        with self._cond:
            self._running = True
        self._thread = threading.Thread(target=self._run, name="series-export", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread after its current request; rows not confirmed are sent again next start.

        Releases any ``admit`` waiter, and closes the writer.
        """
        self._stopping.set()
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(self._stop_timeout_s)
            if self._thread.is_alive():
                log.warning("series export thread still busy after %.0f s; leaving it", self._stop_timeout_s)
        self._writer.close()

    @property
    def running(self) -> bool:
        """Whether the thread is started and not stopped."""
        with self._cond:
            return self._running

    # --- readable from any thread ---

    def snapshot(self) -> dict[str, int]:
        """A consistent copy of the counters: ``points_written``, ``points_failed_<reason>`` for each of
        ``FAILURE_REASONS``, ``retries`` (writes attempted again), ``errors`` (rounds the store or a bug
        broke off), ``admit_waits`` (``admit`` calls that found the lag over the limit)."""
        with self._cond:
            return dict(self._counters)

    def lag_readings(self) -> int:
        """Stored readings not yet exported, as of the last look at the store (at most about a second old)."""
        with self._cond:
            return self._lag_locked()

    def cursors(self) -> tuple[int, int]:
        """The (readings, health) ids exported through."""
        with self._cond:
            return self._readings_cursor, self._health_cursor

    def admit(self, timeout_s: float | None = None) -> bool:
        """Backpressure for ingest: call before each commit (outside any transaction).

        Returns at once while the lag is at most ``max_lag_readings`` (or the limit is 0, or the exporter
        is not running); otherwise blocks until the exporter catches up. With ``timeout_s`` it gives up
        after that long and returns ``False``. The lag is the exporter's view, refreshed about once a
        second, so ingest may overshoot the limit by about a second of readings.
        """
        if self._max_lag <= 0:
            return True
        with self._cond:
            if self._has_room_locked():
                return True
            self._counters[ADMIT_WAITS] += 1
            return self._cond.wait_for(self._has_room_locked, timeout=timeout_s)

    # --- the loop ---

    def export_once(self) -> bool:
        """One round: the periodic points when due, then one batch of readings and one of health reports.

        Returns ``True`` when a full batch was read (more rows are probably waiting). Blocks while the
        store is unavailable. Used by the thread; call it directly only when the thread is not started.
        """
        if not self._cursors_loaded:
            self._load_cursors()
        self._refresh_latest()
        now = self._monotonic()
        if (self._next_snapshot is None or now >= self._next_snapshot) and self._export_snapshot():
            self._next_snapshot = now + self._band_interval_s
        readings = self._export_readings()
        if self._stopping.is_set():
            return False
        health = self._export_health()
        return max(readings, health) >= self._batch_points

    def _run(self) -> None:
        failures = 0
        while not self._stopping.is_set():
            try:
                more = self.export_once()
                failures = 0
            except Exception:
                # The source (the database) or a bug broke the round off; nothing moved, so the same
                # rows are read again after a pause.
                failures += 1
                with self._cond:
                    self._counters[ERRORS] += 1
                log.exception("series export round failed (%d in a row); retrying", failures)
                self._pause(self._backoff(failures))
                continue
            if not more:
                self._pause(self._flush_interval_s)

    def _export_readings(self) -> int:
        rows = self._source.readings_after(self._readings_cursor, self._batch_points)
        if not rows:
            return 0
        delivery = _Delivery()
        lines = []
        for row in rows:
            line = reading_line(row, self._node_kinds.get(row.gateway_id, UNKNOWN_NODE_KIND))
            if line is None:
                log.warning(
                    "reading %d of %s/%s is not a finite number; not exported", row.id, row.gateway_id, row.sensor_id
                )
                delivery.fail(REASON_INVALID)
            else:
                lines.append(line)
        if not self._deliver(lines, delivery):
            return 0
        position = rows[-1].id
        self._source.save_cursor(READINGS_CURSOR, position)
        self._account(delivery, readings_cursor=position)
        return len(rows)

    def _export_health(self) -> int:
        rows = self._source.health_after(self._health_cursor, self._batch_points)
        if not rows:
            return 0
        delivery = _Delivery()
        lines: list[str] = []
        for row in rows:
            try:
                lines.extend(health_lines(row, self._node_kinds.get(row.gateway_id, UNKNOWN_NODE_KIND)))
            except ContractError as exc:
                log.warning(
                    "health report %d of %s is not a valid cc.health/1 (%s); not exported", row.id, row.gateway_id, exc
                )
                delivery.fail(REASON_INVALID)
        if not self._deliver(lines, delivery):
            return 0
        position = rows[-1].id
        self._source.save_cursor(HEALTH_CURSOR, position)
        self._account(delivery, health_cursor=position)
        return len(rows)

    def _export_snapshot(self) -> bool:
        now_ms = int(self._clock() * 1000)
        since_ms = self._source.cursor(ALARMS_CLOSED_CURSOR)
        if since_ms <= 0:
            # First snapshot ever: alarms closed long ago need no 0 point.
            since_ms = now_ms - round(self._band_interval_s * 1000)
        state = self._source.snapshot(since_ms)
        # The look-back overlaps the previous snapshot's: a closed alarm seen then has had its 0 already.
        closed = {alarm.alarm_id for alarm in state.alarms if not alarm.active}
        fresh = [alarm for alarm in state.alarms if alarm.active or alarm.alarm_id not in self._closed_seen]
        lines = snapshot_lines(
            ExportSnapshot(state.gateways, fresh), now_ms, node_kind=self._node_kind, profile_for=self._profile_for
        )
        delivery = _Delivery()
        if not self._deliver(lines, delivery):
            return False
        self._source.save_cursor(ALARMS_CLOSED_CURSOR, now_ms - round(CLOSED_ALARM_OVERLAP_S * 1000))
        self._closed_seen = closed
        self._account(delivery)
        return True

    def _deliver(self, lines: list[str], delivery: _Delivery) -> bool:
        """Write ``lines`` until accepted, splitting out refused points; ``False`` if stopped first."""
        if not lines:
            return True
        attempt = 0
        while True:
            if self._stopping.is_set():
                return False
            try:
                self._writer.write(lines)
            except StoreUnavailableError as exc:
                attempt += 1
                with self._cond:
                    self._counters[RETRIES] += 1
                self._note_unavailable(exc, attempt)
                delay = self._backoff(attempt)
                if exc.retry_after_s is not None:
                    delay = max(delay, min(exc.retry_after_s, self._backoff_cap_s))
                self._pause(delay)
                continue
            except PointsRefusedError as exc:
                if len(lines) == 1:
                    log.warning("time-series store refused a point (%s): %s", exc, _short(lines[0]))
                    delivery.fail(exc.reason)
                    return True
                middle = len(lines) // 2
                return self._deliver(lines[:middle], delivery) and self._deliver(lines[middle:], delivery)
            if self._unavailable_since is not None:
                log.info(
                    "time-series store accepts writes again after %.0f s", self._monotonic() - self._unavailable_since
                )
                self._unavailable_since = None
            delivery.written += len(lines)
            return True

    def _note_unavailable(self, exc: StoreUnavailableError, attempt: int) -> None:
        if self._unavailable_since is None:
            self._unavailable_since = self._monotonic()
            log.warning("time-series store unavailable (%s); retrying with backoff", exc)
        else:
            log.debug("time-series store still unavailable (attempt %d): %s", attempt, exc)

    def _pause(self, seconds: float) -> None:
        """Wait ``seconds`` (less if stopped), re-reading the stored-reading count for the lag meanwhile."""
        deadline = self._monotonic() + seconds
        while not self._stopping.is_set():
            remaining = deadline - self._monotonic()
            if remaining <= 0:
                return
            self._sleep(min(remaining, LAG_REFRESH_S))
            if self._stopping.is_set():
                return
            try:
                self._refresh_latest()
            except Exception:
                # A failing source surfaces in the next round; a pause must not end the thread.
                log.debug("cannot read the latest reading id while waiting", exc_info=True)

    def _backoff(self, attempt: int) -> float:
        return backoff_delay(attempt, self._draw(), base_s=self._backoff_base_s, cap_s=self._backoff_cap_s)

    def _node_kind(self, gateway_id: str) -> str:
        return self._node_kinds.get(gateway_id, UNKNOWN_NODE_KIND)

    def _load_cursors(self) -> None:
        readings = self._source.cursor(READINGS_CURSOR)
        health = self._source.cursor(HEALTH_CURSOR)
        with self._cond:
            self._readings_cursor = readings
            self._health_cursor = health
            self._cursors_loaded = True
            self._cond.notify_all()

    def _refresh_latest(self) -> None:
        latest = self._source.latest_reading_id()
        with self._cond:
            self._latest_reading_id = latest
            self._cond.notify_all()

    def _account(
        self, delivery: _Delivery, *, readings_cursor: int | None = None, health_cursor: int | None = None
    ) -> None:
        with self._cond:
            self._counters[POINTS_WRITTEN] += delivery.written
            for reason, count in delivery.failed.items():
                key = POINTS_FAILED_PREFIX + reason
                self._counters[key] = self._counters.get(key, 0) + count
            if readings_cursor is not None:
                self._readings_cursor = readings_cursor
                self._latest_reading_id = max(self._latest_reading_id, readings_cursor)
            if health_cursor is not None:
                self._health_cursor = health_cursor
            self._cond.notify_all()

    def _lag_locked(self) -> int:
        return max(0, self._latest_reading_id - self._readings_cursor)

    def _has_room_locked(self) -> bool:
        return not self._running or self._lag_locked() <= self._max_lag
