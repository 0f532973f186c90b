"""The hub's configuration file (TOML), validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from coldchain.config import load_toml
from coldchain.errors import ConfigError
from coldchain.mqtt import MqttConfig
from hub.alarms import AlarmSettings
from hub.ingest import IngestConfig
from hub.notify import Endpoint
from hub.traceability.model import NodeInfo
from hub.traceability.settings import PublicSettings

Scope = Literal["read", "command", "staff", "orders"]


class ApiToken(msgspec.Struct, forbid_unknown_fields=True):
    """A bearer token the API accepts, stored only as its SHA-256 (``coldchain hub token`` makes one)."""

    name: str
    sha256: Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{64}$")]
    scopes: list[Scope]


class ApiConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Where the HTTP API listens and who may call it."""

    host: str = "127.0.0.1"
    port: int = 8000
    tokens: list[ApiToken] = msgspec.field(default_factory=list)


class StoreConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Where the system of record lives."""

    path: str = "var/hub.sqlite3"


class HubConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Everything the hub needs to run."""

    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    ingest: IngestConfig = msgspec.field(default_factory=IngestConfig)
    api: ApiConfig = msgspec.field(default_factory=ApiConfig)
    profiles_file: str | None = None
    """Product profiles and their bindings to gateways (config/profiles.toml); without it nothing is judged."""
    compensation_file: str | None = None
    """The compensation policy (config/compensation.toml); without it no claims are made."""
    alarms: AlarmSettings = msgspec.field(default_factory=AlarmSettings)
    endpoints: list[Endpoint] = msgspec.field(default_factory=list)
    public: PublicSettings = msgspec.field(default_factory=PublicSettings)
    nodes: list[NodeInfo] = msgspec.field(default_factory=list)
    """What each gateway's node is (kind, names, GLN, city) for trails, EPCIS and the widget."""


def load_hub_config(path: Path) -> HubConfig:
    """Load and check a hub config: an API without a token is refused, as is an anonymous broker login."""
    config = load_toml(path, HubConfig)
    if not config.api.tokens:
        raise ConfigError(
            "[api] needs at least one [[api.tokens]] entry; make one with `coldchain hub token`", source=str(path)
        )
    if config.mqtt.username is None:
        raise ConfigError("[mqtt] username is required: the broker must not accept anonymous clients", source=str(path))
    return check_endpoints(config, source=str(path))


def check_endpoints(config: HubConfig, *, source: str) -> HubConfig:
    """Every endpoint named by the alarm settings or the policy must be configured."""
    names = {endpoint.name for endpoint in config.endpoints}
    if len(names) != len(config.endpoints):
        raise ConfigError("[[endpoints]] names must be unique", source=source)
    missing = set(config.alarms.notify) - names
    if missing:
        raise ConfigError(f"[alarms] notify names unknown endpoints {sorted(missing)}", source=source)
    return config
