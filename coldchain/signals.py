"""SIGINT and SIGTERM as a flag the main thread polls, for the hub, the agent and the demo.

A signal handler runs in the main thread between two bytecodes, wherever that thread happens to be.
``threading.Event.set()`` in a handler takes the event's lock, and if the signal lands while the main
thread is inside ``Event.wait()`` on the same event, holding that lock, the process deadlocks: the
simulator command line hung on SIGTERM this way once in CI. The handler here only assigns an
attribute; the main thread sleeps in short slices and looks at it.
"""

from __future__ import annotations

import signal
import time
from types import FrameType
from typing import Final

WAIT_SLICE_S: Final = 0.1
"""How late the main thread may notice a stop request: one sleep slice."""


class StopRequest:
    """Set by SIGINT or SIGTERM once ``install`` has run; ``wait`` until then."""

    def __init__(self) -> None:
        self.requested = False

    def install(self) -> None:
        """Handle SIGINT and SIGTERM (call from the main thread)."""
        signal.signal(signal.SIGINT, self._on_signal)
        signal.signal(signal.SIGTERM, self._on_signal)

    def set(self) -> None:
        """Request the stop without a signal (tests, an end of run)."""
        self.requested = True

    def wait(self, timeout_s: float | None = None) -> bool:
        """Sleep until a stop is requested (True) or ``timeout_s`` has passed (False)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while not self.requested:
            remaining = WAIT_SLICE_S if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                return False
            time.sleep(min(WAIT_SLICE_S, remaining))
        return True

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        self.requested = True
