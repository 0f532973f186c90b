from __future__ import annotations

import random

import pytest

from coldchain.messages import Quality, Quantity, Reading
from firmware_sims.thermal import ThermalModel
from hub.detectors import DetectorSet, Finding, FindingKind, SeriesKey, Severity
from hub.profiles import ProductProfile

T0 = 1_772_323_200_000
KEY = SeriesKey("gw-a", "p1", Quantity.TEMPERATURE)
# The chilled-produce sample profile's range and budgets, with every tuning at its default.
CHILLED = ProductProfile(
    "chilled-produce",
    temp_low_c=0.0,
    temp_high_c=4.0,
    max_single_excursion_s=3600.0,
    max_cumulative_excursion_s=14_400.0,
)


def reading(t_s: float, value: float, quality: Quality = Quality.GOOD) -> Reading:
    return Reading("p1", Quantity.TEMPERATURE, T0 + int(t_s * 1000), value, quality)


def test_all_detectors_run_in_order_and_late_readings_are_counted_once() -> None:
    detectors = DetectorSet(lambda key: CHILLED if key.gateway_id == "gw-a" else None)
    findings: list[Finding] = []
    for m in range(40):
        findings += detectors.feed(KEY, reading(m * 60.0, 2.0 if m < 5 else 9.0))
    assert [(f.kind, f.action) for f in findings] == [
        (FindingKind.RATE_OF_CHANGE, "open"),
        (FindingKind.RATE_OF_CHANGE, "close"),
        (FindingKind.OUT_OF_RANGE, "open"),
    ]
    # Old readings from before the excursion, delivered late: nothing closes.
    assert detectors.feed(KEY, reading(120.0, 2.0)) == []
    assert detectors.feed(KEY, reading(39 * 60.0, 2.0)) == []  # same instant as the newest: late too
    assert detectors.late_readings == 2
    assert detectors.feed(KEY, reading(2500.0, 9.0, Quality.BAD)) == []
    assert detectors.bad_readings == 1
    closed = detectors.feed(KEY, reading(2520.0, 2.0))
    assert [(f.kind, f.action) for f in closed] == [(FindingKind.OUT_OF_RANGE, "close")]
    # After recovery, a late out-of-range reading does not reopen.
    assert detectors.feed(KEY, reading(1800.0, 9.0)) == []
    unbound = SeriesKey("gw-b", "p1", Quantity.TEMPERATURE)
    assert detectors.feed(unbound, reading(0.0, 50.0)) == []


def test_snapshot_and_restore_resume_exactly() -> None:
    def run(values: list[tuple[float, float]], detectors: DetectorSet) -> list[Finding]:
        out: list[Finding] = []
        for t_s, value in values:
            out += detectors.feed(KEY, reading(t_s, value))
            out += detectors.tick(T0 + int(t_s * 1000))
        return out

    rng = random.Random(9)
    series = [(t * 5.0, 2.0 + rng.gauss(0, 0.05) + (6.0 if 3000 < t < 3500 else 0.0)) for t in range(6000)]
    whole = DetectorSet(lambda key: CHILLED)
    expected = run(series, whole)
    first = DetectorSet(lambda key: CHILLED)
    got = run(series[:3200], first)
    second = DetectorSet(lambda key: CHILLED)
    second.restore(first.snapshot())
    got += run(series[3200:], second)
    assert got == expected
    assert second.snapshot() == whole.snapshot()
    assert {f.kind for f in expected} >= {FindingKind.OUT_OF_RANGE, FindingKind.RATE_OF_CHANGE}


def test_restore_refuses_foreign_data() -> None:
    detectors = DetectorSet(lambda key: CHILLED)
    with pytest.raises(ValueError, match="not a detector snapshot"):
        detectors.restore(b"[]")
    with pytest.raises(ValueError, match="version"):
        detectors.restore(b'{"version":99,"late_readings":0,"bad_readings":0,"newest":[],"detectors":{}}')


def test_reset_starts_a_new_journey_budget() -> None:
    profile = ProductProfile("p", temp_high_c=4.0, max_cumulative_excursion_s=600.0)
    detectors = DetectorSet(lambda key: profile)
    kinds: list[FindingKind] = []
    for m in range(8):
        kinds += [f.kind for f in detectors.feed(KEY, reading(m * 120.0, 6.0 if m % 2 else 2.0))]
    detectors.reset(KEY)
    for m in range(8, 16):
        kinds += [f.kind for f in detectors.feed(KEY, reading(m * 120.0, 6.0 if m % 2 else 2.0))]
    assert FindingKind.CUMULATIVE_TIME_OUT_OF_RANGE not in kinds


def simulate(hours: float, failures: list[tuple[float, float]]) -> list[Finding]:
    """The cold room of docs/detectors.md (bench/false_alarms.py), sampled every 5 s."""
    rng = random.Random(1)
    doors, t = [], 0.0
    while (t := t + rng.expovariate(4.0 / 3600)) < hours * 3600:
        doors.append((t, rng.uniform(30.0, 90.0)))
        t += doors[-1][1]
    model = ThermalModel(
        set_point_c=2.0,
        door_time_constant_s=1800.0,
        noise_c=0.05,
        seed=1,
        door_openings=doors,
        cooling_failures=failures,
    )
    detectors = DetectorSet(lambda key: CHILLED)
    findings: list[Finding] = []
    for step in range(int(hours * 720)):
        temp, _ = model.sample(step * 5.0)
        findings += detectors.feed(KEY, reading(step * 5.0, round(temp, 2)))
        if step % 12 == 0:
            findings += detectors.tick(T0 + step * 5000 + 2000)
    return findings


def test_normal_operation_raises_no_alarm_and_a_40_minute_cooling_failure_is_detected() -> None:
    normal = simulate(12.0, [])
    assert [f for f in normal if f.severity is not Severity.INFO] == []
    failed = simulate(12.0, [(6 * 3600.0, 2400.0)])
    opened = [f for f in failed if f.action == "open" and f.kind is FindingKind.OUT_OF_RANGE]
    assert len(opened) == 1
    assert 6 * 3600 * 1000 < opened[0].ts_ms - T0 < (6 * 3600 + 2400) * 1000 + 900_000
    assert any(f.kind is FindingKind.RATE_OF_CHANGE and f.severity is Severity.WARNING for f in failed)


TIGHT = ProductProfile(
    "tight",
    temp_low_c=2.0,
    temp_high_c=6.0,
    humidity_low=60.0,
    humidity_high=90.0,
    mkt_limit_c=5.0,
    mkt_window_s=3600.0,
    alarm_dwell_s=30.0,
    stuck_after_s=120.0,
    silent_after_s=60.0,
    fluctuation_z=4.0,  # the streams' 3-degree glitches among 0.4-degree noise count as jumps
)
LOOSE = ProductProfile("loose", temp_high_c=8.0, alarm_dwell_s=0.0)  # no humidity range: some detectors refuse


def eventful_readings(seed: int, count: int) -> list[Reading]:
    """Two series with excursions, glitches, flat runs, gaps, late and bad readings."""
    rng = random.Random(seed)
    readings, ts = [], T0
    temp, rh = 4.0, 80.0
    for _ in range(count):
        ts += rng.choice((1000, 5000, 5000, 5000, 90_000))
        temp = min(max(temp + rng.gauss(0, 0.4) + (3.0 if rng.random() < 0.02 else 0.0), -20.0), 40.0)
        rh = min(max(rh + rng.gauss(0, 2.0), 0.0), 100.0)
        quality = Quality.BAD if rng.random() < 0.03 else Quality.GOOD
        readings.append(Reading("p1", Quantity.TEMPERATURE, ts, round(temp, 1), quality))
        readings.append(Reading("p1", Quantity.HUMIDITY, ts, round(rh, 1)))
        if rng.random() < 0.05:  # a late copy of an older reading
            readings.append(Reading("p1", Quantity.TEMPERATURE, ts - rng.randint(0, 20_000), 30.0))
    return readings


# What happens part-way through the eventful streams, by reading index: the profile changes (the
# humidity and MKT detectors refuse the series until TIGHT binds), a journey resets, the set restarts.
PROFILE_FROM = {1000: TIGHT, 2000: LOOSE}
RESET_AT = 1500
RESTORE_AT = 2500


def restored(detectors: DetectorSet, profiles: dict[str, ProductProfile]) -> DetectorSet:
    """A new set restored from ``detectors``' snapshot, as after a restart."""
    fresh = DetectorSet(lambda key: profiles["now"])
    fresh.restore(detectors.snapshot())
    return fresh


@pytest.mark.parametrize("seed", range(4))
def test_set_judges_exactly_as_each_detector_fed_alone(seed: int) -> None:
    """The set's one-lookup hot path, its rebuilds (profile change, reset, restore) and its late and
    bad reading rules give the findings of the detectors fed one by one, in detector order."""
    profiles = {"now": LOOSE}
    detectors = DetectorSet(lambda key: profiles["now"])
    alone = DetectorSet(lambda key: profiles["now"]).detectors
    newest: dict[SeriesKey, int] = {}
    kinds: set[FindingKind] = set()
    readings = eventful_readings(seed, 3000)
    for index, reading in enumerate(readings):
        profiles["now"] = PROFILE_FROM.get(index, profiles["now"])
        if index == RESET_AT:
            detectors.reset(KEY)
            for detector in alone:
                if detector.kind is FindingKind.CUMULATIVE_TIME_OUT_OF_RANGE:
                    detector.reset(KEY)
        if index == RESTORE_AT:
            detectors = restored(detectors, profiles)
        key = SeriesKey("gw-a", reading.sensor_id, reading.quantity)
        expected: list[Finding] = []
        if reading.ts_ms > newest.get(key, 0) and reading.quality is not Quality.BAD:
            newest[key] = reading.ts_ms
            for detector in alone:
                expected += detector.feed(key, reading)
        assert detectors.feed(key, reading) == expected, index
        kinds.update(finding.kind for finding in expected)
    assert detectors.late_readings > 0
    assert detectors.bad_readings > 0
    assert len(kinds) >= 5, kinds  # the streams are eventful enough to exercise most detectors


@pytest.mark.parametrize("seed", range(4))
def test_batches_judged_run_by_run_find_what_reading_by_reading_finds(seed: int) -> None:
    """``feed_batch`` hands each detector a series' whole run of readings: every series gets the same
    findings, in the same order, as feeding reading by reading, across profile changes, a reset, a
    restore and the silences found by ticks between batches."""
    profiles = {"now": LOOSE}
    batched = DetectorSet(lambda key: profiles["now"])
    single = DetectorSet(lambda key: profiles["now"])
    readings = eventful_readings(seed, 3000)
    rng = random.Random(seed)
    events = (*PROFILE_FROM, RESET_AT, RESTORE_AT)
    got: dict[SeriesKey, list[Finding]] = {}
    expected: dict[SeriesKey, list[Finding]] = {}
    longest_run = 0
    start = 0
    while start < len(readings):
        end = min(start + rng.choice((1, 2, 7, 40, 150, 400)), len(readings))
        end = min([end, *(index for index in events if start < index < end)])
        profiles["now"] = PROFILE_FROM.get(start, profiles["now"])
        if start == RESET_AT:
            batched.reset(KEY)
            single.reset(KEY)
        if start == RESTORE_AT:
            batched = restored(batched, profiles)
        batch = readings[start:end]
        for finding in batched.feed_batch("gw-a", batch):
            got.setdefault(finding.key, []).append(finding)
        for reading in batch:
            for finding in single.feed(SeriesKey("gw-a", reading.sensor_id, reading.quantity), reading):
                expected.setdefault(finding.key, []).append(finding)
        now_ms = batch[-1].ts_ms + rng.choice((0, 70_000))
        for finding in batched.tick(now_ms):
            got.setdefault(finding.key, []).append(finding)
        for finding in single.tick(now_ms):
            expected.setdefault(finding.key, []).append(finding)
        longest_run = max(longest_run, len(batch))
        start = end
    assert got == expected
    kinds = {finding.kind for findings in expected.values() for finding in findings}
    assert len(kinds) == len(FindingKind), kinds  # every detector's findings were compared
    assert (batched.late_readings, batched.bad_readings) == (single.late_readings, single.bad_readings)
    assert longest_run >= 150
