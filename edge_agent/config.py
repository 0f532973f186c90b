"""The agent's configuration file (TOML), validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

import msgspec

from coldchain.config import load_toml
from coldchain.errors import ConfigError
from coldchain.messages import GatewayId, SensorId
from coldchain.mqtt import MqttConfig
from edge_agent.drivers import DriverKind
from edge_agent.uplink import DeliveryConfig

SAMPLING_INTERVAL_S: Final = 5.0
"""Air in a cold room changes over minutes; 5 s still catches a door opening as it happens."""
BATCH_MAX_AGE_S: Final = 10.0
"""Readings reach the hub within this plus the network delay."""
BATCH_MAX_READINGS: Final = 500


class ProbeConfig(msgspec.Struct, forbid_unknown_fields=True):
    """One probe on a bus."""

    sensor_id: SensorId
    address: Annotated[int, msgspec.Meta(ge=1, le=247)]


class BusConfig(msgspec.Struct, forbid_unknown_fields=True):
    """A serial port and the devices on it, read by the driver ``kind``."""

    kind: DriverKind
    port: str
    baudrate: int = 9600
    response_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=5)] = 0.3
    probes: list[ProbeConfig] = msgspec.field(default_factory=list)


class SamplingConfig(msgspec.Struct, forbid_unknown_fields=True):
    """How often sensors are read and how readings are grouped into batches."""

    interval_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = SAMPLING_INTERVAL_S
    batch_max_age_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = BATCH_MAX_AGE_S
    batch_max_readings: Annotated[int, msgspec.Meta(ge=1, le=4096)] = BATCH_MAX_READINGS


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Everything one gateway's agent needs."""

    gateway_id: GatewayId
    state_dir: str
    buses: list[BusConfig]
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    sampling: SamplingConfig = msgspec.field(default_factory=SamplingConfig)
    delivery: DeliveryConfig = msgspec.field(default_factory=DeliveryConfig)


def check_agent_config(config: AgentConfig, *, source: str, demo: bool = False) -> AgentConfig:
    """Refuse configs that would run but misbehave: anonymous or mismatched broker login, no sensors."""
    if not demo and config.mqtt.username is None:
        raise ConfigError("[mqtt] username is required (the gateway id): no anonymous gateways", source=source)
    if config.mqtt.username is not None and config.mqtt.username != config.gateway_id:
        raise ConfigError(
            f"[mqtt] username {config.mqtt.username!r} must equal gateway_id {config.gateway_id!r}:"
            " the broker ACL lets a gateway publish only under its own username",
            source=source,
        )
    if not config.buses or not any(bus.probes for bus in config.buses):
        raise ConfigError("no [[buses.probes]] configured: the gateway would send nothing", source=source)
    sensor_ids = [probe.sensor_id for bus in config.buses for probe in bus.probes]
    if len(set(sensor_ids)) != len(sensor_ids):
        raise ConfigError(f"sensor ids must be unique on a gateway: {sorted(sensor_ids)}", source=source)
    return config


def load_agent_config(path: Path) -> AgentConfig:
    """Load and check the agent config at ``path``."""
    return check_agent_config(load_toml(path, AgentConfig), source=str(path))
