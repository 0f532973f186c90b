"""A UHF Gen2 RFID reader module on the MagicRF M100 / QM100 serial protocol, served on one pty.

Frame layout, from the M100 & QM100 firmware command manual (docs/rfid-protocol.md has the tables):

======  =====  ========  ========  ========  ============  ========  =====
header  type   command   PL (MSB)  PL (LSB)  parameters    checksum  end
======  =====  ========  ========  ========  ============  ========  =====
0xBB    1 B    1 B       1 B       1 B       PL bytes      1 B       0x7E
======  =====  ========  ========  ========  ============  ========  =====

Type 0x00 is a command (host → reader), 0x01 a response and 0x02 a notification (reader → host);
the checksum is the low byte of the sum of Type..last parameter byte. The single inventory command
0x22 is answered with one notification per tag read, ``RSSI (signed dBm) | PC | EPC | CRC-16``,
and nothing after the last; an empty field gets the error response ``BB 01 FF 00 01 15 16 7E``.

Encoded and decoded here on its own, never with the agent's codec, so that a codec bug cannot hide
on both sides of the wire.
"""

from __future__ import annotations

import random
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Final

from firmware_sims.faults import FaultState
from firmware_sims.pty_device import PtyDevice, received, write_all

HEADER: Final = 0xBB
END: Final = 0x7E
TYPE_COMMAND: Final = 0x00
TYPE_RESPONSE: Final = 0x01
TYPE_NOTIFICATION: Final = 0x02
SINGLE_INVENTORY: Final = 0x22
ERROR_COMMAND: Final = 0xFF
"""Every error response carries this command code, followed by a one-byte error code."""
INVENTORY_FAIL: Final = 0x15
"""No tag answered the inventory (or none with a valid Gen2 CRC)."""
COMMAND_ERROR: Final = 0x17
"""The reader does not know the command it was sent."""

MAX_COMMAND_PARAMETERS: Final = 255
"""Longest parameter field taken from the host; the M100's longest command (Select) has 19 bytes + mask."""

DEFAULT_RSSI_DBM: Final = -55
"""The manual's example notification (0xC9): a tag a hand's width from the antenna."""

DEFAULT_DUPLICATE_READ_PROBABILITY: Final = 0.1
"""Chance that a tag answers twice in one inventory round, as real readers report now and then."""

_EPC_HEX: Final = re.compile(r"(?:[0-9a-f]{4}){1,31}")  # whole 16-bit words, up to the Gen2 496 bits
_OVERHEAD: Final = 7  # header, type, command, 2 length bytes, checksum, end
_PC_LENGTH_SHIFT: Final = 11  # PC bits 15..11: EPC length in words
_CRC16_POLY: Final = 0x1021
_CRC16_PRESET: Final = 0xFFFF


def checksum(body: bytes) -> int:
    """Low byte of the sum of ``body`` (Type through the last parameter byte)."""
    return sum(body) & 0xFF


def encode_frame(frame_type: int, command: int, params: bytes = b"") -> bytes:
    """A complete frame: header, type, command, 16-bit big-endian length, parameters, checksum, end."""
    body = bytes((frame_type, command)) + len(params).to_bytes(2, "big") + params
    return bytes((HEADER,)) + body + bytes((checksum(body), END))


def gen2_crc16(data: bytes) -> int:
    """The EPC Gen2 CRC-16 (ISO/IEC 13239: polynomial 0x1021, preset 0xFFFF, complemented) a tag sends."""
    crc = _CRC16_PRESET
    for byte in data:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ _CRC16_POLY) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc ^ 0xFFFF


def pc_word(epc: bytes) -> int:
    """The PC word of a tag holding ``epc``: its length in words in the top five bits, no user memory flag."""
    return (len(epc) // 2) << _PC_LENGTH_SHIFT


def encode_inventory_notification(epc_hex: str, rssi_dbm: int = DEFAULT_RSSI_DBM, *, pc: int | None = None) -> bytes:
    """The notification a tag read by the single inventory produces: RSSI, PC, EPC, CRC-16 of PC + EPC.

    ``pc`` defaults to ``pc_word(epc)``; pass one to set its flag bits (the manual's example tag has
    user memory: 0x3400). Raises ``ValueError`` for an EPC that is not whole words of hex (1..31) or
    an RSSI outside a signed byte.
    """
    epc = bytes.fromhex(normalize_epc(epc_hex))
    if not -128 <= rssi_dbm <= 127:
        raise ValueError(f"RSSI is a signed byte, got {rssi_dbm}")
    pc_and_epc = (pc_word(epc) if pc is None else pc).to_bytes(2, "big") + epc
    params = rssi_dbm.to_bytes(1, "big", signed=True) + pc_and_epc + gen2_crc16(pc_and_epc).to_bytes(2, "big")
    return encode_frame(TYPE_NOTIFICATION, SINGLE_INVENTORY, params)


def encode_error(code: int) -> bytes:
    """An error response with a bare one-byte code, e.g. ``encode_error(0x15)`` → ``BB 01 FF 00 01 15 16 7E``."""
    return encode_frame(TYPE_RESPONSE, ERROR_COMMAND, bytes((code,)))


def normalize_epc(epc_hex: str) -> str:
    """``epc_hex`` in lowercase; raises ``ValueError`` unless it is 1..31 whole 16-bit words of hex."""
    normalized = epc_hex.lower()
    if not _EPC_HEX.fullmatch(normalized):
        raise ValueError(f"an EPC is 1..31 words of hex, got {epc_hex!r}")
    return normalized


@dataclass(frozen=True)
class Command:
    """A command frame from the host: code and parameters."""

    command: int
    params: bytes


@dataclass
class CommandDecoder:
    """Finds host command frames in the byte stream; skips a byte and retries after anything invalid.

    ``checksum_errors`` and ``garbage_bytes`` count what was dropped. A host writes one short command
    and waits, so unlike the agent's decoder this one need not look past a candidate that has not
    finished arriving.
    """

    checksum_errors: int = 0
    garbage_bytes: int = 0
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> list[Command]:
        """Add ``data`` and return the commands it completes."""
        self._buffer += data
        commands: list[Command] = []
        while self._buffer:
            if self._buffer[0] != HEADER or (len(self._buffer) > 1 and self._buffer[1] != TYPE_COMMAND):
                self._skip()
                continue
            if len(self._buffer) < 5:
                break
            length = int.from_bytes(self._buffer[3:5], "big")
            if length > MAX_COMMAND_PARAMETERS:
                self._skip()
                continue
            end = _OVERHEAD + length
            if len(self._buffer) < end:
                break
            frame = bytes(self._buffer[:end])
            if frame[-1] != END or checksum(frame[1:-2]) != frame[-2]:
                self.checksum_errors += 1
                self._skip()
                continue
            commands.append(Command(frame[2], frame[5:-2]))
            del self._buffer[:end]
        return commands

    def _skip(self) -> None:
        del self._buffer[:1]
        self.garbage_bytes += 1


@dataclass
class _Tag:
    rssi_dbm: int
    leaves_at: float | None  # monotonic time the tag leaves the field by itself, None to stay


class UhfReaderSimulator(PtyDevice):
    """An M100 reader with tags in its field, served on a pty from a daemon thread.

    Place and remove tags from the test or scenario thread; each single inventory reports every tag
    in the field once, and each again with ``duplicate_read_probability``. ``faults`` is honoured on
    every frame: ``silent`` answers nothing, ``corrupt_probability`` flips a bit in a frame, ``stuck``
    keeps reporting the tags that were in the field when it was set. ``unplug()`` / ``replug()`` take
    the pty away and bring a new one back at the same ``link``; an unplugged reader is
    simply stopped: ``unplug()`` is ``stop()`` and ``replug()`` is ``start()``.
    """

    thread_name: ClassVar[str] = "uhf-reader"
    label: ClassVar[str] = "UHF reader simulator"

    def __init__(
        self, *, link: Path | None = None, seed: int = 0, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        """Set up an empty field; nothing is served until ``start()``."""
        self.faults = FaultState(rng=random.Random(seed))  # noqa: S311 - simulation, not crypto
        self.duplicate_read_probability = DEFAULT_DUPLICATE_READ_PROBABILITY
        self.decoder = CommandDecoder()
        self.inventories_served = 0
        self._rng = random.Random(seed + 1)  # noqa: S311 - simulation, not crypto
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._field: dict[str, _Tag] = {}
        self._stuck_field: dict[str, _Tag] | None = None
        super().__init__(link)

    @property
    def tags_in_field(self) -> list[str]:
        """EPCs (lowercase hex) a healthy reader would see now, in the order they were placed."""
        with self._lock:
            self._expire(self._monotonic())
            return list(self._field)

    def place_tags(
        self, epc_hexes: Iterable[str], rssi_dbm: int = DEFAULT_RSSI_DBM, *, for_s: float | None = None
    ) -> None:
        """Bring tags into the field, read at ``rssi_dbm``; with ``for_s`` they leave by themselves after it.

        Raises ``ValueError`` for an EPC that is not 1..31 words of hex, an RSSI outside a signed
        byte or a non-positive ``for_s``; nothing is placed then.
        """
        if not -128 <= rssi_dbm <= 127:
            raise ValueError(f"RSSI is a signed byte, got {rssi_dbm}")
        if for_s is not None and not for_s > 0:
            raise ValueError(f"for_s must be positive, got {for_s}")
        epcs = [normalize_epc(epc) for epc in epc_hexes]
        with self._lock:
            now = self._monotonic()
            self._freeze_if_stuck(now)
            leaves_at = None if for_s is None else now + for_s
            for epc in epcs:
                self._field[epc] = _Tag(rssi_dbm, leaves_at)

    def remove_tags(self, epc_hexes: Iterable[str]) -> None:
        """Take tags out of the field; tags that are not there are ignored."""
        epcs = [normalize_epc(epc) for epc in epc_hexes]
        with self._lock:
            self._freeze_if_stuck(self._monotonic())
            for epc in epcs:
                self._field.pop(epc, None)

    def clear(self) -> None:
        """Empty the field."""
        with self._lock:
            self._freeze_if_stuck(self._monotonic())
            self._field.clear()

    def unplug(self) -> None:
        """Pull the cable: the pty and its link vanish; tags and faults stay as they are."""
        self.stop()

    def replug(self) -> None:
        """Plug the cable back in: a new pty appears at the same ``link`` path."""
        self.start()

    def answer(self, command: Command) -> list[bytes]:
        """The frames the reader sends for ``command`` (before faults are applied)."""
        if command.command != SINGLE_INVENTORY:
            return [encode_error(COMMAND_ERROR)]
        with self._lock:
            now = self._monotonic()
            self._freeze_if_stuck(now)
            self._expire(now)
            tags = dict(self._stuck_field if self._stuck_field is not None else self._field)
        if not tags:
            return [encode_error(INVENTORY_FAIL)]
        frames: list[bytes] = []
        for epc, tag in tags.items():
            notification = encode_inventory_notification(epc, tag.rssi_dbm)
            frames.append(notification)
            if self._rng.random() < self.duplicate_read_probability:
                frames.append(notification)
        return frames

    def _freeze_if_stuck(self, now: float) -> None:
        """Take the stuck snapshot on the first field change or inventory after ``faults.stuck`` was set."""
        if not self.faults.stuck:
            self._stuck_field = None
        elif self._stuck_field is None:
            self._expire(now)
            self._stuck_field = dict(self._field)

    def _expire(self, now: float) -> None:
        for epc in [epc for epc, tag in self._field.items() if tag.leaves_at is not None and now >= tag.leaves_at]:
            del self._field[epc]

    def _serve(self, fd: int, stopping: threading.Event) -> None:
        for data in received(fd, stopping):
            for command in self.decoder.feed(data):
                if self.faults.silent:
                    continue
                # Counted before the answer goes out: a client that has it must also see the count.
                if command.command == SINGLE_INVENTORY:
                    self.inventories_served += 1
                for frame in self.answer(command):
                    write_all(fd, self.faults.maybe_corrupt(frame), stopping)
