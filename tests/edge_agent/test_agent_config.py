"""The agent's config file: strict loading and the checks that refuse configs that would misbehave."""

from __future__ import annotations

import pytest

from coldchain.config import load_toml
from coldchain.errors import ConfigError
from edge_agent.config import (
    BATCH_MAX_AGE_S,
    BATCH_MAX_READINGS,
    SAMPLING_INTERVAL_S,
    AgentConfig,
    check_agent_config,
    load_agent_config,
)
from edge_agent.drivers import DriverKind

MQTT = '[mqtt]\nhost = "broker.example"\nport = 8883\nusername = "truck-07"\ntls = true\n'
BUS = '[[buses]]\nkind = "modbus_rtu_probe"\nport = "/dev/ttyUSB0"\n'
PROBE_1 = '[[buses.probes]]\nsensor_id = "probe-1"\naddress = 1\n'
PROBE_2 = '[[buses.probes]]\nsensor_id = "probe-2"\naddress = 2\n'
HEAD = 'gateway_id = "truck-07"\nstate_dir = "/var/lib/coldchain"\n'
VALID = HEAD + MQTT + BUS + PROBE_1 + PROBE_2


def write(tmp_path, text: str):
    path = tmp_path / "agent.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_valid_config_loads_with_defaults(tmp_path):
    config = load_agent_config(write(tmp_path, VALID))
    assert isinstance(config, AgentConfig)
    assert config.gateway_id == "truck-07"
    assert config.mqtt.username == "truck-07"
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.tls) == ("broker.example", 8883, True)
    [bus] = config.buses
    assert bus.kind is DriverKind.MODBUS_RTU_PROBE
    assert bus.baudrate is None  # the driver's own default (9600 for these probes) applies
    assert [(p.sensor_id, p.address) for p in bus.probes] == [("probe-1", 1), ("probe-2", 2)]
    assert config.sampling.interval_s == SAMPLING_INTERVAL_S
    assert config.sampling.batch_max_age_s == BATCH_MAX_AGE_S
    assert config.sampling.batch_max_readings == BATCH_MAX_READINGS


def test_sampling_section_is_read(tmp_path):
    text = VALID + "[sampling]\ninterval_s = 2.0\nbatch_max_age_s = 0.0\nbatch_max_readings = 50\n"
    sampling = load_agent_config(write(tmp_path, text)).sampling
    assert (sampling.interval_s, sampling.batch_max_age_s, sampling.batch_max_readings) == (2.0, 0.0, 50)


def test_missing_username_is_refused_outside_the_demo(tmp_path):
    path = write(tmp_path, HEAD + '[mqtt]\nhost = "b"\n' + BUS + PROBE_1)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert "username is required" in str(info.value)
    assert info.value.source == str(path)
    assert str(info.value).startswith(f"{path}: ")


def test_missing_username_is_allowed_in_the_demo(tmp_path):
    config = load_toml(write(tmp_path, HEAD + BUS + PROBE_1), AgentConfig)
    assert check_agent_config(config, source="demo", demo=True) is config
    with pytest.raises(ConfigError, match="username"):
        check_agent_config(config, source="demo")


def test_username_must_equal_gateway_id(tmp_path):
    path = write(tmp_path, HEAD + MQTT.replace('"truck-07"', '"truck-08"') + BUS + PROBE_1)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    message = str(info.value)
    assert "'truck-08'" in message
    assert "'truck-07'" in message
    assert str(path) in message


def test_mismatched_username_is_refused_in_the_demo_too(tmp_path):
    config = load_toml(write(tmp_path, HEAD + MQTT.replace('"truck-07"', '"other"') + BUS + PROBE_1), AgentConfig)
    with pytest.raises(ConfigError, match="must equal gateway_id"):
        check_agent_config(config, source="demo", demo=True)


@pytest.mark.parametrize(
    "body",
    [
        pytest.param("buses = []\n", id="no-buses"),
        pytest.param(BUS, id="bus-without-probes"),
        pytest.param(BUS + BUS, id="two-buses-without-probes"),
    ],
)
def test_config_without_probes_is_refused(tmp_path, body):
    path = write(tmp_path, HEAD + body + MQTT)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert "[[buses" in str(info.value)
    assert str(path) in str(info.value)


def test_every_probe_bus_needs_probes(tmp_path):
    text = HEAD + MQTT + BUS + '[[buses]]\nkind = "modbus_rtu_probe"\nport = "/dev/ttyUSB1"\n' + PROBE_1
    with pytest.raises(ConfigError, match=r"#1 \(modbus_rtu_probe on /dev/ttyUSB0\)"):
        load_agent_config(write(tmp_path, text))


def test_rfid_and_gps_buses_need_a_device_id(tmp_path):
    for kind in ("uhf_m100", "nmea_gps"):
        bus = f'[[buses]]\nkind = "{kind}"\nport = "/dev/ttyUSB2"\n'
        with pytest.raises(ConfigError, match="needs device_id"):
            load_agent_config(write(tmp_path, HEAD + MQTT + BUS + PROBE_1 + bus))
        config = load_agent_config(write(tmp_path, HEAD + MQTT + BUS + PROBE_1 + bus + 'device_id = "dev-1"\n'))
        assert config.buses[1].device_id == "dev-1"


def test_duplicate_sensor_ids_are_refused_on_one_bus(tmp_path):
    path = write(tmp_path, HEAD + MQTT + BUS + PROBE_1 + PROBE_1.replace("address = 1", "address = 3"))
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert "unique" in str(info.value)
    assert "probe-1" in str(info.value)


def test_duplicate_sensor_ids_are_refused_across_buses(tmp_path):
    second_bus = BUS.replace("ttyUSB0", "ttyUSB1")
    path = write(tmp_path, HEAD + MQTT + BUS + PROBE_1 + second_bus + PROBE_1)
    with pytest.raises(ConfigError, match="unique"):
        load_agent_config(path)


@pytest.mark.parametrize(
    ("text", "field"),
    [
        pytest.param(VALID.replace('gateway_id = "truck-07"', 'gateway_id = "Truck/07"'), "$.gateway_id", id="gw-id"),
        pytest.param(VALID.replace("address = 2", "address = 0"), "$.buses[0].probes[1].address", id="address-low"),
        pytest.param(VALID.replace("address = 2", "address = 248"), "$.buses[0].probes[1].address", id="address-high"),
        pytest.param(VALID.replace('"probe-2"', '"probe 2"'), "$.buses[0].probes[1].sensor_id", id="sensor-id"),
        pytest.param(VALID.replace('"modbus_rtu_probe"', '"can_bus"'), "$.buses[0].kind", id="driver-kind"),
        pytest.param(VALID + "[sampling]\ninterval_s = 0.01\n", "$.sampling.interval_s", id="interval"),
        pytest.param(VALID + "[sampling]\nbatch_max_readings = 0\n", "$.sampling.batch_max_readings", id="batch"),
        pytest.param(VALID + "[sampling]\nbatch_max_readings = 5000\n", "$.sampling.batch_max_readings", id="big"),
        pytest.param(VALID + "[sampling]\nbogus = 1\n", "bogus", id="unknown-field"),
        pytest.param(VALID.replace("port = 8883", 'port = "8883"'), "$.mqtt.port", id="port-type"),
        pytest.param('state_dir = "/x"\n' + MQTT + BUS + PROBE_1, "gateway_id", id="no-gateway-id"),
    ],
)
def test_invalid_fields_are_named(tmp_path, text, field):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_agent_config(path)
    assert field in str(info.value)
    assert str(info.value).startswith(f"{path}: ")


def test_gateway_id_with_a_trailing_newline_is_refused(tmp_path):
    # it could never be a topic level (topics.is_valid_gateway_id refuses it), so the config must refuse it
    text = VALID.replace('"truck-07"', '"truck-07\\n"')
    assert 'gateway_id = "truck-07\\n"' in text
    with pytest.raises(ConfigError, match=r"\$\.gateway_id"):
        load_agent_config(write(tmp_path, text))
