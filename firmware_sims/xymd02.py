"""The XY-MD02 temperature/humidity transmitter (SHT20 sensor, Modbus RTU over RS485), as a slave.

Register map from the XY-MD02 manual:

=========  ========  =====================================================  ===========
function   register  content                                                 access
=========  ========  =====================================================  ===========
03 / 04    0x0001    temperature, 0.1 °C, signed 16-bit two's complement    read
03 / 04    0x0002    relative humidity, 0.1 %RH                             read
03 / 06    0x0101    slave address, 1..247                                  read/write
03 / 06    0x0102    baud rate code: 0 = 9600, 1 = 14400, 2 = 19200         read/write
03 / 06    0x0103    temperature correction, 0.1 °C, signed, -10.0..+10.0   read/write
03 / 06    0x0104    humidity correction, 0.1 %RH, signed, -10.0..+10.0     read/write
=========  ========  =====================================================  ===========
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Protocol

from firmware_sims.modbus_rtu import (
    ILLEGAL_DATA_ADDRESS,
    ILLEGAL_DATA_VALUE,
    ILLEGAL_FUNCTION,
    MAX_READ_REGISTERS,
    READ_HOLDING_REGISTERS,
    READ_INPUT_REGISTERS,
    WRITE_SINGLE_REGISTER,
    Request,
    encode_exception_response,
    encode_registers_response,
    encode_write_single_response,
)
from firmware_sims.thermal import ThermalModel

TEMPERATURE_REGISTER: Final = 0x0001
HUMIDITY_REGISTER: Final = 0x0002
ADDRESS_REGISTER: Final = 0x0101
BAUD_REGISTER: Final = 0x0102
TEMPERATURE_CORRECTION_REGISTER: Final = 0x0103
HUMIDITY_CORRECTION_REGISTER: Final = 0x0104

BROADCAST_ADDRESS: Final = 0
MAX_SLAVE_ADDRESS: Final = 247
"""248..255 are reserved by the Modbus serial line specification."""

BAUD_CODES: Final = {9600: 0, 14400: 1, 19200: 2}
"""Baud rate → the code stored in register 0x0102."""

MAX_CORRECTION_TENTHS: Final = 100
"""The manual allows corrections of ±10.0 units."""

MEASURING_RANGE_C: Final = (-40.0, 60.0)
"""The transmitter's rated range: readings beyond it are clamped, as the unit's firmware does."""

MEASUREMENT_PERIOD_S: Final = 1.0
"""The unit refreshes its measurement about once a second; reads in between see the same values."""

_MEASUREMENT_REGISTERS: Final = frozenset({TEMPERATURE_REGISTER, HUMIDITY_REGISTER})
_SETTING_REGISTERS: Final = frozenset(
    {ADDRESS_REGISTER, BAUD_REGISTER, TEMPERATURE_CORRECTION_REGISTER, HUMIDITY_CORRECTION_REGISTER}
)
_CORRECTIONS: Final = frozenset({TEMPERATURE_CORRECTION_REGISTER, HUMIDITY_CORRECTION_REGISTER})
# Real units answer the measurements to both read functions; settings are holding registers only.
_READABLE: Final = {
    READ_INPUT_REGISTERS: _MEASUREMENT_REGISTERS,
    READ_HOLDING_REGISTERS: _MEASUREMENT_REGISTERS | _SETTING_REGISTERS,
}


class AirModel(Protocol):
    """What a probe measures: the air of a space, sampled forward in time (``ThermalModel`` is one)."""

    def sample(self, t_s: float) -> tuple[float, float]:
        """Advance to ``t_s`` seconds since start and return ``(temperature °C, relative humidity %)``."""
        ...


def to_signed16(value: int) -> int:
    """Interpret an unsigned 16-bit register as two's complement."""
    return value - 0x10000 if value & 0x8000 else value


def from_signed16(value: int) -> int:
    """Encode a signed integer in -32768..32767 as an unsigned 16-bit register."""
    return value & 0xFFFF


def _tenths(value: float) -> int:
    return math.floor(value * 10 + 0.5)


@dataclass
class ProbeSpec:
    """How one simulated probe is set up: its bus address and the space it measures."""

    address: int = 1
    set_point_c: float = 4.0
    ambient_c: float = 25.0
    noise_c: float = 0.05
    humidity_set_point: float = 85.0
    door_rate_per_hour: float = 0.0
    seed: int = 0
    baud: int = 9600


class XYMD02:
    """One XY-MD02 slave: answers requests addressed to it from its register map and thermal model.

    Two faults of the unit itself can be set at any time: ``silent`` (dead firmware: it neither
    executes nor answers anything) and ``stuck`` (a hung sensor: the unit answers, but its
    measurement no longer changes).
    """

    def __init__(self, spec: ProbeSpec, model: AirModel | None = None) -> None:
        """Build the device from ``spec``; pass ``model`` to script the space (doors, cooling failures)."""
        if not 1 <= spec.address <= MAX_SLAVE_ADDRESS:
            raise ValueError(f"slave address must be 1..{MAX_SLAVE_ADDRESS}, got {spec.address}")
        if spec.baud not in BAUD_CODES:
            raise ValueError(f"baud must be one of {sorted(BAUD_CODES)}, got {spec.baud}")
        self._model: AirModel = model or ThermalModel(
            set_point_c=spec.set_point_c,
            ambient_c=spec.ambient_c,
            noise_c=spec.noise_c,
            humidity_set_point=spec.humidity_set_point,
            seed=spec.seed,
            door_rate_per_hour=spec.door_rate_per_hour,
        )
        self._settings = {
            ADDRESS_REGISTER: spec.address,
            BAUD_REGISTER: BAUD_CODES[spec.baud],
            TEMPERATURE_CORRECTION_REGISTER: 0,
            HUMIDITY_CORRECTION_REGISTER: 0,
        }
        self._measured_period: int | None = None
        self._measurement = (0.0, 0.0)
        self.silent = False
        self.stuck = False

    @property
    def address(self) -> int:
        """The slave address the device answers to now (register 0x0101)."""
        return self._settings[ADDRESS_REGISTER]

    @property
    def model(self) -> AirModel:
        """The thermal model behind the readings."""
        return self._model

    def handle(self, request: Request, t_s: float, *, stuck: bool = False) -> bytes | None:
        """Answer ``request`` at ``t_s`` seconds since start, or return None when it must stay silent.

        Requests for another address get no answer; broadcasts (address 0) are executed when they
        are writes but never answered, as the Modbus serial line specification requires. ``stuck``
        freezes the measurement for this request as the ``stuck`` attribute does (a bus-wide fault).
        """
        broadcast = request.address == BROADCAST_ADDRESS
        if self.silent or (not broadcast and request.address != self.address):
            return None
        if request.function in _READABLE:
            response = None if broadcast else self._read(request, t_s, frozen=stuck or self.stuck)
        elif request.function == WRITE_SINGLE_REGISTER:
            response = self._write(request)
        else:
            response = encode_exception_response(request.address, request.function, ILLEGAL_FUNCTION)
        return None if broadcast else response

    def _read(self, request: Request, t_s: float, *, frozen: bool) -> bytes:
        count = request.count_or_value
        if not 1 <= count <= MAX_READ_REGISTERS:
            return encode_exception_response(request.address, request.function, ILLEGAL_DATA_VALUE)
        registers = range(request.start, request.start + count)
        if not set(registers) <= _READABLE[request.function]:
            return encode_exception_response(request.address, request.function, ILLEGAL_DATA_ADDRESS)
        # A stuck unit keeps its last measurement; one that never measured still takes a first one.
        if not _MEASUREMENT_REGISTERS.isdisjoint(registers) and not (frozen and self._measured_period is not None):
            self._measure(t_s)
        values = [self._register(register) for register in registers]
        return encode_registers_response(request.address, request.function, values)

    def _write(self, request: Request) -> bytes:
        register, raw = request.start, request.count_or_value
        if register not in _SETTING_REGISTERS:
            return encode_exception_response(request.address, request.function, ILLEGAL_DATA_ADDRESS)
        value = to_signed16(raw) if register in _CORRECTIONS else raw
        if not _valid_setting(register, value):
            return encode_exception_response(request.address, request.function, ILLEGAL_DATA_VALUE)
        # The echo leaves from the address the request used; a new address applies afterwards.
        response = encode_write_single_response(request.address, register, raw)
        self._settings[register] = value
        return response

    def _measure(self, t_s: float) -> None:
        period = math.floor(t_s / MEASUREMENT_PERIOD_S)
        if period != self._measured_period:
            self._measurement = self._model.sample(period * MEASUREMENT_PERIOD_S)
            self._measured_period = period

    def _register(self, register: int) -> int:
        temp_c, rh = self._measurement
        if register == TEMPERATURE_REGISTER:
            low, high = MEASURING_RANGE_C
            corrected = temp_c + self._settings[TEMPERATURE_CORRECTION_REGISTER] / 10
            return from_signed16(_tenths(min(high, max(low, corrected))))
        if register == HUMIDITY_REGISTER:
            corrected = rh + self._settings[HUMIDITY_CORRECTION_REGISTER] / 10
            return _tenths(min(100.0, max(0.0, corrected)))
        return from_signed16(self._settings[register])


def _valid_setting(register: int, value: int) -> bool:
    if register == ADDRESS_REGISTER:
        return 1 <= value <= MAX_SLAVE_ADDRESS
    if register == BAUD_REGISTER:
        return value in BAUD_CODES.values()
    return -MAX_CORRECTION_TENTHS <= value <= MAX_CORRECTION_TENTHS
