"""Several XY-MD02 probes sharing one RS485 line, served on one pseudo-terminal."""

from __future__ import annotations

import logging
import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from firmware_sims.modbus_rtu import RequestDecoder
from firmware_sims.pty_device import PtyEndpoint, open_pty
from firmware_sims.xymd02 import XYMD02, ProbeSpec

log = logging.getLogger(__name__)

POLL_INTERVAL_S: Final = 0.05
"""How long the serving thread waits on the pty before checking for stop(): bounds stop() latency."""

STOP_JOIN_TIMEOUT_S: Final = 2.0
"""The thread notices stop() within one poll interval; this only guards against a wedged thread."""

READ_CHUNK: Final = 4096
"""Far more than a master sends between two polls, so one read drains the pty."""


class ProbeBusSimulator:
    """Serves every probe in ``probes`` on one pty, from a daemon thread, answering at once.

    Each request goes to every device, and each device answers only its own address, as on a
    real bus. Time seen by the devices is ``monotonic()`` minus its value at ``start()``.
    ``devices`` and ``decoder`` (with its error counters) are exposed for inspection;
    ``requests_served`` counts the responses sent.
    """

    def __init__(
        self,
        probes: Sequence[ProbeSpec],
        *,
        link: Path | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Build the devices; raises ValueError on an empty bus or two probes sharing an address."""
        if not probes:
            raise ValueError("a bus needs at least one probe")
        addresses = [spec.address for spec in probes]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"probe addresses must be unique on one bus, got {addresses}")
        self.devices = [XYMD02(spec) for spec in probes]
        self.decoder = RequestDecoder()
        self.requests_served = 0
        self._link = link
        self._monotonic = monotonic
        self._endpoint: PtyEndpoint | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def path(self) -> Path:
        """The serial device clients open (the symlink when ``link`` was given); valid once started."""
        if self._endpoint is None:
            raise RuntimeError("the simulator is not started")
        return self._endpoint.path

    def start(self) -> None:
        """Open the pty and start serving in a daemon thread."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already started")
        self._endpoint = open_pty(self._link)
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._serve, args=(self._endpoint.master_fd, self._monotonic()), name="probe-bus", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the pty (removing the symlink). Safe to call twice."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_JOIN_TIMEOUT_S)
            self._thread = None
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None

    def __enter__(self) -> Self:
        """Start the simulator."""
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the simulator."""
        self.stop()

    def _serve(self, fd: int, t0: float) -> None:
        try:
            while not self._stopping.is_set():
                readable, _, _ = select.select([fd], [], [], POLL_INTERVAL_S)
                if not readable:
                    continue
                try:
                    data = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    continue
                for request in self.decoder.feed(data):
                    t_s = self._monotonic() - t0
                    for device in self.devices:
                        response = device.handle(request, t_s)
                        if response is not None:
                            self._write_all(fd, response)
                            self.requests_served += 1
        except Exception:
            # A daemon thread's exception would otherwise vanish with only stderr noise.
            log.exception("probe bus simulator stopped on an error")

    def _write_all(self, fd: int, data: bytes) -> None:
        view = memoryview(data)
        while view and not self._stopping.is_set():
            _, writable, _ = select.select([], [fd], [], POLL_INTERVAL_S)
            if writable:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    continue
