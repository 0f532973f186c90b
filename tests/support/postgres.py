"""A throwaway PostgreSQL for the store's tests: a cluster of Debian's binaries on a free port, or a DSN.

``COLDCHAIN_TEST_POSTGRES_URL`` (a URL to a server where the user may create databases) replaces the
throwaway cluster. Either way every test gets a database of its own, dropped afterwards.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import Final

import sqlalchemy as sa

from tests.support.servers import free_port, unavailable

POSTGRES_URL_ENV: Final = "COLDCHAIN_TEST_POSTGRES_URL"
START_TIMEOUT_S: Final = 60
# The cluster is thrown away after the run and the machine does not crash under it: skipping fsync
# costs nothing real. synchronous_commit stays on: a server restart must keep every commit it acknowledged
# (the hub also insists on it, see hub/db.py).
SPEED_SETTINGS: Final = ("fsync=off", "full_page_writes=off", "max_connections=200")


def postgres_bin_dir() -> Path | None:
    """Debian's newest installed PostgreSQL server binaries."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """A server the tests may create databases on."""

    def __init__(self, admin_url: str, *, cleanup: tempfile.TemporaryDirectory[str] | None = None) -> None:
        self.admin_url = sa.make_url(admin_url).set(drivername="postgresql+psycopg")
        self._admin = sa.create_engine(self.admin_url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        self._cleanup = cleanup
        self._process_dir: Path | None = None
        self._bin: Path | None = None
        self._run_as: list[str] = []
        self._start: list[str] = []

    @classmethod
    def throwaway(cls) -> PostgresServer:
        """initdb + pg_ctl start a cluster in a temporary folder (as user ``postgres`` when run as root)."""
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            unavailable("PostgreSQL server binaries not found (apt-get install postgresql)")
        holder = tempfile.TemporaryDirectory(prefix="coldchain-pg-")
        root = Path(holder.name)
        data, sockets = root / "data", root / "run"
        sockets.mkdir()
        run_as: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            owner = pwd.getpwnam("postgres")
            for path in (root, sockets):
                os.chown(path, owner.pw_uid, owner.pw_gid)
            run_as = ["runuser", "-u", "postgres", "--"]
        port = free_port()
        subprocess.run(
            [
                *run_as,
                str(bin_dir / "initdb"),
                "-D",
                str(data),
                "-U",
                "postgres",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
                "--no-instructions",
            ],
            check=True,
            capture_output=True,
        )
        options = " ".join(
            [f"-p {port}", "-c listen_addresses=127.0.0.1", f"-k {sockets}", *(f"-c {s}" for s in SPEED_SETTINGS)]
        )
        start = [
            *run_as,
            str(bin_dir / "pg_ctl"),
            "-D",
            str(data),
            "-o",
            options,
            "-l",
            str(root / "server.log"),
            "-w",
            "-t",
            str(START_TIMEOUT_S),
            "start",
        ]
        subprocess.run(start, check=True, capture_output=True)
        server = cls(f"postgresql://postgres@127.0.0.1:{port}/postgres", cleanup=holder)
        server._process_dir, server._bin, server._run_as, server._start = data, bin_dir, run_as, start
        return server

    def create_database(self) -> str:
        """A fresh, empty database; its URL."""
        name = f"cc_{uuid.uuid4().hex[:16]}"
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return self.admin_url.set(database=name).render_as_string(hide_password=False)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database`, closing whatever still uses it."""
        name = sa.make_url(url).database
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def restart(self) -> None:
        """Stop the throwaway cluster at once (``immediate``: like a crash, every client cut off) and start it."""
        assert self._process_dir is not None, "only a throwaway cluster can restart"
        assert self._bin is not None
        stop = [*self._run_as, str(self._bin / "pg_ctl"), "-D", str(self._process_dir), "-m", "immediate", "-w", "stop"]
        subprocess.run(stop, check=True, capture_output=True)
        subprocess.run(self._start, check=True, capture_output=True)

    def stop(self) -> None:
        """Close the admin connections; a throwaway cluster is also stopped and its files deleted."""
        self._admin.dispose()
        if self._process_dir is not None and self._bin is not None:
            subprocess.run(
                [*self._run_as, str(self._bin / "pg_ctl"), "-D", str(self._process_dir), "-m", "immediate", "stop"],
                check=False,
                capture_output=True,
            )
        if self._cleanup is not None:
            shutil.rmtree(self._cleanup.name, ignore_errors=True)
            self._cleanup.cleanup()


def start_server() -> PostgresServer:
    """The DSN's server when ``COLDCHAIN_TEST_POSTGRES_URL`` is set, else a throwaway cluster."""
    dsn = os.environ.get(POSTGRES_URL_ENV)
    return PostgresServer(dsn) if dsn else PostgresServer.throwaway()
