"""Command line for the simulators: ``coldchain sim probe|rfid|gps|scenario`` (also ``python -m firmware_sims.cli``).

Each command prints its device path(s), serves until SIGINT or SIGTERM (or the end of a scenario)
and exits 0; a bad argument or file exits 2 with a one-line message.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Final

from firmware_sims.gps import GpsSimulator, Waypoint
from firmware_sims.probe import ProbeBusSimulator
from firmware_sims.scenario import ScenarioPlayer, load_scenario
from firmware_sims.uhf_reader import UhfReaderSimulator, normalize_epc
from firmware_sims.xymd02 import BAUD_CODES, MAX_SLAVE_ADDRESS, ProbeSpec

WAIT_SLICE_S: Final = 0.1
"""The main thread sleeps in slices and looks at the signal handler's flag, and at the end of a scenario.

The handler only assigns the flag. ``threading.Event.set()`` there could deadlock: handlers run in the
main thread between bytecodes, and one landing while that thread is inside ``Event.wait()`` on the same
event, holding its lock, blocks on that lock forever (a CI run hung on SIGTERM this way once)."""


def _slave_address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if not 1 <= value <= MAX_SLAVE_ADDRESS:
        raise argparse.ArgumentTypeError(f"slave address must be 1..{MAX_SLAVE_ADDRESS}, got {value}")
    return value


def _epc(text: str) -> str:
    try:
        return normalize_epc(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _waypoint(text: str) -> Waypoint:
    parts = text.split(",")
    if not 2 <= len(parts) <= 4:
        raise argparse.ArgumentTypeError(f"a route point is lat,lon[,dwell_s[,speed_kmh]], got {text!r}")
    try:
        return Waypoint(*(float(part) for part in parts))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def add_sim_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``probe``, ``rfid``, ``gps`` and ``scenario`` subcommands to ``subparsers``."""
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

    rfid = subparsers.add_parser(
        "rfid",
        help="serve a simulated UHF RFID reader (MagicRF M100 protocol) on a pseudo-terminal",
        description="Serve an M100 reader on a pty with the given tags in its field; prints the device path, "
        "then serves until SIGINT or SIGTERM.",
    )
    rfid.add_argument(
        "--tag", type=_epc, action="append", metavar="EPC_HEX", help="a tag in the field (repeat for several)"
    )
    rfid.add_argument("--seed", type=int, default=0, help="random seed for duplicate reads and faults")
    rfid.add_argument("--link", type=Path, help="also expose the device through this symlink")
    rfid.set_defaults(handler=run_rfid)

    gps = subparsers.add_parser(
        "gps",
        help="serve a simulated GPS receiver (NMEA 0183) driving a route on a pseudo-terminal",
        description="Serve a GPS on a pty that dwells at and drives between the route points; prints the "
        "device path, then serves until SIGINT or SIGTERM.",
    )
    gps.add_argument(
        "--route",
        type=_waypoint,
        action="append",
        required=True,
        metavar="LAT,LON[,DWELL_S[,SPEED_KMH]]",
        help="a point of the route, in order (repeat); the last one is where the receiver stays",
    )
    gps.add_argument("--rate", type=_positive, default=1.0, help="fixes per second (default: 1)")
    gps.add_argument("--link", type=Path, help="also expose the device through this symlink")
    gps.set_defaults(handler=run_gps)

    scenario = subparsers.add_parser(
        "scenario",
        help="play a scenario file: the probe, RFID reader and GPS of a gateway riding with the goods",
        description="Play a journey (docs/simulators.md) on three pseudo-terminals; prints one 'role path' "
        "line per device, then serves until the journey ends or SIGINT or SIGTERM.",
    )
    scenario.add_argument("file", type=Path, help="the scenario TOML file")
    scenario.add_argument(
        "--speed", type=_positive, help="simulated seconds per real second (default: the file's, else 60)"
    )
    scenario.add_argument("--link-dir", type=Path, help="also expose the devices as DIR/probe, DIR/rfid, DIR/gps")
    scenario.set_defaults(handler=run_scenario)


def run_probe(args: argparse.Namespace) -> int:
    """Serve the probes described by ``args`` until SIGINT or SIGTERM; return the exit status."""

    def start() -> _Serving:
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
        simulator = ProbeBusSimulator(specs, link=args.link)
        simulator.start()
        return _Serving([str(simulator.path)], simulator.stop)

    return _serve_until_stopped("probe", start)


def run_rfid(args: argparse.Namespace) -> int:
    """Serve a UHF reader with the ``--tag`` EPCs in its field until SIGINT or SIGTERM."""

    def start() -> _Serving:
        reader = UhfReaderSimulator(link=args.link, seed=args.seed)
        reader.place_tags(args.tag or [])
        reader.start()
        return _Serving([str(reader.path)], reader.stop)

    return _serve_until_stopped("rfid", start)


def run_gps(args: argparse.Namespace) -> int:
    """Serve a GPS driving the ``--route`` points until SIGINT or SIGTERM."""

    def start() -> _Serving:
        gps = GpsSimulator(args.route, link=args.link, rate_hz=args.rate)
        gps.start()
        return _Serving([str(gps.path)], gps.stop)

    return _serve_until_stopped("gps", start)


def run_scenario(args: argparse.Namespace) -> int:
    """Play a scenario file until its journey ends, or SIGINT or SIGTERM; print one ``role path`` line a device."""

    def start() -> _Serving:
        player = ScenarioPlayer(load_scenario(args.file), speed=args.speed, link_dir=args.link_dir)
        player.start()
        return _Serving([f"{role} {path}" for role, path in player.paths.items()], player.stop, lambda: player.done)

    return _serve_until_stopped("scenario", start)


@dataclass
class _Serving:
    """A started simulator as the serving loop sees it: what to print, how to stop, whether it has finished."""

    lines: list[str]
    stop: Callable[[], None]
    finished: Callable[[], bool] = lambda: False


def _serve_until_stopped(command: str, start: Callable[[], _Serving]) -> int:
    """Start, print the device lines, serve until a signal or the end; 0 then, 2 when it cannot start."""
    requested: list[int] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        requested.append(signum)  # no lock here (see WAIT_SLICE_S)

    # Installed before anything else, so an early Ctrl-C cannot end in a KeyboardInterrupt traceback.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            serving = start()
        except (ValueError, OSError) as exc:
            print(f"coldchain sim {command}: {exc}", file=sys.stderr)
            return 2
        try:
            print("\n".join(serving.lines), flush=True)
            while not requested and not serving.finished():
                time.sleep(WAIT_SLICE_S)
        finally:
            serving.stop()
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
