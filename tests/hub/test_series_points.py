"""Line protocol of the raw series (docs/metrics.md), checked byte for byte against influxdb-client's Point,
plus the exporter's pieces that need no network: backoff, failure classification, configuration, and the
retry / split rules of its loop driven against a writer that answers as InfluxDB 2 documents."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from pathlib import Path

import msgspec
import pytest
import urllib3
from hypothesis import given
from hypothesis import strategies as st
from influxdb_client import Point, WritePrecision
from influxdb_client.rest import ApiException

from coldchain.config import convert
from coldchain.errors import ConfigError, ContractError
from coldchain.messages import GatewayHealth, UplinkHealth, encode
from hub.config import HubConfig
from hub.profiles import ProductProfile
from hub.series_export import (
    BACKOFF_BASE_S,
    BACKOFF_CAP_S,
    READINGS_CURSOR,
    ExportAlarm,
    ExportGateway,
    ExportHealth,
    ExportReading,
    ExportSnapshot,
    PointsRefusedError,
    SeriesConfig,
    SeriesExporter,
    StoreUnavailableError,
    alarm_line,
    backoff_delay,
    band_lines,
    classify_failure,
    escape_tag,
    gateway_online_line,
    health_lines,
    point_line,
    reading_line,
    resolve_token,
    snapshot_lines,
)

TS_MS = 1_764_000_000_123
BOOT = "0123456789abcdef0123456789abcdef"


def oracle(measurement: str, tags: dict[str, str], fields: dict[str, float | int], ts_ms: int) -> str:
    """What influxdb-client's own Point writes for the same point at ms precision."""
    point = Point(measurement)
    for key, value in tags.items():
        point.tag(key, value)
    for key, value in fields.items():
        point.field(key, value)
    return str(point.time(ts_ms, WritePrecision.MS).to_line_protocol())


def reading(**changes: object) -> ExportReading:
    values: dict[str, object] = {
        "id": 1,
        "gateway_id": "gw-1",
        "sensor_id": "chiller",
        "quantity": "temperature",
        "ts_ms": TS_MS,
        "value": 3.25,
        "quality": "good",
    }
    values.update(changes)
    return ExportReading(**values)  # type: ignore[arg-type]


def health(**changes: object) -> GatewayHealth:
    values: dict[str, object] = {
        "gateway_id": "gw-1",
        "boot_id": BOOT,
        "ts_ms": TS_MS,
        "uptime_s": 3600.0,
        "buffer_batches": 2,
        "buffer_items": 40,
        "buffer_bytes": 4096,
        "oldest_unsent_age_s": 12.5,
        "uplink": UplinkHealth(connected=True, acked_seq=10, resends=0),
        "driver_errors": {},
        "clock_offset_ms": -40,
        "cpu_percent": 1.5,
        "rss_bytes": 33_000_000,
    }
    values.update(changes)
    return GatewayHealth(**values)  # type: ignore[arg-type]


# --- cc_reading ---


def test_a_reading_is_one_point_with_value_and_quality_at_its_own_millisecond() -> None:
    line = reading_line(reading(), "cold_store")
    assert line == (
        "cc_reading,gateway_id=gw-1,node_kind=cold_store,quantity=temperature,sensor_id=chiller"
        f" quality_ok=1i,value=3.25 {TS_MS}"
    )
    tags = {"gateway_id": "gw-1", "sensor_id": "chiller", "quantity": "temperature", "node_kind": "cold_store"}
    assert line == oracle("cc_reading", tags, {"value": 3.25, "quality_ok": 1}, TS_MS)


@pytest.mark.parametrize(("quality", "ok"), [("good", 1), ("suspect", 0), ("bad", 0)])
def test_quality_ok_is_one_only_for_good_readings(quality: str, ok: int) -> None:
    line = reading_line(reading(quality=quality), "unknown")
    assert line is not None
    assert f" quality_ok={ok}i,value=" in line


@pytest.mark.parametrize("value", [3.0, -18.0, 0.0, 1e-7, -0.05, 99.99, 1e16, 4])
def test_values_are_written_as_floats_the_way_point_writes_them(value: float) -> None:
    line = reading_line(reading(value=value), "unknown")
    tags = {"gateway_id": "gw-1", "sensor_id": "chiller", "quantity": "temperature", "node_kind": "unknown"}
    # An integral value is still a float field (no ``i``): one field type per measurement for InfluxDB.
    assert line == oracle("cc_reading", tags, {"value": float(value), "quality_ok": 1}, TS_MS)
    assert line is not None
    assert not line.split(" ")[1].split("value=")[1].endswith("i")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_a_non_finite_value_makes_no_point(value: float) -> None:
    assert reading_line(reading(value=value), "unknown") is None


def test_tags_with_spaces_commas_and_equals_are_escaped() -> None:
    line = reading_line(reading(gateway_id="gw 1", sensor_id="a,b=c"), "cold room")
    assert line == (
        r"cc_reading,gateway_id=gw\ 1,node_kind=cold\ room,quantity=temperature,sensor_id=a\,b\=c"
        f" quality_ok=1i,value=3.25 {TS_MS}"
    )


@given(
    gateway_id=st.text(min_size=1, max_size=20),
    sensor_id=st.text(min_size=1, max_size=20),
    node_kind=st.text(max_size=12),
    value=st.floats(allow_nan=False, allow_infinity=False),
    ts_ms=st.integers(min_value=0, max_value=2**62),
)
def test_any_tag_text_is_written_exactly_as_point_writes_it(
    gateway_id: str, sensor_id: str, node_kind: str, value: float, ts_ms: int
) -> None:
    line = reading_line(reading(gateway_id=gateway_id, sensor_id=sensor_id, value=value, ts_ms=ts_ms), node_kind)
    tags = {"gateway_id": gateway_id, "sensor_id": sensor_id, "quantity": "temperature", "node_kind": node_kind}
    assert line == oracle("cc_reading", tags, {"value": value, "quality_ok": 1}, ts_ms)


def test_escape_tag_follows_point_for_a_trailing_backslash() -> None:
    assert escape_tag("a b,c=d") == r"a\ b\,c\=d"
    assert escape_tag("line\nbreak\ttab") == r"line\nbreak\ttab"
    assert escape_tag("ends\\") == "ends\\ "  # a space keeps the backslash from escaping the separator


def test_an_empty_tag_value_leaves_the_tag_out_and_no_fields_means_no_point() -> None:
    assert point_line("m", {"a": "", "b": "x"}, {"f": 1}, 5) == "m,b=x f=1i 5"
    assert point_line("m", {"b": "x"}, {"f": None, "g": math.nan}, 5) is None


# --- cc_band ---


def test_a_band_has_low_and_high_per_quantity_bound() -> None:
    profile = ProductProfile(
        name="chilled produce", temp_low_c=0.0, temp_high_c=4.0, humidity_low=85.0, humidity_high=95.0
    )
    lines = band_lines("gw-1", profile, TS_MS)
    assert lines == [
        oracle("cc_band", {"gateway_id": "gw-1", "quantity": "temperature", "profile": "chilled produce"},
               {"low": 0.0, "high": 4.0}, TS_MS),
        oracle("cc_band", {"gateway_id": "gw-1", "quantity": "humidity", "profile": "chilled produce"},
               {"low": 85.0, "high": 95.0}, TS_MS),
    ]  # fmt: skip
    assert lines[0] == rf"cc_band,gateway_id=gw-1,profile=chilled\ produce,quantity=temperature high=4,low=0 {TS_MS}"


def test_an_open_side_of_a_band_is_left_out_and_an_unbounded_quantity_has_no_point() -> None:
    frozen = ProductProfile(name="frozen", temp_high_c=-18.0)
    assert band_lines("gw-1", frozen, TS_MS) == [
        f"cc_band,gateway_id=gw-1,profile=frozen,quantity=temperature high=-18 {TS_MS}"
    ]
    dry_floor = ProductProfile(name="tea", humidity_low=40.0)
    assert band_lines("gw-1", dry_floor, TS_MS) == [
        f"cc_band,gateway_id=gw-1,profile=tea,quantity=humidity low=40 {TS_MS}"
    ]
    assert band_lines("gw-1", ProductProfile(name="anything"), TS_MS) == []


# --- cc_gateway and cc_driver_errors from cc.health/1 ---


def test_a_health_report_becomes_a_gateway_point_and_one_point_per_driver_error() -> None:
    report = health(driver_errors={"chiller": {"crc": 3, "timeout": 1}, "door": {"no answer": 7}})
    row = ExportHealth(id=9, gateway_id="gw-1", ts_ms=TS_MS, body=encode(report))
    lines = health_lines(row, "reefer_truck")
    gateway_fields: dict[str, float | int] = {
        "buffer_batches": 2,
        "buffer_items": 40,
        "buffer_bytes": 4096,
        "oldest_unsent_age_s": 12.5,
        "clock_offset_ms": -40,
        "cpu_percent": 1.5,
        "rss_bytes": 33_000_000,
        "uptime_s": 3600.0,
        "alarms_active": 0,
    }
    assert lines == [
        oracle("cc_gateway", {"gateway_id": "gw-1", "node_kind": "reefer_truck"}, gateway_fields, TS_MS),
        oracle("cc_driver_errors", {"gateway_id": "gw-1", "sensor_id": "chiller", "error": "crc"}, {"count": 3}, TS_MS),
        oracle(
            "cc_driver_errors", {"gateway_id": "gw-1", "sensor_id": "chiller", "error": "timeout"}, {"count": 1}, TS_MS
        ),
        oracle(
            "cc_driver_errors",
            {"gateway_id": "gw-1", "sensor_id": "door", "error": "no answer"},
            {"count": 7},
            TS_MS,
        ),
    ]
    assert lines[0] == (
        "cc_gateway,gateway_id=gw-1,node_kind=reefer_truck alarms_active=0i,buffer_batches=2i,buffer_bytes=4096i,"
        f"buffer_items=40i,clock_offset_ms=-40i,cpu_percent=1.5,oldest_unsent_age_s=12.5,rss_bytes=33000000i,"
        f"uptime_s=3600 {TS_MS}"
    )
    assert lines[3] == rf"cc_driver_errors,error=no\ answer,gateway_id=gw-1,sensor_id=door count=7i {TS_MS}"


def test_health_fields_the_gateway_could_not_measure_are_left_out() -> None:
    report = health(oldest_unsent_age_s=None, clock_offset_ms=None, alarms_active=["chiller", "freezer"])
    (line,) = health_lines(ExportHealth(id=1, gateway_id="gw-1", ts_ms=TS_MS, body=encode(report)), "unknown")
    assert "oldest_unsent_age_s" not in line
    assert "clock_offset_ms" not in line
    assert "alarms_active=2i" in line
    assert "online" not in line  # online comes from the gateway's status, every band interval


def test_an_undecodable_health_body_raises_a_contract_error() -> None:
    with pytest.raises(ContractError):
        health_lines(ExportHealth(id=1, gateway_id="gw-1", ts_ms=TS_MS, body=b'{"schema":"cc.health/1"}'), "unknown")


# --- periodic points ---


def test_gateway_online_and_alarm_points() -> None:
    assert gateway_online_line("gw-1", "courier_box", True, TS_MS) == (
        f"cc_gateway,gateway_id=gw-1,node_kind=courier_box online=1i {TS_MS}"
    )
    alarm = ExportAlarm("a1", "gw-1", "chiller", "temperature", "rate_of_change", "warning", active=False)
    assert alarm_line(alarm, TS_MS) == oracle(
        "cc_alarm",
        {"gateway_id": "gw-1", "sensor_id": "chiller", "quantity": "temperature", "kind": "rate_of_change",
         "severity": "warning"},
        {"active": 0},
        TS_MS,
    )  # fmt: skip


def test_snapshot_lines_cover_bound_gateways_known_statuses_and_every_alarm_given() -> None:
    profile = ProductProfile(name="frozen", temp_high_c=-18.0)
    snapshot = ExportSnapshot(
        gateways=[ExportGateway("gw-1", online=True), ExportGateway("gw-2", online=None)],
        alarms=[
            ExportAlarm("a1", "gw-1", "chiller", "temperature", "out_of_range", "critical", active=True),
            ExportAlarm("a2", "gw-2", "probe", "humidity", "stuck_sensor", "info", active=False),
        ],
    )
    lines = snapshot_lines(
        snapshot,
        TS_MS,
        node_kind=lambda gateway_id: "cold_store" if gateway_id == "gw-1" else "unknown",
        profile_for=lambda gateway_id: profile if gateway_id == "gw-1" else None,
    )
    assert lines == [
        f"cc_band,gateway_id=gw-1,profile=frozen,quantity=temperature high=-18 {TS_MS}",
        f"cc_gateway,gateway_id=gw-1,node_kind=cold_store online=1i {TS_MS}",
        "cc_alarm,gateway_id=gw-1,kind=out_of_range,quantity=temperature,sensor_id=chiller,severity=critical"
        f" active=1i {TS_MS}",
        f"cc_alarm,gateway_id=gw-2,kind=stuck_sensor,quantity=humidity,sensor_id=probe,severity=info active=0i {TS_MS}",
    ]


# --- backoff ---


def test_backoff_doubles_from_the_base_up_to_the_cap_and_jitters_over_all_of_it() -> None:
    ceilings = [backoff_delay(attempt, 1.0) for attempt in range(1, 12)]
    assert ceilings[:3] == [BACKOFF_BASE_S, 2 * BACKOFF_BASE_S, 4 * BACKOFF_BASE_S]
    assert max(ceilings) == BACKOFF_CAP_S
    assert ceilings == sorted(ceilings)
    assert backoff_delay(5, 0.0) == 0.0
    assert backoff_delay(3, 0.5, base_s=0.1, cap_s=10) == pytest.approx(0.2)
    assert backoff_delay(10_000, 1.0) == BACKOFF_CAP_S  # no overflow however long the outage


# --- failure classification ---


@pytest.mark.parametrize(("status", "reason"), [(400, "refused"), (413, "too_large"), (422, "unprocessable")])
def test_statuses_that_blame_the_points_are_refusals(status: int, reason: str) -> None:
    failure = classify_failure(ApiException(status=status, reason="bad"))
    assert isinstance(failure, PointsRefusedError)
    assert failure.reason == reason


@pytest.mark.parametrize("status", [401, 403, 404, 408, 429, 500, 502, 503, 504])
def test_other_statuses_are_retried_never_given_up(status: int) -> None:
    failure = classify_failure(ApiException(status=status, reason="later"))
    assert isinstance(failure, StoreUnavailableError)
    assert failure.reason == f"http_{status}"


def test_connection_failures_and_timeouts_are_retried_and_bugs_are_not_classified() -> None:
    refused = classify_failure(urllib3.exceptions.NewConnectionError(None, "Connection refused"))  # type: ignore[arg-type]
    assert isinstance(refused, StoreUnavailableError)
    assert refused.reason == "connection"
    timeout = classify_failure(urllib3.exceptions.ReadTimeoutError(None, "/api/v2/write", "read timed out"))  # type: ignore[arg-type]
    assert isinstance(timeout, StoreUnavailableError)
    assert timeout.reason == "timeout"
    assert isinstance(classify_failure(ConnectionResetError()), StoreUnavailableError)
    assert classify_failure(ValueError("a bug")) is None


def test_error_text_is_bounded() -> None:
    failure = classify_failure(ApiException(status=400, reason="x" * 10_000))
    assert failure is not None
    assert len(str(failure)) < 400


# --- configuration ---


def test_series_is_off_by_default_and_strict_about_its_keys() -> None:
    assert HubConfig().series.url is None
    config = convert({"series": {"url": "http://127.0.0.1:8428", "batch_points": 1000}}, HubConfig, source="t")
    assert config.series.url == "http://127.0.0.1:8428"
    assert config.series.batch_points == 1000
    with pytest.raises(ConfigError, match="unknown field"):
        convert({"series": {"url": "http://x", "password": "nope"}}, HubConfig, source="t")
    with pytest.raises(ConfigError):
        convert({"series": {"batch_points": 0}}, HubConfig, source="t")
    with pytest.raises(ConfigError):
        convert({"series": {"max_lag_readings": -1}}, HubConfig, source="t")


def test_the_token_comes_from_a_file_or_the_environment_or_not_at_all(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_token(SeriesConfig(url="http://vm:8428")) is None
    token_file = tmp_path / "token"
    token_file.write_text("influx-token-0123456789\n")
    assert resolve_token(SeriesConfig(token_file=str(token_file))) == "influx-token-0123456789"
    monkeypatch.setenv("CC_TEST_SERIES_TOKEN", "env-token-0123456789")
    assert resolve_token(SeriesConfig(token_env="CC_TEST_SERIES_TOKEN")) == "env-token-0123456789"
    token_file.write_text("changeme")
    with pytest.raises(ConfigError) as caught:
        resolve_token(SeriesConfig(token_file=str(token_file)))
    assert "changeme" not in str(caught.value)


def test_rows_are_plain_structs() -> None:
    row = reading()
    assert msgspec.structs.asdict(row)["ts_ms"] == TS_MS
    with pytest.raises(AttributeError):
        row.value = 1.0  # type: ignore[misc]


# --- the loop's retry and split rules, without a network ---


class ListSource:
    """A minimal in-memory ``SeriesSource``: readings only, no gateways, no alarms."""

    def __init__(self, rows: list[ExportReading]) -> None:
        self.rows = rows
        self.cursors: dict[str, int] = {}
        self.limits: list[int] = []

    def readings_after(self, after_id: int, limit: int) -> Sequence[ExportReading]:
        self.limits.append(limit)
        return [row for row in self.rows if row.id > after_id][:limit]

    def health_after(self, after_id: int, limit: int) -> Sequence[ExportHealth]:
        return []

    def latest_reading_id(self) -> int:
        return self.rows[-1].id if self.rows else 0

    def snapshot(self, closed_since_ms: int) -> ExportSnapshot:
        return ExportSnapshot(gateways=[], alarms=[])

    def cursor(self, name: str) -> int:
        return self.cursors.get(name, 0)

    def save_cursor(self, name: str, position: int) -> None:
        self.cursors[name] = position


class InfluxDB2LikeWriter:
    """Answers as InfluxDB 2 OSS documents: a batch holding any malformed line gets 400 and nothing of
    it is written; ``outages`` answers come first, one per write."""

    def __init__(self, outages: list[StoreUnavailableError] | None = None) -> None:
        self.outages = list(outages or [])
        self.stored: list[str] = []
        self.requests = 0

    def write(self, lines: Sequence[str]) -> None:
        self.requests += 1
        if self.outages:
            raise self.outages.pop(0)
        if any("sensor_id=bad" in line for line in lines):
            raise PointsRefusedError("refused", "HTTP 400: unable to parse")
        self.stored.extend(lines)

    def close(self) -> None:
        pass


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def rows(count: int, bad: frozenset[int] = frozenset()) -> list[ExportReading]:
    return [
        reading(id=i, ts_ms=TS_MS + i, sensor_id="bad" if i in bad else "chiller", value=float(i))
        for i in range(1, count + 1)
    ]


def test_refused_points_are_split_out_one_by_one_and_every_good_point_is_written_once() -> None:
    source = ListSource(rows(50, bad=frozenset({7, 8, 33})))
    writer = InfluxDB2LikeWriter()
    exporter = SeriesExporter(source, writer, batch_points=50)
    assert exporter.export_once() is True  # a full batch: more may be waiting
    assert exporter.export_once() is False
    counters = exporter.snapshot()
    assert counters["points_failed_refused"] == 3
    assert counters["points_written"] == 47
    assert len(writer.stored) == len(set(writer.stored)) == 47  # each good point once, none twice
    assert source.cursors[READINGS_CURSOR] == 50
    assert max(source.limits) == 50


def test_an_unavailable_store_gets_the_same_batch_again_after_full_jitter_backoff() -> None:
    source = ListSource(rows(10))
    writer = InfluxDB2LikeWriter(
        outages=[
            StoreUnavailableError("connection", "refused"),
            StoreUnavailableError("http_503", "busy"),
            StoreUnavailableError("http_429", "slow down", retry_after_s=7.0),
            StoreUnavailableError("timeout", "timed out"),
        ]
    )
    clock = FakeTime()
    exporter = SeriesExporter(
        source, writer, batch_points=100, monotonic=clock.monotonic, sleep=clock.sleep, draw=lambda: 1.0
    )
    exporter.export_once()
    # draw = 1: the ceiling of each wait, 0.5, 1, 2 s doubling; the 429's Retry-After (7 s) wins over 2 s.
    assert sum(clock.sleeps) == pytest.approx(0.5 + 1.0 + 7.0 + 4.0)
    assert max(clock.sleeps) <= 1.0  # waits are sliced so the lag behind admit() stays fresh
    assert exporter.snapshot()["retries"] == 4
    assert exporter.snapshot()["points_written"] == 10
    assert writer.requests == 5
    assert len(writer.stored) == 10
    assert source.cursors[READINGS_CURSOR] == 10


def test_a_failing_source_breaks_off_the_round_and_the_thread_goes_on() -> None:
    source = ListSource(rows(10))
    failures = [2]
    read = source.readings_after

    def flaky(after_id: int, limit: int) -> Sequence[ExportReading]:
        if failures[0]:
            failures[0] -= 1
            raise OSError("database is locked")
        return read(after_id, limit)

    source.readings_after = flaky  # type: ignore[method-assign]
    writer = InfluxDB2LikeWriter()
    exporter = SeriesExporter(source, writer, flush_interval_s=0.01, backoff_base_s=0.001, backoff_cap_s=0.001)
    exporter.start()
    deadline = time.monotonic() + 10
    while exporter.cursors()[0] < 10:
        assert time.monotonic() < deadline, "the exporter did not recover"
        time.sleep(0.01)
    exporter.stop()
    assert exporter.snapshot()["errors"] == 2
    assert len(writer.stored) == 10
