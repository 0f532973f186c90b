"""Command line for the simulators: ``coldchain sim probe`` (also ``python -m firmware_sims.cli probe``)."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Final

from firmware_sims.probe import ProbeBusSimulator
from firmware_sims.xymd02 import BAUD_CODES, MAX_SLAVE_ADDRESS, ProbeSpec

WAIT_SLICE_S: Final = 0.5
"""The main thread waits in slices so that a signal handler's flag is seen even if a wakeup is missed."""


def _slave_address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_SLAVE_ADDRESS:
        raise argparse.ArgumentTypeError(f"slave address must be 1..{MAX_SLAVE_ADDRESS}, got {value}")
    return value


def add_sim_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``probe`` subcommand (XY-MD02 probes on one pty) to ``subparsers``."""
    parser = subparsers.add_parser(
        "probe",
        help="serve simulated XY-MD02 temperature/humidity probes (Modbus RTU) on a pseudo-terminal",
        description="Serve XY-MD02 probes sharing one RS485 line on a pty; prints the device path, "
        "then serves until SIGINT or SIGTERM.",
    )
    parser.add_argument(
        "--address",
        type=_slave_address,
        action="append",
        help="slave address of one probe (repeat for several probes on the bus; default: 1)",
    )
    parser.add_argument("--set-point", type=float, default=4.0, help="cooling set point, °C (default: 4.0)")
    parser.add_argument("--ambient", type=float, default=25.0, help="ambient temperature, °C (default: 25.0)")
    parser.add_argument("--noise", type=float, default=0.05, help="sensor noise standard deviation, °C")
    parser.add_argument("--door-rate", type=float, default=0.0, help="random door openings per hour (default: 0)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; probe n uses seed + n")
    parser.add_argument(
        "--baud",
        type=int,
        default=9600,
        choices=sorted(BAUD_CODES),
        help="baud rate the probes report in register 0x0102 (a pty ignores line speed)",
    )
    parser.add_argument("--link", type=Path, help="also expose the device through this symlink")
    parser.set_defaults(handler=run_probe)


def run_probe(args: argparse.Namespace) -> int:
    """Serve the probes described by ``args`` until SIGINT or SIGTERM; return the exit status."""
    stop = threading.Event()

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Installed before anything else, so an early Ctrl-C cannot end in a KeyboardInterrupt traceback.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        addresses: list[int] = args.address or [1]
        specs = [
            ProbeSpec(
                address=address,
                set_point_c=args.set_point,
                ambient_c=args.ambient,
                noise_c=args.noise,
                door_rate_per_hour=args.door_rate,
                seed=args.seed + index,
                baud=args.baud,
            )
            for index, address in enumerate(addresses)
        ]
        try:
            simulator = ProbeBusSimulator(specs, link=args.link)
            simulator.start()
        except (ValueError, OSError) as exc:
            print(f"coldchain sim probe: {exc}", file=sys.stderr)
            return 2
        try:
            print(simulator.path, flush=True)
            while not stop.wait(WAIT_SLICE_S):
                pass
        finally:
            simulator.stop()
        return 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator command line on its own, without the ``coldchain`` entry point."""
    parser = argparse.ArgumentParser(prog="firmware_sims", description=__doc__)
    add_sim_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    status: int = args.handler(args)
    return status


if __name__ == "__main__":
    sys.exit(main())
