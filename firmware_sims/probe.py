"""Several XY-MD02 probes sharing one RS485 line, served on one pseudo-terminal."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import ClassVar

from firmware_sims.faults import FaultState
from firmware_sims.modbus_rtu import Request, RequestDecoder
from firmware_sims.pty_device import PtyDevice, received, write_all
from firmware_sims.xymd02 import XYMD02, AirModel, ProbeSpec


class ProbeBusSimulator(PtyDevice):
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

    thread_name: ClassVar[str] = "probe-bus"
    label: ClassVar[str] = "probe bus simulator"

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
        self._monotonic = monotonic
        self._t0 = 0.0
        super().__init__(link)

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

    def _on_start(self) -> None:
        self._t0 = self._monotonic()

    def _serve(self, fd: int, stopping: threading.Event) -> None:
        for data in received(fd, stopping):
            for request in self.decoder.feed(data):
                self._answer(fd, request, stopping)

    def _answer(self, fd: int, request: Request, stopping: threading.Event) -> None:
        faults = self.faults
        if faults.silent:
            return
        t_s = self._monotonic() - self._t0
        for device in self.devices:
            response = device.handle(request, t_s, stuck=faults.stuck)
            if response is not None:
                # Counted before the write: a client that has the response must also see the count.
                self.requests_served += 1
                write_all(fd, faults.maybe_corrupt(response), stopping)
