"""Throughput of a DetectorSet with every detector over 1,000 series, and of each detector alone.

Prints readings per second, the best and the median of ``--repeat`` runs (the machine is shared:
the best is the least disturbed). Not a test: it never passes or fails.
``--run N`` feeds each series N readings at a time through ``feed_series``, as the hub feeds a batch
(N = 1 feeds reading by reading through ``feed``).
Run: PYTHONPATH=. .venv/bin/python bench/detectors.py [--series 1000] [--readings 300] [--run 1] [--repeat 5] [--each]
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import time
from collections.abc import Callable

from coldchain.messages import Quantity, Reading
from hub.detectors import DetectorSet, SeriesKey, default_detectors
from hub.profiles import ProductProfile

START_MS = 1_772_323_200_000


def main() -> None:
    """Feed ``--readings`` readings to each of ``--series`` series, interleaved as batches arrive."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--readings", type=int, default=300, help="per series")
    parser.add_argument("--run", type=int, default=1, help="readings of a series fed at once (divides --readings)")
    parser.add_argument("--repeat", type=int, default=5, help="runs of each measurement")
    parser.add_argument("--each", action="store_true", help="also time each detector alone")
    args = parser.parse_args()
    profile = ProductProfile("pharma-2-8", temp_low_c=2.0, temp_high_c=8.0, mkt_limit_c=8.0)
    rng = random.Random(1)
    keys = [SeriesKey(f"gw-{n // 4:04d}", f"probe-{n % 4}", Quantity.TEMPERATURE) for n in range(args.series)]
    readings = [
        [Reading(key.sensor_id, key.quantity, START_MS + i * 5000, round(5.0 + rng.gauss(0, 0.05), 2)) for key in keys]
        for i in range(args.readings)
    ]
    total = args.series * args.readings
    if args.readings % args.run:
        parser.error("--run must divide --readings")
    runs = [
        [[readings[i + j][n] for j in range(args.run)] for n in range(args.series)]
        for i in range(0, args.readings, args.run)
    ]

    def run(make: Callable[[], DetectorSet]) -> tuple[float, float, int]:
        rates, findings = [], 0
        for _ in range(args.repeat):
            detectors = make()
            began = time.perf_counter()
            findings = 0
            if args.run == 1:
                for step in readings:
                    for key, reading in zip(keys, step, strict=True):
                        findings += len(detectors.feed(key, reading))
            else:
                for step_runs in runs:
                    for key, run_of_series in zip(keys, step_runs, strict=True):
                        findings += len(detectors.feed_series(key, run_of_series))
            rates.append(total / (time.perf_counter() - began))
        return max(rates), statistics.median(rates), findings

    print(
        f"python {platform.python_version()} on {platform.machine()}, {total} readings over {args.series} series, "
        f"{args.run} at a time"
    )
    best, median, findings = run(lambda: DetectorSet(lambda key: profile))
    print(
        f"all 7 detectors: best {best:,.0f} readings/s, median {median:,.0f} ({args.repeat} runs), findings {findings}"
    )
    if args.each:
        empty_best, _, _ = run(lambda: DetectorSet(lambda key: profile, []))
        print(f"  no detector (the set's own work): best {empty_best:,.0f} readings/s, {1e6 / empty_best:.2f} us each")
        for index, detector in enumerate(default_detectors(lambda key: profile)):

            def only(index: int = index) -> DetectorSet:
                return DetectorSet(lambda key: profile, [default_detectors(lambda key: profile)[index]])

            one_best, _, _ = run(only)
            cost_us = 1e6 / one_best - 1e6 / empty_best
            print(f"  {detector.kind.value}: +{cost_us:.2f} us per reading")


if __name__ == "__main__":
    main()
