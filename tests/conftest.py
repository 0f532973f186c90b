"""Fixtures shared by every test folder: the system of record on each backend it supports."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from hub.db import sqlite_url
from tests.support.postgres import PostgresServer, start_server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = start_server()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty system of record: a SQLite file, then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield sqlite_url(tmp_path / "hub.sqlite3")
        return
    server: PostgresServer = request.getfixturevalue("postgres_server")
    url = server.create_database()
    yield url
    server.drop_database(url)
