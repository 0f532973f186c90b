"""Sans-IO Modbus RTU master codec: read requests out, response frames in, no I/O.

pymodbus supplies the standard parts: request encoding (``ReadInputRegistersRequest`` framed by
``FramerRTU.buildFrame``), the function-code table and frame size (``DecodePDU.lookupPduClass``,
``calculateRtuFrameSize``), the CRC (``FramerRTU.compute_CRC``/``check_CRC``) and PDU decoding
(``DecodePDU.decode``). The hunting loop that finds frames in the byte stream is written here,
because ``FramerRTU.decode`` in pymodbus 3.x does not fit a shared, noisy RS485 bus:

* on a CRC mismatch it reports the whole buffer as used, so a good frame that was already
  buffered behind a corrupted one or behind garbage is thrown away with it;
* after a good frame it also reports the whole buffer as used, swallowing any bytes after it;
* it cannot say why bytes were dropped, and the gateway's health report needs a count per cause.

The loop here drops one byte at a time and retries, so it resynchronises inside a corrupted frame.
A candidate whose claimed length is not yet buffered does not block the stream: if a complete
frame with a valid CRC ends first further on, the candidate was garbage. Decisions depend only on
the bytes, never on how they were split into ``feed`` calls, so a frame decodes the same whether it
arrives whole or byte by byte. Every byte fed ends up in exactly one of: a returned frame,
``garbage_bytes``, or the pending buffer.
"""

from __future__ import annotations

import enum
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadInputRegistersRequest

READ_HOLDING_REGISTERS: Final = 0x03
READ_INPUT_REGISTERS: Final = 0x04
EXCEPTION_FLAG: Final = 0x80

MIN_SLAVE_ADDRESS: Final = 1
MAX_SLAVE_ADDRESS: Final = 247
"""0 is broadcast (never answered) and 248..255 are reserved by the serial line specification."""

_REGISTER_FUNCTIONS: Final = frozenset({READ_HOLDING_REGISTERS, READ_INPUT_REGISTERS})
# This master only ever sends register reads, so any other function code in a response is noise;
# accepting only these keeps random bytes from posing as long frames.
_ACCEPTED_FUNCTIONS: Final = _REGISTER_FUNCTIONS | {code | EXCEPTION_FLAG for code in _REGISTER_FUNCTIONS}
_CRC_LENGTH: Final = 2
_MIN_FRAME_LENGTH: Final = 5  # address, function, exception code or byte count, CRC
_RESPONSE_PDU: Final = DecodePDU(is_server=False)
_FRAMER: Final = FramerRTU(_RESPONSE_PDU)


class ErrorKind(enum.StrEnum):
    """Counter names shared by the decoder, the port wrapper and the drivers."""

    CRC = "crc"  # a complete candidate frame whose CRC did not match (once per corrupted span)
    GARBAGE_BYTES = "garbage_bytes"  # bytes dropped without being part of a returned frame
    EXCEPTION_RESPONSE = "exception_response"  # the slave answered with a Modbus exception
    UNEXPECTED_ADDRESS = "unexpected_address"  # a valid frame from a slave that was not asked
    UNEXPECTED_RESPONSE = "unexpected_response"  # a valid frame with the wrong function or register count
    OUT_OF_RANGE = "out_of_range"  # a value no reading may carry, dropped
    TIMEOUT = "timeout"  # no valid answer within the response timeout
    SHORT_FRAME = "short_frame"  # a frame had started when the exchange gave up on it
    SERIAL_ERROR = "serial_error"  # the port failed to open, read or write
    REOPEN = "reopen"  # the port was opened again after a failure


@dataclass(frozen=True)
class RegisterResponse:
    """A read holding/input registers response: unsigned 16-bit register values in order."""

    address: int
    function: int
    registers: tuple[int, ...]


@dataclass(frozen=True)
class ExceptionResponse:
    """A Modbus exception response; ``function`` is the request's code, without the 0x80 flag."""

    address: int
    function: int
    code: int


Frame = RegisterResponse | ExceptionResponse
"""Any response frame the decoder returns."""


def build_read_request(address: int, start: int = 1, count: int = 2) -> bytes:
    """Encode a read input registers (0x04) request for ``count`` registers from ``start``.

    Raises ``ValueError`` for a slave address outside 1..247 or a start/count Modbus cannot carry.
    """
    if not MIN_SLAVE_ADDRESS <= address <= MAX_SLAVE_ADDRESS:
        raise ValueError(f"slave address must be {MIN_SLAVE_ADDRESS}..{MAX_SLAVE_ADDRESS}, got {address}")
    return _FRAMER.buildFrame(ReadInputRegistersRequest(address=start, count=count, dev_id=address))


class RtuResponseDecoder:
    """Turns bytes read from the bus into response frames, resynchronising after noise.

    ``counters`` holds ``crc``, ``garbage_bytes``, ``exception_response`` and ``short_frame``.
    """

    def __init__(self) -> None:
        """Start with an empty buffer and zeroed counters."""
        self._buffer = bytearray()
        self._counts: Counter[str] = Counter()
        # A corrupted frame is scanned again from each of its bytes; its tail may pose as further
        # candidates, which must not count as further CRC errors.
        self._crc_counted_until = 0

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts by error kind since creation."""
        kinds = (ErrorKind.CRC, ErrorKind.GARBAGE_BYTES, ErrorKind.EXCEPTION_RESPONSE, ErrorKind.SHORT_FRAME)
        return {kind.value: self._counts[kind] for kind in kinds}

    @property
    def pending(self) -> int:
        """Bytes held that may still be the start of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Frame]:
        """Add ``data`` and return every frame it completes, in bus order."""
        self._buffer += data
        frames: list[Frame] = []
        head = 0
        while head < len(self._buffer):
            step = self._step(head)
            if step is None:
                break
            head, frame = step
            if frame is not None:
                if isinstance(frame, ExceptionResponse):
                    self._counts[ErrorKind.EXCEPTION_RESPONSE] += 1
                frames.append(frame)
        del self._buffer[:head]
        self._crc_counted_until = max(0, self._crc_counted_until - head)
        return frames

    def reset(self) -> None:
        """Drop a partial frame (one cut short by a response timeout) so the next exchange starts clean."""
        if self._buffer:
            self._counts[ErrorKind.SHORT_FRAME] += 1
            self._counts[ErrorKind.GARBAGE_BYTES] += len(self._buffer)
            self._buffer.clear()
        self._crc_counted_until = 0

    def _step(self, head: int) -> tuple[int, Frame | None] | None:
        """Decide what the bytes at ``head`` are: (next head, frame or None), or None to wait for more."""
        size = self._frame_size(head)
        if size is None:
            self._counts[ErrorKind.GARBAGE_BYTES] += 1
            return head + 1, None
        end = head + size if size else None
        complete = end is not None and end <= len(self._buffer)
        # Ties go to the head candidate: a byte-by-byte feed would have checked it first.
        limit = end - 1 if end is not None and complete else len(self._buffer)
        ahead = self._earliest_frame_after(head, limit)
        if ahead is not None:
            start, stop, frame = ahead
            # A corrupted frame skipped on the way still counts as one, as it would from the head.
            for skipped in range(head + 1, start):
                skipped_size = self._frame_size(skipped)
                if (
                    skipped_size
                    and skipped + skipped_size <= stop
                    and not self._crc_ok(skipped, skipped + skipped_size)
                ):
                    self._count_crc(skipped, skipped + skipped_size)
            self._counts[ErrorKind.GARBAGE_BYTES] += start - head
            return stop, frame
        if end is None or not complete:
            return None
        if self._crc_ok(head, end):
            decoded = self._decode(head, end)
            if decoded is not None:
                return end, decoded
        else:
            self._count_crc(head, end)
        self._counts[ErrorKind.GARBAGE_BYTES] += 1
        return head + 1, None

    def _count_crc(self, start: int, end: int) -> None:
        if start >= self._crc_counted_until:
            self._counts[ErrorKind.CRC] += 1
        self._crc_counted_until = max(self._crc_counted_until, end)

    def _frame_size(self, start: int) -> int | None:
        """Length of the candidate frame at ``start``: None if none can start there, 0 if not known yet."""
        buffer = self._buffer
        if not MIN_SLAVE_ADDRESS <= buffer[start] <= MAX_SLAVE_ADDRESS:
            return None
        if len(buffer) - start < 2:
            return 0
        function = buffer[start + 1]
        if function not in _ACCEPTED_FUNCTIONS:
            return None
        header = bytes(buffer[start:])
        pdu_class = _RESPONSE_PDU.lookupPduClass(header)
        if pdu_class is None:
            return None
        size = pdu_class.calculateRtuFrameSize(header)
        # A register response carries whole registers: an odd or zero byte count is noise.
        byte_count = size - _MIN_FRAME_LENGTH
        if size and function in _REGISTER_FUNCTIONS and (byte_count == 0 or byte_count % 2):
            return None
        return size

    def _earliest_frame_after(self, head: int, limit: int) -> tuple[int, int, Frame] | None:
        """The valid frame starting after ``head`` and ending first, at or before ``limit``."""
        best: tuple[int, int, Frame] | None = None
        for start in range(head + 1, limit - _MIN_FRAME_LENGTH + 1):
            size = self._frame_size(start)
            if not size:
                continue
            end = start + size
            if end > limit or (best is not None and end >= best[1]):
                continue
            if self._crc_ok(start, end) and (frame := self._decode(start, end)) is not None:
                best = (start, end, frame)
        return best

    def _crc_ok(self, start: int, end: int) -> bool:
        body = bytes(self._buffer[start : end - _CRC_LENGTH])
        received = int.from_bytes(self._buffer[end - _CRC_LENGTH : end], "big")
        return FramerRTU.check_CRC(body, received)

    def _decode(self, start: int, end: int) -> Frame | None:
        """Decode a CRC-checked frame; None if pymodbus finds its PDU malformed."""
        address = self._buffer[start]
        pdu = _RESPONSE_PDU.decode(bytes(self._buffer[start + 1 : end - _CRC_LENGTH]))
        if pdu is None:
            return None
        if pdu.isError():
            return ExceptionResponse(address, pdu.function_code & ~EXCEPTION_FLAG, pdu.exception_code)
        return RegisterResponse(address, pdu.function_code, tuple(pdu.registers))
