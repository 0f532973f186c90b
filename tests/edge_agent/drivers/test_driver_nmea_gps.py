"""NmeaGps: rate limiting, clock offset, silence and port failures, then against the simulator on a pty."""

from __future__ import annotations

import datetime as dt
import itertools
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from coldchain.messages import GpsFix
from edge_agent.drivers import Driver, DriverKind
from edge_agent.drivers.nmea_gps import NmeaGps
from firmware_sims.gps import GpsSimulator, Waypoint, format_gga, format_rmc, position_at

WALL_CLOCK_S = 1_772_366_400.25  # 2026-03-01T12:00:00.25Z
EPOCH0 = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
EPOCH0_MS = 1_772_366_400_000


def epoch(second: int, lat: float = 10.77, lon: float = 106.70) -> bytes:
    utc = EPOCH0 + dt.timedelta(seconds=second)
    return format_rmc(utc, lat, lon, speed_kmh=36.0, course_deg=90.0) + format_gga(utc, lat, lon)


def scripted_gps(make_factory, clock, **kwargs):
    factory = make_factory(lambda _request: b"", kwargs.pop("failures", 0))
    gps = NmeaGps(
        "/dev/ttyGPS",
        "gps-1",
        wall_clock=kwargs.pop("wall_clock", lambda: WALL_CLOCK_S),
        monotonic=clock,
        serial_factory=factory,
        **kwargs,
    )
    return gps, factory


# --- with a scripted port ------------------------------------------------------------------------


def test_driver_kind_and_protocol(make_factory, clock) -> None:
    gps, factory = scripted_gps(make_factory, clock)
    assert DriverKind("nmea_gps") is DriverKind.NMEA_GPS
    assert isinstance(gps, Driver)
    assert factory.attempts == 0  # nothing is opened before the first poll
    assert gps.counters == dict.fromkeys(
        ["checksum", "garbage_bytes", "oversize", "parse_error", "no_fix", "serial_error", "reopen", "silent"], 0
    )
    assert (gps.last_fix, gps.clock_offset_ms) == (None, None)


@pytest.mark.parametrize(("option", "value"), [("min_fix_interval_s", -1.0), ("silent_after_s", 0.0)])
def test_bad_timing_options_are_refused(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        NmeaGps("/dev/ttyGPS", "gps-1", **{option: value})


def test_a_fix_is_returned_with_the_gateway_and_the_gps_time(make_factory, clock) -> None:
    gps, factory = scripted_gps(make_factory, clock)
    assert gps.poll() == []  # opens the port; nothing sent yet
    factory.opened[0].inject(epoch(0))
    (fix,) = gps.poll()
    assert isinstance(fix, GpsFix)
    assert (fix.receiver_id, fix.ts_ms, fix.gps_time_ms) == ("gps-1", 1_772_366_400_250, EPOCH0_MS)
    assert (fix.lat, fix.lon, fix.speed_kmh, fix.course_deg) == (10.77, 106.70, pytest.approx(36.0, abs=0.002), 90.0)
    assert gps.last_fix == fix
    assert gps.clock_offset_ms == 250


def test_at_most_one_fix_per_interval_and_it_is_the_newest(make_factory, clock) -> None:
    gps, factory = scripted_gps(make_factory, clock, min_fix_interval_s=5.0)
    gps.poll()
    port = factory.opened[0]
    returned = []
    for second in range(12):
        port.inject(epoch(second, lat=10.0 + second / 1000))
        returned.append([round((f.lat - 10.0) * 1000) for f in gps.poll()])
        clock.sleep(1.0)
    assert returned == [[0], [], [], [], [], [5], [], [], [], [], [10], []]
    assert gps.last_fix is not None
    assert gps.last_fix.lat == pytest.approx(10.011)


def test_a_held_fix_is_returned_once_the_interval_has_passed(make_factory, clock) -> None:
    gps, factory = scripted_gps(make_factory, clock, min_fix_interval_s=5.0)
    gps.poll()
    factory.opened[0].inject(epoch(0) + epoch(1))
    assert len(gps.poll()) == 1
    factory.opened[0].inject(epoch(2))
    assert gps.poll() == []
    clock.sleep(5.0)
    (held,) = gps.poll()
    assert held.gps_time_ms == EPOCH0_MS + 2000
    clock.sleep(10.0)
    assert gps.poll() == []  # nothing new: a fix is never returned twice


def test_clock_offset_follows_the_last_fix_and_expires_after_a_minute(make_factory, clock) -> None:
    wall = [WALL_CLOCK_S]
    gps, factory = scripted_gps(make_factory, clock, wall_clock=lambda: wall[0], min_fix_interval_s=0)
    gps.poll()
    factory.opened[0].inject(epoch(0))
    gps.poll()
    assert gps.clock_offset_ms == 250
    wall[0] += 3600 - 30  # the gateway clock is set back 30 s while an hour passes
    factory.opened[0].inject(epoch(3600))
    gps.poll()
    assert gps.clock_offset_ms == -29_750
    clock.sleep(59.0)
    assert gps.clock_offset_ms == -29_750
    clock.sleep(2.0)
    assert gps.clock_offset_ms is None
    assert gps.last_fix is not None  # the position stays known; only the offset is too old


def test_no_fix_epochs_are_counted_and_give_nothing(make_factory, clock) -> None:
    gps, factory = scripted_gps(make_factory, clock, min_fix_interval_s=0)
    gps.poll()
    utc = EPOCH0
    factory.opened[0].inject((format_rmc(utc, None, None) + format_gga(utc, None, None)) * 3)
    assert gps.poll() == []
    assert gps.counters["no_fix"] == 3
    assert (gps.last_fix, gps.clock_offset_ms) == (None, None)


def test_silence_is_counted_once_per_quiet_spell(make_factory, clock) -> None:
    gps, factory = scripted_gps(make_factory, clock, silent_after_s=3.0, read_timeout_s=0.5)
    for _ in range(20):  # ten seconds without a byte
        gps.poll()
    assert gps.counters["silent"] == 1
    factory.opened[0].inject(epoch(0))
    gps.poll()
    for _ in range(20):
        gps.poll()
    assert gps.counters["silent"] == 2


def test_read_failure_is_counted_and_the_port_reopened(make_factory, clock) -> None:
    gps, factory = scripted_gps(make_factory, clock, open_backoff_s=1.0, min_fix_interval_s=0)
    gps.poll()
    factory.opened[0].inject(epoch(0)[:40])  # half a sentence, then the cable goes
    factory.opened[0].fail_on = "read"
    assert gps.poll() == []
    assert gps.counters["serial_error"] == 1
    assert gps.poll() == []  # within the backoff: no attempt
    assert factory.attempts == 1
    clock.sleep(1.0)
    assert gps.poll() == []
    assert factory.attempts == 2
    factory.opened[1].inject(epoch(1))
    assert len(gps.poll()) == 1
    counters = gps.counters
    assert (counters["serial_error"], counters["reopen"], counters["checksum"]) == (1, 1, 0)


def test_a_port_that_cannot_be_opened_yields_nothing_and_never_raises(make_factory, clock) -> None:
    gps, factory = scripted_gps(make_factory, clock, failures=2, open_backoff_s=0.5)
    for _ in range(3):
        assert gps.poll() == []
        clock.sleep(0.5)
    # Attempts at 0 and 0.5 s failed; the next waits for the doubled backoff.
    assert (factory.attempts, gps.counters["serial_error"]) == (2, 2)
    clock.sleep(1.0)
    gps.poll()
    gps.poll()
    assert len(factory.opened) == 1
    assert gps.counters["reopen"] == 0  # the first successful open is not a reopen
    assert gps.counters["silent"] == 0  # a closed port is a serial error, not a silent receiver
    gps.close()
    assert factory.opened[0].closed


# --- against the simulator on a pty --------------------------------------------------------------

# A reefer truck leaving a Da Lat packhouse: a short loading stop, then downhill towards the coast,
# at speeds raised so that a second of test time covers measurable ground.
ROUTE = [
    Waypoint(11.9404, 108.4583, dwell_s=0.5, speed_kmh=400.0),
    Waypoint(11.9300, 108.4700, dwell_s=1.0, speed_kmh=200.0),
    Waypoint(11.9000, 108.5000),
]
START_UTC = dt.datetime(2026, 3, 1, 5, 0, 0, tzinfo=dt.UTC)
START_MS = int(START_UTC.timestamp() * 1000)


class RecordingClock:
    """``time.monotonic`` that remembers its last answer: after a poll, the time the poll decided at."""

    last = 0.0

    def __call__(self) -> float:
        self.last = time.monotonic()
        return self.last


def poll_for(gps: NmeaGps, seconds: float, clock: RecordingClock | None = None) -> list[tuple[float, GpsFix]]:
    """Poll like the sampling loop does, returning (the driver's time, fix) for every fix returned."""
    got = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        fixes = gps.poll()
        got.extend((clock.last if clock else time.monotonic(), fix) for fix in fixes)
        time.sleep(0.02)
    return got


def poll_until(gps: NmeaGps, predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out; counters {gps.counters}"
        gps.poll()
        time.sleep(0.02)


def test_fixes_follow_the_route_and_respect_the_interval() -> None:
    with GpsSimulator(ROUTE, rate_hz=10.0, start_utc=START_UTC) as sim:
        clock = RecordingClock()
        gps = NmeaGps(str(sim.path), "truck-gps", min_fix_interval_s=0.3, read_timeout_s=0.05, monotonic=clock)
        try:
            got = poll_for(gps, 2.5, clock)
        finally:
            gps.close()
    assert 6 <= len(got) <= 9
    times = [at for at, _ in got]
    assert min(b - a for a, b in itertools.pairwise(times)) >= 0.3
    for _, fix in got:
        assert fix.gps_time_ms is not None
        lat, lon, speed_kmh, course_deg = position_at(ROUTE, (fix.gps_time_ms - START_MS) / 1000)
        assert (fix.lat, fix.lon) == (pytest.approx(lat, abs=1e-5), pytest.approx(lon, abs=1e-5))
        assert fix.speed_kmh == pytest.approx(speed_kmh, abs=0.01)
        assert fix.course_deg == pytest.approx(course_deg, abs=0.01)
        assert (fix.fix_quality, fix.satellites) == (1, 8)
    assert {fix.speed_kmh == 0 for _, fix in got} == {True, False}  # it both dwelt and drove
    assert set(gps.counters.values()) == {0}


def test_clock_offset_reflects_a_gps_clock_jump() -> None:
    with GpsSimulator(ROUTE, rate_hz=10.0) as sim:  # UTC from the wall clock, as a real receiver
        gps = NmeaGps(str(sim.path), "truck-gps", min_fix_interval_s=0, read_timeout_s=0.05)
        try:
            poll_until(gps, lambda: gps.clock_offset_ms is not None)
            offset = gps.clock_offset_ms
            assert offset is not None
            assert abs(offset) < 300
            sim.faults.clock_offset_s = 30.0
            poll_until(gps, lambda: (gps.clock_offset_ms or 0) < -20_000)
            poll_for(gps, 0.3)
            offset = gps.clock_offset_ms
        finally:
            gps.close()
    assert offset is not None
    assert -30_300 < offset < -29_700


def test_corrupted_sentences_are_counted_and_survived() -> None:
    with GpsSimulator(ROUTE, rate_hz=20.0, start_utc=START_UTC) as sim:
        sim.faults.corrupt_probability = 0.3
        gps = NmeaGps(str(sim.path), "truck-gps", min_fix_interval_s=0, read_timeout_s=0.05)
        try:
            got = poll_for(gps, 2.0)
        finally:
            gps.close()
    assert gps.counters["checksum"] > 0
    # An epoch whose RMC was lost still gives a position, from its GGA, but without a date.
    timed = [fix for _, fix in got if fix.gps_time_ms is not None]
    assert len(timed) >= 5
    for fix in timed:
        assert fix.gps_time_ms is not None
        lat, lon, _, _ = position_at(ROUTE, (fix.gps_time_ms - START_MS) / 1000)
        assert (fix.lat, fix.lon) == (pytest.approx(lat, abs=1e-5), pytest.approx(lon, abs=1e-5))


def test_receiver_unplugged_and_replugged_on_its_link_is_reopened(tmp_path: Path) -> None:
    link = tmp_path / "ttyGPS"
    with GpsSimulator(ROUTE, link=link, rate_hz=10.0, start_utc=START_UTC) as sim:
        gps = NmeaGps(str(link), "truck-gps", min_fix_interval_s=0, read_timeout_s=0.05, open_backoff_s=0.05)
        try:
            poll_until(gps, lambda: gps.last_fix is not None)
            sim.unplug()
            assert not link.exists()
            assert poll_for(gps, 0.5) == []  # nothing, and above all no exception
            assert gps.counters["serial_error"] >= 1
            sim.replug()
            before = gps.last_fix
            poll_until(gps, lambda: gps.last_fix != before)
        finally:
            gps.close()
    assert gps.counters["reopen"] == 1


def test_silent_receiver_is_counted_and_its_return_noticed() -> None:
    with GpsSimulator(ROUTE, rate_hz=10.0, start_utc=START_UTC) as sim:
        gps = NmeaGps(str(sim.path), "truck-gps", min_fix_interval_s=0, read_timeout_s=0.05, silent_after_s=0.3)
        try:
            poll_until(gps, lambda: gps.last_fix is not None)
            sim.faults.silent = True
            poll_until(gps, lambda: gps.counters["silent"] == 1)
            assert poll_for(gps, 0.3) == []
            sim.faults.silent = False
            assert poll_for(gps, 0.5) != []
        finally:
            gps.close()
    assert gps.counters["silent"] == 1


def test_receiver_without_a_fix_counts_no_fix() -> None:
    sim = GpsSimulator(ROUTE, rate_hz=10.0, start_utc=START_UTC)
    sim.no_fix = True  # before start: epoch 0 goes out at once
    with sim:
        gps = NmeaGps(str(sim.path), "truck-gps", min_fix_interval_s=0, read_timeout_s=0.05)
        try:
            poll_until(gps, lambda: gps.counters["no_fix"] >= 3)
        finally:
            gps.close()
    assert gps.last_fix is None
    assert gps.clock_offset_ms is None
