"""MQTT connection settings and client set-up shared by the agent and the hub.

Both sides install paho-mqtt (extras ``agent`` and ``hub``); the core ``coldchain`` package does
not, so this module is imported only by them and by the command line.
"""

from __future__ import annotations

import ssl
from typing import Final

import msgspec
import paho.mqtt.client as paho

from coldchain.config import resolve_secret

KEEPALIVE_S: Final = 30
"""A dead link is noticed within 1.5 keepalives (45 s), short enough for a truck losing coverage."""


class MqttConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Where the broker is and how to authenticate to it."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password_file: str | None = None
    password_env: str | None = None
    tls: bool = False
    ca_file: str | None = None
    keepalive_s: int = KEEPALIVE_S


def configure_client(client: paho.Client, config: MqttConfig, *, allow_placeholder_secret: bool = False) -> None:
    """Apply credentials and TLS from ``config`` to ``client`` (the password is never logged)."""
    if config.username is not None:
        password = None
        if config.password_file or config.password_env:
            password = resolve_secret(
                name=f"MQTT password of {config.username}",
                file=config.password_file,
                env=config.password_env,
                allow_placeholder=allow_placeholder_secret,
            )
        client.username_pw_set(config.username, password)
    if config.tls:
        client.tls_set(ca_certs=config.ca_file, cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
