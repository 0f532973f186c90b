"""``coldchain sim rfid | gps | scenario`` as processes: they print their paths, serve, and stop cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from coldchain.cli import build_parser
from firmware_sims.cli import run_gps, run_rfid, run_scenario
from firmware_sims.modbus_rtu import encode_read_request
from firmware_sims.uhf_reader import encode_inventory_notification

REPO = Path(__file__).resolve().parents[2]
BERRIES = REPO / "scenarios" / "berries-farm-to-buyer.toml"
SGTIN = "3074257bf7194e4000001a85"
SSCC = "3174257bf4499602d2000000"
INVENTORY = bytes.fromhex("BB 00 22 00 00 22 7E")
SHORT = """
name = "short"
speed = 3600.0
[[nodes]]
id = "room"
kind = "cold_store"
set_point_c = -18.0
ambient_c = 25.0
noise_c = 0.0
location = [10.8, 106.6]
[[legs]]
node = "room"
duration_s = 3600
pickup = ["3074257bf7194e4000001a85"]
"""


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def start(processes: list[subprocess.Popen[str]], *args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "firmware_sims.cli", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    processes.append(process)
    return process


def first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline().strip()


def finish(process: subprocess.Popen[str], sig: signal.Signals | None = None) -> tuple[str, str]:
    if sig is not None:
        process.send_signal(sig)
    stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert stderr == ""
    return stdout, stderr


def test_the_coldchain_command_wires_the_new_subcommands() -> None:
    parser = build_parser()
    assert parser.parse_args(["sim", "rfid", "--tag", SGTIN]).handler is run_rfid
    assert parser.parse_args(["sim", "gps", "--route", "10.8,106.6"]).handler is run_gps
    args = parser.parse_args(["sim", "scenario", str(BERRIES), "--speed", "600"])
    assert args.handler is run_scenario
    assert args.speed == 600.0


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_rfid_serves_the_tags_given_and_stops_cleanly(
    processes: list[subprocess.Popen[str]], tmp_path: Path, sig: signal.Signals
) -> None:
    link = tmp_path / "ttyRFID"
    process = start(processes, "rfid", "--tag", SGTIN, "--tag", SSCC.upper(), "--link", str(link))
    assert first_line(process) == str(link)
    with serial.Serial(str(link), 115200, timeout=0.3) as port:
        port.write(INVENTORY)
        answer = b""
        while chunk := port.read(4096):
            answer += chunk
    notifications = [encode_inventory_notification(SGTIN), encode_inventory_notification(SSCC)]
    # A tag may answer twice in a round, as on a real reader; each answers at least once, in order.
    assert answer.startswith(notifications[0])
    assert notifications[1] in answer
    assert finish(process, sig)[0] == ""
    assert not os.path.lexists(link)


def test_gps_sends_fixes_along_the_route_and_stops_cleanly(
    processes: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    link = tmp_path / "ttyGPS"
    process = start(
        processes,
        "gps",
        "--route",
        "11.9404,108.4583,0,80",
        "--route",
        "11.90,108.50",
        "--rate",
        "10",
        "--link",
        str(link),
    )
    assert first_line(process) == str(link)
    with serial.Serial(str(link), 4800, timeout=0.5) as port:
        lines = [port.readline() for _ in range(6)]
    rmc = [line for line in lines if line.startswith(b"$GNRMC,")]
    assert rmc
    assert b",A,1156." in rmc[-1]  # a valid fix near 11°56' N
    finish(process, signal.SIGTERM)
    assert not os.path.lexists(link)


def test_scenario_prints_each_device_and_ends_with_the_journey(
    processes: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    path = tmp_path / "short.toml"
    path.write_text(SHORT)
    # One hour at the file's speed 3600: the command ends by itself after about a second.
    process = start(processes, "scenario", str(path), "--link-dir", str(tmp_path))
    lines = [first_line(process) for _ in range(3)]
    assert lines == [f"{role} {tmp_path / role}" for role in ("probe", "rfid", "gps")]
    with serial.Serial(str(tmp_path / "probe"), 9600, timeout=1.0) as port:
        port.write(encode_read_request(1, 0x04, 0x0001, 1))
        assert port.read(7)[3:5] == (-180).to_bytes(2, "big", signed=True)
    assert finish(process)[0] == ""
    assert not any(os.path.lexists(tmp_path / role) for role in ("probe", "rfid", "gps"))


def test_scenario_stops_cleanly_on_a_signal(processes: list[subprocess.Popen[str]]) -> None:
    process = start(processes, "scenario", str(BERRIES), "--speed", "60")
    lines = [first_line(process).split(" ") for _ in range(3)]
    assert [role for role, _ in lines] == ["probe", "rfid", "gps"]
    assert all(path.startswith("/dev/pts/") for _, path in lines)
    finish(process, signal.SIGINT)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["scenario", "{bad}"], "legs[0].duration_s"),
        (["scenario", "{missing}"], "No such file"),
        (["scenario", str(BERRIES), "--speed", "0"], "must be positive"),
        (["gps", "--route", "95,10"], "off the globe"),
        (["gps"], "--route"),
        (["rfid", "--tag", "abc"], "words of hex"),
    ],
)
def test_bad_arguments_and_files_exit_2_with_a_message(
    processes: list[subprocess.Popen[str]], tmp_path: Path, args: list[str], message: str
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(SHORT.replace("duration_s = 3600", 'duration_s = "an hour"'))
    args = [arg.format(bad=bad, missing=tmp_path / "missing.toml") for arg in args]
    process = start(processes, *args)
    stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 2
    assert stdout == ""
    assert message in stderr
    assert "Traceback" not in stderr
