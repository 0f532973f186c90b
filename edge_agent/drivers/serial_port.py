"""A serial port that survives being unplugged: failures close it and it reopens itself later.

A USB-RS485 adapter vanishes when its cable is pulled or the hub re-enumerates, and pyserial then
raises ``SerialException`` or ``OSError`` from any call. The sampling loop must keep running, so
every failure here is counted (``serial_error``), closes the port and schedules a reopen after a
backoff that doubles up to a cap; calls made meanwhile return at once with nothing instead of
raising. A successful reopen counts ``reopen``.
"""

from __future__ import annotations

import termios
import time
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Final, Protocol

import serial

from edge_agent.drivers.modbus_rtu import ErrorKind

RTU_CHARACTER_BITS: Final = 11
"""Modbus RTU frames every byte as start + 8 data + parity (or a second stop) + stop bits."""

FAST_BAUD_SILENT_INTERVAL_S: Final = 0.00175
"""The serial line spec fixes the 3.5-character gap at 1.75 ms above 19200 baud, where timers are too coarse."""

DEFAULT_OPEN_BACKOFF_S: Final = 0.5
"""First wait before reopening: a USB adapter usually re-enumerates within a second or two."""

MAX_OPEN_BACKOFF_S: Final = 30.0
"""Cap on the doubling wait, so a re-plugged cable is back within half a minute."""

SERIAL_ERRORS: Final = (serial.SerialException, OSError, termios.error)
"""What pyserial raises when the device behind the port goes away (termios.error escapes its flush calls)."""


def silent_interval_s(baudrate: int) -> float:
    """Bus silence that must separate two Modbus RTU frames (3.5 character times), in seconds."""
    if baudrate > 19200:
        return FAST_BAUD_SILENT_INTERVAL_S
    return 3.5 * RTU_CHARACTER_BITS / baudrate


class SerialPort(Protocol):
    """The part of ``serial.Serial`` used here; tests may pass any object with it."""

    timeout: float | None

    @property
    def in_waiting(self) -> int:
        """Bytes received and not yet read."""
        ...

    def read(self, size: int = 1) -> bytes:
        """Read up to ``size`` bytes, waiting at most ``timeout`` seconds."""
        ...

    def write(self, data: bytes) -> int | None:
        """Queue ``data`` for sending."""
        ...

    def reset_input_buffer(self) -> None:
        """Discard received bytes not yet read."""
        ...

    def close(self) -> None:
        """Release the device."""
        ...


SerialFactory = Callable[[str, int], SerialPort]
"""Opens a port by name at a baud rate, as ``serial.Serial(port, baudrate)`` does."""


class ReopeningSerial:
    """A serial port opened on first use and reopened after failures, never raising I/O errors.

    ``counters`` holds ``serial_error`` and ``reopen``.
    """

    def __init__(
        self,
        port: str,
        baudrate: int,
        *,
        open_backoff_s: float = DEFAULT_OPEN_BACKOFF_S,
        max_open_backoff_s: float = MAX_OPEN_BACKOFF_S,
        serial_factory: SerialFactory = serial.Serial,
        monotonic: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """Remember the settings; the port itself is opened by the first ``send``."""
        self._port_name = port
        self._baudrate = baudrate
        self._open_backoff_s = open_backoff_s
        self._max_open_backoff_s = max_open_backoff_s
        self._serial_factory = serial_factory
        self._monotonic = monotonic
        self._sleep = sleep
        self._silent_interval_s = silent_interval_s(baudrate)
        self._port: SerialPort | None = None
        self._has_opened = False
        self._backoff_s = open_backoff_s
        self._next_open_at = float("-inf")
        self._last_traffic_at = float("-inf")
        self._counts: Counter[str] = Counter()

    @property
    def is_open(self) -> bool:
        """Whether the port is open now (it closes itself on a failure)."""
        return self._port is not None

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts by error kind since creation."""
        return {kind.value: self._counts[kind] for kind in (ErrorKind.SERIAL_ERROR, ErrorKind.REOPEN)}

    def send(self, data: bytes) -> bool:
        """Discard stale input, keep the inter-frame silence, then write ``data``.

        Returns False, without raising, if the port is unavailable or fails.
        """
        port = self._ensure_open()
        if port is None:
            return False
        wait_s = self._last_traffic_at + self._silent_interval_s - self._monotonic()
        if wait_s > 0:
            self._sleep(wait_s)
        try:
            # A late answer to an earlier request would otherwise pass for the answer to this one.
            port.reset_input_buffer()
            port.write(data)
        except SERIAL_ERRORS:
            self._fail()
            return False
        self._last_traffic_at = self._monotonic()
        return True

    def read(self, timeout_s: float) -> bytes:
        """Wait up to ``timeout_s`` for input and return what has arrived (b"" if none or on failure)."""
        port = self._port
        if port is None:
            return b""
        try:
            port.timeout = max(0.0, timeout_s)
            data = port.read(1)
            if data and (waiting := port.in_waiting):
                data += port.read(waiting)
        except SERIAL_ERRORS:
            self._fail()
            return b""
        if data:
            self._last_traffic_at = self._monotonic()
        return data

    def close(self) -> None:
        """Close the port; a later ``send`` opens it again."""
        port, self._port = self._port, None
        if port is not None:
            try:
                port.close()
            except SERIAL_ERRORS:
                # Closing a vanished device can fail too; the handle is dropped all the same.
                self._counts[ErrorKind.SERIAL_ERROR] += 1

    def _ensure_open(self) -> SerialPort | None:
        if self._port is not None:
            return self._port
        if self._monotonic() < self._next_open_at:
            return None
        try:
            self._port = self._serial_factory(self._port_name, self._baudrate)
        except SERIAL_ERRORS:
            self._fail()
            return None
        if self._has_opened:
            self._counts[ErrorKind.REOPEN] += 1
        self._has_opened = True
        self._backoff_s = self._open_backoff_s
        return self._port

    def _fail(self) -> None:
        self._counts[ErrorKind.SERIAL_ERROR] += 1
        self.close()
        self._next_open_at = self._monotonic() + self._backoff_s
        self._backoff_s = min(self._max_open_backoff_s, self._backoff_s * 2)
