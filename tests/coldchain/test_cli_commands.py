"""The ``coldchain`` command line as a user runs it: the demo, the simulator, config samples, tokens."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coldchain.cli import main
from coldchain.errors import ConfigError
from edge_agent.config import load_agent_config
from hub.config import load_hub_config

REPO = Path(__file__).resolve().parents[2]
SENSOR_LINE = re.compile(r"^\s+(gw-\S+)\s+(\S+)\s+(-?\d+\.\d) °C\s+(\d+\.\d) %RH", re.MULTILINE)


def test_demo_shows_every_sensor_live_pays_the_scripted_excursion_and_stops_cleanly_on_ctrl_c() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "coldchain", "demo", "--api-port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    assert process.stdout is not None
    lines: list[str] = []
    sensors: set[tuple[str, str]] = set()
    deadline = time.monotonic() + 150
    paid = False
    while (len(sensors) < 6 or not paid) and time.monotonic() < deadline:  # three gateways with two probes each
        line = process.stdout.readline()
        if not line:
            break
        lines.append(line)
        sensors.update((gw, sensor) for gw, sensor, _, _ in SENSOR_LINE.findall(line))
        paid = paid or "CLAIM paid: order demo-order-1" in line
    process.send_signal(signal.SIGINT)
    rest, stderr = process.communicate(timeout=30)
    stdout = "".join(lines) + rest

    assert len(sensors) == 6, stdout  # read back from the hub's store, so each made the whole trip
    # the scripted reefer failure: alarm opened, went critical, closed, and the buyer's claim was paid once
    assert "ALARM open   warning  out_of_range on gw-reefer/reefer-rear" in stdout
    assert "ALARM closed critical out_of_range on gw-reefer/reefer-rear" in stdout
    assert stdout.count("CLAIM paid: order demo-order-1") == 1
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr + stdout
    assert re.search(r"API\s+http://127\.0\.0\.1:\d+/docs", stdout)
    assert "demo stopped cleanly." in stdout
    with pytest.raises(ProcessLookupError):
        os.killpg(process.pid, 0)  # nothing of the demo's process group outlives it


def test_sim_probe_prints_the_device_it_serves_and_answers_there(tmp_path: Path) -> None:
    from edge_agent.drivers.xymd02_probe import ModbusProbeBus, ProbeSpec  # noqa: PLC0415

    process = subprocess.Popen(
        [sys.executable, "-m", "coldchain", "sim", "probe", "--address", "3", "--set-point", "-18"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        device = process.stdout.readline().strip()
        assert Path(device).exists()
        bus = ModbusProbeBus(device, 9600, [ProbeSpec(sensor_id="freezer", address=3)])
        readings = bus.poll()
        bus.close()
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    temperature = next(r.value for r in readings if r.quantity == "temperature")
    assert -19.5 < temperature < -16.5


def test_the_sample_configs_are_valid() -> None:
    agent = load_agent_config(REPO / "config/agent.toml")
    assert agent.mqtt.username == agent.gateway_id
    assert [p.address for p in agent.buses[0].probes] == [1, 2]
    hub = load_hub_config(REPO / "config/hub.toml")
    assert hub.api.tokens
    assert {e.name for e in hub.endpoints} >= set(hub.alarms.notify)
    from hub.compensation import load_policy  # noqa: PLC0415
    from hub.profiles import load_profile_book  # noqa: PLC0415

    policy = load_policy(REPO / "config/compensation.toml")
    assert policy.endpoint in {e.name for e in hub.endpoints}
    assert load_profile_book(REPO / "config/profiles.toml").for_gateway("gw-reefer") is not None


def test_hub_config_without_token_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('[mqtt]\nusername = "hub"\n')
    with pytest.raises(ConfigError, match=r"api\.tokens"):
        load_hub_config(config)


def test_agent_with_bad_config_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "agent.toml"
    config.write_text('gateway_id = "GW 1"\nstate_dir = "x"\nbuses = []\n')
    assert main(["agent", "--config", str(config)]) == 2
    assert "$.gateway_id" in capsys.readouterr().err


def test_hub_token_prints_a_token_and_the_hash_to_configure(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["hub", "token", "--name", "grafana"]) == 0
    out = capsys.readouterr().out
    token = re.search(r"token \(give it to the client, it is not stored\): (\S+)", out)
    assert token is not None
    assert f'sha256 = "{hashlib.sha256(token.group(1).encode()).hexdigest()}"' in out


@pytest.mark.parametrize(
    ("unit", "config"),
    [("coldchain-agent.service", "config/agent.toml"), ("coldchain-hub.service", "config/hub.toml")],
)
def test_systemd_units_run_unprivileged_a_command_that_exists(unit: str, config: str) -> None:
    import configparser  # noqa: PLC0415
    import shlex  # noqa: PLC0415

    from coldchain.cli import build_parser  # noqa: PLC0415

    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(REPO / "config/systemd" / unit)
    service = parser["Service"]
    assert service["User"] not in ("", "root")
    assert service["NoNewPrivileges"] == "yes"
    argv = shlex.split(service["ExecStart"])[1:]
    args = build_parser().parse_args(argv)  # the unit's command line is one the program accepts
    assert args.config.name == Path(config).name
    if unit == "coldchain-agent.service":
        assert load_agent_config(REPO / config).state_dir == f"/var/lib/{service['StateDirectory']}"


def test_audit_verify_command_passes_an_intact_chain_and_fails_a_tampered_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import sqlite3  # noqa: PLC0415

    from hub import audit  # noqa: PLC0415
    from hub.store import IngestWriter  # noqa: PLC0415

    db = tmp_path / "hub.sqlite3"
    writer = IngestWriter(db)
    with writer.transaction() as conn:
        for n in range(3):
            audit.append(
                conn,
                entity="alarm",
                entity_id=f"a{n}",
                action="open",
                actor="detector",
                data={"n": n},
                ts_ms=1_800_000_000_000 + n,
            )
    writer.close()
    assert main(["hub", "audit-verify", "--db", str(db)]) == 0
    assert "intact: 3 entries" in capsys.readouterr().out

    with sqlite3.connect(db) as conn:  # someone edits history behind the hub's back
        conn.execute("DROP TRIGGER IF EXISTS audit_no_update")
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'audit'"):
            conn.execute(f'DROP TRIGGER "{name}"')
        conn.execute("UPDATE audit SET data = ? WHERE id = 2", (b'{"n":99}',))
    assert main(["hub", "audit-verify", "--db", str(db)]) == 1
    assert "BROKEN at entry 2" in capsys.readouterr().err


def test_hub_migrate_and_audit_verify_work_on_the_configured_store(
    database_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from hub.migrations import head  # noqa: PLC0415

    config = tmp_path / "hub.toml"
    token = "0" * 64
    config.write_text(
        f'[mqtt]\nusername = "hub"\n[store]\nurl = "{database_url}"\n'
        f'[[api.tokens]]\nname = "t"\nsha256 = "{token}"\nscopes = ["read"]\n'
    )
    assert main(["hub", "migrate", "--config", str(config)]) == 0
    assert f"schema at revision {head()}" in capsys.readouterr().out
    assert main(["hub", "migrate", "--config", str(config)]) == 0  # nothing left to do is not an error
    assert main(["hub", "audit-verify", "--config", str(config)]) == 0
    assert "intact: 0 entries" in capsys.readouterr().out
