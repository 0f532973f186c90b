"""Faults of the probe bus simulator over a real pty: silence, corruption, stuck values, the cable.

The client is pyserial with the simulator's own request encoder; answers are checked by hand.
"""

from __future__ import annotations

import os
import struct
import termios
from collections.abc import Iterator
from pathlib import Path

import pytest
import serial

from firmware_sims.modbus_rtu import Request, crc16, encode_read_request, encode_write_single_request
from firmware_sims.probe import ProbeBusSimulator
from firmware_sims.thermal import ThermalModel
from firmware_sims.xymd02 import XYMD02, ProbeSpec

ANSWER_LENGTH = 9  # address, function, byte count, two registers, CRC


class Clock:
    """An injected monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def warming() -> ThermalModel:
    """A space whose cooling is off from the start: its air warms by whole degrees within minutes."""
    return ThermalModel(
        set_point_c=2.0,
        ambient_c=30.0,
        noise_c=0.0,
        noise_rh=0.0,
        cooling_failures=[(0.0, 10_000.0)],
        insulation_time_constant_s=600.0,
    )


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def bus(tmp_path: Path, clock: Clock) -> Iterator[ProbeBusSimulator]:
    probes = [ProbeSpec(address=1), ProbeSpec(address=2)]
    models = {1: warming(), 2: warming()}
    with ProbeBusSimulator(probes, link=tmp_path / "ttyPROBE", monotonic=clock, models=models, seed=4) as simulator:
        yield simulator


@pytest.fixture
def port(bus: ProbeBusSimulator) -> Iterator[serial.Serial]:
    with serial.Serial(str(bus.path), 9600, timeout=0.5) as client:
        yield client


def read_temperature(port: serial.Serial, address: int) -> float | None:
    """The temperature a probe answers, None when nothing comes back."""
    port.reset_input_buffer()
    port.write(encode_read_request(address, 0x04, 0x0001, 2))
    frame = port.read(ANSWER_LENGTH)
    if not frame:
        return None
    assert len(frame) == ANSWER_LENGTH
    assert frame[-2:] == crc16(frame[:-2]).to_bytes(2, "little")
    assert frame[:3] == bytes((address, 0x04, 4))
    temp_raw, _ = struct.unpack(">hH", frame[3:7])
    return float(temp_raw) / 10


def test_healthy_bus_reads_a_warming_space(bus: ProbeBusSimulator, port: serial.Serial, clock: Clock) -> None:
    first = read_temperature(port, 1)
    clock.now += 600
    later = read_temperature(port, 1)
    assert first is not None
    assert later is not None
    assert later > first + 5


def test_silent_bus_answers_nothing_and_executes_nothing(bus: ProbeBusSimulator, port: serial.Serial) -> None:
    bus.faults.silent = True
    assert read_temperature(port, 1) is None
    port.write(encode_write_single_request(1, 0x0101, 9))  # would move the probe to address 9
    assert port.read(8) == b""
    bus.faults.silent = False
    assert read_temperature(port, 1) is not None
    assert bus.device(1).address == 1
    assert bus.requests_served == 1


def test_corruption_flips_one_bit_of_every_answer(bus: ProbeBusSimulator, port: serial.Serial) -> None:
    clean = XYMD02(ProbeSpec(address=1), warming()).handle(Request(1, 0x04, 0x0001, 2), 0.0)
    assert clean is not None
    bus.faults.corrupt_probability = 1.0
    port.write(encode_read_request(1, 0x04, 0x0001, 2))
    answer = port.read(ANSWER_LENGTH)
    assert len(answer) == len(clean)
    differing = [a ^ b for a, b in zip(answer, clean, strict=True) if a != b]
    assert len(differing) == 1
    assert bin(differing[0]).count("1") == 1
    # The flipped bit always shows: the CRC no longer matches (a client counts a CRC error).
    assert answer[-2:] != crc16(answer[:-2]).to_bytes(2, "little")


def test_stuck_bus_repeats_the_last_values_then_recovers(
    bus: ProbeBusSimulator, port: serial.Serial, clock: Clock
) -> None:
    before = [read_temperature(port, 1), read_temperature(port, 2)]
    bus.faults.stuck = True
    clock.now += 600
    assert [read_temperature(port, 1), read_temperature(port, 2)] == before
    bus.faults.stuck = False
    after = [read_temperature(port, 1), read_temperature(port, 2)]
    assert all(a is not None and b is not None and a > b + 5 for a, b in zip(after, before, strict=True))


def test_a_stuck_bus_that_never_measured_still_gives_a_first_value(bus: ProbeBusSimulator, port: serial.Serial) -> None:
    bus.faults.stuck = True
    assert read_temperature(port, 1) == pytest.approx(2.0)


def test_clock_offset_means_nothing_to_a_probe(bus: ProbeBusSimulator, port: serial.Serial) -> None:
    first = read_temperature(port, 1)
    bus.faults.clock_offset_s = 3600.0
    assert read_temperature(port, 1) == first


def test_one_probe_stuck_or_silent_while_the_other_goes_on(
    bus: ProbeBusSimulator, port: serial.Serial, clock: Clock
) -> None:
    before = [read_temperature(port, 1), read_temperature(port, 2)]
    bus.set_stuck(1)
    clock.now += 600
    assert read_temperature(port, 1) == before[0]
    warmed = read_temperature(port, 2)
    assert warmed is not None
    assert before[1] is not None
    assert warmed > before[1] + 5
    bus.set_stuck(1, False)
    bus.set_silent(2)
    assert read_temperature(port, 2) is None
    released = read_temperature(port, 1)
    assert released is not None
    assert before[0] is not None
    assert released > before[0] + 5
    bus.set_silent(2, False)
    assert read_temperature(port, 2) is not None
    with pytest.raises(KeyError, match="address 7"):
        bus.set_stuck(7)


def test_unplug_removes_the_link_and_replug_serves_on_at_the_same_path(
    bus: ProbeBusSimulator, clock: Clock, tmp_path: Path
) -> None:
    link = bus.path
    with serial.Serial(str(link), 9600, timeout=0.5) as port:
        first = read_temperature(port, 1)
        bus.unplug()
        assert not os.path.lexists(link)
        with pytest.raises(RuntimeError, match="unplugged"):
            _ = bus.path
        with pytest.raises((serial.SerialException, OSError, termios.error)):
            read_temperature(port, 1)
    with pytest.raises(RuntimeError, match="not plugged in"):
        bus.unplug()
    clock.now += 600  # the probes measure on while the cable is out
    bus.replug()
    assert bus.path == link == tmp_path / "ttyPROBE"
    assert link.is_symlink()
    with pytest.raises(RuntimeError, match="only a started, unplugged"):
        bus.replug()
    with serial.Serial(str(link), 9600, timeout=0.5) as port:
        later = read_temperature(port, 1)
    assert first is not None
    assert later is not None
    assert later > first + 5


def test_replug_without_a_link_brings_a_new_path() -> None:
    with ProbeBusSimulator([ProbeSpec()]) as simulator:
        simulator.unplug()
        simulator.replug()
        with serial.Serial(str(simulator.path), 9600, timeout=0.5) as port:
            assert read_temperature(port, 1) == pytest.approx(4.0, abs=0.5)


def test_replug_of_a_bus_never_started_is_refused() -> None:
    with pytest.raises(RuntimeError, match="only a started"):
        ProbeBusSimulator([ProbeSpec()]).replug()


def test_a_model_for_a_missing_address_is_refused() -> None:
    with pytest.raises(ValueError, match=r"no probe has: \[3\]"):
        ProbeBusSimulator([ProbeSpec(address=1)], models={3: warming()})
