"""Decoding and validating telemetry: microseconds per reading for a full wire batch.

Prints the best of ``--repeat`` runs. Not a test: it never passes or fails.
Run: PYTHONPATH=. .venv/bin/python bench/decode.py [--readings 500] [--batches 400] [--repeat 5]
"""

from __future__ import annotations

import argparse
import platform
import random
import time

from coldchain.messages import Quantity, Reading, TelemetryBatch, decode_telemetry, encode

START_MS = 1_772_323_200_000


def main() -> None:
    """Decode the same batch ``--batches`` times, ``--repeat`` rounds; print the best per reading."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--readings", type=int, default=500, help="per batch")
    parser.add_argument("--batches", type=int, default=400, help="decodes per round")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    rng = random.Random(1)
    readings = [
        Reading(
            f"probe-{i % 16:02d}",
            Quantity.TEMPERATURE if i % 2 else Quantity.HUMIDITY,
            START_MS + i * 1000,
            round(rng.uniform(2.0, 8.0), 2),
        )
        for i in range(args.readings)
    ]
    payload = encode(TelemetryBatch("gw-0001", "0" * 32, 1, 1, readings))
    best = float("inf")
    for _ in range(args.repeat):
        began = time.perf_counter()
        for _ in range(args.batches):
            decode_telemetry(payload)
        best = min(best, time.perf_counter() - began)
    per_reading_us = best / (args.batches * args.readings) * 1e6
    print(f"python {platform.python_version()} on {platform.machine()}")
    print(
        f"decode_telemetry: {per_reading_us:.3f} us per reading "
        f"({args.readings} readings per batch, {len(payload) / args.readings:.0f} bytes each, best of {args.repeat})"
    )


if __name__ == "__main__":
    main()
