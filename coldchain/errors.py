"""The exception tree shared by every coldchain package.

Each package converts foreign exceptions (msgspec, sqlite3, OSError, ...) into one of these at
its boundary with ``raise ... from exc`` and attaches the data a caller needs to act on it.
"""

from __future__ import annotations


class ColdchainError(Exception):
    """Base of every error coldchain raises on purpose."""


class ConfigError(ColdchainError):
    """A configuration file or value is missing, malformed or unsafe."""

    def __init__(self, message: str, *, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class ContractError(ColdchainError):
    """A message or topic breaks the wire contract.

    ``reason`` is a short, stable identifier (``too_large``, ``invalid``, ``bad_topic``,
    ``id_mismatch``) used as a counter label; the message text says exactly what was wrong.
    """

    def __init__(self, reason: str, message: str) -> None:
        self.reason = reason
        super().__init__(message)
