from __future__ import annotations

from pathlib import Path

import pytest

from coldchain.errors import ConfigError
from hub.profiles import ProductProfile, load_profile_book, load_profiles

REPO = Path(__file__).resolve().parents[2]


def test_sample_file_loads_every_profile_and_binding() -> None:
    book = load_profile_book(REPO / "config" / "profiles.toml")
    assert {"chilled-produce", "frozen", "fresh-tea-leaves", "pharma-2-8"} <= set(book.profiles)
    frozen = book.profiles["frozen"]
    assert frozen.temp_low_c is None
    assert frozen.temp_high_c == -18.0
    pharma = book.profiles["pharma-2-8"]
    assert (pharma.temp_low_c, pharma.temp_high_c, pharma.mkt_limit_c) == (2.0, 8.0, 8.0)
    tea = book.profiles["fresh-tea-leaves"]
    assert tea.humidity_range() == (80.0, 95.0)
    gateway_profile = book.for_gateway("gw-reefer")
    assert gateway_profile is not None
    assert gateway_profile.name == "chilled-produce"
    assert book.for_gateway("gw-unknown") is None
    assert load_profiles(REPO / "config" / "profiles.toml")["chilled-produce"].temperature_range() == (0.0, 4.0)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"temp_low_c": 4.0, "temp_high_c": 0.0}, "must be below"),
        ({"humidity_low": 90.0, "humidity_high": 80.0}, "must be below"),
        ({"humidity_high": 120.0}, "0..100"),
        ({"alarm_dwell_s": -1.0}, "alarm_dwell_s must be >= 0"),
        ({"silent_after_s": 0.0}, "silent_after_s must be > 0"),
        ({"max_single_excursion_s": float("nan")}, "max_single_excursion_s"),
        ({"fluctuation_outliers": 0}, "fluctuation_outliers"),
    ],
)
def test_invalid_profiles_are_refused_with_the_field_named(fields: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ProductProfile("p", **fields)  # type: ignore[arg-type]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "profiles.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_bad_files_give_config_errors_naming_the_profile(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[profiles.berries\].*must be below"):
        load_profiles(write(tmp_path, "[profiles.berries]\ntemp_low_c = 5\ntemp_high_c = 1\n"))
    with pytest.raises(ConfigError, match="unknown field"):
        load_profiles(write(tmp_path, "[profiles.berries]\ntemp_hi = 4\n"))
    with pytest.raises(ConfigError, match=r"Expected `float \| null`, got `str` - at `\$.temp_high_c`"):
        load_profiles(write(tmp_path, '[profiles.berries]\ntemp_high_c = "4"\n'))
    with pytest.raises(ConfigError, match="undefined profile 'nope'"):
        load_profiles(write(tmp_path, '[profiles.berries]\ntemp_high_c = 4\n[bindings]\nnodes = { "gw-a" = "nope" }\n'))
    with pytest.raises(ConfigError, match="must match the table key"):
        load_profiles(write(tmp_path, '[profiles.berries]\nname = "other"\n'))
    with pytest.raises(ConfigError, match="unknown top-level"):
        load_profiles(write(tmp_path, "[profile.berries]\n"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_profiles(write(tmp_path, "[profiles\n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_profiles(tmp_path / "missing.toml")


def test_integers_are_accepted_for_float_fields(tmp_path: Path) -> None:
    profiles = load_profiles(write(tmp_path, "[profiles.berries]\ntemp_low_c = 0\ntemp_high_c = 4\n"))
    assert profiles["berries"] == ProductProfile("berries", temp_low_c=0.0, temp_high_c=4.0)
