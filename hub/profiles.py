"""Product profiles: the ranges, budgets and detector tuning that apply to one kind of goods.

A profile says what "out of range" means for a product (berries, frozen goods, fresh tea leaves,
2-8 °C medicines) and how patient the detectors should be before they call it an excursion.
``config/profiles.toml`` holds the samples and binds gateways (nodes) and lots to profiles.
"""

from __future__ import annotations

import math
import tomllib
from pathlib import Path
from typing import Any, Final

import msgspec

from coldchain.config import convert
from coldchain.errors import ConfigError

DEFAULT_ALARM_DWELL_S: Final = 15 * 60.0
"""Air probes see door openings and defrost as minutes-long spikes the product never feels; a
failing cooling unit keeps the air out of range far longer (docs/detectors.md measures both)."""

DEFAULT_HYSTERESIS_C: Final = 0.3
"""Well above the probes' 0.05 °C noise, so an excursion does not close and reopen at the limit."""

DEFAULT_HYSTERESIS_RH: Final = 2.0
"""Humidity probes repeat to about 0.2 %RH but drift by about 1-2 %RH: close only when clearly back."""

DEFAULT_DOOR_RATE_C_PER_MIN: Final = 0.5
"""An open door warms the air at a mid-room probe by 0.7-2 °C a minute; 0.05 °C probe noise over a
45-60 s span makes rates of about 0.1 °C/min, five times less."""

DEFAULT_SUSTAINED_RATE_C_PER_MIN: Final = 0.05
"""3 °C an hour: a stopped reefer or cold room warms faster than that for its first hours."""

DEFAULT_SUSTAINED_RISE_S: Final = 15 * 60.0
"""A door opening stops rising within its own minute or two; a failure keeps rising for much longer."""

DEFAULT_STUCK_AFTER_S: Final = 2 * 3600.0
"""A live probe in a refrigerated space moves by its resolution within minutes; two hours flat is a stuck reading."""

DEFAULT_SILENT_AFTER_S: Final = 10 * 60.0
"""Gateways sample every few seconds and publish batches within a minute; ten minutes of nothing is an outage."""

DEFAULT_MKT_WINDOW_S: Final = 24 * 3600.0
"""Mean kinetic temperature is meaningful over a day or longer, not over a door opening."""

DEFAULT_FLUCTUATION_Z: Final = 8.0
"""Robust z-score of a step between readings; Gaussian noise alone reaches it far less than once a week."""

DEFAULT_FLUCTUATION_OUTLIERS: Final = 3
"""Steps beyond the z-score within the window before it is a fluctuation, not one glitch."""


class ProductProfile(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a product tolerates, and how the detectors judge its series.

    Temperatures in °C, humidity in %RH, durations in seconds. A bound left ``None`` is open:
    frozen goods have only ``temp_high_c = -18``.
    """

    name: str
    temp_low_c: float | None = None
    temp_high_c: float | None = None
    humidity_low: float | None = None
    humidity_high: float | None = None
    max_single_excursion_s: float = 3600.0
    """Longest single excursion allowed before it becomes critical."""
    max_cumulative_excursion_s: float = 4 * 3600.0
    """Time-out-of-range budget over a journey (see the cumulative detector)."""
    mkt_limit_c: float | None = None
    mkt_window_s: float = DEFAULT_MKT_WINDOW_S
    alarm_dwell_s: float = DEFAULT_ALARM_DWELL_S
    hysteresis_c: float = DEFAULT_HYSTERESIS_C
    hysteresis_rh: float = DEFAULT_HYSTERESIS_RH
    door_rate_c_per_min: float = DEFAULT_DOOR_RATE_C_PER_MIN
    sustained_rate_c_per_min: float = DEFAULT_SUSTAINED_RATE_C_PER_MIN
    sustained_rise_s: float = DEFAULT_SUSTAINED_RISE_S
    stuck_after_s: float = DEFAULT_STUCK_AFTER_S
    silent_after_s: float = DEFAULT_SILENT_AFTER_S
    fluctuation_z: float = DEFAULT_FLUCTUATION_Z
    fluctuation_outliers: int = DEFAULT_FLUCTUATION_OUTLIERS

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name must not be empty")
        _check_range("temp_low_c", self.temp_low_c, "temp_high_c", self.temp_high_c)
        _check_range("humidity_low", self.humidity_low, "humidity_high", self.humidity_high)
        for name in ("humidity_low", "humidity_high"):
            value = getattr(self, name)
            if value is not None and not 0.0 <= value <= 100.0:
                raise ValueError(f"{name} must be within 0..100 %RH, got {value}")
        if self.mkt_limit_c is not None and not math.isfinite(self.mkt_limit_c):
            raise ValueError(f"mkt_limit_c must be a finite temperature, got {self.mkt_limit_c}")
        for name in (
            "max_single_excursion_s",
            "max_cumulative_excursion_s",
            "mkt_window_s",
            "door_rate_c_per_min",
            "sustained_rate_c_per_min",
            "sustained_rise_s",
            "stuck_after_s",
            "silent_after_s",
            "fluctuation_z",
        ):
            _check_positive(name, getattr(self, name))
        for name in ("alarm_dwell_s", "hysteresis_c", "hysteresis_rh"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be >= 0, got {value}")
        if self.fluctuation_outliers < 1:
            raise ValueError(f"fluctuation_outliers must be >= 1, got {self.fluctuation_outliers}")

    def temperature_range(self) -> tuple[float | None, float | None]:
        """``(low, high)`` in °C; either may be ``None`` (open side)."""
        return self.temp_low_c, self.temp_high_c

    def humidity_range(self) -> tuple[float | None, float | None]:
        """``(low, high)`` in %RH; either may be ``None`` (open side)."""
        return self.humidity_low, self.humidity_high


def _check_range(low_name: str, low: float | None, high_name: str, high: float | None) -> None:
    for name, value in ((low_name, low), (high_name, high)):
        if value is not None and not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and high is not None and not low < high:
        raise ValueError(f"{low_name} ({low}) must be below {high_name} ({high})")


def _check_positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be > 0, got {value}")


class Bindings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Which profile applies where: gateway ids (nodes) and lot ids, each to a profile name."""

    nodes: dict[str, str] = msgspec.field(default_factory=dict)
    lots: dict[str, str] = msgspec.field(default_factory=dict)


class ProfileBook(msgspec.Struct, frozen=True):
    """The profiles of a file and their bindings, checked to refer only to defined profiles."""

    profiles: dict[str, ProductProfile]
    bindings: Bindings

    def for_gateway(self, gateway_id: str) -> ProductProfile | None:
        """The profile bound to a gateway's node, or ``None`` when it has none."""
        name = self.bindings.nodes.get(gateway_id)
        return None if name is None else self.profiles[name]

    def for_lot(self, lot_id: str) -> ProductProfile | None:
        """The profile bound to a lot, or ``None`` when it has none."""
        name = self.bindings.lots.get(lot_id)
        return None if name is None else self.profiles[name]


def load_profile_book(path: Path) -> ProfileBook:
    """Read a profiles file: ``[profiles.<name>]`` tables and an optional ``[bindings]`` table.

    The table key is the profile's name (a ``name`` inside, if given, must agree). Raises
    ``ConfigError`` naming the file and the profile for any unknown field, bad value or a binding
    to an undefined profile.
    """
    source = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read profiles: {exc.strerror}", source=source) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start}): {exc.reason}", source=source) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", source=source) from exc
    unknown = set(raw) - {"profiles", "bindings"}
    if unknown:
        raise ConfigError(
            f"unknown top-level keys {sorted(unknown)}; expected [profiles.*] and [bindings]", source=source
        )
    tables: Any = raw.get("profiles", {})
    if not isinstance(tables, dict):
        raise ConfigError("[profiles] must be a table of [profiles.<name>] tables", source=source)
    profiles: dict[str, ProductProfile] = {}
    for name, table in tables.items():
        if not isinstance(table, dict):
            raise ConfigError(f"profiles.{name} must be a table", source=source)
        if table.get("name", name) != name:
            raise ConfigError(
                f"profiles.{name} has name = {table['name']!r}; it must match the table key", source=source
            )
        profiles[name] = convert({**table, "name": name}, ProductProfile, source=f"{source} [profiles.{name}]")
    bindings = convert(raw.get("bindings", {}), Bindings, source=f"{source} [bindings]")
    for section, mapping in (("nodes", bindings.nodes), ("lots", bindings.lots)):
        for target, profile in mapping.items():
            if profile not in profiles:
                raise ConfigError(
                    f"bindings.{section} binds {target!r} to undefined profile {profile!r}", source=source
                )
    return ProfileBook(profiles, bindings)


def load_profiles(path: Path) -> dict[str, ProductProfile]:
    """The profiles of a profiles file, by name (bindings checked, then left out)."""
    return load_profile_book(path).profiles
