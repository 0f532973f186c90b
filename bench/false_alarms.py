"""False alarms of every detector over a simulated normal week in a chilled cold room.

A ThermalModel cold room at 2 °C (ambient 25 °C, probe noise 0.05 °C, strip curtains: door air
exchange time constant 600 s as in scenarios/normal-day.toml) with ordinary door openings, 4 an
hour on average (Poisson arrivals) of 30-90 s each, sampled every 5 s for 7 days and judged with
the chilled-produce profile (0..4 °C). Prints the findings opened per detector, then the same
week with one 40-minute cooling failure, which must be detected. Not a test: it prints figures.
``--sample-ms 100 --measure-ms 1000 --resolution 0.1`` reads the room at 10 Hz from a probe that
measures once a second to 0.1 (as the probe simulator does; use ``--days 1``, it is 17 M readings a week).
Run: PYTHONPATH=. .venv/bin/python bench/false_alarms.py [--days 7] [--seed 1] [--sample-ms 5000]
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from coldchain.messages import Quantity, Reading
from firmware_sims.thermal import ThermalModel
from hub.detectors import DetectorSet, Finding, FindingKind, SeriesKey, Severity
from hub.profiles import load_profiles

START_MS = 1_772_323_200_000  # 2026-03-01T00:00:00Z
TICK_MS = 60_000
DOOR_TIME_CONSTANT_S = 1800.0
"""Air exchange through the open door as the probe sees it: mid-room, behind strip curtains."""


def door_schedule(days: float, per_hour: float, seed: int) -> list[tuple[float, float]]:
    """Poisson door openings of 30-90 s (uniform), the next one only after the door is shut."""
    rng = random.Random(seed)
    doors, t = [], 0.0
    while True:
        t += rng.expovariate(per_hour / 3600.0)
        if t >= days * 86_400:
            return doors
        duration = rng.uniform(30.0, 90.0)
        doors.append((t, duration))
        t += duration


class Sampling(NamedTuple):
    """How the room is read: every ``sample_ms``, from a probe measuring every ``measure_ms`` to ``resolution``."""

    sample_ms: int
    measure_ms: int
    resolution: float


def run(
    days: float, seed: int, failures: list[tuple[float, float]], door_tau_s: float, sampling: Sampling
) -> list[Finding]:
    """Feed the simulated room through every detector; return every finding."""
    profile = load_profiles(Path(__file__).resolve().parents[1] / "config" / "profiles.toml")["chilled-produce"]
    model = ThermalModel(
        set_point_c=2.0,
        ambient_c=25.0,
        door_time_constant_s=door_tau_s,
        noise_c=0.05,
        humidity_set_point=88.0,
        seed=seed,
        door_openings=door_schedule(days, 4.0, seed),
        cooling_failures=failures,
    )
    detectors = DetectorSet(lambda key: profile)
    temp_key = SeriesKey("gw-cold-room", "probe-1", Quantity.TEMPERATURE)
    rh_key = SeriesKey("gw-cold-room", "probe-1", Quantity.HUMIDITY)
    findings: list[Finding] = []
    measured_at, temp, rh = -1, 0.0, 0.0
    for step in range(int(days * 86_400_000 / sampling.sample_ms)):
        t_ms = step * sampling.sample_ms
        ts_ms = START_MS + t_ms
        if (measurement := t_ms // sampling.measure_ms) != measured_at:
            measured_at = measurement
            temp, rh = (
                round(value / sampling.resolution) * sampling.resolution
                for value in model.sample(measurement * sampling.measure_ms / 1000)
            )
        findings += detectors.feed(temp_key, Reading("probe-1", Quantity.TEMPERATURE, ts_ms, temp))
        findings += detectors.feed(rh_key, Reading("probe-1", Quantity.HUMIDITY, ts_ms, rh))
        if t_ms % TICK_MS == 0:
            findings += detectors.tick(ts_ms + 2_000)  # the hub's clock, a batch's latency behind
    return findings


def table(findings: list[Finding], days: float) -> str:
    """Opened findings per detector and severity, scaled to one week."""
    opened = Counter((f.kind, f.severity) for f in findings if f.action == "open")
    updated = Counter((f.kind, f.severity) for f in findings if f.action == "update")
    lines = ["| detector | opened per week (by severity) | escalations per week |", "| --- | --- | --- |"]
    scale = 7.0 / days
    for kind in FindingKind:
        by_severity = ", ".join(
            f"{count * scale:g} {severity.value}" for (k, severity), count in sorted(opened.items()) if k is kind
        )
        escalations = sum(count for (k, _), count in updated.items() if k is kind) * scale
        lines.append(f"| {kind.value} | {by_severity or '0'} | {escalations:g} |")
    return "\n".join(lines)


def main() -> None:
    """Print the false-alarm table of a normal week, then the detection of a 40-minute cooling failure."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--door-time-constant", type=float, default=DOOR_TIME_CONSTANT_S, help="seconds")
    parser.add_argument("--sample-ms", type=int, default=5000, help="how often the probe is read")
    parser.add_argument("--measure-ms", type=int, default=0, help="how often it measures (default: at every read)")
    parser.add_argument("--resolution", type=float, default=0.01, help="of the values read")
    args = parser.parse_args()
    sampling = Sampling(args.sample_ms, args.measure_ms or args.sample_ms, args.resolution)
    began = time.perf_counter()
    normal = run(args.days, args.seed, [], args.door_time_constant, sampling)
    elapsed = time.perf_counter() - began
    print(f"normal operation, {args.days:g} days, seed {args.seed}, door time constant {args.door_time_constant:g} s")
    print(f"read every {sampling.sample_ms} ms, measured every {sampling.measure_ms} ms to {sampling.resolution:g}")
    print(f"({elapsed:.1f} s to simulate and judge)")
    print(table(normal, args.days))
    failure_at = args.days * 86_400 / 2
    failed = run(args.days, args.seed, [(failure_at, 2400.0)], args.door_time_constant, sampling)
    print(f"\nsame room with one 40-minute cooling failure at {failure_at / 3600:g} h:")
    for finding in failed:
        minutes = (finding.ts_ms - START_MS - failure_at * 1000) / 60_000
        if -60 <= minutes <= 180 and finding.severity is not Severity.INFO:
            print(f"  {minutes:+6.1f} min  {finding.kind.value} {finding.action} {finding.severity.value}:")
            print(f"                {finding.message}")


if __name__ == "__main__":
    main()
