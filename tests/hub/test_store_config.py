"""[store]: a SQLite path or a database URL, the password never in the file and never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa

from coldchain.errors import ConfigError
from hub.config import StoreConfig
from hub.db import Database, StoreError
from tests.support.postgres import PostgresServer


def test_the_embedded_default_is_a_sqlite_file() -> None:
    assert StoreConfig().database_url() == "sqlite:///var/hub.sqlite3"
    assert StoreConfig(path="/srv/hub.db").database_url() == "sqlite:////srv/hub.db"


def test_path_and_url_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="not both"):
        StoreConfig(path="a.db", url="postgresql://cc@db/cc").database_url()


def test_a_password_in_the_url_is_refused() -> None:
    with pytest.raises(ConfigError, match="password_file"):
        StoreConfig(url="postgresql://cc:hunter2hunter2@db/cc").database_url()


def test_the_password_comes_from_a_file_and_is_masked_for_logs(tmp_path: Path) -> None:
    secret = tmp_path / "db-password"
    secret.write_text("s3cret-Passw0rd-for-the-hub\n")
    url = StoreConfig(url="postgresql://coldchain@db.example:5432/coldchain", password_file=str(secret)).database_url()
    assert url == "postgresql://coldchain:s3cret-Passw0rd-for-the-hub@db.example:5432/coldchain"
    shown = Database(url).display_url
    assert "s3cret" not in shown
    assert shown == "postgresql://coldchain:***@db.example:5432/coldchain"


def test_a_placeholder_password_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "db-password"
    secret.write_text("changeme\n")
    with pytest.raises(ConfigError, match="placeholder"):
        StoreConfig(url="postgresql://cc@db/cc", password_file=str(secret)).database_url()


def test_a_password_without_a_url_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a url"):
        StoreConfig(password_env="PGPASSWORD").database_url()


@pytest.mark.parametrize("url", ["mysql://root@localhost/cc", "sqlite://", "not a url"])
def test_unsupported_databases_are_refused_clearly(url: str) -> None:
    with pytest.raises(StoreError):
        Database(url)


def test_a_pre_migration_sqlite_store_is_refused_with_what_to_do(tmp_path: Path) -> None:
    import sqlite3  # noqa: PLC0415

    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE gateways (gateway_id TEXT PRIMARY KEY)")
        conn.execute("PRAGMA user_version = 6")
    database = Database.of(path)
    try:
        with pytest.raises(StoreError, match="start a new store file"):
            database.upgrade()
    finally:
        database.dispose()


def test_the_hub_turns_synchronous_commit_back_on(postgres_server: PostgresServer) -> None:
    # A receipt goes out when COMMIT returns: a server that may forget acknowledged commits would
    # make the gateway delete batches the hub then loses in a crash.
    url = postgres_server.create_database()
    name = sa.make_url(url).database
    admin = Database(url)
    with admin.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(sa.text(f'ALTER DATABASE "{name}" SET synchronous_commit = off'))
    admin.dispose()
    database = Database(url)
    try:
        with database.reading() as conn:
            assert conn.execute(sa.text("SHOW synchronous_commit")).scalar_one() == "on"
    finally:
        database.dispose()
        postgres_server.drop_database(url)
