"""The XY-MD02 device: register map, signed temperatures, settings, exceptions and silence."""

from __future__ import annotations

import struct

import pytest

from firmware_sims.modbus_rtu import Request, crc16
from firmware_sims.thermal import ThermalModel
from firmware_sims.xymd02 import XYMD02, ProbeSpec


def _probe(temp_c: float = 4.0, rh: float = 85.0, address: int = 1, baud: int = 9600) -> XYMD02:
    model = ThermalModel(set_point_c=temp_c, humidity_set_point=rh, noise_c=0.0, noise_rh=0.0)
    return XYMD02(ProbeSpec(address=address, baud=baud), model)


def _registers(frame: bytes | None, address: int = 1, function: int = 4) -> list[int]:
    assert frame is not None
    assert frame[-2:] == crc16(frame[:-2]).to_bytes(2, "little")
    assert frame[:2] == bytes((address, function))
    byte_count = frame[2]
    assert len(frame) == 3 + byte_count + 2
    return list(struct.unpack(f">{byte_count // 2}H", frame[3 : 3 + byte_count]))


def _exception_code(frame: bytes | None, function: int, address: int = 1) -> int:
    assert frame is not None
    assert len(frame) == 5
    assert frame[-2:] == crc16(frame[:-2]).to_bytes(2, "little")
    assert frame[:2] == bytes((address, function | 0x80))
    return frame[2]


@pytest.mark.parametrize("function", [0x03, 0x04])
def test_reads_temperature_and_humidity_with_either_read_function(function: int) -> None:
    probe = _probe(temp_c=30.5, rh=54.6)
    response = probe.handle(Request(1, function, 0x0001, 2), 0.0)
    assert _registers(response, function=function) == [305, 546]


def test_negative_temperature_is_twos_complement() -> None:
    probe = _probe(temp_c=-18.5)
    assert _registers(probe.handle(Request(1, 4, 0x0001, 1), 0.0)) == [0xFF47]


def test_reads_a_single_humidity_register() -> None:
    probe = _probe(rh=91.2)
    assert _registers(probe.handle(Request(1, 4, 0x0002, 1), 0.0)) == [912]


def test_temperature_is_clamped_to_the_measuring_range() -> None:
    probe = _probe(temp_c=-60.0)
    assert _registers(probe.handle(Request(1, 4, 0x0001, 1), 0.0)) == [(-400) & 0xFFFF]


def test_reads_the_settings_holding_registers() -> None:
    probe = _probe(address=9, baud=19200)
    response = probe.handle(Request(9, 3, 0x0101, 4), 0.0)
    assert _registers(response, address=9, function=3) == [9, 2, 0, 0]


def test_temperature_correction_is_signed_and_applied() -> None:
    probe = _probe(temp_c=4.0, rh=80.0)
    minus_one = (-10) & 0xFFFF
    response = probe.handle(Request(1, 6, 0x0103, minus_one), 0.0)
    assert response is not None
    assert response[:6] == bytes.fromhex("01 06 01 03 FF F6")
    assert probe.handle(Request(1, 6, 0x0104, 25), 0.0) is not None
    assert _registers(probe.handle(Request(1, 3, 0x0103, 2), 0.0), function=3) == [minus_one, 25]
    assert _registers(probe.handle(Request(1, 4, 0x0001, 2), 0.0)) == [30, 825]


def test_address_change_answers_from_the_old_address_then_moves() -> None:
    probe = _probe(address=1)
    response = probe.handle(Request(1, 6, 0x0101, 42), 0.0)
    assert response is not None
    assert response[:6] == bytes.fromhex("01 06 01 01 00 2A")
    assert probe.address == 42
    assert probe.handle(Request(1, 4, 0x0001, 1), 0.0) is None
    assert _registers(probe.handle(Request(42, 4, 0x0001, 1), 0.0), address=42) == [40]


@pytest.mark.parametrize(
    ("register", "value"),
    [(0x0101, 0), (0x0101, 248), (0x0102, 3), (0x0103, 101), (0x0103, (-101) & 0xFFFF), (0x0104, 200)],
)
def test_out_of_range_settings_are_illegal_data_values(register: int, value: int) -> None:
    probe = _probe()
    assert _exception_code(probe.handle(Request(1, 6, register, value), 0.0), 0x06) == 0x03
    assert _registers(probe.handle(Request(1, 3, 0x0101, 4), 0.0), function=3) == [1, 0, 0, 0]


@pytest.mark.parametrize(
    ("function", "start", "count"),
    [(0x04, 0x0000, 1), (0x04, 0x0002, 2), (0x04, 0x0101, 1), (0x03, 0x0100, 2), (0x03, 0x0104, 2)],
)
def test_reads_outside_the_map_are_illegal_data_addresses(function: int, start: int, count: int) -> None:
    probe = _probe()
    assert _exception_code(probe.handle(Request(1, function, start, count), 0.0), function) == 0x02


def test_writes_to_measurements_are_illegal_data_addresses() -> None:
    probe = _probe()
    assert _exception_code(probe.handle(Request(1, 6, 0x0001, 5), 0.0), 0x06) == 0x02


@pytest.mark.parametrize("count", [0, 126, 0xFFFF])
def test_bad_counts_are_illegal_data_values(count: int) -> None:
    probe = _probe()
    assert _exception_code(probe.handle(Request(1, 4, 0x0001, count), 0.0), 0x04) == 0x03


@pytest.mark.parametrize("function", [0x01, 0x02, 0x05, 0x10, 0x2B])
def test_unknown_functions_are_illegal_functions(function: int) -> None:
    probe = _probe()
    assert _exception_code(probe.handle(Request(1, function, 0, 1), 0.0), function) == 0x01


def test_requests_for_another_address_are_ignored() -> None:
    probe = _probe(address=1)
    assert probe.handle(Request(2, 4, 0x0001, 2), 0.0) is None
    assert probe.handle(Request(2, 6, 0x0101, 5), 0.0) is None
    assert probe.address == 1


def test_broadcasts_are_never_answered_but_writes_apply() -> None:
    probe = _probe(address=1)
    assert probe.handle(Request(0, 4, 0x0001, 2), 0.0) is None
    assert probe.handle(Request(0, 0x01, 0, 1), 0.0) is None
    assert probe.handle(Request(0, 6, 0x0103, 5), 0.0) is None
    assert _registers(probe.handle(Request(1, 3, 0x0103, 1), 0.0), function=3) == [5]


def test_reads_within_one_measurement_period_agree() -> None:
    probe = XYMD02(ProbeSpec(noise_c=1.0))
    first = _registers(probe.handle(Request(1, 4, 0x0001, 2), 10.1))
    same = _registers(probe.handle(Request(1, 4, 0x0001, 2), 10.9))
    later = [_registers(probe.handle(Request(1, 4, 0x0001, 2), 11.0 + t)) for t in range(5)]
    assert first == same
    assert any(reading != first for reading in later)


@pytest.mark.parametrize("spec", [ProbeSpec(address=0), ProbeSpec(address=248), ProbeSpec(baud=4800)])
def test_invalid_specs_are_refused(spec: ProbeSpec) -> None:
    with pytest.raises(ValueError):
        XYMD02(spec)
