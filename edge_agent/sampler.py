"""The sampling loop: poll every driver on a fixed schedule and cut readings into batches."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from coldchain.messages import Reading
from edge_agent.buffer import BatchBuffer, BufferError
from edge_agent.config import SamplingConfig
from edge_agent.drivers import Driver

log = logging.getLogger(__name__)


class Sampler:
    """Polls drivers every ``interval_s`` (no drift: ticks are scheduled, not slept) and batches.

    A batch is cut when it holds ``batch_max_readings`` or its oldest reading is
    ``batch_max_age_s`` old. ``on_readings`` sees every reading as it is taken (the local view).
    """

    def __init__(
        self,
        drivers: Sequence[Driver],
        buffer: BatchBuffer,
        config: SamplingConfig,
        *,
        on_readings: Callable[[Sequence[Reading]], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._drivers = drivers
        self._buffer = buffer
        self._config = config
        self._on_readings = on_readings
        self._monotonic = monotonic
        self._pending: list[Reading] = []
        self._pending_since: float | None = None
        self.readings_sampled = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        """Start sampling in a background thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop, keeping the readings taken so far in the buffer."""
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()

    def tick(self) -> None:
        """Poll every driver once and cut a batch if one is due."""
        for driver in self._drivers:
            readings = driver.poll()
            if readings:
                if self._pending_since is None:
                    self._pending_since = self._monotonic()
                self._pending.extend(readings)
                self.readings_sampled += len(readings)
                if self._on_readings is not None:
                    self._on_readings(readings)
        while len(self._pending) >= self._config.batch_max_readings:
            if not self._cut(self._config.batch_max_readings):
                return  # the buffer refused; the readings wait for the next tick
        due = self._pending_since is not None and (
            self._monotonic() - self._pending_since >= self._config.batch_max_age_s
        )
        if due:
            self.flush()

    def flush(self) -> None:
        """Cut whatever is pending into a batch now."""
        if self._pending:
            self._cut(len(self._pending))

    def _cut(self, count: int) -> bool:
        readings, rest = self._pending[:count], self._pending[count:]
        try:
            self._buffer.append(readings)
        except BufferError:
            log.exception("cannot buffer %d readings; keeping them for the next try", len(readings))
            return False
        self._pending = rest
        self._pending_since = self._monotonic() if rest else None
        return True

    def _run(self) -> None:
        interval = self._config.interval_s
        next_tick = self._monotonic()
        while not self._stop.is_set():
            self.tick()
            next_tick += interval
            now = self._monotonic()
            if next_tick < now:  # a slow bus overran the interval: skip missed ticks, don't burst
                next_tick = now + interval - (now - next_tick) % interval
            self._stop.wait(next_tick - now)
