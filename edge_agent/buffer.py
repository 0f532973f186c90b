"""Store-and-forward buffer: every batch is kept until the hub's end-to-end receipt covers it.

``BatchBuffer`` is the interface the uplink talks to. ``MemoryBuffer`` keeps batches in memory and
persists only the seq counter, so a restart never reuses a seq (the hub would drop the new batch
as a duplicate); the durable on-disk buffer implements the same interface.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from coldchain.errors import ColdchainError
from coldchain.messages import Reading, TelemetryBatch, encode


class BufferError(ColdchainError):
    """The buffer could not persist its state."""


@dataclass(frozen=True)
class StoredBatch:
    """A batch as held for (re)sending: its seq and its encoded payload."""

    seq: int
    payload: bytes
    reading_count: int
    created_ms: int


class BatchBuffer(Protocol):
    """What the uplink needs from a buffer. Implementations are safe to call from two threads."""

    def append(self, readings: Sequence[Reading]) -> StoredBatch:
        """Give ``readings`` the next seq, keep them, and return the stored batch."""
        ...

    def pending(self, after_seq: int, limit: int) -> list[StoredBatch]:
        """Up to ``limit`` held batches with seq above ``after_seq``, oldest first."""
        ...

    def release_through(self, seq: int) -> int:
        """Forget every batch up to ``seq`` (the hub receipted them); return how many went."""
        ...

    def depth(self) -> tuple[int, int]:
        """Batches and readings held."""
        ...

    def oldest_created_ms(self) -> int | None:
        """Creation time of the oldest held batch, ``None`` when empty."""
        ...


class SeqCounter:
    """The last seq handed out, persisted atomically so it survives restarts and power loss."""

    def __init__(self, path: Path) -> None:
        self._path = path
        try:
            self._last = int(path.read_text(encoding="ascii").strip()) if path.exists() else 0
        except (OSError, ValueError) as exc:
            raise BufferError(f"cannot read the seq counter {path}: {exc}") from exc

    @property
    def last(self) -> int:
        """The last seq handed out (0 before the first)."""
        return self._last

    def advance(self) -> int:
        """Persist and return the next seq; the file is synced before the seq is used."""
        candidate = self._last + 1
        tmp = self._path.with_suffix(".tmp")
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with tmp.open("w", encoding="ascii") as handle:
                handle.write(str(candidate))
                handle.flush()
                os.fsync(handle.fileno())
            tmp.replace(self._path)
            directory = os.open(self._path.parent, os.O_RDONLY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
        except OSError as exc:
            raise BufferError(f"cannot persist seq {candidate} to {self._path}: {exc}") from exc
        self._last = candidate
        return candidate


class MemoryBuffer:
    """Batches in memory, seq on disk: nothing survives a restart but the numbering."""

    def __init__(self, gateway_id: str, boot_id: str, counter: SeqCounter, wall_clock: Callable[[], float]) -> None:
        self._gateway_id = gateway_id
        self._boot_id = boot_id
        self._counter = counter
        self._wall_clock = wall_clock
        self._held: deque[StoredBatch] = deque()
        self._readings = 0
        self._lock = threading.Lock()

    def append(self, readings: Sequence[Reading]) -> StoredBatch:
        """Number, encode and keep a batch."""
        with self._lock:
            seq = self._counter.advance()
            oldest = self._held[0].seq if self._held else seq
            batch = TelemetryBatch(
                gateway_id=self._gateway_id,
                boot_id=self._boot_id,
                seq=seq,
                oldest_held_seq=oldest,
                readings=list(readings),
            )
            stored = StoredBatch(seq, encode(batch), len(readings), int(self._wall_clock() * 1000))
            self._held.append(stored)
            self._readings += len(readings)
            return stored

    def pending(self, after_seq: int, limit: int) -> list[StoredBatch]:
        """Held batches above ``after_seq``, oldest first (seqs in the deque are increasing)."""
        with self._lock:
            result: list[StoredBatch] = []
            for stored in self._held:
                if stored.seq > after_seq:
                    result.append(stored)
                    if len(result) >= limit:
                        break
            return result

    def release_through(self, seq: int) -> int:
        """Drop receipted batches from the front."""
        with self._lock:
            released = 0
            while self._held and self._held[0].seq <= seq:
                self._readings -= self._held.popleft().reading_count
                released += 1
            return released

    def depth(self) -> tuple[int, int]:
        """Batches and readings held."""
        with self._lock:
            return len(self._held), self._readings

    def oldest_created_ms(self) -> int | None:
        """Creation time of the oldest held batch."""
        with self._lock:
            return self._held[0].created_ms if self._held else None
