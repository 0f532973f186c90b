"""The sampling loop, driven tick by tick with scripted drivers, a manual clock and the real buffer."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from coldchain.messages import Quantity, Reading, TelemetryBatch, decode
from edge_agent.buffer import MemoryBuffer, SeqCounter, StoredBatch
from edge_agent.config import SamplingConfig
from edge_agent.drivers import Driver
from edge_agent.sampler import Sampler

BOOT = "0123456789abcdef0123456789abcdef"
TS = 1_700_000_000_000


class ManualClock:
    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class ScriptedDriver:
    """Returns the next scripted list of readings on each poll, then nothing."""

    def __init__(self, sensor_id: str, script: Sequence[int]) -> None:
        self._sensor_id = sensor_id
        self._script = list(script)
        self._taken = 0
        self.polls = 0
        self.closed = False

    def poll(self) -> list[Reading]:
        self.polls += 1
        count = self._script.pop(0) if self._script else 0
        result = [
            Reading(self._sensor_id, Quantity.TEMPERATURE, TS + self._taken + i, float((self._taken + i) % 50))
            for i in range(count)
        ]
        self._taken += count
        return result

    @property
    def counters(self) -> Mapping[str, int]:
        return {}

    def close(self) -> None:
        self.closed = True


class GuardedBuffer:
    """The real MemoryBuffer; fails the test loudly if one tick keeps calling a failing append."""

    def __init__(self, inner: MemoryBuffer, limit: int = 50) -> None:
        self.inner = inner
        self.limit = limit
        self.calls = 0

    def append(self, readings: Sequence[Reading]) -> StoredBatch:
        self.calls += 1
        if self.calls > self.limit:
            raise RuntimeError(f"append called {self.calls} times in one tick: the sampler retries without end")
        return self.inner.append(readings)

    def pending(self, after_seq: int, limit: int) -> list[StoredBatch]:
        return self.inner.pending(after_seq, limit)

    def release_through(self, seq: int) -> int:
        return self.inner.release_through(seq)

    def depth(self) -> tuple[int, int]:
        return self.inner.depth()

    def oldest_created_ms(self) -> int | None:
        return self.inner.oldest_created_ms()


def make_buffer(tmp_path, counter_path=None) -> MemoryBuffer:
    return MemoryBuffer("gw-1", BOOT, SeqCounter(counter_path or tmp_path / "seq"), lambda: 1_700_000_000.0)


def batches(buffer) -> list[TelemetryBatch]:
    return [decode(stored.payload, TelemetryBatch) for stored in buffer.pending(0, 1000)]


def sizes(buffer) -> list[int]:
    return [len(b.readings) for b in batches(buffer)]


def config(max_readings: int = 5, max_age_s: float = 10.0) -> SamplingConfig:
    return SamplingConfig(interval_s=1.0, batch_max_age_s=max_age_s, batch_max_readings=max_readings)


def test_scripted_driver_satisfies_the_driver_protocol():
    assert isinstance(ScriptedDriver("p", []), Driver)


def test_batch_is_cut_at_max_readings(tmp_path):
    buffer = make_buffer(tmp_path)
    sampler = Sampler([ScriptedDriver("p1", [2, 2, 2, 2, 2])], buffer, config(5, 1000), monotonic=ManualClock())
    sampler.tick()
    sampler.tick()
    assert buffer.depth() == (0, 0)
    sampler.tick()  # 6 pending: one batch of 5, one reading left
    assert sizes(buffer) == [5]
    sampler.tick()
    sampler.tick()  # 1 + 4 = 5: the second batch
    assert sizes(buffer) == [5, 5]
    assert sampler.readings_sampled == 10


def test_one_tick_can_cut_several_batches(tmp_path):
    buffer = make_buffer(tmp_path)
    sampler = Sampler([ScriptedDriver("p1", [12])], buffer, config(5, 1000), monotonic=ManualClock())
    sampler.tick()
    assert sizes(buffer) == [5, 5]
    assert [b.seq for b in batches(buffer)] == [1, 2]
    sampler.flush()
    assert sizes(buffer) == [5, 5, 2]


def test_readings_keep_their_order_across_batches_and_drivers(tmp_path):
    buffer = make_buffer(tmp_path)
    drivers = [ScriptedDriver("a", [2, 2]), ScriptedDriver("b", [1, 1])]
    sampler = Sampler(drivers, buffer, config(4, 1000), monotonic=ManualClock())
    sampler.tick()
    sampler.tick()
    sampler.flush()
    taken = [(r.sensor_id, r.ts_ms) for b in batches(buffer) for r in b.readings]
    assert taken == [("a", TS), ("a", TS + 1), ("b", TS), ("a", TS + 2), ("a", TS + 3), ("b", TS + 1)]
    assert sizes(buffer) == [4, 2]
    assert all(d.polls == 2 for d in drivers)


def test_batch_is_cut_when_its_oldest_reading_reaches_max_age(tmp_path):
    clock = ManualClock(100.0)
    buffer = make_buffer(tmp_path)
    sampler = Sampler([ScriptedDriver("p1", [0, 1, 1, 1, 1])], buffer, config(100, 10.0), monotonic=clock)
    sampler.tick()  # t=100: nothing read, nothing pending, no age running
    clock.now = 103.0
    sampler.tick()  # first reading at t=103
    clock.now = 112.9
    sampler.tick()
    assert buffer.depth() == (0, 0)
    clock.now = 113.0
    sampler.tick()  # 10 s after the first reading
    assert sizes(buffer) == [3]
    clock.now = 114.0
    sampler.tick()  # a new batch starts aging now
    clock.now = 123.5
    sampler.tick()
    assert sizes(buffer) == [3]
    clock.now = 124.0
    sampler.tick()
    assert sizes(buffer) == [3, 1]


def test_idle_ticks_do_not_cut_empty_batches(tmp_path):
    clock = ManualClock()
    buffer = make_buffer(tmp_path)
    sampler = Sampler([ScriptedDriver("p1", [])], buffer, config(1, 0.0), monotonic=clock)
    for _ in range(5):
        clock.now += 100
        sampler.tick()
    sampler.flush()
    assert buffer.depth() == (0, 0)
    assert sampler.readings_sampled == 0


def test_zero_max_age_cuts_every_tick_with_readings(tmp_path):
    buffer = make_buffer(tmp_path)
    sampler = Sampler([ScriptedDriver("p1", [2, 0, 3])], buffer, config(100, 0.0), monotonic=ManualClock())
    for _ in range(3):
        sampler.tick()
    assert sizes(buffer) == [2, 3]


def test_flush_cuts_whatever_is_pending(tmp_path):
    buffer = make_buffer(tmp_path)
    sampler = Sampler([ScriptedDriver("p1", [3])], buffer, config(100, 1000), monotonic=ManualClock())
    sampler.flush()
    assert buffer.depth() == (0, 0)
    sampler.tick()
    assert buffer.depth() == (0, 0)
    sampler.flush()
    assert sizes(buffer) == [3]
    sampler.flush()
    assert sizes(buffer) == [3]


def test_readings_sampled_counts_pending_and_cut_readings(tmp_path):
    buffer = make_buffer(tmp_path)
    sampler = Sampler(
        [ScriptedDriver("a", [3, 4]), ScriptedDriver("b", [0, 2])], buffer, config(5, 1000), monotonic=ManualClock()
    )
    sampler.tick()
    assert sampler.readings_sampled == 3
    sampler.tick()
    assert sampler.readings_sampled == 9
    assert buffer.depth() == (1, 5)


def test_on_readings_sees_every_reading_as_taken(tmp_path):
    seen: list[list[str]] = []
    buffer = make_buffer(tmp_path)
    sampler = Sampler(
        [ScriptedDriver("a", [2]), ScriptedDriver("b", [0]), ScriptedDriver("c", [1])],
        buffer,
        config(100, 1000),
        on_readings=lambda readings: seen.append([r.sensor_id for r in readings]),
        monotonic=ManualClock(),
    )
    sampler.tick()
    assert seen == [["a", "a"], ["c"]]
    assert buffer.depth() == (0, 0)


def test_buffer_error_on_an_age_cut_keeps_the_readings_for_the_next_try(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("not a directory", encoding="ascii")
    clock = ManualClock(0.0)
    buffer = make_buffer(tmp_path, blocker / "seq")
    sampler = Sampler([ScriptedDriver("p1", [2, 1, 1])], buffer, config(100, 5.0), monotonic=clock)
    sampler.tick()
    clock.now = 5.0
    sampler.tick()  # due, but the buffer cannot persist the seq
    assert buffer.depth() == (0, 0)
    blocker.unlink()
    clock.now = 6.0
    sampler.tick()  # still due: everything taken so far goes into one batch
    [batch] = batches(buffer)
    assert batch.seq == 1
    assert [r.ts_ms for r in batch.readings] == [TS, TS + 1, TS + 2, TS + 3]
    assert sampler.readings_sampled == 4


def test_buffer_error_on_flush_keeps_the_readings(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x", encoding="ascii")
    buffer = make_buffer(tmp_path, blocker / "seq")
    sampler = Sampler([ScriptedDriver("p1", [3])], buffer, config(100, 1000), monotonic=ManualClock())
    sampler.tick()
    sampler.flush()
    assert buffer.depth() == (0, 0)
    blocker.unlink()
    sampler.flush()
    assert sizes(buffer) == [3]


def test_buffer_error_on_a_size_cut_keeps_the_readings_and_returns(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x", encoding="ascii")
    buffer = GuardedBuffer(make_buffer(tmp_path, blocker / "seq"))
    sampler = Sampler([ScriptedDriver("p1", [6, 1])], buffer, config(5, 1000), monotonic=ManualClock())
    # the buffer cannot persist: tick must give up for now, not retry the same cut forever
    sampler.tick()
    assert buffer.depth() == (0, 0)
    assert sampler.readings_sampled == 6
    blocker.unlink()
    buffer.calls = 0
    sampler.tick()
    assert sizes(buffer) == [5]
    sampler.flush()
    assert sizes(buffer) == [5, 2]
    assert [r.ts_ms for b in batches(buffer) for r in b.readings] == [TS + i for i in range(7)]
