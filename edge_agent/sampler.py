"""Sampling: one loop per driver on its own schedule, and a batcher that cuts batches.

Probes are read every few seconds, the RFID reader several times a second, the GPS whenever its
sentences arrive; each driver therefore gets its own thread and interval. Every observation goes
to the ``Batcher``, which cuts a batch into the buffer when it holds ``batch_max_readings`` items or
its oldest item is ``batch_max_age_s`` old, and to ``on_observations`` (local alarm, courier view)
as soon as it is taken, whether or not the hub is reachable.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Final

from coldchain.messages import Observation
from edge_agent.buffer import BatchBuffer, BufferError
from edge_agent.drivers import Driver

log = logging.getLogger(__name__)

BATCHER_TICK_S: Final = 0.1
"""How often the batcher checks the age of what it holds: the added latency is at most this."""


class Batcher:
    """Collects observations from every driver loop and cuts them into buffered batches."""

    def __init__(
        self,
        buffer: BatchBuffer,
        *,
        max_items: int,
        max_age_s: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._buffer = buffer
        self._max_items = max_items
        self._max_age_s = max_age_s
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._pending: list[Observation] = []
        self._pending_since: float | None = None
        self.items_taken = 0

    def add(self, items: Sequence[Observation]) -> None:
        """Hold ``items``; cut full batches at once."""
        if not items:
            return
        with self._lock:
            if self._pending_since is None:
                self._pending_since = self._monotonic()
            self._pending.extend(items)
            self.items_taken += len(items)
            while len(self._pending) >= self._max_items:
                if not self._cut(self._max_items):
                    return  # the buffer refused; the items wait for the next try

    def cut_if_due(self) -> None:
        """Cut what is held if the oldest of it is ``max_age_s`` old."""
        with self._lock:
            if self._pending_since is not None and self._monotonic() - self._pending_since >= self._max_age_s:
                self._cut(len(self._pending))

    def flush(self) -> None:
        """Cut whatever is held now."""
        with self._lock:
            if self._pending:
                self._cut(len(self._pending))

    def _cut(self, count: int) -> bool:
        items, rest = self._pending[:count], self._pending[count:]
        try:
            self._buffer.append(items)
        except BufferError:
            log.exception("cannot buffer %d items; keeping them for the next try", len(items))
            return False
        self._pending = rest
        self._pending_since = self._monotonic() if rest else None
        return True


class DriverLoop:
    """Polls one driver every ``interval_s`` (scheduled ticks, no drift; overruns skip, never burst)."""

    def __init__(
        self,
        name: str,
        driver: Driver,
        interval_s: float,
        sink: Callable[[Sequence[Observation]], None],
        *,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.name = name
        self.driver = driver
        self.interval_s = interval_s
        self._sink = sink
        self._monotonic = monotonic
        self._stop = threading.Event()
        self._reschedule = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"driver-{name}", daemon=True)

    def start(self) -> None:
        """Start polling in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop after the poll in progress."""
        self._stop.set()
        self._reschedule.set()
        self._thread.join(timeout=10)

    def set_interval(self, interval_s: float) -> None:
        """Change the interval; takes effect at once, not after the old interval ran out."""
        self.interval_s = interval_s
        self._reschedule.set()

    def tick(self) -> None:
        """Poll once and hand the observations on; a driver bug is logged, never ends the loop."""
        try:
            observations = self.driver.poll()
        except Exception:
            log.exception("driver %s failed to poll", self.name)
            return
        if observations:
            self._sink(observations)

    def _run(self) -> None:
        next_tick = self._monotonic()
        while not self._stop.is_set():
            self.tick()
            next_tick += self.interval_s
            now = self._monotonic()
            if next_tick < now:
                next_tick = now + self.interval_s - (now - next_tick) % self.interval_s
            if self._reschedule.wait(next_tick - now):
                self._reschedule.clear()
                next_tick = self._monotonic()


class Sampler:
    """Runs every driver loop and the batcher's clock."""

    def __init__(
        self,
        loops: Sequence[DriverLoop],
        batcher: Batcher,
    ) -> None:
        self.loops = loops
        self.batcher = batcher
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batcher", daemon=True)

    def start(self) -> None:
        """Start every loop and the batcher clock."""
        for loop in self.loops:
            loop.start()
        self._thread.start()

    def stop(self) -> None:
        """Stop polling and cut what is held into the buffer."""
        for loop in self.loops:
            loop.stop()
        self._stop.set()
        self._thread.join(timeout=10)
        self.batcher.flush()

    def _run(self) -> None:
        while not self._stop.wait(BATCHER_TICK_S):
            self.batcher.cut_if_due()
