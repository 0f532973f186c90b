from __future__ import annotations

import math

import pytest

from coldchain.messages import Quantity, Reading
from hub.detectors import Finding, MktDetector, SeriesKey, Severity
from hub.profiles import ProductProfile

# The window slides in 5-minute steps from midnight; starting at 00:04 puts a day of intervals
# (each ending at a reading) exactly into the 288 steps of one window.
T0 = 1_772_323_200_000 - 1_772_323_200_000 % 86_400_000 + 240_000
KEY = SeriesKey("gw-a", "p1", Quantity.TEMPERATURE)
PROFILE = ProductProfile(
    "pharma", temp_low_c=2.0, temp_high_c=8.0, mkt_limit_c=8.0, mkt_window_s=86_400.0, silent_after_s=7200.0
)


def feed(detector: MktDetector, points: list[tuple[float, float]]) -> list[Finding]:
    findings = []
    for t_s, value in points:
        findings += detector.feed(KEY, Reading("p1", Quantity.TEMPERATURE, T0 + int(t_s * 1000), value))
    return findings


def usp_mkt(weighted: list[tuple[float, float]]) -> float:
    """MKT by the USP formula, written out: (dH/R) / -ln(sum(w exp(-dH/RT)) / sum(w)), in °C."""
    total = sum(w for w, _ in weighted)
    mean = sum(w * math.exp(-10_000 / (t + 273.15)) for w, t in weighted) / total
    return 10_000 / -math.log(mean) - 273.15


def test_constant_temperature_has_that_mkt() -> None:
    detector = MktDetector(lambda key: PROFILE)
    feed(detector, [(m * 60.0, 5.0) for m in range(24 * 60)])
    assert detector.mkt_c(KEY) == pytest.approx(5.0, abs=1e-9)


def test_half_the_time_at_2_and_half_at_12() -> None:
    detector = MktDetector(lambda key: PROFILE)
    # Readings every minute; each value holds until the next reading: 720 minutes at 2 °C, 720 at 12 °C.
    findings = feed(detector, [(m * 60.0, 2.0 if m < 720 else 12.0) for m in range(1441)])
    expected = usp_mkt([(720 * 60, 2.0), (720 * 60, 12.0)])
    # 8.41 °C, well above the arithmetic mean of 7 °C: warm time weighs more. Over the 8 °C limit.
    assert expected == pytest.approx(8.414, abs=0.001)
    assert detector.mkt_c(KEY) == pytest.approx(expected, abs=1e-9)
    # It opened on the reading that took the MKT over the limit, before the day was complete.
    assert [f.action for f in findings] == ["open"]
    assert 8.0 < findings[0].value < expected


def test_time_weighting_follows_the_intervals_not_the_reading_count() -> None:
    detector = MktDetector(lambda key: PROFILE)
    # 12 h at 2 °C sampled every 10 min, then 12 h at 12 °C sampled every 10 s: equal time, unequal counts.
    points = [(m * 600.0, 2.0) for m in range(72)] + [(43_200.0 + s * 10.0, 12.0) for s in range(4321)]
    feed(detector, points)
    assert detector.mkt_c(KEY) == pytest.approx(usp_mkt([(43_200, 2.0), (43_200, 12.0)]), abs=1e-9)


def test_opens_over_the_limit_and_closes_back_under() -> None:
    detector = MktDetector(lambda key: PROFILE)
    hours = [(h * 3600.0, 5.0) for h in range(24)] + [(h * 3600.0, 14.0) for h in range(24, 36)]
    hours += [(h * 3600.0, 3.0) for h in range(36, 80)]
    findings = feed(detector, hours)
    assert [(f.action, f.severity) for f in findings] == [("open", Severity.WARNING), ("close", Severity.WARNING)]
    opened, closed = findings
    assert opened.value > 8.0
    assert closed.value >= opened.value
    assert closed.duration_s == (closed.ts_ms - opened.ts_ms) / 1000


def test_not_judged_before_a_quarter_of_the_window_and_late_readings_ignored() -> None:
    detector = MktDetector(lambda key: PROFILE)
    assert feed(detector, [(m * 60.0, 30.0) for m in range(300)]) == []
    assert feed(detector, [(60.0, -50.0)]) == []
    assert detector.late_readings == 1
    resumed = MktDetector(lambda key: PROFILE)
    resumed.restore(detector.snapshot())
    assert resumed.mkt_c(KEY) == detector.mkt_c(KEY)
    assert [f.action for f in feed(resumed, [(m * 60.0, 30.0) for m in range(300, 400)])] == ["open"]
