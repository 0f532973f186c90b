"""Several XY-MD02 probes sharing one RS485 line, served on one pseudo-terminal."""

from __future__ import annotations

import logging
import os
import random
import select
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Self

from firmware_sims.faults import FaultState
from firmware_sims.modbus_rtu import Request, RequestDecoder
from firmware_sims.pty_device import PtyEndpoint, open_pty
from firmware_sims.xymd02 import XYMD02, AirModel, ProbeSpec

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
    real bus. Time seen by the devices is ``monotonic()`` minus its value at ``start()``; it keeps
    running while the bus is unplugged. ``models`` replaces, by slave address, the thermal model a
    probe builds from its spec (a scenario's journey, a scripted failure).

    ``faults`` is honoured on every request, for the whole bus: ``silent`` answers nothing and
    executes nothing (the bus has lost power), ``corrupt_probability`` flips a bit of an answer,
    ``stuck`` makes every probe repeat its last measurement; ``clock_offset_s`` means nothing to a
    probe, which reports no time. ``set_silent`` and ``set_stuck`` do the same to a single probe.
    ``unplug()`` / ``replug()`` take the pty away and bring a new one back at the same ``link``.
    ``devices`` and ``decoder`` (with its error counters) are exposed for inspection;
    ``requests_served`` counts the responses sent.
    """

    def __init__(
        self,
        probes: Sequence[ProbeSpec],
        *,
        link: Path | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        models: Mapping[int, AirModel] | None = None,
        seed: int = 0,
    ) -> None:
        """Build the devices; raises ValueError on an empty bus, two probes sharing an address or a
        model for an address no probe has."""
        if not probes:
            raise ValueError("a bus needs at least one probe")
        addresses = [spec.address for spec in probes]
        if len(set(addresses)) != len(addresses):
            raise ValueError(f"probe addresses must be unique on one bus, got {addresses}")
        models = models or {}
        if unknown := sorted(set(models) - set(addresses)):
            raise ValueError(f"models given for addresses no probe has: {unknown}")
        self.devices = [XYMD02(spec, models.get(spec.address)) for spec in probes]
        self.decoder = RequestDecoder()
        self.faults = FaultState(rng=random.Random(seed))  # noqa: S311 - simulation, not crypto
        self.requests_served = 0
        self._link = link
        self._monotonic = monotonic
        self._started = False
        self._t0 = 0.0
        self._endpoint: PtyEndpoint | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    @property
    def path(self) -> Path:
        """The serial device clients open (the symlink when ``link`` was given); valid while plugged in."""
        if self._endpoint is None:
            raise RuntimeError("the simulator is not started or is unplugged")
        return self._endpoint.path

    def device(self, address: int) -> XYMD02:
        """The probe answering to ``address`` now; raises KeyError when none does."""
        for device in self.devices:
            if device.address == address:
                return device
        raise KeyError(f"no probe answers to address {address}")

    def set_silent(self, address: int, silent: bool = True) -> None:
        """Make one probe dead (or alive again) while the rest of the bus keeps answering."""
        self.device(address).silent = silent

    def set_stuck(self, address: int, stuck: bool = True) -> None:
        """Freeze (or release) one probe's measurement while the rest of the bus keeps measuring."""
        self.device(address).stuck = stuck

    def start(self) -> None:
        """Start the device clock, open the pty and start serving in a daemon thread."""
        if self._started:
            raise RuntimeError("the simulator is already started")
        self._t0 = self._monotonic()
        self._started = True
        self._plug()

    def stop(self) -> None:
        """Stop serving and close the pty (removing the symlink). Safe to call twice."""
        self._unplug()
        self._started = False

    def unplug(self) -> None:
        """Pull the cable: the pty closes and the link disappears; the probes keep measuring."""
        if self._endpoint is None:
            raise RuntimeError("the simulator is not plugged in")
        self._unplug()

    def replug(self) -> None:
        """Plug the cable back in: a new pty at the same link path (a new path without a link)."""
        if not self._started or self._endpoint is not None:
            raise RuntimeError("only a started, unplugged simulator can be plugged back in")
        self._plug()

    def __enter__(self) -> Self:
        """Start the simulator."""
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the simulator."""
        self.stop()

    def _plug(self) -> None:
        self._endpoint = open_pty(self._link)
        # A fresh event per plug: a thread from before an unplug that outlived its join cannot be revived.
        self._stopping = threading.Event()
        self._thread = threading.Thread(
            target=self._serve, args=(self._endpoint.master_fd, self._stopping), name="probe-bus", daemon=True
        )
        self._thread.start()

    def _unplug(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_JOIN_TIMEOUT_S)
            self._thread = None
        if self._endpoint is not None:
            self._endpoint.close()
            self._endpoint = None

    def _serve(self, fd: int, stopping: threading.Event) -> None:
        try:
            while not stopping.is_set():
                readable, _, _ = select.select([fd], [], [], POLL_INTERVAL_S)
                if not readable:
                    continue
                try:
                    data = os.read(fd, READ_CHUNK)
                except BlockingIOError:
                    continue
                for request in self.decoder.feed(data):
                    self._answer(fd, request, stopping)
        except Exception:
            # A daemon thread's exception would otherwise vanish with only stderr noise.
            log.exception("probe bus simulator stopped on an error")

    def _answer(self, fd: int, request: Request, stopping: threading.Event) -> None:
        faults = self.faults
        if faults.silent:
            return
        t_s = self._monotonic() - self._t0
        for device in self.devices:
            response = device.handle(request, t_s, stuck=faults.stuck)
            if response is not None:
                self._write_all(fd, faults.maybe_corrupt(response), stopping)
                self.requests_served += 1

    def _write_all(self, fd: int, data: bytes, stopping: threading.Event) -> None:
        view = memoryview(data)
        while view and not stopping.is_set():
            _, writable, _ = select.select([], [fd], [], POLL_INTERVAL_S)
            if writable:
                try:
                    view = view[os.write(fd, view) :]
                except BlockingIOError:
                    continue
