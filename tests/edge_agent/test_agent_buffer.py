"""Store-and-forward buffer: a persistent seq counter and the in-memory batch buffer."""

from __future__ import annotations

import pytest

from coldchain.messages import Quantity, Reading, TelemetryBatch, decode
from edge_agent.buffer import BufferError, MemoryBuffer, SeqCounter, StoredBatch

BOOT = "0123456789abcdef0123456789abcdef"
TS = 1_700_000_000_000


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def readings(count: int, start: int = 0) -> list[Reading]:
    return [Reading(f"probe-{i}", Quantity.TEMPERATURE, TS + i, float(i % 50)) for i in range(start, start + count)]


def unpack(stored: StoredBatch) -> TelemetryBatch:
    return decode(stored.payload, TelemetryBatch)


# ---------------------------------------------------------------------------------------------
# SeqCounter
# ---------------------------------------------------------------------------------------------


def test_counter_starts_at_zero_and_advances_by_one(tmp_path):
    counter = SeqCounter(tmp_path / "seq")
    assert counter.last == 0
    assert [counter.advance() for _ in range(3)] == [1, 2, 3]
    assert counter.last == 3


def test_counter_persists_across_instances(tmp_path):
    path = tmp_path / "state" / "seq"
    first = SeqCounter(path)
    for _ in range(5):
        first.advance()
    second = SeqCounter(path)
    assert second.last == 5
    assert second.advance() == 6
    assert SeqCounter(path).last == 6
    assert path.read_text(encoding="ascii").strip() == "6"


def test_counter_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "seq"
    SeqCounter(path).advance()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seq"]


def test_counter_never_reuses_a_seq_across_restarts(tmp_path):
    path = tmp_path / "seq"
    seen: list[int] = []
    for _ in range(4):
        counter = SeqCounter(path)
        seen.extend(counter.advance() for _ in range(3))
    assert seen == list(range(1, 13))


def test_corrupt_counter_file_is_a_buffer_error(tmp_path):
    path = tmp_path / "seq"
    path.write_text("not a number", encoding="ascii")
    with pytest.raises(BufferError, match="seq"):
        SeqCounter(path)


def test_failure_to_persist_does_not_advance(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be", encoding="ascii")
    counter = SeqCounter(blocker / "seq")
    with pytest.raises(BufferError, match="cannot persist seq 1"):
        counter.advance()
    assert counter.last == 0
    blocker.unlink()
    assert counter.advance() == 1


# ---------------------------------------------------------------------------------------------
# MemoryBuffer
# ---------------------------------------------------------------------------------------------


def make_buffer(tmp_path, clock: Clock | None = None) -> MemoryBuffer:
    return MemoryBuffer("gw-1", BOOT, SeqCounter(tmp_path / "seq"), clock or Clock())


def test_append_assigns_consecutive_seqs_and_encodes_a_valid_batch(tmp_path):
    clock = Clock(1_700_000_123.456)
    buffer = make_buffer(tmp_path, clock)
    first = buffer.append(readings(3))
    second = buffer.append(readings(2, start=3))
    assert (first.seq, second.seq) == (1, 2)
    assert (first.reading_count, second.reading_count) == (3, 2)
    assert first.created_ms == 1_700_000_123_456
    batch = unpack(second)
    assert batch.gateway_id == "gw-1"
    assert batch.boot_id == BOOT
    assert batch.seq == 2
    assert batch.readings == readings(2, start=3)


def test_oldest_held_seq_is_the_oldest_unreleased_batch(tmp_path):
    buffer = make_buffer(tmp_path)
    assert unpack(buffer.append(readings(1))).oldest_held_seq == 1
    assert unpack(buffer.append(readings(1))).oldest_held_seq == 1
    assert unpack(buffer.append(readings(1))).oldest_held_seq == 1
    assert buffer.release_through(2) == 2
    assert unpack(buffer.append(readings(1))).oldest_held_seq == 3
    assert buffer.release_through(4) == 2
    # nothing held: the new batch is its own oldest
    assert unpack(buffer.append(readings(1))).oldest_held_seq == 5


def test_pending_is_oldest_first_above_after_seq_and_limited(tmp_path):
    buffer = make_buffer(tmp_path)
    for _ in range(6):
        buffer.append(readings(1))
    assert [b.seq for b in buffer.pending(0, 100)] == [1, 2, 3, 4, 5, 6]
    assert [b.seq for b in buffer.pending(0, 2)] == [1, 2]
    assert [b.seq for b in buffer.pending(3, 2)] == [4, 5]
    assert [b.seq for b in buffer.pending(5, 10)] == [6]
    assert buffer.pending(6, 10) == []
    assert [b.seq for b in buffer.pending(2, 1)] == [3]
    # pending does not remove anything
    assert buffer.depth() == (6, 6)


def test_release_through_drops_only_receipted_batches(tmp_path):
    buffer = make_buffer(tmp_path)
    for count in (1, 2, 3, 4):
        buffer.append(readings(count))
    assert buffer.depth() == (4, 10)
    assert buffer.release_through(0) == 0
    assert buffer.release_through(2) == 2
    assert buffer.depth() == (2, 7)
    assert [b.seq for b in buffer.pending(0, 10)] == [3, 4]
    # an old receipt arriving late releases nothing more
    assert buffer.release_through(1) == 0
    assert buffer.release_through(100) == 2
    assert buffer.depth() == (0, 0)
    assert buffer.pending(0, 10) == []


def test_oldest_created_ms_follows_the_front(tmp_path):
    clock = Clock(1000.0)
    buffer = make_buffer(tmp_path, clock)
    assert buffer.oldest_created_ms() is None
    buffer.append(readings(1))
    clock.now = 2000.0
    buffer.append(readings(1))
    assert buffer.oldest_created_ms() == 1_000_000
    buffer.release_through(1)
    assert buffer.oldest_created_ms() == 2_000_000
    buffer.release_through(2)
    assert buffer.oldest_created_ms() is None


def test_restart_continues_numbering_and_reports_the_new_oldest(tmp_path):
    buffer = make_buffer(tmp_path)
    for _ in range(3):
        buffer.append(readings(1))
    restarted = make_buffer(tmp_path)
    assert restarted.depth() == (0, 0)
    stored = restarted.append(readings(1))
    assert stored.seq == 4
    assert unpack(stored).oldest_held_seq == 4


def test_append_that_cannot_persist_the_seq_keeps_nothing(tmp_path):
    blocker = tmp_path / "blocker"
    blocker.write_text("x", encoding="ascii")
    buffer = MemoryBuffer("gw-1", BOOT, SeqCounter(blocker / "seq"), Clock())
    with pytest.raises(BufferError):
        buffer.append(readings(2))
    assert buffer.depth() == (0, 0)
    blocker.unlink()
    assert buffer.append(readings(2)).seq == 1
    assert buffer.depth() == (1, 2)
