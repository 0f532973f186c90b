from __future__ import annotations

from coldchain.messages import Quantity, Reading
from hub.detectors import SeriesKey, Severity, SilentSensorDetector
from hub.profiles import ProductProfile

T0 = 1_772_323_200_000
A = SeriesKey("gw-a", "p1", Quantity.TEMPERATURE)
B = SeriesKey("gw-a", "p2", Quantity.TEMPERATURE)
PROFILE = ProductProfile("chilled", temp_low_c=0.0, temp_high_c=4.0, silent_after_s=600.0)


def reading(key: SeriesKey, t_s: float, value: float = 3.0) -> Reading:
    return Reading(key.sensor_id, key.quantity, T0 + int(t_s * 1000), value)


def test_silence_opens_on_tick_once_and_closes_on_the_next_reading() -> None:
    detector = SilentSensorDetector(lambda key: PROFILE)
    detector.feed(A, reading(A, 0))
    detector.feed(B, reading(B, 0))
    detector.feed(B, reading(B, 500))
    assert detector.tick(T0 + 600_000) == []
    findings = detector.tick(T0 + 601_000)
    assert [(f.key, f.action, f.severity, f.started_ms, f.ts_ms) for f in findings] == [
        (A, "open", Severity.WARNING, T0, T0 + 601_000)
    ]
    assert detector.tick(T0 + 700_000) == []  # already open: not repeated
    # A store-and-forward gateway coming back: its first buffered reading closes the finding.
    closed = detector.feed(A, reading(A, 300))
    assert [(f.action, f.duration_s) for f in closed] == [("close", 300.0)]
    assert detector.feed(A, reading(A, 305)) == []


def test_late_reading_does_not_close_and_state_survives_a_restart() -> None:
    detector = SilentSensorDetector(lambda key: PROFILE)
    detector.feed(A, reading(A, 100))
    assert len(detector.tick(T0 + 1_000_000)) == 1
    assert detector.feed(A, reading(A, 50)) == []
    resumed = SilentSensorDetector(lambda key: PROFILE)
    resumed.restore(detector.snapshot())
    assert resumed.tick(T0 + 2_000_000) == []
    assert [f.action for f in resumed.feed(A, reading(A, 2000))] == ["close"]
