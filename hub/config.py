"""The hub's configuration file (TOML), validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec

from coldchain.config import load_toml
from coldchain.errors import ConfigError
from coldchain.mqtt import MqttConfig
from hub.ingest import IngestConfig

Scope = Literal["read", "command"]


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


def load_hub_config(path: Path) -> HubConfig:
    """Load and check a hub config: an API without a token is refused, as is an anonymous broker login."""
    config = load_toml(path, HubConfig)
    if not config.api.tokens:
        raise ConfigError(
            "[api] needs at least one [[api.tokens]] entry; make one with `coldchain hub token`", source=str(path)
        )
    if config.mqtt.username is None:
        raise ConfigError("[mqtt] username is required: the broker must not accept anonymous clients", source=str(path))
    return config
