from __future__ import annotations

from coldchain.messages import Quantity, Reading
from hub.detectors import Finding, OutOfRangeDetector, SeriesKey, Severity
from hub.profiles import ProductProfile

T0 = 1_772_323_200_000
KEY = SeriesKey("gw-a", "p1", Quantity.TEMPERATURE)
RH = SeriesKey("gw-a", "p1", Quantity.HUMIDITY)
PROFILE = ProductProfile(
    "chilled",
    temp_low_c=0.0,
    temp_high_c=4.0,
    humidity_low=80.0,
    humidity_high=95.0,
    alarm_dwell_s=300.0,
    max_single_excursion_s=1200.0,
)


def feed(detector: OutOfRangeDetector, key: SeriesKey, points: list[tuple[float, float]]) -> list[Finding]:
    """Feed (seconds, value) points; return all findings."""
    findings = []
    for t_s, value in points:
        findings += detector.feed(key, Reading(key.sensor_id, key.quantity, T0 + int(t_s * 1000), value))
    return findings


def minutes(start: int, stop: int, value: float) -> list[tuple[float, float]]:
    return [(m * 60.0, value) for m in range(start, stop)]


def test_a_short_door_opening_is_not_an_excursion() -> None:
    detector = OutOfRangeDetector(lambda key: PROFILE)
    assert feed(detector, KEY, minutes(0, 10, 2.0) + minutes(10, 14, 7.0) + minutes(14, 30, 2.0)) == []


def test_excursion_opens_after_the_dwell_escalates_and_closes_with_hysteresis() -> None:
    detector = OutOfRangeDetector(lambda key: PROFILE)
    findings = feed(detector, KEY, minutes(0, 10, 2.0) + minutes(10, 40, 6.5) + [(2400.0, 3.9), (2460.0, 3.6)])
    assert [(f.action, f.severity) for f in findings] == [
        ("open", Severity.WARNING),
        ("update", Severity.CRITICAL),
        ("close", Severity.CRITICAL),
    ]
    opened, escalated, closed = findings
    assert opened.started_ms == T0 + 600_000
    assert opened.ts_ms == T0 + 900_000
    assert opened.duration_s == 300.0
    assert escalated.duration_s == 1200.0
    # 3.9 °C is inside the range but not by the 0.3 °C hysteresis: the excursion lasts until 3.6 °C.
    assert closed.ts_ms == T0 + 2_460_000
    assert closed.duration_s == 1860.0
    assert closed.value == 6.5


def test_noise_at_the_limit_does_not_close_and_reopen() -> None:
    detector = OutOfRangeDetector(lambda key: PROFILE)
    wobble = [(1200.0 + 30 * i, 4.2 if i % 2 else 3.9) for i in range(60)]
    findings = feed(detector, KEY, minutes(0, 10, 2.0) + minutes(10, 20, 5.0) + wobble)
    assert [f.action for f in findings] == ["open", "update"]


def test_worst_value_is_the_farthest_out_on_either_side() -> None:
    detector = OutOfRangeDetector(lambda key: PROFILE)
    findings = feed(detector, KEY, [(0, -1.0), (120, -3.0), (240, -2.0), (300, -1.5), (400, 1.0)])
    assert [(f.action, f.value) for f in findings] == [("open", -3.0), ("close", -3.0)]


def test_humidity_has_its_own_range_and_hysteresis() -> None:
    detector = OutOfRangeDetector(lambda key: PROFILE)
    findings = feed(detector, RH, [(0, 70.0), (300, 71.0), (400, 81.0), (500, 83.0)])
    assert [(f.action, f.ts_ms - T0) for f in findings] == [("open", 300_000), ("close", 500_000)]


def test_late_readings_neither_close_nor_reopen() -> None:
    detector = OutOfRangeDetector(lambda key: PROFILE)
    findings = feed(detector, KEY, minutes(0, 10, 7.0))
    assert [f.action for f in findings] == ["open"]
    # A delayed reading from before the excursion must not close it.
    assert feed(detector, KEY, [(60.0, 2.0)]) == []
    findings = feed(detector, KEY, [(700.0, 2.0)])
    assert [f.action for f in findings] == ["close"]
    # After recovery, old out-of-range readings arriving late must not reopen one.
    assert feed(detector, KEY, [(120.0 + i, 9.0) for i in range(0, 600, 30)]) == []
    assert detector.late_readings == 21


def test_a_silence_inside_a_pending_run_restarts_the_dwell() -> None:
    detector = OutOfRangeDetector(lambda key: PROFILE)
    assert feed(detector, KEY, [(0, 6.0), (60, 6.0), (3600, 6.0)]) == []
    assert [f.action for f in feed(detector, KEY, [(3900, 6.0)])] == ["open"]


def test_series_without_a_range_or_profile_are_not_judged() -> None:
    assert feed(OutOfRangeDetector(lambda key: None), KEY, minutes(0, 30, 50.0)) == []
    frozen = ProductProfile("frozen", temp_high_c=-18.0)
    assert feed(OutOfRangeDetector(lambda key: frozen), RH, minutes(0, 30, 10.0)) == []


def test_snapshot_and_restore_resume_an_open_excursion() -> None:
    detector = OutOfRangeDetector(lambda key: PROFILE)
    feed(detector, KEY, minutes(0, 10, 7.0))
    resumed = OutOfRangeDetector(lambda key: PROFILE)
    resumed.restore(detector.snapshot())
    assert resumed.snapshot() == detector.snapshot()
    assert [f.action for f in feed(resumed, KEY, [(700.0, 2.0)])] == ["close"]
