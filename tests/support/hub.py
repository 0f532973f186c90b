"""A hub process under test, with its store and API at hand."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import sqlalchemy as sa

from tests.support.processes import Child

API_TOKEN = "integration-test-token-0123456789"


@dataclass
class Hub:
    child: Child
    db_path: Path
    """The SQLite file, or (with ``db_url``) the folder the hub runs in."""
    api_url: str
    db_url: str | None = None
    """A PostgreSQL store's URL; ``None``: the SQLite file at ``db_path``."""
    _engine: sa.Engine | None = field(default=None, repr=False)

    def wait_ready(self, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.child.running, self.child.log()
            try:
                health = httpx.get(f"{self.api_url}/healthz", timeout=1).json()
                if health["mqtt_connected"]:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"hub not ready:\n{self.child.log()}")

    def start(self) -> Hub:
        self.child.start()
        self.wait_ready()
        return self

    def query(self, sql: str, *params: object) -> list[tuple[object, ...]]:
        """Rows of ``sql`` with ``?`` placeholders, on whichever backend the hub stores in."""
        if self.db_url is None:
            with closing(sqlite3.connect(self.db_path)) as conn:
                return conn.execute(sql, params).fetchall()
        if self._engine is None:  # one per hub, not per query: tests poll in loops
            url = sa.make_url(self.db_url).set(drivername="postgresql+psycopg")
            self._engine = sa.create_engine(url, poolclass=sa.pool.NullPool)
        with self._engine.connect() as conn:
            return [tuple(row) for row in conn.exec_driver_sql(sql.replace("?", "%s"), params)]

    def scalar(self, sql: str, *params: object) -> int:
        return int(self.query(sql, *params)[0][0] or 0)

    def get(self, path: str) -> httpx.Response:
        return httpx.get(f"{self.api_url}{path}", headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=5)

    def post(self, path: str, body: object) -> httpx.Response:
        return httpx.post(
            f"{self.api_url}{path}", json=body, headers={"Authorization": f"Bearer {API_TOKEN}"}, timeout=5
        )
