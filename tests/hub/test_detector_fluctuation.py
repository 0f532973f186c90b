from __future__ import annotations

import random
import statistics
from collections import deque

from hypothesis import given
from hypothesis import strategies as st

from coldchain.messages import Quantity, Reading
from hub.detectors import Finding, FluctuationDetector, SeriesKey, Severity
from hub.detectors.fluctuation import MAD_TO_SIGMA, _median_and_scale
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


def held_and_quantised(seconds: int, reads_per_s: int, sigma: float, seed: int = 6) -> list[tuple[int, float]]:
    """A probe that measures once a second (noise ``sigma``, 0.1 resolution), read ``reads_per_s`` times a second."""
    rng = random.Random(seed)
    readings = []
    for second in range(seconds):
        value = round(85.0 + rng.gauss(0, sigma), 1)
        readings += [(T0 + second * 1000 + i * 1000 // reads_per_s, value) for i in range(reads_per_s)]
    return readings


def test_reading_faster_than_the_probe_measures_is_not_a_fluctuation() -> None:
    """At 10 Hz, nine steps in ten are repeats: judged reading by reading, their MAD collapsed to zero
    and the probe's ordinary noise opened a warning every few seconds."""
    key = SeriesKey("gw-a", "p1", Quantity.HUMIDITY)
    detector = FluctuationDetector(lambda key: PROFILE)
    findings = []
    for ts_ms, value in held_and_quantised(3600, 10, sigma=0.2):
        findings += detector.feed(key, Reading("p1", Quantity.HUMIDITY, ts_ms, value))
    assert findings == []


def test_spikes_shorter_than_a_step_still_open_when_read_at_10_hz() -> None:
    """Steps are judged 4 s apart; a spike of one second inside a step counts as that step's swing."""
    key = SeriesKey("gw-a", "p1", Quantity.HUMIDITY)
    detector = FluctuationDetector(lambda key: PROFILE)
    readings = held_and_quantised(900, 10, sigma=0.2)
    for second in (601, 621, 641):  # a loose connector: three 5 %RH spikes, each held for a second
        for i in range(10):
            ts_ms, value = readings[second * 10 + i]
            readings[second * 10 + i] = (ts_ms, value + 5.0)
    findings = []
    for ts_ms, value in readings:
        findings += detector.feed(key, Reading("p1", Quantity.HUMIDITY, ts_ms, value))
    assert [(f.action, f.severity) for f in findings] == [("open", Severity.WARNING), ("close", Severity.WARNING)]
    # One outlier per spike (the step back is judged from the reading after it): the third opens.
    assert T0 + 642_000 <= findings[0].ts_ms <= T0 + 645_000


@given(st.lists(st.floats(-50, 50), min_size=1, max_size=80), st.floats(0.0, 1.0))
def test_median_and_scale_agree_with_the_statistics_module(diffs: list[float], floor: float) -> None:
    median, scale = _median_and_scale(deque(diffs), floor)
    assert median == statistics.median(diffs)
    mad = statistics.median([abs(d - median) for d in diffs])
    assert scale == max(MAD_TO_SIGMA * mad, floor)
