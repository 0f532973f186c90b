"""The batcher (cuts observations into buffered batches) and the per-driver polling loop."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence

import pytest

from coldchain.messages import GpsFix, Observation, Quantity, Reading, TagRead, TelemetryBatch, decode
from edge_agent.buffer import BufferError, StoredBatch
from edge_agent.disk_buffer import BufferConfig, DiskBuffer
from edge_agent.sampler import Batcher, DriverLoop, Sampler

GATEWAY = "gw-test-1"
BOOT = "0123456789abcdef0123456789abcdef"
TS = 1_767_225_600_000
EPC = "30340242201d8840009efdf7"


class Clock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reading(i: int) -> Reading:
    return Reading("probe-1", Quantity.TEMPERATURE, TS + i, float(i % 50))


def readings(count: int, start: int = 0) -> list[Reading]:
    return [reading(i) for i in range(start, start + count)]


def held_batches(buffer: DiskBuffer) -> list[TelemetryBatch]:
    return [decode(b.payload, TelemetryBatch) for b in buffer.pending(0, 10_000)]


def held_readings(buffer: DiskBuffer) -> list[list[Reading]]:
    return [batch.readings for batch in held_batches(buffer)]


@pytest.fixture
def buffer(tmp_path):
    disk = DiskBuffer(tmp_path / "buffer.db", GATEWAY, BOOT, BufferConfig(), wall_clock=lambda: 1_767_225_600.0)
    yield disk
    disk.close()


# ---------------------------------------------------------------------------------------------
# Batcher
# ---------------------------------------------------------------------------------------------


def test_one_big_add_cuts_several_full_batches(buffer):
    batcher = Batcher(buffer, max_items=10, max_age_s=60, monotonic=Clock())
    batcher.add(readings(35))
    assert held_readings(buffer) == [readings(10), readings(10, 10), readings(10, 20)]
    assert batcher.items_taken == 35
    batcher.flush()
    assert held_readings(buffer)[-1] == readings(5, 30)
    assert buffer.depth() == (4, 35)


def test_cut_exactly_at_max_items(buffer):
    batcher = Batcher(buffer, max_items=4, max_age_s=60, monotonic=Clock())
    batcher.add(readings(3))
    assert buffer.depth() == (0, 0)
    batcher.add(readings(1, 3))
    assert held_readings(buffer) == [readings(4)]
    batcher.flush()  # nothing held: no empty batch
    assert buffer.depth() == (1, 4)


def test_mixed_observations_are_sorted_into_the_batch(buffer):
    batcher = Batcher(buffer, max_items=3, max_age_s=60, monotonic=Clock())
    tag = TagRead("dock-reader", EPC, None, TS + 1, -50.0)
    fix = GpsFix("gps-1", TS + 2, None, 22.5, 114.0, 1)
    batcher.add([tag, reading(0), fix])
    (batch,) = held_batches(buffer)
    assert (batch.readings, batch.tag_reads, batch.fixes) == ([reading(0)], [tag], [fix])


def test_cut_if_due_cuts_at_max_age(buffer):
    clock = Clock()
    batcher = Batcher(buffer, max_items=100, max_age_s=5.0, monotonic=clock)
    batcher.cut_if_due()  # nothing held
    batcher.add(readings(2))
    clock.now += 3
    batcher.add(readings(1, 2))
    clock.now += 1.9
    batcher.cut_if_due()  # the oldest is 4.9 s old
    assert buffer.depth() == (0, 0)
    clock.now += 0.1
    batcher.cut_if_due()  # 5.0 s: due
    assert held_readings(buffer) == [readings(3)]
    clock.now += 100
    batcher.cut_if_due()  # the age restarts with the next item, not with the last cut
    assert buffer.depth() == (1, 3)
    batcher.add(readings(1, 3))
    clock.now += 4.99
    batcher.cut_if_due()
    assert buffer.depth() == (1, 3)
    clock.now += 0.01
    batcher.cut_if_due()
    assert held_readings(buffer) == [readings(3), readings(1, 3)]
    assert batcher.items_taken == 4


def test_age_of_the_remainder_starts_when_a_full_batch_is_cut(buffer):
    clock = Clock()
    batcher = Batcher(buffer, max_items=4, max_age_s=5.0, monotonic=clock)
    batcher.add(readings(2))
    clock.now += 4
    batcher.add(readings(3, 2))  # cuts 0..3; item 4 arrived now
    assert held_readings(buffer) == [readings(4)]
    clock.now += 4
    batcher.cut_if_due()
    assert buffer.depth() == (1, 4)
    clock.now += 1
    batcher.cut_if_due()
    assert held_readings(buffer) == [readings(4), readings(1, 4)]


def test_flush_cuts_whatever_is_held(buffer):
    batcher = Batcher(buffer, max_items=100, max_age_s=60, monotonic=Clock())
    batcher.add([])
    batcher.flush()
    assert buffer.depth() == (0, 0)
    assert batcher.items_taken == 0
    batcher.add(readings(7))
    batcher.flush()
    assert held_readings(buffer) == [readings(7)]
    batcher.flush()
    assert buffer.depth() == (1, 7)


class RefusingBuffer:
    """A ``BatchBuffer`` whose disk is broken until ``healthy`` is set."""

    def __init__(self) -> None:
        self.healthy = False
        self.attempts = 0
        self.batches: list[list[Observation]] = []

    @property
    def last_seq(self) -> int:
        return len(self.batches)

    def append(self, items: Sequence[Observation]) -> StoredBatch:
        self.attempts += 1
        if not self.healthy:
            raise BufferError("disk I/O error")
        self.batches.append(list(items))
        return StoredBatch(len(self.batches), b"", len(items), 0)

    def pending(self, after_seq: int, limit: int, *, below_seq: int | None = None) -> list[StoredBatch]:
        return []

    def release_through(self, seq: int) -> int:
        return 0

    def raise_seq_floor(self, seq: int) -> None:
        pass

    def depth(self) -> tuple[int, int]:
        return len(self.batches), sum(map(len, self.batches))

    def oldest_created_ms(self) -> int | None:
        return None


def test_a_refusing_buffer_keeps_the_items_and_does_not_spin(caplog):
    refusing = RefusingBuffer()
    clock = Clock()
    batcher = Batcher(refusing, max_items=10, max_age_s=5, monotonic=clock)
    with caplog.at_level(logging.ERROR, logger="edge_agent.sampler"):
        batcher.add(readings(35))
    assert refusing.attempts == 1  # one try per add, not a loop
    assert batcher.items_taken == 35
    assert "cannot buffer" in caplog.text
    clock.now += 10
    batcher.cut_if_due()
    batcher.flush()
    assert refusing.attempts == 3
    assert refusing.batches == []

    refusing.healthy = True
    batcher.add(readings(1, 35))
    assert refusing.batches == [readings(10), readings(10, 10), readings(10, 20)]
    batcher.flush()
    assert refusing.batches[-1] == readings(6, 30)
    assert refusing.depth() == (4, 36)
    assert batcher.items_taken == 36


def test_batcher_is_safe_from_several_threads(buffer):
    batcher = Batcher(buffer, max_items=7, max_age_s=60)

    def feed(offset: int) -> None:
        for i in range(50):
            batcher.add([reading(offset + i)])

    threads = [threading.Thread(target=feed, args=(1000 * t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    batcher.flush()
    got = [r for batch in held_readings(buffer) for r in batch]
    assert sorted(got, key=lambda r: r.ts_ms) == sorted(
        (reading(1000 * t + i) for t in range(4) for i in range(50)), key=lambda r: r.ts_ms
    )
    assert batcher.items_taken == 200


# ---------------------------------------------------------------------------------------------
# DriverLoop
# ---------------------------------------------------------------------------------------------


class ScriptedDriver:
    """Returns the scripted observations one poll at a time; an exception in the script is raised."""

    def __init__(self, script: Sequence[Sequence[Observation] | Exception]) -> None:
        self._script = list(script)
        self.polls = 0
        self.closed = False

    def poll(self) -> Sequence[Observation]:
        self.polls += 1
        step = self._script.pop(0) if self._script else []
        if isinstance(step, Exception):
            raise step
        return step

    @property
    def counters(self) -> Mapping[str, int]:
        return {}

    def close(self) -> None:
        self.closed = True


class CountingDriver(ScriptedDriver):
    def __init__(self) -> None:
        super().__init__([])
        self.lock = threading.Lock()

    def poll(self) -> Sequence[Observation]:
        with self.lock:
            self.polls += 1
            return [reading(self.polls)]

    def count(self) -> int:
        with self.lock:
            return self.polls


def test_tick_hands_observations_to_the_sink_and_survives_a_driver_bug(caplog):
    received: list[Sequence[Observation]] = []
    driver = ScriptedDriver([readings(2), RuntimeError("driver bug"), [], readings(1, 5)])
    loop = DriverLoop("probe", driver, 1.0, received.append)
    with caplog.at_level(logging.ERROR, logger="edge_agent.sampler"):
        for _ in range(4):
            loop.tick()
    assert driver.polls == 4
    assert received == [readings(2), readings(1, 5)]  # the failed and the empty poll hand on nothing
    assert "driver probe failed to poll" in caplog.text
    assert "driver bug" in caplog.text


def wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def polls_during(driver: CountingDriver, seconds: float) -> int:
    start = driver.count()
    time.sleep(seconds)
    return driver.count() - start


def test_running_loop_follows_set_interval():
    driver = CountingDriver()
    sunk: list[Sequence[Observation]] = []
    loop = DriverLoop("probe", driver, 0.05, sunk.append)
    loop.start()
    try:
        fast = polls_during(driver, 1.0)  # about 20
        loop.set_interval(0.5)
        time.sleep(0.1)  # let the reschedule land
        slow = polls_during(driver, 1.5)  # about 3
        assert fast >= 6
        assert slow <= 6
        assert fast > 2 * slow
        loop.set_interval(0.05)
        assert polls_during(driver, 1.0) >= 6
    finally:
        loop.stop()
    assert not loop._thread.is_alive()
    after = driver.count()
    time.sleep(0.2)
    assert driver.count() == after  # stopped for good
    assert len(sunk) == after


def test_set_interval_takes_effect_at_once_not_after_the_old_interval():
    driver = CountingDriver()
    loop = DriverLoop("probe", driver, 3600.0, lambda _obs: None)
    loop.start()
    try:
        assert wait_for(lambda: driver.count() == 1)  # the first poll is immediate
        loop.set_interval(0.05)
        assert wait_for(lambda: driver.count() >= 4, timeout=5.0)
    finally:
        loop.stop()


def test_a_loop_keeps_running_through_driver_exceptions():
    driver = ScriptedDriver([RuntimeError("boom")] * 3 + [readings(1)])
    received: list[Sequence[Observation]] = []
    loop = DriverLoop("probe", driver, 0.02, received.append)
    loop.start()
    try:
        assert wait_for(lambda: received == [readings(1)])
    finally:
        loop.stop()


def test_sampler_feeds_the_batcher_and_flushes_on_stop(buffer):
    batcher = Batcher(buffer, max_items=1000, max_age_s=3600)
    driver = CountingDriver()
    sampler = Sampler([DriverLoop("probe", driver, 0.02, batcher.add)], batcher)
    sampler.start()
    assert wait_for(lambda: batcher.items_taken >= 3)
    sampler.stop()
    polled = driver.count()
    assert batcher.items_taken == polled
    assert buffer.depth() == (1, polled)
    assert held_readings(buffer) == [[reading(i) for i in range(1, polled + 1)]]
