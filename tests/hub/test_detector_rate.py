from __future__ import annotations

import random
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from coldchain.messages import Quantity, Reading
from hub.detectors import Finding, RateOfChangeDetector, SeriesKey, Severity
from hub.detectors.rate import QUIET_RUN_MIN
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


def cold_room_day(rng: random.Random) -> list[Reading]:
    """Readings every 4-6 s: long quiet stretches of probe noise, broken by door openings, slow rises
    (cooling failures, some shorter than the sustained time, some longer) and radio dropouts of a
    minute or more, inside a stretch or between two."""
    readings: list[Reading] = []
    ts_ms, base = T0, 2.0
    for _ in range(rng.randint(3, 12)):
        shape = rng.choice(("quiet", "door", "rise", "rise", "gap"))
        if shape == "gap":
            ts_ms += rng.randint(60_000, 200_000)
            continue
        per_min = {"quiet": 0.0, "door": rng.uniform(0.6, 3.0), "rise": rng.uniform(0.04, 0.2)}[shape]
        minutes = {"quiet": rng.uniform(2, 40), "door": rng.uniform(0.5, 2), "rise": rng.uniform(3, 25)}[shape]
        end_ms = ts_ms + int(minutes * 60_000)
        while ts_ms < end_ms:
            step_ms = rng.randint(4_000, 6_000) if rng.random() > 0.01 else rng.randint(60_000, 150_000)
            ts_ms += step_ms
            base += per_min * step_ms / 60_000
            readings.append(Reading("p1", Quantity.TEMPERATURE, ts_ms, round(base + rng.uniform(-0.05, 0.05), 2)))
        if shape == "door":
            base -= per_min * minutes  # the door closes and the room cools back
    return readings


def assert_runs_judge_as_single_readings(readings: Sequence[Reading], run_lengths: list[int]) -> list[Finding]:
    """Judge ``readings`` in runs of ``run_lengths`` (then one run of the rest) and one at a time,
    checking after every run that the findings and the state are the same; return the findings."""
    one_by_one = RateOfChangeDetector(lambda key: PROFILE)
    in_runs = RateOfChangeDetector(lambda key: PROFILE)
    findings = in_runs.feed(KEY, readings[0])
    assert findings == one_by_one.feed(KEY, readings[0])
    start, lengths = 1, iter(run_lengths)
    while start < len(readings):
        run = readings[start : start + next(lengths, len(readings))]
        state = in_runs.state_of(KEY)
        assert state is not None
        got = in_runs.judge(KEY, state, run, PROFILE)
        assert got == [finding for reading in run for finding in one_by_one.feed(KEY, reading)], start
        assert in_runs.snapshot() == one_by_one.snapshot(), start
        findings += got
        start += len(run)
    return findings


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False), st.lists(st.integers(0, 400), max_size=60))
def test_runs_judged_whole_find_and_keep_what_one_at_a_time_does(rng: random.Random, run_lengths: list[int]) -> None:
    """Quiet runs are judged whole (``_pass_quiet_run``), the rest reading by reading: whatever the runs,
    the findings and the state left behind (minute means, door window) are those of one reading at a time."""
    assert_runs_judge_as_single_readings(cold_room_day(rng), [length + QUIET_RUN_MIN for length in run_lengths])


def test_a_slow_rise_is_judged_in_quiet_runs_and_still_opens_at_the_reading_it_becomes_sustained() -> None:
    """Runs of a slow rise never reach the door bound, so each is tried whole: the minute the rise
    becomes sustained must still open the warning at that reading. A dropout breaks the chain of
    rising minutes, and the count starts again after it."""
    points = ramp(0, 600, 2.0, 0.0) + ramp(600, 1200, 2.0, 0.12) + ramp(1400, 3000, 3.6, 0.12)
    readings = [Reading("p1", Quantity.TEMPERATURE, T0 + int(t_s * 1000), value) for t_s, value in points]
    findings = assert_runs_judge_as_single_readings(readings, [QUIET_RUN_MIN + 2] * len(readings))
    assert [(f.action, f.severity) for f in findings] == [("open", Severity.WARNING)]
    assert 1400 + 15 * 60 <= (findings[0].ts_ms - T0) / 1000 <= 1400 + 17 * 60


def test_a_rise_already_sustained_under_a_shorter_profile_opens_at_the_first_reading_of_a_quiet_run() -> None:
    """The profile's sustained time drops under the rise already counted: the next reading opens the
    warning even when its run looks quiet and holds no new minute."""
    patient = ProductProfile("chilled", temp_low_c=0.0, temp_high_c=4.0, sustained_rise_s=30 * 60.0)
    points = ramp(0, 600, 2.0, 0.0) + ramp(600, 1770, 2.0, 0.12)  # the last reading at 29:25
    readings = [Reading("p1", Quantity.TEMPERATURE, T0 + int(t_s * 1000), value) for t_s, value in points]
    detector = RateOfChangeDetector(lambda key: patient)
    assert [finding for reading in readings for finding in detector.feed(KEY, reading)] == []
    state = detector.state_of(KEY)
    assert state is not None
    assert state.rising_minutes * 60 >= PROFILE.sustained_rise_s
    same_minute = [Reading("p1", Quantity.TEMPERATURE, T0 + 1_766_000 + 3_000 * n, 4.33) for n in range(10)]
    assert {reading.ts_ms // 60_000 for reading in same_minute} == {(T0 + 1_765_000) // 60_000}
    findings = detector.judge(KEY, state, same_minute, PROFILE)
    assert [(f.action, f.severity, f.ts_ms) for f in findings] == [("open", Severity.WARNING, same_minute[0].ts_ms)]
