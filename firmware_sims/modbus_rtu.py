"""Slave-side Modbus RTU codec: pure functions and a resynchronising request decoder.

Written from the Modbus specification (Modbus over Serial Line V1.02, Application Protocol V1.1b3)
and the XY-MD02 manual, without pymodbus or the agent's driver, so the two sides check each other.
A frame is ``address, function, payload, CRC16`` with the CRC sent low byte first.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

READ_HOLDING_REGISTERS: Final = 0x03
READ_INPUT_REGISTERS: Final = 0x04
WRITE_SINGLE_REGISTER: Final = 0x06

ILLEGAL_FUNCTION: Final = 0x01
ILLEGAL_DATA_ADDRESS: Final = 0x02
ILLEGAL_DATA_VALUE: Final = 0x03

EXCEPTION_FLAG: Final = 0x80
"""Set on the function code of an exception response."""

MAX_READ_REGISTERS: Final = 125
"""Largest quantity a read may ask for: the response byte count (2 per register) must fit in 250."""

REQUEST_LENGTH: Final = 8
"""address, function, two 16-bit fields, CRC: the length of every request this codec frames."""

FIXED_LENGTH_FUNCTIONS: Final = frozenset({0x01, 0x02, READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS, 0x05, 0x06})
"""Functions whose request is 8 bytes (read coils/discretes/holding/input, write single coil/register).

Framing the ones a probe does not implement lets the device answer them with exception 0x01, as a
real unit does. Variable-length requests (0x0F, 0x10) are not framed: their byte count field could
claim up to 255 bytes and stall the decoder behind garbage, and a probe has no use for them.
"""

_CRC_POLY_REFLECTED: Final = 0xA001


def _build_crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _CRC_POLY_REFLECTED if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC_TABLE: Final = _build_crc_table()


def crc16(data: bytes) -> int:
    """Return the Modbus CRC16 of ``data`` (polynomial 0xA001 reflected, initial value 0xFFFF)."""
    crc = 0xFFFF
    for byte in data:
        crc = (crc >> 8) ^ _CRC_TABLE[(crc ^ byte) & 0xFF]
    return crc


def with_crc(frame: bytes) -> bytes:
    """Return ``frame`` followed by its CRC16, low byte first as Modbus RTU sends it."""
    return frame + crc16(frame).to_bytes(2, "little")


def _check_byte(name: str, value: int) -> None:
    if not 0 <= value <= 0xFF:
        raise ValueError(f"{name} must be 0..255, got {value}")


def _check_word(name: str, value: int) -> None:
    if not 0 <= value <= 0xFFFF:
        raise ValueError(f"{name} must be an unsigned 16-bit value, got {value}")


@dataclass(frozen=True)
class Request:
    """One decoded request frame (CRC already verified and stripped).

    ``count_or_value`` is the register count for a read and the value for a write single register.
    ``function`` is any code in ``FIXED_LENGTH_FUNCTIONS``; the device decides which it implements.
    """

    address: int
    function: int
    start: int
    count_or_value: int


class RequestDecoder:
    """Turns a byte stream from the bus into requests, resynchronising after garbage.

    Candidates are tried at each byte offset: a known function code with a valid CRC is a frame;
    anything else drops one byte and tries again, so a good frame after garbage is never lost.
    ``counters`` counts every dropped byte (``garbage_bytes``) and each loss of sync once, under
    the reason that broke it (``crc``, ``unknown_function``): the offsets tried while hunting for
    the next frame would otherwise turn one corrupt frame into several errors.
    """

    def __init__(self) -> None:
        """Start with an empty buffer and zeroed counters."""
        self._buffer = bytearray()
        self._in_sync = True
        self.counters: dict[str, int] = {"crc": 0, "garbage_bytes": 0, "unknown_function": 0}

    def feed(self, data: bytes) -> list[Request]:
        """Add ``data`` and return every complete request it finishes, in order."""
        self._buffer += data
        requests: list[Request] = []
        buffer = self._buffer
        while len(buffer) >= 2:
            if buffer[1] not in FIXED_LENGTH_FUNCTIONS:
                self._drop("unknown_function")
                continue
            if len(buffer) < REQUEST_LENGTH:
                break
            frame = bytes(buffer[:REQUEST_LENGTH])
            if crc16(frame[:-2]) != int.from_bytes(frame[-2:], "little"):
                self._drop("crc")
                continue
            address, function, start, count_or_value = struct.unpack_from(">BBHH", frame)
            requests.append(Request(address, function, start, count_or_value))
            del buffer[:REQUEST_LENGTH]
            self._in_sync = True
        return requests

    def _drop(self, reason: str) -> None:
        del self._buffer[0]
        self.counters["garbage_bytes"] += 1
        if self._in_sync:
            self.counters[reason] += 1
            self._in_sync = False


def encode_read_request(address: int, function: int, start: int, count: int) -> bytes:
    """Encode a read request (function 0x03 or 0x04) for ``count`` registers from ``start``."""
    _check_byte("address", address)
    _check_byte("function", function)
    _check_word("start", start)
    _check_word("count", count)
    return with_crc(struct.pack(">BBHH", address, function, start, count))


def encode_write_single_request(address: int, start: int, value: int) -> bytes:
    """Encode a write single register request (function 0x06)."""
    _check_byte("address", address)
    _check_word("start", start)
    _check_word("value", value)
    return with_crc(struct.pack(">BBHH", address, WRITE_SINGLE_REGISTER, start, value))


def encode_registers_response(address: int, function: int, registers: Sequence[int]) -> bytes:
    """Encode a read response: address, function, byte count, then each unsigned 16-bit register."""
    _check_byte("address", address)
    _check_byte("function", function)
    if not 1 <= len(registers) <= MAX_READ_REGISTERS:
        raise ValueError(f"a read response carries 1..{MAX_READ_REGISTERS} registers, got {len(registers)}")
    for register in registers:
        _check_word("register", register)
    payload = struct.pack(f">BBB{len(registers)}H", address, function, 2 * len(registers), *registers)
    return with_crc(payload)


def encode_write_single_response(address: int, start: int, value: int) -> bytes:
    """Encode the response to a write single register: an echo of the request."""
    return encode_write_single_request(address, start, value)


def encode_exception_response(address: int, function: int, code: int) -> bytes:
    """Encode an exception response: the request's function with bit 0x80 set, then the code."""
    _check_byte("address", address)
    _check_byte("function", function)
    _check_byte("code", code)
    return with_crc(bytes((address, function | EXCEPTION_FLAG, code)))
