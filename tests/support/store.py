"""Looking into, and tampering with, the system of record behind the hub's back, on either backend."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from hub.db import Database
from hub.store import IngestWriter


def query(url: str, sql: str, **params: object) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` (named ``:params``), as plain tuples; bytes columns as ``bytes`` on both backends."""
    database = Database(url)
    try:
        with database.reading() as conn:
            return [
                tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                for row in conn.execute(sa.text(sql), params)
            ]
    finally:
        database.dispose()


def execute(url: str, *statements: str) -> None:
    """Run statements in one transaction on a connection of its own."""
    database = Database(url)
    try:
        with database.writing() as conn:
            for statement in statements:
                conn.execute(sa.text(statement))
    finally:
        database.dispose()


@contextmanager
def refusing_inserts(url: str, table: str, message: str) -> Iterator[None]:
    """While inside, every INSERT into ``table`` fails with ``message`` (a disk error, a broken constraint)."""
    if sa.make_url(url).get_backend_name() == "sqlite":
        execute(
            url, f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} BEGIN SELECT RAISE(ABORT, '{message}'); END"
        )
        undo = [f"DROP TRIGGER refuse_{table}"]
    else:
        execute(
            url,
            f"CREATE FUNCTION refuse_{table}() RETURNS trigger LANGUAGE plpgsql AS $$"
            f" BEGIN RAISE EXCEPTION '{message}'; END $$",
            f"CREATE TRIGGER refuse_{table} BEFORE INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION refuse_{table}()",
        )
        undo = [f"DROP TRIGGER refuse_{table} ON {table}", f"DROP FUNCTION refuse_{table}()"]
    try:
        yield
    finally:
        execute(url, *undo)


@contextmanager
def writing(target: Path | str) -> Iterator[sa.Connection]:
    """A write transaction on a database of its own, committed and closed at the end."""
    database = Database.of(target)
    try:
        with database.writing() as conn:
            yield conn
    finally:
        database.dispose()


class GatedWriter(IngestWriter):
    """Holds every commit until the test opens ``gate``: a group stays 'in hand'."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def commit(self, *args: Any, **kwargs: Any) -> Any:
        self.entered.set()
        assert self.gate.wait(10)
        return super().commit(*args, **kwargs)
