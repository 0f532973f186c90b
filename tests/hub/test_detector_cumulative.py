from __future__ import annotations

from coldchain.messages import Quantity, Reading
from hub.detectors import CumulativeDetector, Finding, SeriesKey, Severity
from hub.profiles import ProductProfile

T0 = 1_772_323_200_000
KEY = SeriesKey("gw-a", "p1", Quantity.TEMPERATURE)
PROFILE = ProductProfile(
    "chilled", temp_low_c=0.0, temp_high_c=4.0, max_cumulative_excursion_s=600.0, silent_after_s=120.0
)


def feed(detector: CumulativeDetector, points: list[tuple[float, float]]) -> list[Finding]:
    findings = []
    for t_s, value in points:
        findings += detector.feed(KEY, Reading("p1", Quantity.TEMPERATURE, T0 + int(t_s * 1000), value))
    return findings


def test_short_excursions_add_up_and_open_once_over_the_budget() -> None:
    detector = CumulativeDetector(lambda key: PROFILE)
    # Four 4-minute spikes, readings every minute: 4 x 240 s = 960 s, the budget (600 s) is passed in the third.
    points = []
    for spike in range(4):
        base = spike * 1200
        points += [(base + m * 60.0, 6.0 if 1 <= m <= 4 else 2.0) for m in range(20)]
    findings = feed(detector, points)
    assert len(findings) == 1
    (finding,) = findings
    assert (finding.action, finding.severity) == ("open", Severity.CRITICAL)
    assert finding.started_ms == T0
    assert finding.ts_ms == T0 + (2 * 1200 + 4 * 60) * 1000  # 720 s counted there: 2 x 240 + 240
    assert detector.time_out_of_range_s(KEY) == 960.0


def test_a_long_silence_counts_only_up_to_the_cap() -> None:
    detector = CumulativeDetector(lambda key: PROFILE)
    assert feed(detector, [(0, 6.0), (3600, 2.0)]) == []
    assert detector.time_out_of_range_s(KEY) == 120.0


def test_late_readings_are_ignored_and_reset_starts_a_new_journey() -> None:
    detector = CumulativeDetector(lambda key: PROFILE)
    feed(detector, [(0, 6.0), (60, 6.0), (120, 2.0)])
    assert feed(detector, [(30, 9.0), (90, 9.0)]) == []
    assert detector.time_out_of_range_s(KEY) == 120.0
    assert detector.late_readings == 2
    detector.reset(KEY)
    assert detector.time_out_of_range_s(KEY) == 0.0


def test_snapshot_round_trip() -> None:
    detector = CumulativeDetector(lambda key: PROFILE)
    feed(detector, [(0, 6.0), (60, 6.0)])
    resumed = CumulativeDetector(lambda key: PROFILE)
    resumed.restore(detector.snapshot())
    assert resumed.time_out_of_range_s(KEY) == 60.0
