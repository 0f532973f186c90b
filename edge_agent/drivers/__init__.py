"""Serial sensor drivers of the gateway, and the small interface the sampling loop sees them through.

Each driver owns its port and its decoder; the sampling loop only calls ``poll`` on a schedule,
reads ``counters`` for the gateway's health report and calls ``close`` on shutdown.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from coldchain.messages import Observation, TagAction


class DriverKind(enum.StrEnum):
    """The driver named by a sensor entry in the agent configuration."""

    MODBUS_RTU_PROBE = "modbus_rtu_probe"
    UHF_M100 = "uhf_m100"
    NMEA_GPS = "nmea_gps"


@runtime_checkable
class Driver(Protocol):
    """What every driver offers the sampling loop."""

    def poll(self) -> Sequence[Observation]:
        """Read every sensor once and return what answered; never raise for I/O or protocol errors."""
        ...

    @property
    def counters(self) -> Mapping[str, int]:
        """Error counts by kind since the driver was created, for the health report."""
        ...

    def close(self) -> None:
        """Release the port; the driver is not used afterwards."""
        ...


class TagReaderDriver(Driver, Protocol):
    """A driver that reads tags: it labels reads by custody mode and records armed handovers."""

    custody_mode: TagAction

    def arm_handover(self, action: TagAction, window_s: float) -> None:
        """Reads within the next ``window_s`` record ``action`` (the courier pressed pickup or delivery)."""
        ...


class ClockReference(Protocol):
    """A driver that knows true time (GPS): the gateway clock's offset from it."""

    @property
    def clock_offset_ms(self) -> int | None:
        """Gateway clock minus the reference, ``None`` without a recent fix."""
        ...
