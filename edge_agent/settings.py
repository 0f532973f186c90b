"""Settings the hub can change at run time (remote configuration), persisted across restarts.

A command is validated completely before anything changes; an accepted one bumps ``version``
and is written atomically, so a restart comes back with what the hub last set.
"""

from __future__ import annotations

import os
from pathlib import Path

import msgspec

from coldchain.messages import ConfigChange, SetCustodyMode, SetProductRange, SetSamplingInterval, TagAction


class RuntimeSettings(msgspec.Struct, forbid_unknown_fields=True):
    """The remotely configurable part of the agent's behaviour."""

    interval_s: float
    low_c: float | None
    high_c: float | None
    custody_mode: TagAction
    version: int = 0

    def applied(self, change: ConfigChange) -> RuntimeSettings:
        """A copy with ``change`` applied and the version bumped (the change is already validated)."""
        match change:
            case SetSamplingInterval(interval_s=interval_s):
                updated = msgspec.structs.replace(self, interval_s=interval_s)
            case SetProductRange(low_c=low_c, high_c=high_c):
                updated = msgspec.structs.replace(self, low_c=low_c, high_c=high_c)
            case SetCustodyMode(mode=mode):
                updated = msgspec.structs.replace(self, custody_mode=mode)
        return msgspec.structs.replace(updated, version=self.version + 1)


class SettingsStore:
    """Reads and atomically writes ``RuntimeSettings`` in the agent's state directory."""

    def __init__(self, path: Path) -> None:
        self._path = path

    def load(self, defaults: RuntimeSettings) -> RuntimeSettings:
        """The persisted settings, or ``defaults`` when none were ever changed or the file is unreadable."""
        try:
            return msgspec.json.decode(self._path.read_bytes(), type=RuntimeSettings)
        except (OSError, msgspec.DecodeError):
            return defaults

    def save(self, settings: RuntimeSettings) -> None:
        """Write ``settings`` so that a crash leaves the old or the new file, never half of one."""
        tmp = self._path.with_suffix(".tmp")
        self._path.parent.mkdir(parents=True, exist_ok=True)
        with tmp.open("wb") as handle:
            handle.write(msgspec.json.encode(settings))
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(self._path)
