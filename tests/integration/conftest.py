"""Fixtures of the integration tests: a real Mosquitto, hub and agent processes, simulated probes."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from firmware_sims.probe import ProbeBusSimulator
from firmware_sims.xymd02 import ProbeSpec
from tests.support.hub import API_TOKEN, Hub
from tests.support.processes import Child
from tests.support.servers import Mosquitto, VictoriaMetrics, free_port, require_binary


@pytest.fixture(scope="session")
def mosquitto_binary() -> str:
    return require_binary("mosquitto", "mosquitto")


@pytest.fixture
def broker_factory(mosquitto_binary: str, tmp_path: Path) -> Iterator[Callable[..., Mosquitto]]:
    started: list[Mosquitto] = []

    def make(**options: object) -> Mosquitto:
        workdir = tmp_path / f"broker{len(started)}"
        workdir.mkdir()
        broker = Mosquitto(mosquitto_binary, workdir, **options)  # type: ignore[arg-type]
        broker.start()
        started.append(broker)
        return broker

    yield make
    for broker in started:
        broker.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., Mosquitto]) -> Mosquitto:
    return broker_factory()


@pytest.fixture(scope="session")
def victoria_metrics_binary() -> str:
    return require_binary("victoria-metrics", "victoria-metrics")


@pytest.fixture
def victoria_metrics_factory(victoria_metrics_binary: str, tmp_path: Path) -> Iterator[Callable[..., VictoriaMetrics]]:
    """Start VictoriaMetrics servers (``dedup=False`` keeps every duplicate sample visible); all stop at teardown."""
    started: list[VictoriaMetrics] = []

    def make(*, dedup: bool = True) -> VictoriaMetrics:
        workdir = tmp_path / f"victoria-metrics{len(started)}"
        workdir.mkdir()
        server = VictoriaMetrics(victoria_metrics_binary, workdir, dedup=dedup)
        server.start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


@pytest.fixture
def victoria_metrics(victoria_metrics_factory: Callable[..., VictoriaMetrics]) -> VictoriaMetrics:
    return victoria_metrics_factory()


@pytest.fixture
def hub_factory(tmp_path: Path) -> Iterator[Callable[..., Hub]]:
    hubs: list[Hub] = []

    def make(broker: Mosquitto, *, top_toml: str = "", tables_toml: str = "", store_url: str | None = None) -> Hub:
        """A hub on ``broker``; ``top_toml`` adds top-level keys, ``tables_toml`` whole tables;
        ``store_url`` a database instead of a SQLite file in the hub's folder."""
        workdir = tmp_path / f"hub{len(hubs)}"
        workdir.mkdir()
        api_port = free_port()
        config = workdir / "hub.toml"
        config.write_text(
            f"""
{top_toml}
[mqtt]
port = {broker.port}
username = "hub"

[store]
{f'url = "{store_url}"' if store_url else f'path = "{workdir / "hub.sqlite3"}"'}

[api]
port = {api_port}

[[api.tokens]]
name = "tests"
sha256 = "{hashlib.sha256(API_TOKEN.encode()).hexdigest()}"
scopes = ["read", "command", "staff", "orders"]
{tables_toml}
"""
        )
        hub = Hub(
            Child("hub", ["hub", "run", "--config", str(config)], workdir),
            workdir / "hub.sqlite3",
            f"http://127.0.0.1:{api_port}",
            store_url,
        )
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        hub.child.ensure_dead()


@pytest.fixture
def probe_bus() -> Iterator[ProbeBusSimulator]:
    sim = ProbeBusSimulator([ProbeSpec(address=1, set_point_c=3.0), ProbeSpec(address=2, set_point_c=-18.0, seed=7)])
    sim.start()
    yield sim
    sim.stop()


@pytest.fixture
def agent_factory(tmp_path: Path) -> Iterator[Callable[..., Child]]:
    agents: list[Child] = []

    def make(
        broker: Mosquitto,
        sim: ProbeBusSimulator,
        *,
        gateway_id: str = "gw-test-1",
        interval_s: float = 0.1,
        batch_max_age_s: float = 0.2,
        resend_timeout_s: float = 2.0,
        window_batches: int = 64,
        replay_batches_per_s: float = 200.0,
        extra_toml: str = "",
        top_toml: str = "",
    ) -> Child:
        workdir = tmp_path / f"agent-{gateway_id}-{len(agents)}"
        workdir.mkdir()
        config = workdir / "agent.toml"
        config.write_text(
            f"""
gateway_id = "{gateway_id}"
state_dir = "{workdir / "state"}"
health_interval_s = 1.0
{top_toml}

[mqtt]
port = {broker.port}
username = "{gateway_id}"

[sampling]
interval_s = {interval_s}
batch_max_age_s = {batch_max_age_s}

[delivery]
resend_timeout_s = {resend_timeout_s}
window_batches = {window_batches}
replay_batches_per_s = {replay_batches_per_s}

[[buses]]
kind = "modbus_rtu_probe"
port = "{sim.path}"

[[buses.probes]]
sensor_id = "chiller"
address = 1

[[buses.probes]]
sensor_id = "freezer"
address = 2

[courier_view]
port = 0
{extra_toml}
"""
        )
        agent = Child("agent", ["agent", "--config", str(config)], workdir)
        agents.append(agent)
        return agent

    yield make
    for agent in agents:
        agent.ensure_dead()
