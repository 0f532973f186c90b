"""The agent's configuration file (TOML), validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Final

import msgspec

from coldchain.config import load_toml
from coldchain.errors import ConfigError
from coldchain.messages import GatewayId, SensorId, TagAction
from coldchain.mqtt import MqttConfig
from edge_agent.disk_buffer import BufferConfig
from edge_agent.drivers import DriverKind
from edge_agent.uplink import DeliveryConfig

SAMPLING_INTERVAL_S: Final = 5.0
"""Air in a cold room changes over minutes; 5 s still catches a door opening as it happens."""
BATCH_MAX_AGE_S: Final = 10.0
"""Readings reach the hub within this plus the network delay."""
BATCH_MAX_READINGS: Final = 500
HEALTH_INTERVAL_S: Final = 60.0
ALARM_HYSTERESIS_C: Final = 0.5
"""An alarm clears only this far back inside the range, so a value on the edge does not flap."""
COURIER_VIEW_PORT: Final = 8081
# Intervals of the drivers whose devices stream rather than answer a poll.
DEFAULT_INTERVALS_S: Final = {DriverKind.UHF_M100: 0.5, DriverKind.NMEA_GPS: 1.0}


class ProbeConfig(msgspec.Struct, forbid_unknown_fields=True):
    """One probe on a Modbus bus."""

    sensor_id: SensorId
    address: Annotated[int, msgspec.Meta(ge=1, le=247)]


class BusConfig(msgspec.Struct, forbid_unknown_fields=True):
    """A serial port and the device(s) on it, read by the driver ``kind``.

    ``probes`` is for Modbus probe buses; ``device_id`` names an RFID reader or a GPS receiver.
    """

    kind: DriverKind
    port: str
    baudrate: int | None = None
    interval_s: Annotated[float, msgspec.Meta(ge=0.05, le=3600)] | None = None
    response_timeout_s: Annotated[float, msgspec.Meta(gt=0, le=5)] = 0.3
    probes: list[ProbeConfig] = msgspec.field(default_factory=list)
    device_id: SensorId | None = None
    debounce_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = 5.0


class SamplingConfig(msgspec.Struct, forbid_unknown_fields=True):
    """How often probes are read and how observations are grouped into batches."""

    interval_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)] = SAMPLING_INTERVAL_S
    batch_max_age_s: Annotated[float, msgspec.Meta(ge=0, le=3600)] = BATCH_MAX_AGE_S
    batch_max_readings: Annotated[int, msgspec.Meta(ge=1, le=4096)] = BATCH_MAX_READINGS


class AlarmConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The product range the gateway guards on its own, also while offline."""

    low_c: float | None = None
    high_c: float | None = None
    hysteresis_c: Annotated[float, msgspec.Meta(ge=0, le=10)] = ALARM_HYSTERESIS_C
    hook_command: list[str] = msgspec.field(default_factory=list)
    """Run on every raise and clear (buzzer, LED); gets COLDCHAIN_ALARM_* environment variables."""


class CourierViewConfig(msgspec.Struct, forbid_unknown_fields=True):
    """The local page for the person carrying the gateway."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = COURIER_VIEW_PORT
    handover_window_s: Annotated[float, msgspec.Meta(gt=0, le=300)] = 20.0


class AgentConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Everything one gateway's agent needs."""

    gateway_id: GatewayId
    state_dir: str
    buses: list[BusConfig]
    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    sampling: SamplingConfig = msgspec.field(default_factory=SamplingConfig)
    delivery: DeliveryConfig = msgspec.field(default_factory=DeliveryConfig)
    buffer: BufferConfig = msgspec.field(default_factory=BufferConfig)
    alarm: AlarmConfig = msgspec.field(default_factory=AlarmConfig)
    courier_view: CourierViewConfig = msgspec.field(default_factory=CourierViewConfig)
    health_interval_s: Annotated[float, msgspec.Meta(ge=1, le=3600)] = HEALTH_INTERVAL_S
    custody_mode: TagAction = TagAction.OBSERVE


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
    if not config.buses:
        raise ConfigError("no [[buses]] configured: the gateway would send nothing", source=source)
    ids: list[str] = []
    for index, bus in enumerate(config.buses):
        where = f"[[buses]] #{index + 1} ({bus.kind.value} on {bus.port})"
        if bus.kind is DriverKind.MODBUS_RTU_PROBE:
            if not bus.probes or bus.device_id is not None:
                raise ConfigError(f"{where}: a probe bus lists [[buses.probes]] and no device_id", source=source)
            ids += [probe.sensor_id for probe in bus.probes]
        else:
            if bus.device_id is None or bus.probes:
                raise ConfigError(f"{where}: needs device_id and no probes", source=source)
            ids.append(bus.device_id)
    if len(set(ids)) != len(ids):
        raise ConfigError(f"sensor and device ids must be unique on a gateway: {sorted(ids)}", source=source)
    low, high = config.alarm.low_c, config.alarm.high_c
    if (low is None) != (high is None) or (low is not None and high is not None and low >= high):
        raise ConfigError("[alarm] needs both low_c and high_c, with low_c below high_c", source=source)
    return config


def load_agent_config(path: Path) -> AgentConfig:
    """Load and check the agent config at ``path``."""
    return check_agent_config(load_toml(path, AgentConfig), source=str(path))
