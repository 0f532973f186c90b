"""The MQTT topic scheme: ``cc/v1/gw/{gateway_id}/{channel}``.

A gateway publishes only under its own id and reads only its own ``ack`` and ``cmd``; the broker
ACL enforces this with ``%u`` patterns and the hub re-checks topic id against payload id.
"""

from __future__ import annotations

import enum
import re

from coldchain.errors import ContractError

TOPIC_ROOT = "cc/v1/gw"

# Gateway ids become topic levels and MQTT usernames: no wildcards, no separators, bounded length.
GATEWAY_ID_CHARS = r"[a-z0-9][a-z0-9_-]{0,62}"
# \Z, not $: Python's $ also matches before a trailing newline, which would let "gw-1\n" through.
GATEWAY_ID_PATTERN = rf"^{GATEWAY_ID_CHARS}\Z"
_GATEWAY_ID_RE = re.compile(GATEWAY_ID_PATTERN)


class Channel(enum.StrEnum):
    """The channels under a gateway's topic; the first group flows gateway -> hub."""

    TELEMETRY = "telemetry"
    RFID = "rfid"
    GPS = "gps"
    ALARM = "alarm"
    STATUS = "status"
    HEALTH = "health"
    # hub -> gateway
    ACK = "ack"
    CMD = "cmd"
    # gateway -> hub, answering CMD
    CMD_ACK = "cmd/ack"


def is_valid_gateway_id(gateway_id: str) -> bool:
    """Return whether ``gateway_id`` can be used as a topic level and an MQTT username."""
    return _GATEWAY_ID_RE.fullmatch(gateway_id) is not None


def topic_for(gateway_id: str, channel: Channel) -> str:
    """Build the topic of ``channel`` for ``gateway_id``; refuse ids that would break the scheme."""
    if not is_valid_gateway_id(gateway_id):
        raise ContractError("bad_gateway_id", f"gateway id {gateway_id!r} does not match {GATEWAY_ID_PATTERN}")
    return f"{TOPIC_ROOT}/{gateway_id}/{channel.value}"


def subscription_for(channel: Channel) -> str:
    """The wildcard subscription the hub uses to receive ``channel`` from every gateway."""
    return f"{TOPIC_ROOT}/+/{channel.value}"


def parse_topic(topic: str) -> tuple[str, Channel]:
    """Split a topic into ``(gateway_id, channel)``; raise ``ContractError`` if it is not ours."""
    prefix = TOPIC_ROOT + "/"
    if not topic.startswith(prefix):
        raise ContractError("bad_topic", f"topic {topic!r} is outside {TOPIC_ROOT}/")
    gateway_id, _, channel_name = topic[len(prefix) :].partition("/")
    if not is_valid_gateway_id(gateway_id):
        raise ContractError("bad_topic", f"topic {topic!r} carries an invalid gateway id {gateway_id!r}")
    try:
        channel = Channel(channel_name)
    except ValueError:
        raise ContractError("bad_topic", f"topic {topic!r} names unknown channel {channel_name!r}") from None
    return gateway_id, channel
