from __future__ import annotations

from coldchain.messages import Quantity, Reading
from hub.detectors import Finding, RateOfChangeDetector, SeriesKey, Severity
from hub.profiles import ProductProfile

T0 = 1_772_323_200_000
KEY = SeriesKey("gw-a", "p1", Quantity.TEMPERATURE)
PROFILE = ProductProfile("chilled", temp_low_c=0.0, temp_high_c=4.0)


def feed(detector: RateOfChangeDetector, points: list[tuple[float, float]]) -> list[Finding]:
    findings = []
    for t_s, value in points:
        findings += detector.feed(KEY, Reading("p1", Quantity.TEMPERATURE, T0 + int(t_s * 1000), value))
    return findings


def ramp(start_s: int, stop_s: int, start_value: float, per_min: float) -> list[tuple[float, float]]:
    return [(float(t), start_value + per_min * (t - start_s) / 60) for t in range(start_s, stop_s, 5)]


def test_a_door_opening_is_an_info_finding_that_closes_when_the_rate_calms() -> None:
    detector = RateOfChangeDetector(lambda key: PROFILE)
    points = ramp(0, 600, 2.0, 0.0) + ramp(600, 690, 2.0, 2.0) + ramp(690, 1500, 5.0, -0.2)
    findings = feed(detector, points)
    assert [(f.action, f.severity) for f in findings] == [("open", Severity.INFO), ("close", Severity.INFO)]
    opened, closed = findings
    assert 600_000 < opened.ts_ms - T0 <= 660_000
    assert closed.ts_ms - T0 < 780_000


def test_a_sustained_rise_is_a_warning() -> None:
    detector = RateOfChangeDetector(lambda key: PROFILE)
    findings = feed(detector, ramp(0, 600, 2.0, 0.0) + ramp(600, 3000, 2.0, 0.12) + ramp(3000, 4000, 6.8, -0.1))
    assert [(f.action, f.severity) for f in findings] == [("open", Severity.WARNING), ("close", Severity.WARNING)]
    opened = findings[0]
    # Fifteen rising minute-means after the first full minute of the rise.
    assert 600 + 15 * 60 <= (opened.ts_ms - T0) / 1000 <= 600 + 17 * 60
    assert opened.started_ms == opened.ts_ms


def test_a_door_that_stays_open_escalates_from_info_to_warning() -> None:
    detector = RateOfChangeDetector(lambda key: PROFILE)
    findings = feed(detector, ramp(0, 600, 2.0, 0.0) + ramp(600, 2000, 2.0, 0.8))
    assert [(f.action, f.severity) for f in findings] == [("open", Severity.INFO), ("update", Severity.WARNING)]
    assert findings[1].started_ms == findings[0].started_ms


def test_noise_and_late_readings_do_not_open() -> None:
    detector = RateOfChangeDetector(lambda key: PROFILE)
    wobble = [(float(t), 2.0 + (0.1 if (t // 5) % 2 else -0.1)) for t in range(0, 3600, 5)]
    assert feed(detector, wobble) == []
    assert feed(detector, [(3000.0, 20.0), (3001.0, -20.0)]) == []
    assert detector.late_readings == 2


def test_snapshot_round_trip_keeps_the_open_finding() -> None:
    detector = RateOfChangeDetector(lambda key: PROFILE)
    feed(detector, ramp(0, 600, 2.0, 0.0) + ramp(600, 690, 2.0, 2.0))
    resumed = RateOfChangeDetector(lambda key: PROFILE)
    resumed.restore(detector.snapshot())
    assert [f.action for f in feed(resumed, ramp(690, 900, 5.0, 0.0))] == ["close"]


def test_humidity_series_are_not_judged() -> None:
    detector = RateOfChangeDetector(lambda key: PROFILE)
    rh = SeriesKey("gw-a", "p1", Quantity.HUMIDITY)
    assert [detector.feed(rh, Reading("p1", Quantity.HUMIDITY, T0 + t * 5000, float(t))) for t in range(50)] == [
        [] for _ in range(50)
    ]
