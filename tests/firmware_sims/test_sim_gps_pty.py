"""The GPS simulator served on a pseudo-terminal: epochs, faults, and the cable pulled and put back.

A raw client reads the pty and checks each sentence by hand, independently of the agent's decoder.
"""

from __future__ import annotations

import itertools
import os
import select
import time
import tty
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from firmware_sims.gps import GpsSimulator, Waypoint, format_gga, position_at

START_UTC = datetime(2026, 3, 1, 5, 0, 0, tzinfo=UTC)
ROUTE = [Waypoint(11.9404, 108.4583, dwell_s=0.3, speed_kmh=300.0), Waypoint(11.90, 108.50)]


@dataclass
class Client:
    """A raw reader of the pty, splitting the stream into sentences (bad checksums kept apart)."""

    fd: int
    buffer: bytes = b""

    def read_for(self, seconds: float) -> tuple[list[list[str]], int]:
        """(good sentences as field lists, number of sentences whose checksum failed) read in ``seconds``."""
        deadline = time.monotonic() + seconds
        while (remaining := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.fd], [], [], remaining)
            if readable:
                self.buffer += os.read(self.fd, 4096)
        *lines, self.buffer = self.buffer.split(b"\r\n")
        good, bad = [], 0
        for line in lines:
            try:
                payload, received = line.decode("ascii").removeprefix("$").split("*")
                computed = 0
                for char in payload:
                    computed ^= ord(char)
                assert line.startswith(b"$")
                assert f"{computed:02X}" == received
            except (AssertionError, ValueError):
                bad += 1
                continue
            good.append(payload.split(","))
        return good, bad


def open_client(path: Path) -> Client:
    fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
    tty.setraw(fd)
    return Client(fd)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[GpsSimulator]:
    with GpsSimulator(ROUTE, link=tmp_path / "ttyGPS", rate_hz=20.0, start_utc=START_UTC) as simulator:
        yield simulator


@pytest.fixture
def client(sim: GpsSimulator) -> Iterator[Client]:
    client = open_client(sim.path)
    client.read_for(0.1)  # let the first, possibly partial, burst go
    yield client
    os.close(client.fd)


def hung_up(fd: int) -> bool:
    """Whether the other end of the pty is gone: readable, yet end of file (or EIO, by kernel version)."""
    readable, _, _ = select.select([fd], [], [], 1.0)
    try:
        return bool(readable) and os.read(fd, 4096) == b""
    except OSError:
        return True


def since_start(time_field: str) -> float:
    """Seconds from START_UTC (05:00:00) to an NMEA hhmmss.ss time of the same day."""
    return int(time_field[0:2]) * 3600 + int(time_field[2:4]) * 60 + float(time_field[4:]) - 5 * 3600


def rmc_times(sentences: list[list[str]]) -> list[str]:
    return [s[1] for s in sentences if s[0] == "GNRMC"]


def test_each_epoch_sends_rmc_gga_gsa_along_the_route(sim: GpsSimulator, client: Client) -> None:
    good, bad = client.read_for(0.6)
    assert bad == 0
    assert 9 * 3 <= len(good) <= 14 * 3
    kinds = [s[0] for s in good]
    first = kinds.index("GNRMC")
    assert kinds[first : first + 6] == ["GNRMC", "GNGGA", "GNGSA"] * 2
    times = rmc_times(good)
    steps = {round(since_start(b) - since_start(a), 2) for a, b in itertools.pairwise(times)}
    assert steps == {0.05}
    for sentence in good:
        if sentence[0] == "GNGGA":
            utc = datetime.strptime(f"010326{sentence[1]}", "%d%m%y%H%M%S.%f").replace(tzinfo=UTC)
            lat, lon, _, _ = position_at(ROUTE, (utc - START_UTC).total_seconds())
            assert format_gga(utc, lat, lon)[:-2].decode().removeprefix("$").split("*")[0].split(",") == sentence
    assert sim.sentences_sent >= len(good)
    assert sim.path.is_symlink()


def test_silent_sends_nothing_and_no_fix_sends_void_sentences(sim: GpsSimulator, client: Client) -> None:
    sim.faults.silent = True
    client.read_for(0.1)
    assert client.read_for(0.3) == ([], 0)
    sim.faults.silent = False
    sim.no_fix = True
    client.read_for(0.1)
    good, _ = client.read_for(0.3)
    rmc = [s for s in good if s[0] == "GNRMC"]
    assert rmc
    assert all(s[2] == "V" and s[3:7] == ["", "", "", ""] for s in rmc)
    assert all(s[6] == "0" for s in good if s[0] == "GNGGA")


def test_stuck_freezes_the_position_while_time_goes_on(sim: GpsSimulator, client: Client) -> None:
    time.sleep(0.4)  # under way
    sim.faults.stuck = True
    client.read_for(0.1)
    good, _ = client.read_for(0.4)
    gga = [s for s in good if s[0] == "GNGGA"]
    assert len({tuple(s[2:6]) for s in gga}) == 1
    assert len({s[1] for s in gga}) == len(gga)
    sim.faults.stuck = False
    client.read_for(0.1)
    good, _ = client.read_for(0.2)
    assert len({tuple(s[2:6]) for s in good if s[0] == "GNGGA"}) > 1


def test_clock_offset_shifts_the_reported_time(sim: GpsSimulator, client: Client) -> None:
    before, _ = client.read_for(0.2)
    sim.faults.clock_offset_s = 3600.0
    client.read_for(0.1)
    after, _ = client.read_for(0.2)
    jump = since_start(rmc_times(after)[0]) - since_start(rmc_times(before)[-1])
    assert 3600 < jump < 3601


def test_corruption_breaks_checksums_and_nothing_else(sim: GpsSimulator, client: Client) -> None:
    sim.faults.corrupt_probability = 1.0
    client.read_for(0.1)
    good, bad = client.read_for(0.3)
    # Every sentence has one bit flipped; a flip in "$", "*" or the line end merges or splits lines,
    # but none can pass the checksum.
    assert good == []
    assert bad > 5


def test_unplug_removes_the_link_and_replug_brings_a_new_pty(sim: GpsSimulator, client: Client) -> None:
    link = sim.path
    before, _ = client.read_for(0.1)
    sim.unplug()
    unplugged_at = time.monotonic()
    assert not os.path.lexists(link)
    with pytest.raises(RuntimeError, match="unplugged"):
        _ = sim.path
    assert hung_up(client.fd)
    with pytest.raises(RuntimeError, match="not plugged in"):
        sim.unplug()
    time.sleep(0.3 - (time.monotonic() - unplugged_at))
    sim.replug()
    assert sim.path == link
    assert os.path.lexists(link)
    replugged = open_client(link)
    try:
        replugged.read_for(0.1)
        good, _ = replugged.read_for(0.3)
    finally:
        os.close(replugged.fd)
    assert good
    # The route clock ran on while unplugged, and the epochs missed meanwhile are not sent late.
    assert since_start(rmc_times(good)[0]) - since_start(rmc_times(before)[-1]) >= 0.3


def test_simulator_lifecycle_and_settings() -> None:
    with pytest.raises(ValueError, match="at least one waypoint"):
        GpsSimulator([])
    with pytest.raises(ValueError, match="rate_hz"):
        GpsSimulator(ROUTE, rate_hz=0)
    sim = GpsSimulator(ROUTE, wall_clock=START_UTC.timestamp)
    with pytest.raises(RuntimeError, match="not started"):
        _ = sim.start_utc
    with pytest.raises(RuntimeError, match="only a started"):
        sim.replug()
    sim.start()
    try:
        assert sim.start_utc == START_UTC
        with pytest.raises(RuntimeError, match="already started"):
            sim.start()
    finally:
        sim.stop()
    sim.stop()


def test_epochs_follow_the_injected_monotonic_clock() -> None:
    now = [100.0]
    sim = GpsSimulator(ROUTE, rate_hz=1.0, start_utc=START_UTC, monotonic=lambda: now[0])
    with sim:
        client = open_client(sim.path)
        try:
            # Epoch 0 went out at start, around when the client opened; the clock has not moved since.
            assert len(rmc_times(client.read_for(0.2)[0])) <= 1
            assert client.read_for(0.2) == ([], 0)
            now[0] += 1.0
            first, _ = client.read_for(0.2)
            assert rmc_times(first) == ["050001.00"]
            now[0] += 2.5  # the clock jumps: epoch 2 is skipped, epoch 3 is sent, once
            second, _ = client.read_for(0.3)
            assert rmc_times(second) == ["050003.00"]
            assert client.read_for(0.2) == ([], 0)
        finally:
            os.close(client.fd)


def test_nobody_reading_never_blocks_the_simulator() -> None:
    start = START_UTC - timedelta(hours=1)
    with GpsSimulator(ROUTE, rate_hz=1000.0, start_utc=start) as sim:
        time.sleep(1.0)
        assert sim.bytes_dropped > 0  # the pty filled up and the rest was dropped, as a UART would
        sent = sim.sentences_sent
        time.sleep(0.05)
    assert sim.sentences_sent == sent  # still full: still dropping, never stuck in a write
