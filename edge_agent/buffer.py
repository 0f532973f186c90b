"""The store-and-forward interface the uplink and the sampler see.

Every batch is kept until the hub's end-to-end receipt covers it; ``DiskBuffer`` (disk_buffer.py)
is the implementation a gateway runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from coldchain.errors import ColdchainError
from coldchain.messages import Observation


class BufferError(ColdchainError):
    """The buffer could not persist or read its state."""


@dataclass(frozen=True)
class StoredBatch:
    """A batch as held for (re)sending: its seq and its encoded payload."""

    seq: int
    payload: bytes
    item_count: int
    created_ms: int


class BatchBuffer(Protocol):
    """What the uplink and the sampler need from a buffer. Safe to call from several threads."""

    @property
    def last_seq(self) -> int:
        """The last seq handed out."""
        ...

    def append(self, items: Sequence[Observation]) -> StoredBatch:
        """Give ``items`` the next seq, keep them durably, and return the stored batch."""
        ...

    def pending(self, after_seq: int, limit: int, *, below_seq: int | None = None) -> list[StoredBatch]:
        """Up to ``limit`` held batches with ``after_seq < seq`` (and ``seq < below_seq``), oldest first."""
        ...

    def release_through(self, seq: int) -> int:
        """Forget every batch up to ``seq`` (the hub receipted them); return how many went."""
        ...

    def raise_seq_floor(self, seq: int) -> None:
        """Never hand out a seq at or below ``seq``."""
        ...

    def depth(self) -> tuple[int, int]:
        """Batches and items held."""
        ...

    def oldest_created_ms(self) -> int | None:
        """Creation time of the oldest held batch, ``None`` when empty."""
        ...
