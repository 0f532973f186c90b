"""UHF Gen2 RFID reader on the MagicRF M100 / QM100 serial protocol (YRM100, JRD-100 and similar modules).

Every frame is ``BB | Type | Command | PL(MSB) | PL(LSB) | Parameters | Checksum | 7E``, the checksum
being the low byte of the sum of Type..last parameter byte (docs/rfid-protocol.md has the tables
and the sources). The gateway sends the single inventory command ``BB 00 22 00 00 22 7E``; the
reader answers with one notification (type 0x02, command 0x22) per tag it read, holding RSSI, PC,
EPC and the tag's CRC, and nothing after the last one; an empty field gets the error response
``BB 01 FF 00 01 15 16 7E`` instead.

The decoder is sans-io and works like the Modbus one (``modbus_rtu.py``): it drops one byte at a
time after garbage and retries, so it resynchronises inside a corrupted frame; a candidate whose
claimed length has not arrived yet does not block a valid frame that completes first behind it;
and its decisions depend only on the bytes, never on how they were split into ``feed`` calls.
Every byte fed ends up in exactly one of: a returned frame, ``garbage_bytes``, or the pending buffer.
"""

from __future__ import annotations

import enum
import math
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import msgspec
import serial

from coldchain.messages import SensorId, TagAction, TagRead
from edge_agent.drivers.serial_port import DEFAULT_OPEN_BACKOFF_S, ReopeningSerial, SerialFactory
from edge_agent.epc import decode_epc

HEADER: Final = 0xBB
END: Final = 0x7E

TYPE_COMMAND: Final = 0x00
TYPE_RESPONSE: Final = 0x01
TYPE_NOTIFICATION: Final = 0x02

SINGLE_INVENTORY: Final = 0x22
ERROR_COMMAND: Final = 0xFF
"""The command code of every error response, whatever command failed."""

INVENTORY_FAIL: Final = 0x15
"""Error code of an inventory that read no tag (or only tags whose reply failed the Gen2 CRC)."""

DEFAULT_BAUDRATE: Final = 115200
"""The M100 modules' factory setting."""

MAX_PARAMETER_LENGTH: Final = 255
"""Longest parameter field accepted. A 496-bit EPC notification needs 67 bytes and the module-info
strings are shorter; the cap keeps a corrupted length field from making the decoder wait for 64 KiB."""

DEFAULT_RESPONSE_TIMEOUT_S: Final = 0.3
"""Bound on one inventory exchange. A Gen2 inventory round with a few dozen tags takes well under
100 ms on the M100, and each 24-byte notification 2 ms at 115200 baud; the rest is USB latency."""

INVENTORY_QUIET_S: Final = 0.05
"""Silence after a notification that ends the inventory: with tags in the field the reader sends
no closing frame, and it sends its notifications back to back."""

DEFAULT_DEBOUNCE_S: Final = 5.0
"""A tag unseen for longer than this is reported again when it comes back."""

MAX_PLAUSIBLE_RSSI_DBM: Final = 20
"""The wire contract's ceiling; the signed RSSI byte can claim up to +127 dBm, which no tag sends."""

_ACCEPTED_TYPES: Final = frozenset({TYPE_RESPONSE, TYPE_NOTIFICATION})
# The gateway only ever receives, so a command-type frame on this line is noise; refusing it early
# keeps random bytes from posing as long candidates.
_HEADER_LENGTH: Final = 5  # header, type, command, parameter length
_OVERHEAD: Final = _HEADER_LENGTH + 2  # plus checksum and end byte
_MAX_FRAME_LENGTH: Final = _OVERHEAD + MAX_PARAMETER_LENGTH
_PC_LENGTH_SHIFT: Final = 11  # PC bits 15..11 hold the EPC length in 16-bit words (Gen2 §6.3.2.1.2.2)
_NOTIFICATION_FIXED_LENGTH: Final = 5  # RSSI, PC (2), CRC (2)


class ErrorKind(enum.StrEnum):
    """Counter names of the decoder and the driver."""

    CHECKSUM = "checksum"  # a complete candidate frame whose checksum did not match
    GARBAGE_BYTES = "garbage_bytes"  # bytes dropped without being part of a returned frame
    BAD_END = "bad_end"  # a complete candidate frame whose last byte was not 0x7E
    OVERSIZE = "oversize"  # a header claiming more than MAX_PARAMETER_LENGTH parameter bytes
    MALFORMED = "malformed"  # a valid frame whose notification fields do not add up
    UNEXPECTED_FRAME = "unexpected_frame"  # a valid frame that answers nothing this driver asked
    ERROR_RESPONSE = "error_response"  # the reader reported an error other than "no tag"
    TIMEOUT = "timeout"  # no answer at all within the response timeout
    SERIAL_ERROR = "serial_error"  # the port failed to open, read or write
    REOPEN = "reopen"  # the port was opened again after a failure


_DECODER_KINDS: Final = (ErrorKind.CHECKSUM, ErrorKind.GARBAGE_BYTES, ErrorKind.BAD_END, ErrorKind.OVERSIZE)


@dataclass(frozen=True)
class M100Frame:
    """A frame with a valid checksum and end byte: its type, command code and parameter bytes."""

    frame_type: int
    command: int
    params: bytes

    @property
    def error_code(self) -> int | None:
        """The code of an error response (command 0xFF), else None."""
        if self.command != ERROR_COMMAND or not self.params:
            return None
        return self.params[0]


@dataclass(frozen=True)
class InventoryNotification:
    """One tag read by an inventory: signed RSSI in dBm, PC word, EPC (lowercase hex) and the tag's CRC-16."""

    rssi_dbm: int
    pc: int
    epc_hex: str
    crc: int

    @classmethod
    def from_frame(cls, frame: M100Frame) -> InventoryNotification:
        """Parse the parameters of an inventory notification.

        Raises ``ValueError`` when the frame is not one, or when the EPC length in the PC word is
        zero or disagrees with the parameter length.
        """
        if frame.frame_type != TYPE_NOTIFICATION or frame.command != SINGLE_INVENTORY:
            raise ValueError(
                f"not an inventory notification: type {frame.frame_type:#04x}, command {frame.command:#04x}"
            )
        params = frame.params
        if len(params) < _NOTIFICATION_FIXED_LENGTH:
            raise ValueError(f"notification of {len(params)} bytes is shorter than RSSI, PC and CRC")
        pc = int.from_bytes(params[1:3], "big")
        epc_length = 2 * (pc >> _PC_LENGTH_SHIFT)
        held = len(params) - _NOTIFICATION_FIXED_LENGTH
        if epc_length == 0 or held != epc_length:
            raise ValueError(f"PC {pc:#06x} announces a {epc_length}-byte EPC but the notification holds {held}")
        return cls(
            rssi_dbm=int.from_bytes(params[:1], "big", signed=True),
            pc=pc,
            epc_hex=params[3 : 3 + epc_length].hex(),
            crc=int.from_bytes(params[-2:], "big"),
        )


def checksum(body: bytes | bytearray) -> int:
    """The M100 checksum of ``body`` (Type through the last parameter byte): the low byte of their sum."""
    return sum(body) & 0xFF


def encode_command(command: int, params: bytes = b"") -> bytes:
    """Encode a host-to-reader command frame, e.g. ``encode_command(0x22)`` → ``BB 00 22 00 00 22 7E``.

    Raises ``ValueError`` for a command code outside one byte or more than 65535 parameter bytes.
    """
    if not 0 <= command <= 0xFF:
        raise ValueError(f"command code must be one byte, got {command}")
    if len(params) > 0xFFFF:
        raise ValueError(f"{len(params)} parameter bytes do not fit the 16-bit length field")
    body = bytes((TYPE_COMMAND, command)) + len(params).to_bytes(2, "big") + params
    return bytes((HEADER,)) + body + bytes((checksum(body), END))


INVENTORY_COMMAND: Final = encode_command(SINGLE_INVENTORY)


class M100Decoder:
    """Turns bytes read from the reader into frames, resynchronising after noise.

    ``counters`` holds ``checksum``, ``bad_end``, ``oversize`` and ``garbage_bytes``.
    """

    def __init__(self) -> None:
        """Start with an empty buffer and zeroed counters."""
        self._buffer = bytearray()
        self._counts: Counter[str] = Counter()
        # A corrupted frame is scanned again from each of its bytes; a 0xBB inside it may pose as
        # a further candidate, which must not count as a further error.
        self._flagged_until = 0

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts by error kind since creation."""
        return {kind.value: self._counts[kind] for kind in _DECODER_KINDS}

    @property
    def pending(self) -> int:
        """Bytes held that may still be the start of a frame."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[M100Frame]:
        """Add ``data`` and return every frame it completes, in line order."""
        self._buffer += data
        frames: list[M100Frame] = []
        head = 0
        while head < len(self._buffer):
            step = self._step(head)
            if step is None:
                break
            head, frame = step
            if frame is not None:
                frames.append(frame)
        del self._buffer[:head]
        self._flagged_until = max(0, self._flagged_until - head)
        return frames

    def reset(self) -> None:
        """Drop a partial frame (one cut short by the end of an exchange) so the next starts clean."""
        self._counts[ErrorKind.GARBAGE_BYTES] += len(self._buffer)
        self._buffer.clear()
        self._flagged_until = 0

    def _step(self, head: int) -> tuple[int, M100Frame | None] | None:
        """Decide what the bytes at ``head`` are: (next head, frame or None), or None to wait for more."""
        if not self._can_start(head):
            self._counts[ErrorKind.GARBAGE_BYTES] += 1
            return head + 1, None
        length = self._declared_length(head)
        if length is not None and length > _MAX_FRAME_LENGTH:
            self._flag(ErrorKind.OVERSIZE, head, head + _HEADER_LENGTH)
            self._counts[ErrorKind.GARBAGE_BYTES] += 1
            return head + 1, None
        end = None if length is None else head + length
        complete = end is not None and end <= len(self._buffer)
        # Ties go to the head candidate: a byte-by-byte feed would have checked it first.
        limit = end - 1 if end is not None and complete else len(self._buffer)
        ahead = self._earliest_frame_after(head, limit)
        if ahead is not None:
            start, stop, frame = ahead
            self._counts[ErrorKind.GARBAGE_BYTES] += start - head
            return stop, frame
        if end is None or not complete:
            return None
        fault = self._fault(head, end)
        if fault is None:
            return end, self._frame(head, end)
        self._flag(fault, head, end)
        self._counts[ErrorKind.GARBAGE_BYTES] += 1
        return head + 1, None

    def _can_start(self, start: int) -> bool:
        buffer = self._buffer
        if buffer[start] != HEADER:
            return False
        return len(buffer) - start < 2 or buffer[start + 1] in _ACCEPTED_TYPES

    def _declared_length(self, start: int) -> int | None:
        """Total frame length the header at ``start`` claims; None until the length field has arrived."""
        if len(self._buffer) - start < _HEADER_LENGTH:
            return None
        return _OVERHEAD + int.from_bytes(self._buffer[start + 3 : start + 5], "big")

    def _earliest_frame_after(self, head: int, limit: int) -> tuple[int, int, M100Frame] | None:
        """The valid frame starting after ``head`` and ending first, at or before ``limit``."""
        best: tuple[int, int, M100Frame] | None = None
        start = self._buffer.find(HEADER, head + 1, max(head + 1, limit - _OVERHEAD + 1))
        while start != -1:
            length = self._declared_length(start) if self._can_start(start) else None
            if length is not None and length <= _MAX_FRAME_LENGTH:
                end = start + length
                if end <= limit and (best is None or end < best[1]) and self._fault(start, end) is None:
                    best = (start, end, self._frame(start, end))
            start = self._buffer.find(HEADER, start + 1, max(start + 1, limit - _OVERHEAD + 1))
        return best

    def _fault(self, start: int, end: int) -> ErrorKind | None:
        """What is wrong with the complete candidate ``[start, end)``, or None if it is a valid frame."""
        if self._buffer[end - 1] != END:
            return ErrorKind.BAD_END
        if checksum(self._buffer[start + 1 : end - 2]) != self._buffer[end - 2]:
            return ErrorKind.CHECKSUM
        return None

    def _frame(self, start: int, end: int) -> M100Frame:
        buffer = self._buffer
        return M100Frame(buffer[start + 1], buffer[start + 2], bytes(buffer[start + _HEADER_LENGTH : end - 2]))

    def _flag(self, kind: ErrorKind, start: int, end: int) -> None:
        if start >= self._flagged_until:
            self._counts[kind] += 1
        self._flagged_until = max(self._flagged_until, end)


@dataclass
class _Handover:
    action: TagAction
    until: float
    bypassed: set[str] = field(default_factory=set)


class UhfReader:
    """One M100-class reader: each ``poll`` runs a single inventory and returns the debounced tag reads.

    A tag is reported when it is first seen, then not again while it keeps being seen at intervals
    of at most ``debounce_s``: a case sitting in the field for minutes is one read, and it is read
    again only after it was absent for longer than ``debounce_s``. Reads carry ``custody_mode`` as
    their action, except during a window opened by ``arm_handover``.

    ``counters`` holds every ``ErrorKind`` of the decoder, the port and the exchanges.
    """

    def __init__(
        self,
        port: str,
        reader_id: str,
        *,
        baudrate: int = DEFAULT_BAUDRATE,
        debounce_s: float = DEFAULT_DEBOUNCE_S,
        response_timeout_s: float = DEFAULT_RESPONSE_TIMEOUT_S,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        serial_factory: SerialFactory = serial.Serial,
        open_backoff_s: float = DEFAULT_OPEN_BACKOFF_S,
    ) -> None:
        """Check the configuration; the port is opened by the first ``poll``.

        Raises ``ValueError`` for a reader id the wire contract refuses, a negative debounce or a
        non-positive response timeout.
        """
        try:
            msgspec.convert(reader_id, type=SensorId)
        except msgspec.ValidationError as exc:
            raise ValueError(f"reader id {reader_id!r} is not a valid sensor id: {exc}") from exc
        if not (math.isfinite(debounce_s) and debounce_s >= 0):
            raise ValueError(f"debounce_s must be 0 or more, got {debounce_s}")
        if not (math.isfinite(response_timeout_s) and response_timeout_s > 0):
            raise ValueError(f"response_timeout_s must be positive, got {response_timeout_s}")
        self.reader_id = reader_id
        self.custody_mode = TagAction.OBSERVE
        """The action of reads outside a handover window (set by the hub's ``SetCustodyMode``)."""
        self._debounce_s = debounce_s
        self._response_timeout_s = response_timeout_s
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._serial = ReopeningSerial(
            port, baudrate, open_backoff_s=open_backoff_s, serial_factory=serial_factory, monotonic=monotonic
        )
        self._decoder = M100Decoder()
        self._counts: Counter[str] = Counter()
        self._last_seen: dict[str, float] = {}
        self._handover: _Handover | None = None

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts of every error kind since creation, zeros included."""
        merged = Counter(self._counts)
        merged.update(self._decoder.counters)
        merged.update(self._serial.counters)
        return {kind.value: merged[kind] for kind in ErrorKind}

    def arm_handover(self, action: TagAction, window_s: float) -> None:
        """Make reads in the next ``window_s`` seconds carry ``action``, each tag once past the debounce.

        The courier presses "pickup" and holds the case to the antenna: the case may have been in
        the field a moment ago (debounced), but this read is the handover and must be reported.
        Each tag bypasses the debounce once per window; arming again replaces the window.
        """
        if not (math.isfinite(window_s) and window_s > 0):
            raise ValueError(f"window_s must be positive, got {window_s}")
        self._handover = _Handover(action, self._monotonic() + window_s)

    def poll(self) -> list[TagRead]:
        """Run one inventory and return a read per tag to report; [] on silence or any I/O error."""
        now = self._monotonic()
        if self._handover is not None and now > self._handover.until:
            self._handover = None
        # Forgetting tags unseen past the debounce changes nothing and bounds the table.
        self._last_seen = {epc: seen for epc, seen in self._last_seen.items() if now - seen <= self._debounce_s}
        strongest: dict[str, InventoryNotification] = {}
        for notification in self._inventory():
            kept = strongest.get(notification.epc_hex)
            if kept is None or notification.rssi_dbm > kept.rssi_dbm:
                strongest[notification.epc_hex] = notification
        if not strongest:
            return []
        ts_ms = math.floor(self._wall_clock() * 1000)
        reads: list[TagRead] = []
        for epc_hex, notification in strongest.items():
            action = self._admit(epc_hex, now)
            if action is None:
                continue
            rssi = notification.rssi_dbm
            reads.append(
                TagRead(
                    reader_id=self.reader_id,
                    epc_hex=epc_hex,
                    epc_uri=decode_epc(epc_hex),
                    ts_ms=ts_ms,
                    rssi_dbm=float(rssi) if rssi <= MAX_PLAUSIBLE_RSSI_DBM else None,
                    action=action,
                )
            )
        return reads

    def close(self) -> None:
        """Close the serial port."""
        self._serial.close()

    def _admit(self, epc_hex: str, now: float) -> TagAction | None:
        """The action to report this sighting with, or None when the debounce swallows it."""
        last = self._last_seen.get(epc_hex)
        self._last_seen[epc_hex] = now
        handover = self._handover
        if handover is not None and epc_hex not in handover.bypassed:
            handover.bypassed.add(epc_hex)
            return handover.action
        if last is not None and now - last <= self._debounce_s:
            return None
        return handover.action if handover is not None else self.custody_mode

    def _inventory(self) -> list[InventoryNotification]:
        """Send one single inventory and collect its notifications until the end of the exchange."""
        if not self._serial.send(INVENTORY_COMMAND):
            return []
        notifications: list[InventoryNotification] = []
        try:
            deadline = self._monotonic() + self._response_timeout_s
            while (remaining_s := deadline - self._monotonic()) > 0:
                data = self._serial.read(min(remaining_s, INVENTORY_QUIET_S) if notifications else remaining_s)
                if not self._serial.is_open:
                    return notifications
                if not data and notifications:
                    return notifications
                for frame in self._decoder.feed(data):
                    if self._take(frame, notifications):
                        return notifications
            if not notifications:
                self._counts[ErrorKind.TIMEOUT] += 1
            return notifications
        finally:
            # Whatever is left is a cut-off frame or noise, counted now rather than blamed on the next poll.
            self._decoder.reset()

    def _take(self, frame: M100Frame, notifications: list[InventoryNotification]) -> bool:
        """File ``frame`` under the exchange; True when it ends the inventory."""
        if frame.frame_type == TYPE_NOTIFICATION and frame.command == SINGLE_INVENTORY:
            try:
                notifications.append(InventoryNotification.from_frame(frame))
            except ValueError:
                self._counts[ErrorKind.MALFORMED] += 1
            return False
        if frame.frame_type == TYPE_RESPONSE and frame.error_code is not None:
            # "No tag" is the normal answer of an empty field, not a reader fault.
            if frame.error_code != INVENTORY_FAIL:
                self._counts[ErrorKind.ERROR_RESPONSE] += 1
            return True
        self._counts[ErrorKind.UNEXPECTED_FRAME] += 1
        return False
