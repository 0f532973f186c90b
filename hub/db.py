"""The system of record's connection: a SQLite file (the embedded default) or PostgreSQL, by URL.

Everything above this module speaks SQLAlchemy Core on a :class:`sqlalchemy.Connection`, with
portable SQL, so one code path serves both backends. What differs lives here:

- SQLite: WAL (readers never block the writer), ``synchronous=FULL`` (the hub receipts a gateway
  only after a commit: a commit a power cut could undo would turn that receipt into a lost batch),
  foreign keys on, and write transactions opened with ``BEGIN IMMEDIATE`` so two writers (ingest and
  the outbox dispatcher) queue on the lock instead of failing to upgrade a read lock.
- PostgreSQL: psycopg 3, connections checked before use (a restarted server is not an error), and
  ``synchronous_commit`` raised to ``on`` where a server turned it off: a receipt must outlive a crash.

Schema changes are Alembic migrations (``hub/migrations``); :meth:`Database.upgrade` applies them.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from coldchain.errors import ColdchainError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S: Final = 10.0
"""A reader never blocks the writer in WAL mode; this only covers the two writers' short transactions."""

POOL_SIZE: Final = 8
"""Connections kept per process: the writer, the outbox, and API requests served from a thread pool."""

POOL_RECYCLE_S: Final = 1800
"""Reconnect after half an hour, so a server-side idle timeout never hands us a dead connection."""

_WRITE_OPTION: Final = "coldchain_write"
"""Execution option that makes SQLite's BEGIN take the write lock at once."""

SUPPORTED_BACKENDS: Final = ("sqlite", "postgresql")


class StoreError(ColdchainError):
    """The store could not be opened, migrated or written."""


def sqlite_url(path: Path | str) -> str:
    """The URL of a SQLite file."""
    return f"sqlite:///{Path(path)}"


class Database:
    """One engine per process and URL; connections come from its pool."""

    def __init__(self, url: str | URL) -> None:
        try:
            parsed = make_url(url)
        except ArgumentError as exc:
            raise StoreError(f"not a database URL: {exc}") from exc
        self.backend = parsed.get_backend_name()
        if self.backend not in SUPPORTED_BACKENDS:
            raise StoreError(f"database {parsed.drivername!r} is not supported; use sqlite or postgresql")
        self.url = parsed
        self.engine = self._sqlite_engine(parsed) if self.backend == "sqlite" else self._postgres_engine(parsed)
        # SQLite has one write lock per file. A writer that finds it taken sleeps in SQLite's busy handler
        # (1, 2, 5 ... 100 ms), so under continuous ingest the outbox's one-row updates waited hundreds of
        # ms for a gap (bench/alarm_latency.py). Writers of this process queue here instead and are woken
        # the moment the lock is free. Reentrant: a nested write is SQLite's business, as before.
        self._write_gate: contextlib.AbstractContextManager[object] = (
            threading.RLock() if self.backend == "sqlite" else contextlib.nullcontext()
        )

    @classmethod
    def of(cls, target: Database | Path | str, *, read_only: bool = False) -> Database:
        """``target`` itself, or a database opened from a URL or a SQLite file path.

        ``read_only`` opens a SQLite file without the right to create or change it (and refuses a
        missing one); it does not apply to a server database or to ``target`` given as a ``Database``.
        """
        if isinstance(target, Database):
            return target
        if isinstance(target, Path) or "://" not in target:
            if not read_only:
                return cls(sqlite_url(target))
            path = Path(target).resolve()
            if not path.is_file():
                raise StoreError(f"cannot open {target}: no such file")
            return cls(f"sqlite:///file:{path}?mode=ro&uri=true")
        return cls(target)

    @property
    def display_url(self) -> str:
        """The URL with any password masked: the only form that may be logged."""
        return self.url.render_as_string(hide_password=True)

    @property
    def sqlite_path(self) -> Path | None:
        """The file of a SQLite database, else ``None``."""
        return Path(self.url.database) if self.backend == "sqlite" and self.url.database else None

    @staticmethod
    def _sqlite_engine(url: URL) -> Engine:
        if not url.database or url.database == ":memory:":
            raise StoreError("the SQLite store must be a file: the writer and the readers share it")
        try:
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of {url.database}: {exc.strerror}") from exc
        engine = sa.create_engine(
            url,
            connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False},
            pool_size=POOL_SIZE,
            max_overflow=POOL_SIZE,
        )

        @event.listens_for(engine, "connect")
        def _configure(dbapi_connection: Any, _record: object) -> None:
            # Let SQLAlchemy's "begin" event, not pysqlite, decide when a transaction starts.
            dbapi_connection.isolation_level = None
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        @event.listens_for(engine, "begin")
        def _begin(conn: Connection) -> None:
            options = conn.get_execution_options()
            if options.get("isolation_level") == "AUTOCOMMIT":
                return  # every statement commits on its own: no transaction to open
            conn.exec_driver_sql("BEGIN IMMEDIATE" if options.get(_WRITE_OPTION) else "BEGIN")

        return engine

    @staticmethod
    def _postgres_engine(url: URL) -> Engine:
        if url.drivername == "postgresql":
            url = url.set(drivername="postgresql+psycopg")
        engine = sa.create_engine(
            url, pool_size=POOL_SIZE, max_overflow=POOL_SIZE, pool_pre_ping=True, pool_recycle=POOL_RECYCLE_S
        )

        @event.listens_for(engine, "connect")
        def _durable_commits(dbapi_connection: Any, _record: object) -> None:
            # The hub receipts a gateway once COMMIT returns; with synchronous_commit=off a server
            # crash forgets the last commits and the gateway has already deleted those batches.
            cursor = dbapi_connection.cursor()
            cursor.execute("SHOW synchronous_commit")
            if cursor.fetchone()[0] == "off":
                cursor.execute("SET synchronous_commit TO on")
            cursor.close()
            dbapi_connection.commit()

        return engine

    def writer(self) -> Connection:
        """A long-lived connection whose transactions take the write lock when they begin."""
        try:
            return self.engine.connect().execution_options(**{_WRITE_OPTION: True})
        except SQLAlchemyError as exc:
            raise StoreError(f"cannot open store {self.display_url}: {exc}") from exc

    @contextmanager
    def reading(self) -> Iterator[Connection]:
        """A pooled connection for a few queries, returned to the pool afterwards."""
        try:
            with self.engine.connect() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"query on {self.display_url} failed: {exc}") from exc

    def write_gate(self) -> contextlib.AbstractContextManager[object]:
        """Hold around a write transaction: writers of this process take turns (SQLite; nothing on PostgreSQL)."""
        return self._write_gate

    @contextmanager
    def writing(self) -> Iterator[Connection]:
        """A short write transaction on a pooled connection, committed on success."""
        try:
            with (
                self._write_gate,
                self.engine.connect().execution_options(**{_WRITE_OPTION: True}) as conn,
                conn.begin(),
            ):
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"write to {self.display_url} failed: {exc}") from exc

    def upgrade(self) -> str:
        """Apply every pending migration; return the revision the schema is now at."""
        from hub.migrations import upgrade  # noqa: PLC0415 - Alembic is only loaded when migrating

        try:
            return upgrade(self.engine)
        except SQLAlchemyError as exc:
            raise StoreError(f"migrating {self.display_url} failed: {exc}") from exc

    def require_current(self) -> None:
        """Refuse a schema older or newer than this code's (when migrations are run by hand)."""
        from hub.migrations import current, head  # noqa: PLC0415 - Alembic is only loaded when migrating

        with self.reading() as conn:
            found = current(conn)
        expected = head()
        if found != expected:
            raise StoreError(
                f"{self.display_url} is at schema revision {found or 'none'}, this hub needs {expected}:"
                " run `coldchain hub migrate`"
            )

    def dispose(self) -> None:
        """Close every pooled connection."""
        self.engine.dispose()
