"""The hub's configuration file (TOML), validated at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from coldchain.config import load_toml, resolve_secret
from coldchain.errors import ConfigError
from coldchain.mqtt import MqttConfig
from hub.alarms import AlarmSettings
from hub.db import sqlite_url
from hub.ingest import IngestConfig
from hub.notify import Endpoint
from hub.series_export import SeriesConfig
from hub.traceability.model import NodeInfo
from hub.traceability.settings import PublicSettings

Scope = Literal["read", "command", "staff", "orders", "metrics"]
"""What a token may do; ``metrics`` reads only ``GET /metrics``, so a scraper's token can read nothing else."""


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


DEFAULT_SQLITE_PATH = "var/hub.sqlite3"
"""The embedded default: a SQLite file beside the hub."""


class StoreConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Where the system of record lives: a SQLite file (the embedded default) or a database URL."""

    path: str | None = None
    """A SQLite file (``var/hub.sqlite3`` when neither ``path`` nor ``url`` is given)."""
    url: str | None = None
    """``postgresql://coldchain@db.example:5432/coldchain`` or ``sqlite:///var/hub.sqlite3``; no password in it."""
    password_file: str | None = None
    """The database password, read from this file (or from ``password_env``) and added to ``url``."""
    password_env: str | None = None
    migrate_on_start: bool = True
    """Apply pending migrations when the hub starts; turn off to run ``coldchain hub migrate`` yourself."""

    def database_url(self, *, allow_placeholder: bool = False) -> str:
        """The URL to connect with, password included; never log it (``Database.display_url`` masks it)."""
        if self.path is not None and self.url is not None:
            raise ConfigError("[store] give path (SQLite) or url, not both")
        if self.url is None:
            if self.password_file or self.password_env:
                raise ConfigError("[store] a password needs a url: a SQLite file has none")
            return sqlite_url(self.path or DEFAULT_SQLITE_PATH)
        try:
            url = make_url(self.url)
        except ArgumentError as exc:
            raise ConfigError(f"[store] url is not a database URL: {exc}") from None
        if url.password is not None:
            raise ConfigError("[store] url must not hold a password: use password_file or password_env")
        if self.password_file or self.password_env:
            password = resolve_secret(
                name="database password",
                file=self.password_file,
                env=self.password_env,
                allow_placeholder=allow_placeholder,
            )
            url = url.set(password=password)
        return url.render_as_string(hide_password=False)


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
    series: SeriesConfig = msgspec.field(default_factory=SeriesConfig)
    """Raw series out to VictoriaMetrics / InfluxDB (docs/series-export.md); off without ``url``."""


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
