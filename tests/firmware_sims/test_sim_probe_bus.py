"""End to end over a real pseudo-terminal: the bus simulator, the pty endpoint and the CLI."""

from __future__ import annotations

import os
import select
import signal
import struct
import subprocess
import sys
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from firmware_sims.modbus_rtu import crc16, encode_read_request, encode_write_single_request
from firmware_sims.probe import ProbeBusSimulator
from firmware_sims.pty_device import open_pty
from firmware_sims.xymd02 import ProbeSpec

REPO = Path(__file__).resolve().parents[2]


def _read_exactly(fd: int, size: int, timeout_s: float = 2.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout_s
    while len(data) < size:
        remaining = deadline - time.monotonic()
        readable, _, _ = select.select([fd], [], [], max(0.0, remaining))
        if not readable:
            break
        data += os.read(fd, size - len(data))
    return data


def _temperature_humidity(frame: bytes, address: int) -> tuple[float, float]:
    assert len(frame) == 9, frame.hex(" ")
    assert frame[:3] == bytes((address, 0x04, 4))
    assert frame[-2:] == crc16(frame[:-2]).to_bytes(2, "little")
    temp_raw, rh_raw = struct.unpack(">hH", frame[3:7])
    return temp_raw / 10, rh_raw / 10


@pytest.fixture
def bus(tmp_path: Path) -> Iterator[ProbeBusSimulator]:
    # 0x0A and 0x0D as addresses: a pty left in cooked mode would mangle these bytes.
    probes = [ProbeSpec(address=0x0A, set_point_c=-18.0), ProbeSpec(address=0x0D, set_point_c=4.0, seed=1)]
    with ProbeBusSimulator(probes, link=tmp_path / "ttyPROBE") as simulator:
        yield simulator


def test_pyserial_client_reads_two_probes_on_one_bus(bus: ProbeBusSimulator, tmp_path: Path) -> None:
    assert bus.path == tmp_path / "ttyPROBE"
    assert bus.path.is_symlink()
    with serial.Serial(str(bus.path), 9600, timeout=2.0) as port:
        port.write(encode_read_request(0x0A, 0x04, 0x0001, 2))
        freezer = _temperature_humidity(port.read(9), 0x0A)
        port.write(encode_read_request(0x0D, 0x04, 0x0001, 2))
        chiller = _temperature_humidity(port.read(9), 0x0D)
    assert freezer[0] == pytest.approx(-18.0, abs=0.5)
    assert chiller[0] == pytest.approx(4.0, abs=0.5)
    assert 0.0 <= freezer[1] <= 100.0
    assert bus.requests_served == 2


def test_raw_os_client_write_echo_and_silence(bus: ProbeBusSimulator) -> None:
    fd = os.open(bus.path, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        # Garbage first: the device must resync and still answer the frame behind it.
        request = encode_write_single_request(0x0D, 0x0103, 0x000D)
        os.write(fd, b"\x0d\x0a\x00" + request)
        assert _read_exactly(fd, 8) == request
        os.write(fd, encode_read_request(0x21, 0x04, 0x0001, 2))
        assert _read_exactly(fd, 1, timeout_s=0.3) == b""
    finally:
        os.close(fd)
    assert bus.decoder.counters["garbage_bytes"] == 3
    assert bus.requests_served == 1


def test_serves_clients_that_come_and_go(bus: ProbeBusSimulator) -> None:
    for _ in range(3):
        with serial.Serial(str(bus.path), 9600, timeout=2.0) as port:
            port.write(encode_read_request(0x0A, 0x03, 0x0101, 1))
            frame = port.read(7)
        assert frame[:5] == bytes.fromhex("0A 03 02 00 0A")
    assert bus.requests_served == 3


def test_injected_clock_drives_the_measurements(tmp_path: Path) -> None:
    now = [1000.0]
    with (
        ProbeBusSimulator([ProbeSpec(noise_c=1.0)], monotonic=lambda: now[0]) as simulator,
        serial.Serial(str(simulator.path), 9600, timeout=2.0) as port,
    ):
        readings = []
        for advance in (0.0, 0.5, 1.0):
            now[0] += advance
            port.write(encode_read_request(1, 0x04, 0x0001, 1))
            readings.append(port.read(7))
    # Same measurement period (device time 0.0 and 0.5), then a fresh noisy measurement at 1.5.
    assert readings[0] == readings[1]
    assert readings[2] != readings[0]


def test_stop_is_prompt_and_cleans_up(tmp_path: Path) -> None:
    link = tmp_path / "ttyPROBE"
    simulator = ProbeBusSimulator([ProbeSpec()], link=link)
    simulator.start()
    assert link.is_symlink()
    began = time.monotonic()
    simulator.stop()
    assert time.monotonic() - began < 0.3
    assert not os.path.lexists(link)
    with pytest.raises(RuntimeError):
        _ = simulator.path
    simulator.stop()


def test_duplicate_addresses_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        ProbeBusSimulator([ProbeSpec(address=3), ProbeSpec(address=3)])


def test_pty_is_raw_and_replaces_a_stale_link(tmp_path: Path) -> None:
    link = tmp_path / "ttyX"
    link.symlink_to("/dev/null-left-by-a-crash")
    endpoint = open_pty(link)
    try:
        assert os.readlink(link).startswith("/dev/pts/")
        fd = os.open(endpoint.path, os.O_RDWR | os.O_NOCTTY)
        try:
            payload = bytes(range(256))
            os.write(fd, payload)
            assert _read_exactly(endpoint.master_fd, len(payload)) == payload
            os.write(endpoint.master_fd, payload)
            assert _read_exactly(fd, len(payload)) == payload
        finally:
            os.close(fd)
    finally:
        endpoint.close()
    assert not os.path.lexists(link)


def test_pty_refuses_to_replace_a_regular_file(tmp_path: Path) -> None:
    precious = tmp_path / "data"
    precious.write_text("keep me")
    with pytest.raises(FileExistsError):
        open_pty(precious)
    assert precious.read_text() == "keep me"


def _start_cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "firmware_sims.cli", "probe", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_prints_the_path_serves_and_exits_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    link = tmp_path / "ttyCLI"
    process = _start_cli("--address", "5", "--address", "6", "--set-point", "-20", "--noise", "0", "--link", str(link))
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == str(link)
        with serial.Serial(str(link), 9600, timeout=2.0) as port:
            port.write(encode_read_request(6, 0x04, 0x0001, 2))
            temp_c, _ = _temperature_humidity(port.read(9), 6)
        assert temp_c == -20.0
        process.send_signal(sig)
        stdout, stderr = process.communicate(timeout=5)
    finally:
        process.kill()
    assert process.returncode == 0
    assert stdout == ""
    assert stderr == ""
    assert not os.path.lexists(link)


def test_cli_rejects_an_unsupported_baud() -> None:
    process = _start_cli("--baud", "4800")
    _, stderr = process.communicate(timeout=10)
    assert process.returncode == 2
    assert "--baud" in stderr


def test_cli_rejects_duplicate_addresses() -> None:
    process = _start_cli("--address", "2", "--address", "2")
    stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 2
    assert stdout == ""
    assert "unique" in stderr
