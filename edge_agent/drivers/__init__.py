"""Serial sensor drivers of the gateway, and the small interface the sampling loop sees them through.

Each driver owns its port and its decoder; the sampling loop only calls ``poll`` on a schedule,
reads ``counters`` for the gateway's health report and calls ``close`` on shutdown.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Protocol, runtime_checkable

from coldchain.messages import Reading


class DriverKind(enum.StrEnum):
    """The driver named by a sensor entry in the agent configuration."""

    MODBUS_RTU_PROBE = "modbus_rtu_probe"


@runtime_checkable
class Driver(Protocol):
    """What every driver offers the sampling loop."""

    def poll(self) -> list[Reading]:
        """Read every sensor once and return what answered; never raise for I/O or protocol errors."""
        ...

    @property
    def counters(self) -> Mapping[str, int]:
        """Error counts by kind since the driver was created, for the health report."""
        ...

    def close(self) -> None:
        """Release the port; the driver is not used afterwards."""
        ...
