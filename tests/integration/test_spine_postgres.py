"""The production store end to end: probe simulator -> agent -> Mosquitto -> hub process -> PostgreSQL.

The same promises as on SQLite (tests/integration/test_spine.py): a hub killed with SIGKILL mid-stream
loses and doubles nothing, and what the API serves is what PostgreSQL holds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import datetime

import pytest

from firmware_sims.probe import ProbeBusSimulator
from tests.support.checks import assert_store_exact, kill_hub_twice_mid_stream, stop_agent, wait_until
from tests.support.hub import Hub
from tests.support.postgres import PostgresServer
from tests.support.processes import Child
from tests.support.servers import Mosquitto

pytestmark = pytest.mark.integration


@pytest.fixture
def store_url(postgres_server: PostgresServer) -> Iterator[str]:
    url = postgres_server.create_database()
    yield url
    postgres_server.drop_database(url)


def test_a_hub_on_postgresql_killed_mid_stream_loses_and_doubles_nothing(
    broker: Mosquitto,
    hub_factory: Callable[..., Hub],
    agent_factory: Callable[..., Child],
    probe_bus: ProbeBusSimulator,
    store_url: str,
) -> None:
    hub = hub_factory(broker, store_url=store_url).start()  # migrates the empty database on start
    agent = agent_factory(broker, probe_bus).start()
    kill_hub_twice_mid_stream(hub, agent)
    served = hub.get("/api/v1/readings/latest?gateway_id=gw-test-1").json()
    newest = hub.query(
        "SELECT sensor_id, quantity, max(ts_ms) FROM series_readings WHERE gateway_id = ? GROUP BY sensor_id, quantity",
        "gw-test-1",
    )
    served_ms = [
        (r["sensor_id"], r["quantity"], round(datetime.fromisoformat(r["ts"]).timestamp() * 1000)) for r in served
    ]
    assert sorted(served_ms) == sorted(newest)


def test_a_postgresql_restart_mid_stream_loses_and_doubles_nothing(
    broker: Mosquitto,
    hub_factory: Callable[..., Hub],
    agent_factory: Callable[..., Child],
    probe_bus: ProbeBusSimulator,
) -> None:
    server = PostgresServer.throwaway()  # its own cluster, whatever COLDCHAIN_TEST_POSTGRES_URL says: it restarts
    try:
        hub = hub_factory(broker, store_url=server.create_database()).start()
        agent = agent_factory(broker, probe_bus).start()
        wait_until(lambda: hub.scalar("SELECT count(*) FROM batches") >= 15, 30, "stream too slow")
        server.restart()  # every connection of the hub's pool is cut; commits fail until it is back
        time.sleep(3)
        wait_until(lambda: hub.scalar("SELECT count(*) FROM batches") >= 40, 60, "the hub did not reconnect")
        assert hub.child.running
        sampled, last_seq = stop_agent(agent)
        assert_store_exact(hub, "gw-test-1", sampled, last_seq)
        assert "failed" in hub.child.log()  # the outage was seen (and survived), not slept through
    finally:
        server.stop()
