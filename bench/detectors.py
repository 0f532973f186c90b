"""Throughput of a DetectorSet with every detector over 1,000 series.

Prints readings per second. Not a test: it never passes or fails.
Run: PYTHONPATH=. .venv/bin/python bench/detectors.py [--series 1000] [--readings 300]
"""

from __future__ import annotations

import argparse
import platform
import random
import time

from coldchain.messages import Quantity, Reading
from hub.detectors import DetectorSet, SeriesKey
from hub.profiles import ProductProfile

START_MS = 1_772_323_200_000


def main() -> None:
    """Feed ``--readings`` readings to each of ``--series`` series, interleaved as batches arrive."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--series", type=int, default=1000)
    parser.add_argument("--readings", type=int, default=300, help="per series")
    args = parser.parse_args()
    profile = ProductProfile("pharma-2-8", temp_low_c=2.0, temp_high_c=8.0, mkt_limit_c=8.0)
    detectors = DetectorSet(lambda key: profile)
    rng = random.Random(1)
    keys = [SeriesKey(f"gw-{n // 4:04d}", f"probe-{n % 4}", Quantity.TEMPERATURE) for n in range(args.series)]
    readings = [
        [Reading(key.sensor_id, key.quantity, START_MS + i * 5000, round(5.0 + rng.gauss(0, 0.05), 2)) for key in keys]
        for i in range(args.readings)
    ]
    began = time.perf_counter()
    findings = 0
    for step in readings:
        for key, reading in zip(keys, step, strict=True):
            findings += len(detectors.feed(key, reading))
    elapsed = time.perf_counter() - began
    total = args.series * args.readings
    print(f"python {platform.python_version()} on {platform.machine()}")
    print(f"{total} readings over {args.series} series, 7 detectors: {total / elapsed:,.0f} readings/s")
    print(f"findings: {findings}, snapshot: {len(detectors.snapshot()) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
