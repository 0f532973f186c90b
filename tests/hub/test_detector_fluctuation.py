from __future__ import annotations

import random

from coldchain.messages import Quantity, Reading
from hub.detectors import Finding, FluctuationDetector, SeriesKey, Severity
from hub.profiles import ProductProfile

T0 = 1_772_323_200_000
KEY = SeriesKey("gw-a", "p1", Quantity.TEMPERATURE)
PROFILE = ProductProfile("chilled", temp_low_c=0.0, temp_high_c=4.0)


def feed(detector: FluctuationDetector, values: list[float], start: int = 0) -> list[Finding]:
    findings = []
    for i, value in enumerate(values, start):
        findings += detector.feed(KEY, Reading("p1", Quantity.TEMPERATURE, T0 + i * 5000, value))
    return findings


def noise(n: int, seed: int = 3) -> list[float]:
    rng = random.Random(seed)
    return [2.0 + rng.gauss(0, 0.05) for _ in range(n)]


def test_gaussian_noise_and_a_single_glitch_do_not_open() -> None:
    detector = FluctuationDetector(lambda key: PROFILE)
    values = noise(5000)
    values[3000] = 6.0  # one glitch: two large steps (up and back), below the three needed
    assert feed(detector, values) == []


def test_repeated_jumps_open_and_calm_closes() -> None:
    detector = FluctuationDetector(lambda key: PROFILE)
    values = noise(300)
    for i in (200, 210, 220):
        values[i] += 3.0  # a loose connector: three spikes within a minute
    findings = feed(detector, values)
    assert [(f.action, f.severity) for f in findings] == [("open", Severity.WARNING), ("close", Severity.WARNING)]
    assert findings[0].ts_ms == T0 + 210 * 5000  # the third large step (210 up; 200 up and down are two)
    assert findings[1].ts_ms == T0 + (221 + 60) * 5000  # the last large step has left the window


def test_a_smooth_ramp_is_not_a_fluctuation_and_late_readings_are_ignored() -> None:
    detector = FluctuationDetector(lambda key: PROFILE)
    values = noise(200) + [2.0 + 0.2 * i + v - 2.0 for i, v in enumerate(noise(100, seed=4))]
    assert feed(detector, values) == []
    assert feed(detector, [50.0, -20.0, 50.0], start=10) == []
    assert detector.late_readings == 3


def test_snapshot_round_trip() -> None:
    detector = FluctuationDetector(lambda key: PROFILE)
    feed(detector, noise(100))
    resumed = FluctuationDetector(lambda key: PROFILE)
    resumed.restore(detector.snapshot())
    assert resumed.snapshot() == detector.snapshot()
    spikes = noise(30, seed=5)
    for i in (5, 15, 25):
        spikes[i] += 3.0
    assert feed(resumed, spikes, start=100) == feed(detector, spikes, start=100)
