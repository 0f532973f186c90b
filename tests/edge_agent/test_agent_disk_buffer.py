"""The durable SQLite store-and-forward buffer: seqs, persistence, crash safety, the disk budget."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coldchain.messages import GpsFix, Observation, Quantity, Reading, ReleasedRange, TagRead, TelemetryBatch, decode
from edge_agent.buffer import StoredBatch
from edge_agent.disk_buffer import ROW_OVERHEAD_BYTES, SEQ_SEED_SHIFT, BufferConfig, DiskBuffer, SyncPolicy

REPO = Path(__file__).resolve().parents[2]
GATEWAY = "gw-test-1"
BOOT = "0123456789abcdef0123456789abcdef"
TS = 1_767_225_600_000
EPC = "30340242201d8840009efdf7"
NOW_S = 1_767_225_600.0
SEED = int(NOW_S * 1000) << SEQ_SEED_SHIFT
BIG = BufferConfig(budget_bytes=1 << 30)


class Clock:
    def __init__(self, now: float = NOW_S) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def reading(i: int, ts: int | None = None, sensor: str = "probe-1") -> Reading:
    return Reading(sensor, Quantity.TEMPERATURE, TS + i if ts is None else ts, float(i % 50))


def tag_read(i: int, ts: int | None = None) -> TagRead:
    return TagRead("dock-reader", EPC, None, TS + i if ts is None else ts, -55.0)


def fix(i: int, ts: int | None = None) -> GpsFix:
    return GpsFix("gps-1", TS + i if ts is None else ts, None, 22.5, 114.0, 1, 7)


def readings(count: int, start: int = 0) -> list[Reading]:
    return [reading(i) for i in range(start, start + count)]


def unpack(stored: StoredBatch) -> TelemetryBatch:
    return decode(stored.payload, TelemetryBatch)


def open_buffer(path: Path, config: BufferConfig = BIG, clock: Clock | None = None) -> DiskBuffer:
    return DiskBuffer(path, GATEWAY, BOOT, config, wall_clock=clock or Clock())


@pytest.fixture(params=list(SyncPolicy), ids=lambda p: p.value)
def sync(request) -> SyncPolicy:
    return request.param


@pytest.fixture
def buffers(tmp_path):
    """Opens buffers and closes every one at the end of the test."""
    opened: list[DiskBuffer] = []

    def make(path: Path | None = None, config: BufferConfig = BIG, clock: Clock | None = None) -> DiskBuffer:
        buffer = open_buffer(path or tmp_path / "buffer.db", config, clock)
        opened.append(buffer)
        return buffer

    yield make
    for buffer in opened:
        with contextlib.suppress(Exception):  # already closed by the test
            buffer.close()


def held_seqs(buffer: DiskBuffer) -> list[int]:
    return [b.seq for b in buffer.pending(0, 1_000_000)]


def expected_bytes(buffer: DiskBuffer) -> int:
    return sum(len(b.payload) + ROW_OVERHEAD_BYTES for b in buffer.pending(0, 1_000_000))


def expected_items(buffer: DiskBuffer) -> int:
    return sum(b.item_count for b in buffer.pending(0, 1_000_000))


def assert_accounting(buffer: DiskBuffer) -> None:
    """depth() and size_bytes agree with what is actually held."""
    held = buffer.pending(0, 1_000_000)
    assert buffer.depth() == (len(held), expected_items(buffer))
    assert buffer.size_bytes == expected_bytes(buffer)


# ---------------------------------------------------------------------------------------------
# seqs
# ---------------------------------------------------------------------------------------------


def test_fresh_buffer_seeds_its_seq_from_the_wall_clock(buffers):
    clock = Clock(1_767_225_600.123)
    buffer = buffers(config=BIG, clock=clock)
    seed = 1_767_225_600_123 << 10
    assert buffer.last_seq == seed
    assert buffer.append(readings(1)).seq == seed + 1
    assert buffer.last_seq == seed + 1


def test_seqs_are_consecutive(buffers, sync):
    buffer = buffers(config=BufferConfig(sync=sync))
    seqs = [buffer.append(readings(2, start=i)).seq for i in range(10)]
    assert seqs == list(range(SEED + 1, SEED + 11))
    assert buffer.last_seq == SEED + 10
    assert held_seqs(buffer) == seqs


def test_reopen_keeps_the_seq_and_ignores_the_new_wall_clock(tmp_path, buffers):
    path = tmp_path / "state" / "buffer.db"
    first = buffers(path)
    for i in range(3):
        first.append(readings(1, start=i))
    first.close()
    # A clock set back (or forward) at the next start must not re-seed an existing buffer.
    for clock in (Clock(NOW_S - 86_400), Clock(NOW_S + 86_400)):
        again = buffers(path, clock=clock)
        assert again.last_seq == SEED + 3
        again.close()
    last = buffers(path)
    assert last.append(readings(1)).seq == SEED + 4


def test_raise_seq_floor(tmp_path, buffers):
    path = tmp_path / "buffer.db"
    buffer = buffers(path)
    buffer.append(readings(1))
    buffer.raise_seq_floor(SEED + 100)
    assert buffer.last_seq == SEED + 100
    buffer.raise_seq_floor(SEED + 50)  # never lowers
    assert buffer.last_seq == SEED + 100
    assert buffer.append(readings(1)).seq == SEED + 101
    buffer.raise_seq_floor(SEED + 500)
    buffer.close()
    reopened = buffers(path)
    assert reopened.last_seq == SEED + 500
    assert reopened.append(readings(1)).seq == SEED + 501
    assert held_seqs(reopened) == [SEED + 1, SEED + 101, SEED + 501]


# ---------------------------------------------------------------------------------------------
# payloads
# ---------------------------------------------------------------------------------------------


def test_payload_decodes_into_sorted_lists(buffers):
    buffer = buffers()
    items: list[Observation] = [reading(3), tag_read(1), fix(2), reading(0, sensor="probe-2"), fix(5), tag_read(4)]
    stored = buffer.append(items)
    assert stored.item_count == 6
    assert stored.created_ms == int(NOW_S * 1000)
    batch = unpack(stored)
    assert batch.gateway_id == GATEWAY
    assert batch.boot_id == BOOT
    assert batch.seq == stored.seq == SEED + 1
    assert batch.oldest_held_seq == stored.seq
    assert batch.readings == [reading(3), reading(0, sensor="probe-2")]
    assert batch.tag_reads == [tag_read(1), tag_read(4)]
    assert batch.fixes == [fix(2), fix(5)]
    assert batch.released == []
    # pending() hands out the very same bytes
    assert buffer.pending(0, 10) == [stored]


def test_oldest_held_seq_is_the_oldest_held_batch(buffers):
    buffer = buffers()
    first = buffer.append(readings(1))
    assert unpack(buffer.append(readings(1))).oldest_held_seq == first.seq
    buffer.release_through(first.seq)
    third = buffer.append(readings(1))
    assert unpack(third).oldest_held_seq == first.seq + 1
    buffer.release_through(third.seq)
    fourth = buffer.append(readings(1))
    assert unpack(fourth).oldest_held_seq == fourth.seq  # nothing older held


def test_oldest_created_ms_follows_the_front(buffers):
    clock = Clock()
    buffer = buffers(clock=clock)
    assert buffer.oldest_created_ms() is None
    first = buffer.append(readings(1))
    clock.now += 5
    buffer.append(readings(1))
    assert buffer.oldest_created_ms() == int(NOW_S * 1000)
    buffer.release_through(first.seq)
    assert buffer.oldest_created_ms() == int((NOW_S + 5) * 1000)


# ---------------------------------------------------------------------------------------------
# pending / release
# ---------------------------------------------------------------------------------------------


def test_pending_order_and_bounds(buffers):
    buffer = buffers()
    seqs = [buffer.append(readings(1, start=i)).seq for i in range(8)]
    assert [b.seq for b in buffer.pending(0, 100)] == seqs
    assert [b.seq for b in buffer.pending(0, 3)] == seqs[:3]
    assert [b.seq for b in buffer.pending(seqs[2], 3)] == seqs[3:6]
    assert [b.seq for b in buffer.pending(seqs[5], 100)] == seqs[6:]
    assert buffer.pending(seqs[-1], 100) == []
    assert [b.seq for b in buffer.pending(0, 100, below_seq=seqs[4])] == seqs[:4]
    assert [b.seq for b in buffer.pending(seqs[1], 100, below_seq=seqs[4])] == seqs[2:4]
    assert [b.seq for b in buffer.pending(seqs[1], 1, below_seq=seqs[4])] == [seqs[2]]
    assert buffer.pending(seqs[3], 100, below_seq=seqs[4]) == []
    assert buffer.pending(0, 0) == []
    for stored, seq in zip(buffer.pending(0, 100), seqs, strict=True):
        assert unpack(stored).readings == [reading(seq - SEED - 1)]


def test_release_through(buffers):
    buffer = buffers()
    seqs = [buffer.append(readings(i + 1, start=10 * i)).seq for i in range(5)]
    assert buffer.depth() == (5, 15)
    assert buffer.release_through(seqs[0] - 1) == 0
    assert buffer.release_through(seqs[1]) == 2
    assert held_seqs(buffer) == seqs[2:]
    assert buffer.depth() == (3, 12)
    assert buffer.release_through(seqs[1]) == 0  # again: nothing left there
    assert buffer.release_through(seqs[-1] + 1000) == 3
    assert held_seqs(buffer) == []
    assert buffer.depth() == (0, 0)
    assert buffer.size_bytes == 0
    assert buffer.released_batches == 0  # a receipt is not a budget drop


def test_depth_and_size_bytes_follow_appends_releases_and_reopen(tmp_path, buffers, sync):
    path = tmp_path / "buffer.db"
    config = BufferConfig(sync=sync)
    buffer = buffers(path, config)
    assert buffer.depth() == (0, 0)
    assert buffer.size_bytes == 0
    stored = [buffer.append([reading(i), tag_read(i), fix(i)][: i % 3 + 1]) for i in range(9)]
    assert buffer.depth() == (9, sum(s.item_count for s in stored))
    assert buffer.size_bytes == sum(len(s.payload) + ROW_OVERHEAD_BYTES for s in stored)
    assert_accounting(buffer)
    buffer.release_through(stored[3].seq)
    assert_accounting(buffer)
    depth, size = buffer.depth(), buffer.size_bytes
    buffer.close()
    reopened = buffers(path, config)
    assert reopened.depth() == depth
    assert reopened.size_bytes == size
    assert_accounting(reopened)


# ---------------------------------------------------------------------------------------------
# durability
# ---------------------------------------------------------------------------------------------


def test_batches_and_counters_survive_close_and_reopen(tmp_path, buffers, sync):
    path = tmp_path / "buffer.db"
    config = BufferConfig(sync=sync)
    buffer = buffers(path, config)
    stored = [buffer.append([reading(i), tag_read(i), fix(i)]) for i in range(4)]
    buffer.release_through(stored[0].seq)
    buffer.close()
    reopened = buffers(path, config)
    assert reopened.last_seq == stored[-1].seq
    assert reopened.pending(0, 100) == stored[1:]
    assert reopened.append(readings(1)).seq == stored[-1].seq + 1


CHILD = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from coldchain.messages import Quantity, Reading, TagRead
    from edge_agent.disk_buffer import BufferConfig, DiskBuffer, SyncPolicy

    path, count, sync = Path(sys.argv[1]), int(sys.argv[2]), SyncPolicy(sys.argv[3])
    buffer = DiskBuffer(path, "gw-test-1", "0123456789abcdef0123456789abcdef", BufferConfig(sync=sync),
                        wall_clock=lambda: 1_767_225_600.0)
    for i in range(count):
        buffer.append([Reading("probe-1", Quantity.TEMPERATURE, 1_767_225_600_000 + i, float(i % 50)),
                       TagRead("dock-reader", "30340242201d8840009efdf7", None, 1_767_225_600_000 + i, -55.0)])
    print(buffer.last_seq, flush=True)
    os.kill(os.getpid(), signal.SIGKILL)
    """
)


def test_every_committed_batch_survives_kill_9(tmp_path, buffers, sync):
    path = tmp_path / "buffer.db"
    count = 40
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(count), sync.value],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    assert int(result.stdout.split()[0]) == SEED + count
    buffer = buffers(path, BufferConfig(sync=sync))
    assert buffer.last_seq == SEED + count
    held = buffer.pending(0, 1000)
    assert [b.seq for b in held] == list(range(SEED + 1, SEED + count + 1))
    for i, stored in enumerate(held):
        batch = unpack(stored)
        assert batch.readings == [reading(i)]
        assert batch.tag_reads == [tag_read(i)]
        assert batch.fixes == []
    assert buffer.depth() == (count, 2 * count)
    assert_accounting(buffer)


# ---------------------------------------------------------------------------------------------
# the disk budget
# ---------------------------------------------------------------------------------------------


def sizes_of(batches: list[list[Observation]]) -> list[int]:
    """What each batch costs against the budget, measured on a scratch buffer that numbers alike."""
    scratch_dir = Path(tempfile.mkdtemp())
    try:
        scratch = open_buffer(scratch_dir / "scratch.db")
        sizes = [len(scratch.append(items).payload) + ROW_OVERHEAD_BYTES for items in batches]
        scratch.close()
        return sizes
    finally:
        shutil.rmtree(scratch_dir)


def test_budget_drops_the_oldest_and_reports_exactly_what_went(tmp_path, buffers, sync):
    # Timestamps deliberately out of order inside a batch: the record needs min / max, not first / last.
    first: list[Observation] = [reading(0, TS + 50), tag_read(0, TS + 10), fix(0, TS + 30), reading(1, TS + 40)]
    second: list[Observation] = [tag_read(1, TS + 70), tag_read(2, TS + 60), fix(1, TS + 65)]
    third: list[Observation] = [reading(2, TS + 100)]
    big: list[Observation] = [reading(i, TS + 1000 + i) for i in range(40)]
    s1, s2, s3, s_big = sizes_of([first, second, third, big])
    assert s_big > s1 + s2  # room for the test's arithmetic
    budget = s3 + s_big + s2 // 2  # holds the three small ones; the big one needs the first two gone
    assert budget >= s1 + s2 + s3
    path = tmp_path / "buffer.db"
    config = BufferConfig(budget_bytes=budget, sync=sync)
    buffer = buffers(path, config)
    b1, b2, b3 = buffer.append(first), buffer.append(second), buffer.append(third)
    assert buffer.released_batches == 0
    assert held_seqs(buffer) == [b1.seq, b2.seq, b3.seq]

    b4 = buffer.append(big)
    assert held_seqs(buffer) == [b3.seq, b4.seq]  # the new batch is never the victim
    assert buffer.released_batches == 2
    assert buffer.size_bytes <= budget
    assert_accounting(buffer)
    batch4 = unpack(b4)
    assert batch4.readings == big
    assert batch4.released == []  # the record rides in the next batch
    assert batch4.oldest_held_seq == b3.seq  # the floor moved with the eviction

    buffer.release_through(b4.seq)  # a receipt, so what follows fits without a further eviction
    b5 = buffer.append([reading(7, TS + 2000)])
    assert held_seqs(buffer) == [b5.seq]
    expected = ReleasedRange(
        first_seq=b1.seq,
        last_seq=b2.seq,
        reason="disk_budget",
        readings=2,
        tag_reads=3,
        fixes=2,
        first_ts_ms=TS + 10,
        last_ts_ms=TS + 70,
    )
    assert unpack(b5).released == [expected]
    b6 = buffer.append([reading(8, TS + 2001)])
    assert unpack(b6).released == []  # sent once
    assert buffer.released_batches == 2


def test_pending_gap_record_survives_reopen_until_sent(tmp_path, buffers, sync):
    small = [[reading(i, TS + i)] for i in range(3)]
    sizes = sizes_of(small)
    budget = sum(sizes) + sizes[0] // 2  # three fit, a fourth of the same size does not
    path = tmp_path / "buffer.db"
    config = BufferConfig(budget_bytes=budget, sync=sync)
    buffer = buffers(path, config)
    stored = [buffer.append(items) for items in small]
    fourth = buffer.append([reading(3, TS + 3)])
    assert held_seqs(buffer) == [stored[1].seq, stored[2].seq, fourth.seq]
    assert buffer.released_batches == 1
    buffer.close()

    reopened = buffers(path, config)
    assert reopened.released_batches == 1
    assert_accounting(reopened)
    reopened.release_through(fourth.seq)  # a receipt, so what follows fits without a further eviction
    fifth = reopened.append([reading(4, TS + 4)])
    assert unpack(fifth).released == [
        ReleasedRange(stored[0].seq, stored[0].seq, "disk_budget", 1, 0, 0, TS, TS),
    ]
    reopened.close()
    # Sent: a further reopen does not bring it back.
    last = buffers(path, BufferConfig(sync=sync))
    assert unpack(last.append([reading(5, TS + 5)])).released == []


def test_a_batch_bigger_than_the_budget_is_still_kept(buffers):
    buffer = buffers(config=BufferConfig(budget_bytes=200))
    first = buffer.append(readings(1))
    huge = buffer.append(readings(50))
    assert held_seqs(buffer) == [huge.seq]
    assert buffer.released_batches == 1
    follow = buffer.append(readings(1, start=99))
    assert unpack(follow).released[0].first_seq == first.seq
    assert unpack(follow).released[0].last_seq == first.seq


def test_gap_record_for_a_batch_of_tag_reads_only(buffers):
    items: list[Observation] = [tag_read(i, TS + 5 - i) for i in range(3)]
    (size,) = sizes_of([items])
    buffer = buffers(config=BufferConfig(budget_bytes=size + size // 2))
    first = buffer.append(items)
    buffer.append(list(items))
    carrier = buffer.append(readings(1))
    records = [r for r in unpack(carrier).released if r.first_seq == first.seq]
    assert records == [ReleasedRange(first.seq, first.seq, "disk_budget", 0, 3, 0, TS + 3, TS + 5)]


def test_gap_record_is_not_lost_when_the_batch_carrying_it_is_evicted_too(tmp_path, buffers):
    """A gateway offline for long: nothing is receipted, the budget keeps dropping the oldest batch.

    The gap record for an eviction rides in the next batch; when that carrier batch is dropped in its
    turn before it was ever sent, the record must not vanish with it, or the hub never learns what
    the first dropped batches held (it only sees ``oldest_held_seq`` jump).
    """
    small = [[reading(i, TS + i)] for i in range(3)]
    budget = sum(sizes_of(small)) + 100  # about three small batches (a carrier is a little bigger)
    path = tmp_path / "buffer.db"
    buffer = buffers(path, BufferConfig(budget_bytes=budget))
    appended = [buffer.append([reading(i, TS + i)]).seq for i in range(12)]
    buffer.close()
    # Reconnected, with room again: one more batch drains every record still waiting.
    drained = buffers(path, BufferConfig())
    appended.append(drained.append([reading(99, TS + 99)]).seq)
    held = drained.pending(0, 1000)  # all the hub can still receive: nothing was ever sent
    evicted = [seq for seq in appended if seq not in {b.seq for b in held}]
    assert evicted, "the budget evicted nothing: the scenario is broken"
    records = [r for b in held for r in unpack(b).released]
    reported = [seq for seq in evicted if any(r.first_seq <= seq <= r.last_seq for r in records)]
    assert reported == evicted
    assert sum(r.readings for r in records) == len(evicted)  # one reading per dropped batch


# ---------------------------------------------------------------------------------------------
# stateful: append / release / reopen / floor
# ---------------------------------------------------------------------------------------------

observation = st.one_of(
    st.builds(reading, st.integers(0, 10_000), st.integers(TS, TS + 10**9)),
    st.builds(tag_read, st.integers(0, 10_000), st.integers(TS, TS + 10**9)),
    st.builds(fix, st.integers(0, 10_000), st.integers(TS, TS + 10**9)),
)


class DiskBufferMachine(RuleBasedStateMachine):
    """Model: the seqs appended, which were released by a receipt and which the budget evicted."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="disk-buffer-"))
        self.path = self.dir / "buffer.db"
        self.clock = Clock()
        self.config = BufferConfig(budget_bytes=1500, sync=SyncPolicy.NORMAL)
        self.buffer = DiskBuffer(self.path, GATEWAY, BOOT, self.config, wall_clock=self.clock)
        self.appended: list[int] = []
        self.contents: dict[int, tuple[int, int, int, int, int]] = {}  # seq -> counts, first/last ts
        self.held: list[int] = []
        self.released: set[int] = set()
        self.evicted: list[int] = []
        self.unreported: list[list[int]] = []  # evictions whose gap record has not ridden yet
        self.carried: dict[int, list[list[int]]] = {}  # seq -> the evictions its gap records describe
        self.records: list[ReleasedRange] = []

    def teardown(self) -> None:
        try:
            # Drain the gap records still waiting: one more batch, with room for it.
            self.reopen_with(BufferConfig(budget_bytes=1 << 30, sync=SyncPolicy.NORMAL))
            self.append([reading(0)])
            assert self.unreported == []
            covered = [seq for r in self.records for seq in self.appended if r.first_seq <= seq <= r.last_seq]
            assert sorted(covered) == sorted(self.evicted)  # every evicted seq in exactly one record
            assert not set(self.evicted) & self.released
        finally:
            self.buffer.close()
            shutil.rmtree(self.dir, ignore_errors=True)

    def reopen_with(self, config: BufferConfig) -> None:
        before = (self.buffer.last_seq, self.buffer.depth(), self.buffer.size_bytes, self.buffer.released_batches)
        self.buffer.close()
        self.config = config
        self.buffer = DiskBuffer(self.path, GATEWAY, BOOT, config, wall_clock=Clock(self.clock.now - 3600))
        after = (self.buffer.last_seq, self.buffer.depth(), self.buffer.size_bytes, self.buffer.released_batches)
        assert after == before

    @rule(items=st.lists(observation, min_size=1, max_size=12))
    def append(self, items: list[Observation]) -> None:
        size_before = self.buffer.size_bytes
        sizes_before = {b.seq: len(b.payload) + ROW_OVERHEAD_BYTES for b in self.buffer.pending(0, 10**6)}
        expected_seq = self.buffer.last_seq + 1
        self.clock.now += 1
        stored = self.buffer.append(items)
        assert stored.seq == expected_seq
        assert stored.item_count == len(items)
        batch = unpack(stored)
        assert batch.readings == [i for i in items if isinstance(i, Reading)]
        assert batch.tag_reads == [i for i in items if isinstance(i, TagRead)]
        assert batch.fixes == [i for i in items if isinstance(i, GpsFix)]
        # The gap records of the previous evictions ride here, each exactly right.
        assert len(batch.released) == len(self.unreported)
        for record, victims in zip(batch.released, self.unreported, strict=True):
            assert record == ReleasedRange(
                first_seq=victims[0],
                last_seq=victims[-1],
                reason="disk_budget",
                readings=sum(self.contents[s][0] for s in victims),
                tag_reads=sum(self.contents[s][1] for s in victims),
                fixes=sum(self.contents[s][2] for s in victims),
                first_ts_ms=min(self.contents[s][3] for s in victims),
                last_ts_ms=max(self.contents[s][4] for s in victims),
            )
        self.records.extend(batch.released)
        self.carried[stored.seq] = self.unreported
        self.unreported = []

        self.appended.append(stored.seq)
        stamps = [i.ts_ms for i in items]
        self.contents[stored.seq] = (
            len(batch.readings),
            len(batch.tag_reads),
            len(batch.fixes),
            min(stamps),
            max(stamps),
        )
        now_held = held_seqs(self.buffer)
        assert now_held[-1] == stored.seq  # never the new one
        victims = self.held[: len(self.held) - (len(now_held) - 1)]
        assert now_held == [*self.held[len(victims) :], stored.seq]  # the oldest go, in order
        assert batch.oldest_held_seq == now_held[0]
        new_size = len(stored.payload) + ROW_OVERHEAD_BYTES
        if victims:
            # Records a dropped batch carried go back in line (it may never have reached the hub),
            # ahead of the record for this eviction.
            returned = [ev for seq in victims for ev in self.carried.get(seq, [])]
            self.records = [
                r for r in self.records if [r.first_seq, r.last_seq] not in [[ev[0], ev[-1]] for ev in returned]
            ]
            self.unreported = [*returned, victims]
            self.evicted.extend(victims)
            # No more than needed: keeping the last victim would have broken the budget.
            kept = size_before - sum(sizes_before[s] for s in victims[:-1]) + new_size
            assert kept > self.config.budget_bytes
        elif size_before:
            assert size_before + new_size <= self.config.budget_bytes
        # With nothing held before, there was nothing to drop: the new batch is kept even if it alone is over
        # the budget (a one-reading batch carrying many gap records is, with this test's 1,500 bytes).
        self.held = now_held

    @precondition(lambda self: self.appended)
    @rule(data=st.data())
    def release_through(self, data: st.DataObject) -> None:
        seq = data.draw(st.integers(self.appended[0] - 1, self.appended[-1] + 1))
        gone = [s for s in self.held if s <= seq]
        assert self.buffer.release_through(seq) == len(gone)
        self.released.update(gone)
        self.held = [s for s in self.held if s > seq]

    @rule(sync=st.sampled_from(list(SyncPolicy)))
    def reopen(self, sync: SyncPolicy) -> None:
        self.reopen_with(BufferConfig(budget_bytes=self.config.budget_bytes, sync=sync))

    @rule(step=st.integers(0, 5))
    def raise_floor(self, step: int) -> None:
        self.buffer.raise_seq_floor(self.buffer.last_seq + step)

    @invariant()
    def held_is_appended_minus_released_minus_evicted(self) -> None:
        gone = self.released | set(self.evicted)
        assert held_seqs(self.buffer) == [s for s in self.appended if s not in gone] == self.held
        assert self.buffer.released_batches == len(self.evicted)
        assert_accounting(self.buffer)
        if len(self.held) > 1:
            assert self.buffer.size_bytes <= self.config.budget_bytes


TestDiskBufferStateful = DiskBufferMachine.TestCase
TestDiskBufferStateful.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
