"""Test doubles for the edges the simulator cannot play: a scripted port and a manual clock.

The simulated probe clamps its values to the unit's rated range and never breaks its own frames,
so answers beyond the sensor's limits, corrupted frames and failing I/O calls come from here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
import serial


@dataclass
class ManualClock:
    """A monotonic clock that only moves when told to (or when a scripted read waits)."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class ScriptedPort:
    """A serial port whose every write is answered by ``respond(request)``, all at once.

    A read with nothing to deliver advances ``clock`` by the read timeout, as a real wait would.
    Set ``fail_on`` to the name of a method ("write", "read", "reset_input_buffer") to make it raise.
    """

    respond: Callable[[bytes], bytes]
    clock: ManualClock
    timeout: float | None = None
    fail_on: str | None = None
    writes: list[bytes] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    closed: bool = False
    _inbox: bytearray = field(default_factory=bytearray)

    @property
    def in_waiting(self) -> int:
        return len(self._inbox)

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if self.fail_on == name:
            raise serial.SerialException(f"{name} failed: device disconnected")

    def read(self, size: int = 1) -> bytes:
        self._call("read")
        if not self._inbox:
            self.clock.sleep(self.timeout or 0.0)
            return b""
        data = bytes(self._inbox[:size])
        del self._inbox[:size]
        return data

    def write(self, data: bytes) -> int:
        self._call("write")
        self.writes.append(data)
        self._inbox += self.respond(data)
        return len(data)

    def reset_input_buffer(self) -> None:
        self._call("reset_input_buffer")
        self._inbox.clear()

    def inject(self, data: bytes) -> None:
        """Bytes that arrive unasked, e.g. a late answer to an earlier request."""
        self._inbox += data

    def close(self) -> None:
        self.closed = True


@dataclass
class PortFactory:
    """A ``serial_factory`` that fails ``failures`` times, then hands out ``make()`` ports."""

    make: Callable[[], ScriptedPort]
    failures: int = 0
    opened: list[ScriptedPort] = field(default_factory=list)
    attempts: int = 0

    def __call__(self, port: str, baudrate: int) -> ScriptedPort:
        self.attempts += 1
        if self.failures > 0:
            self.failures -= 1
            raise serial.SerialException(f"could not open port {port}: No such file or directory")
        opened = self.make()
        self.opened.append(opened)
        return opened


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_factory(clock: ManualClock) -> Callable[..., PortFactory]:
    """Build a ``PortFactory`` of ports answering with ``respond``, after ``failures`` failed opens."""

    def make(respond: Callable[[bytes], bytes], failures: int = 0) -> PortFactory:
        return PortFactory(lambda: ScriptedPort(respond, clock), failures)

    return make
