"""Config loading shared by the agent and the hub: TOML in, validated msgspec structs out.

Config is validated once at start-up; a bad file stops the program with a message that names the
file and the field. Secrets come from a file or an environment variable, never from the main file,
and placeholders are refused unless the caller runs the demo.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Final, TypeVar

import msgspec

from coldchain.errors import ConfigError

T = TypeVar("T")

# Values people paste from samples and forget to change; refused outside the demo.
PLACEHOLDER_SECRETS: Final = frozenset(
    {"", "changeme", "change-me", "change_me", "password", "secret", "admin", "test"}
)
MIN_SECRET_LENGTH: Final = 12
"""Shorter secrets are guessable by an online attack against the broker within days."""


def load_toml(path: Path, config_type: type[T]) -> T:
    """Read ``path`` as TOML and convert it strictly into ``config_type``."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config: {exc.strerror}", source=str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start}): {exc.reason}", source=str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=str(path)) from exc
    return convert(raw, config_type, source=str(path))


def convert(raw: dict[str, Any], config_type: type[T], *, source: str) -> T:
    """Convert a parsed mapping into ``config_type``, naming the offending field on failure."""
    try:
        return msgspec.convert(raw, config_type, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc), source=source) from exc


def resolve_secret(*, name: str, file: str | None, env: str | None, allow_placeholder: bool = False) -> str:
    """Return the secret ``name`` from ``file`` (first) or the environment variable ``env``.

    The value is never logged or put in an error message. Unless ``allow_placeholder`` (the demo),
    a missing, placeholder or short secret is refused, so a gateway never runs with a sample password.
    """
    value: str | None = None
    if file:
        try:
            value = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read secret {name} from {file}: {exc.strerror}") from exc
        except UnicodeDecodeError:
            raise ConfigError(f"secret {name} in {file} is not UTF-8 text") from None  # the bytes stay out of logs
    elif env:
        value = os.environ.get(env)
        if value is None:
            raise ConfigError(f"secret {name}: environment variable {env} is not set")
    if value is None:
        raise ConfigError(f"secret {name}: give a file or an environment variable")
    if not allow_placeholder:
        if value.lower() in PLACEHOLDER_SECRETS:
            raise ConfigError(f"secret {name} is a placeholder; set a real one")
        if len(value) < MIN_SECRET_LENGTH:
            raise ConfigError(f"secret {name} is shorter than {MIN_SECRET_LENGTH} characters")
    return value
