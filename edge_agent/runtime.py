"""Wires a gateway together: drivers -> sampler -> buffer -> uplink."""

from __future__ import annotations

import logging
import signal
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Final

import coldchain
from coldchain.messages import Reading
from edge_agent.buffer import MemoryBuffer, SeqCounter
from edge_agent.config import AgentConfig, BusConfig
from edge_agent.drivers import Driver, DriverKind
from edge_agent.sampler import Sampler
from edge_agent.uplink import Uplink

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S: Final = 10.0
"""How long a clean stop waits for receipts of what is buffered (systemd's stop timeout is 90 s)."""
DRAIN_POLL_S: Final = 0.05


def build_driver(bus: BusConfig) -> Driver:
    """The driver for one configured bus, chosen by its ``kind``."""
    match bus.kind:
        case DriverKind.MODBUS_RTU_PROBE:
            from edge_agent.drivers.xymd02_probe import ModbusProbeBus, ProbeSpec  # noqa: PLC0415

            probes = [ProbeSpec(sensor_id=p.sensor_id, address=p.address) for p in bus.probes]
            return ModbusProbeBus(bus.port, bus.baudrate, probes, response_timeout_s=bus.response_timeout_s)


class Agent:
    """One gateway: start, run until stopped, stop without losing what was sampled."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        demo: bool = False,
        on_readings: Callable[[Sequence[Reading]], None] | None = None,
    ) -> None:
        self.config = config
        self.boot_id = uuid.uuid4().hex
        state_dir = Path(config.state_dir)
        counter = SeqCounter(state_dir / "seq")
        self.buffer = MemoryBuffer(config.gateway_id, self.boot_id, counter, time.time)
        self._resume_after = counter.last
        self.drivers = [build_driver(bus) for bus in config.buses]
        self.sampler = Sampler(self.drivers, self.buffer, config.sampling, on_readings=on_readings)
        self.uplink = Uplink(
            config.gateway_id,
            self.boot_id,
            self.buffer,
            config.mqtt,
            config.delivery,
            agent_version=coldchain.__version__,
            allow_placeholder_secret=demo,
        )

    def start(self) -> None:
        """Start sampling and sending."""
        log.info(
            "gateway %s starting (boot %s, seq after %d)", self.config.gateway_id, self.boot_id, self._resume_after
        )
        self.uplink.start(resume_after_seq=self._resume_after)
        self.sampler.start()

    def stop(self) -> None:
        """Stop sampling, give the uplink a moment to get what is buffered receipted, then stop it.

        The in-memory buffer loses what is still unreceipted when the process ends, so a clean
        stop drains while the broker is reachable, for at most ``DRAIN_TIMEOUT_S``.
        """
        self.sampler.stop()
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while self.buffer.depth()[0] and self.uplink.state().connected and time.monotonic() < deadline:
            time.sleep(DRAIN_POLL_S)
        self.uplink.stop()
        for driver in self.drivers:
            driver.close()
        batches, readings = self.buffer.depth()
        state = self.uplink.state()
        log.info(
            "gateway %s stopped: %d readings sampled, receipted through seq %d, %d batches (%d readings) unreceipted",
            self.config.gateway_id,
            self.sampler.readings_sampled,
            state.acked_seq,
            batches,
            readings,
        )

    def run_until_signal(self) -> None:
        """Run in the foreground until SIGINT or SIGTERM."""
        stop = threading.Event()

        def _request_stop(_signum: int, _frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGINT, _request_stop)
        signal.signal(signal.SIGTERM, _request_stop)
        self.start()
        stop.wait()
        self.stop()
