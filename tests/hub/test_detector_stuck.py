from __future__ import annotations

from coldchain.messages import Quantity, Reading
from hub.detectors import Finding, SeriesKey, Severity, StuckSensorDetector
from hub.profiles import ProductProfile

T0 = 1_772_323_200_000
KEY = SeriesKey("gw-a", "p1", Quantity.TEMPERATURE)
PROFILE = ProductProfile("chilled", temp_low_c=0.0, temp_high_c=4.0, stuck_after_s=3600.0)


def feed(detector: StuckSensorDetector, points: list[tuple[float, float]]) -> list[Finding]:
    findings = []
    for t_s, value in points:
        findings += detector.feed(KEY, Reading("p1", Quantity.TEMPERATURE, T0 + int(t_s * 1000), value))
    return findings


def test_a_flat_line_opens_after_the_threshold_and_closes_when_it_moves() -> None:
    detector = StuckSensorDetector(lambda key: PROFILE)
    findings = feed(detector, [(m * 60.0, 3.4) for m in range(70)] + [(4200.0, 3.5)])
    assert [(f.action, f.severity, f.ts_ms - T0) for f in findings] == [
        ("open", Severity.WARNING, 3_600_000),
        ("close", Severity.WARNING, 4_200_000),
    ]
    assert findings[1].duration_s == 4200.0


def test_a_value_moving_by_the_resolution_is_alive() -> None:
    detector = StuckSensorDetector(lambda key: PROFILE)
    assert feed(detector, [(m * 60.0, 3.4 if m % 30 else 3.5) for m in range(200)]) == []
    # Within half the resolution (float noise of a conversion) is still the same value.
    assert [
        f.action for f in feed(detector, [(12_000.0 + m * 60, 3.5 + (0.01 if m % 2 else 0)) for m in range(70)])
    ] == ["open"]


def test_late_readings_and_snapshots() -> None:
    detector = StuckSensorDetector(lambda key: PROFILE)
    feed(detector, [(m * 60.0, 3.4) for m in range(30)])
    assert feed(detector, [(60.0, 9.0)]) == []
    resumed = StuckSensorDetector(lambda key: PROFILE)
    resumed.restore(detector.snapshot())
    assert [f.action for f in feed(resumed, [(m * 60.0, 3.4) for m in range(30, 61)])] == ["open"]
    assert detector.late_readings == 1
