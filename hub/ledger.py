"""Per-gateway delivery ledger: which batches are new, and how far each gateway is receipted.

Pure and in memory (sans-io): ``plan`` decides and ``apply`` makes a plan the ledger's state; the
store commits each plan in one transaction. The ingest pipeline applies a plan as soon as it is made,
so the next group is planned while this one commits; when a commit fails it builds a new ledger from
the store's cursors (``IngestWriter.load_cursors``), which hold exactly what was committed.

A gateway's cursor is ``acked_seq`` (every seq up to it is committed or declared lost) plus the
set of seqs committed above it, which arrive out of order after broker drops and re-sends. A
batch is a duplicate when its seq is at or below ``acked_seq``, already committed above it, or
repeated within the same plan. A batch whose ``oldest_held_seq`` jumps past ``acked_seq + 1`` tells
the hub the gateway no longer holds the seqs in between: they become a recorded gap and the
cursor moves past them instead of waiting forever.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from coldchain.messages import TelemetryBatch


@dataclass
class Cursor:
    """How far one gateway's batches are committed."""

    acked_seq: int = 0
    committed_above: set[int] = field(default_factory=set)

    def copy(self) -> Cursor:
        """An independent copy to plan on."""
        return Cursor(self.acked_seq, set(self.committed_above))


@dataclass(frozen=True)
class Gap:
    """Seqs ``first_seq..last_seq`` (inclusive) that the gateway says it no longer holds."""

    gateway_id: str
    first_seq: int
    last_seq: int
    boot_id: str


@dataclass(frozen=True)
class Plan:
    """What one commit group does: batches to store, gaps to record, cursors to persist."""

    new_batches: Sequence[TelemetryBatch]
    duplicates: int
    gaps: Sequence[Gap]
    cursors: Mapping[str, Cursor]


class DeliveryLedger:
    """Decides duplicates and receipts for every gateway this hub process owns."""

    def __init__(self, cursors: Mapping[str, Cursor] | None = None) -> None:
        self._cursors: dict[str, Cursor] = dict(cursors or {})

    def acked_seq(self, gateway_id: str) -> int:
        """The gateway's cumulative receipt, 0 if it never sent anything."""
        cursor = self._cursors.get(gateway_id)
        return cursor.acked_seq if cursor else 0

    def plan(self, batches: Iterable[TelemetryBatch]) -> Plan:
        """Classify ``batches`` (in arrival order) without changing the ledger."""
        touched: dict[str, Cursor] = {}
        new: list[TelemetryBatch] = []
        gaps: list[Gap] = []
        duplicates = 0
        for batch in batches:
            cursor = touched.get(batch.gateway_id)
            if cursor is None:
                known = self._cursors.get(batch.gateway_id)
                # A gateway's first batch sets its starting point: its seqs need not start at 1
                # (a new buffer seeds them from the clock), and nothing before it was ever expected.
                cursor = known.copy() if known else Cursor(acked_seq=batch.oldest_held_seq - 1)
                touched[batch.gateway_id] = cursor
            if batch.seq <= cursor.acked_seq or batch.seq in cursor.committed_above:
                duplicates += 1
            else:
                new.append(batch)
                cursor.committed_above.add(batch.seq)
            gaps.extend(_skip_released(cursor, batch))
            _advance(cursor)
        return Plan(new, duplicates, gaps, touched)

    def apply(self, plan: Plan) -> None:
        """Adopt the cursors of a plan whose commit succeeded."""
        self._cursors.update(plan.cursors)


def _skip_released(cursor: Cursor, batch: TelemetryBatch) -> list[Gap]:
    """Move the cursor past seqs the gateway released unreceipted, returning them as gaps."""
    floor = batch.oldest_held_seq - 1
    if floor <= cursor.acked_seq:
        return []
    gaps: list[Gap] = []
    previous = cursor.acked_seq
    for seq in sorted(seq for seq in cursor.committed_above if seq <= floor):
        if seq > previous + 1:
            gaps.append(Gap(batch.gateway_id, previous + 1, seq - 1, batch.boot_id))
        cursor.committed_above.discard(seq)
        previous = seq
    if floor > previous:
        gaps.append(Gap(batch.gateway_id, previous + 1, floor, batch.boot_id))
    cursor.acked_seq = floor
    return gaps


def _advance(cursor: Cursor) -> None:
    while cursor.acked_seq + 1 in cursor.committed_above:
        cursor.acked_seq += 1
        cursor.committed_above.discard(cursor.acked_seq)
