"""Driver for XY-MD02 / SHT20-class temperature and humidity probes on one RS485 Modbus RTU bus.

Register map (input registers, function 0x04): 0x0001 temperature in tenths of a degree Celsius,
signed 16-bit; 0x0002 relative humidity in tenths of a percent. One request reads both. Several
probes share the bus and are told apart by slave address.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec
import serial

from coldchain.messages import QUANTITY_LIMITS, Quality, Quantity, Reading, SensorId
from edge_agent.drivers.modbus_rtu import (
    MAX_SLAVE_ADDRESS,
    MIN_SLAVE_ADDRESS,
    READ_INPUT_REGISTERS,
    ErrorKind,
    ExceptionResponse,
    Frame,
    RegisterResponse,
    RtuResponseDecoder,
    build_read_request,
)
from edge_agent.drivers.serial_port import DEFAULT_OPEN_BACKOFF_S, ReopeningSerial, SerialFactory

TEMPERATURE_REGISTER: Final = 0x0001
REGISTER_COUNT: Final = 2
"""Temperature and humidity are adjacent, so one request fetches both."""

DEFAULT_RESPONSE_TIMEOUT_S: Final = 0.2
"""A 9-byte answer takes 9.4 ms at 9600 baud; the rest covers the probe's reply delay and USB adapter latency."""

SHT20_LIMITS: Final[Mapping[Quantity, tuple[float, float]]] = {
    Quantity.TEMPERATURE: (-40.0, 125.0),
    Quantity.HUMIDITY: (0.0, 100.0),
}
"""The sensor's measuring range: a value at a limit is likely clipped, one beyond it is not a measurement."""

_SCALE: Final = 10.0  # both registers are in tenths


@dataclass(frozen=True)
class ProbeSpec:
    """One probe on the bus: the sensor id its readings carry and its Modbus slave address."""

    sensor_id: str
    address: int

    def __post_init__(self) -> None:
        """Reject an address no slave can have or a sensor id the wire contract refuses."""
        if not MIN_SLAVE_ADDRESS <= self.address <= MAX_SLAVE_ADDRESS:
            raise ValueError(
                f"probe {self.sensor_id!r}: slave address must be {MIN_SLAVE_ADDRESS}..{MAX_SLAVE_ADDRESS}, "
                f"got {self.address}"
            )
        try:
            msgspec.convert(self.sensor_id, type=SensorId)
        except msgspec.ValidationError as exc:
            raise ValueError(f"probe sensor id {self.sensor_id!r} is not a valid sensor id: {exc}") from exc


def _signed16(register: int) -> int:
    return register - 0x10000 if register & 0x8000 else register


def _quality(quantity: Quantity, value: float) -> Quality:
    low, high = SHT20_LIMITS[quantity]
    if low < value < high:
        return Quality.GOOD
    if value in (low, high):
        return Quality.SUSPECT
    return Quality.BAD


class ModbusProbeBus:
    """Polls every probe on one RS485 bus and turns the answers into readings.

    ``counters`` sums every error kind of the bus (decoder, port and exchanges);
    ``probe_counters`` splits them by the probe being polled when they happened.
    """

    def __init__(
        self,
        port: str,
        baudrate: int,
        probes: Sequence[ProbeSpec],
        *,
        response_timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S,
        retries: int = 1,
        wall_clock: Callable[[], float] = time.time,
        serial_factory: SerialFactory = serial.Serial,
        open_backoff_s: float = DEFAULT_OPEN_BACKOFF_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Check the configuration; the port is opened by the first ``poll``.

        Raises ``ValueError`` for no probes, duplicate addresses or sensor ids, a non-positive
        timeout or a negative retry count.
        """
        if not probes:
            raise ValueError("a probe bus needs at least one probe")
        _reject_duplicates("slave address", [probe.address for probe in probes])
        _reject_duplicates("sensor id", [probe.sensor_id for probe in probes])
        if not response_timeout_s > 0:
            raise ValueError(f"response_timeout_s must be positive, got {response_timeout_s}")
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        self._probes = tuple(probes)
        self._response_timeout_s = response_timeout_s
        self._retries = retries
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._serial = ReopeningSerial(
            port, baudrate, open_backoff_s=open_backoff_s, serial_factory=serial_factory, monotonic=monotonic
        )
        self._decoder = RtuResponseDecoder()
        self._counts: Counter[str] = Counter()
        self._probe_counts: dict[str, Counter[str]] = {probe.sensor_id: Counter() for probe in self._probes}
        self._requests = {
            probe.address: build_read_request(probe.address, TEMPERATURE_REGISTER, REGISTER_COUNT)
            for probe in self._probes
        }

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts of every error kind since creation, zeros included."""
        merged = Counter(self._counts)
        merged.update(self._decoder.counters)
        merged.update(self._serial.counters)
        return {kind.value: merged[kind] for kind in ErrorKind}

    @property
    def probe_counters(self) -> Mapping[str, Mapping[str, int]]:
        """Error counts by sensor id, attributed to the probe being polled when they happened."""
        return {
            sensor_id: {kind.value: counts[kind] for kind in ErrorKind}
            for sensor_id, counts in self._probe_counts.items()
        }

    def poll(self) -> list[Reading]:
        """Read every probe once; two readings per probe that answered, none for one that did not."""
        readings: list[Reading] = []
        for probe in self._probes:
            before = self.counters
            readings.extend(self._poll_probe(probe))
            after = self.counters
            self._probe_counts[probe.sensor_id].update({kind: after[kind] - before[kind] for kind in after})
        return readings

    def close(self) -> None:
        """Close the serial port."""
        self._serial.close()

    def _poll_probe(self, probe: ProbeSpec) -> Iterator[Reading]:
        for _attempt in range(1 + self._retries):
            frame = self._exchange(probe.address)
            if isinstance(frame, RegisterResponse):
                if frame.function == READ_INPUT_REGISTERS and len(frame.registers) == REGISTER_COUNT:
                    yield from self._readings(probe, frame.registers)
                else:
                    self._counts[ErrorKind.UNEXPECTED_RESPONSE] += 1
                return
            # An exception is the probe's definite answer, and a closed port will not reopen
            # within this poll: neither is worth a retry.
            if isinstance(frame, ExceptionResponse) or not self._serial.is_open:
                return

    def _exchange(self, address: int) -> Frame | None:
        """Send one request and wait for the answer from ``address``; None on timeout or port failure."""
        if not self._serial.send(self._requests[address]):
            return None
        try:
            deadline = self._monotonic() + self._response_timeout_s
            while (remaining_s := deadline - self._monotonic()) > 0:
                data = self._serial.read(remaining_s)
                if not self._serial.is_open:
                    return None
                for frame in self._decoder.feed(data):
                    if frame.address == address:
                        return frame
                    self._counts[ErrorKind.UNEXPECTED_ADDRESS] += 1
            self._counts[ErrorKind.TIMEOUT] += 1
            return None
        finally:
            # Whatever is left is a cut-off frame or noise; counting it now charges the right probe.
            self._decoder.reset()

    def _readings(self, probe: ProbeSpec, registers: Sequence[int]) -> Iterator[Reading]:
        ts_ms = math.floor(self._wall_clock() * 1000)
        values = (
            (Quantity.TEMPERATURE, _signed16(registers[0]) / _SCALE),
            (Quantity.HUMIDITY, registers[1] / _SCALE),
        )
        for quantity, value in values:
            low, high = QUANTITY_LIMITS[quantity]
            if not low <= value <= high:
                self._counts[ErrorKind.OUT_OF_RANGE] += 1
                continue
            yield Reading(probe.sensor_id, quantity, ts_ms, value, _quality(quantity, value))


def _reject_duplicates(what: str, values: Sequence[object]) -> None:
    duplicates = sorted({repr(value) for value in values if values.count(value) > 1})
    if duplicates:
        raise ValueError(f"each probe needs its own {what}; repeated: {', '.join(duplicates)}")
