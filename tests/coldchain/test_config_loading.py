"""Config loading: strict TOML to structs with errors naming file and field; secrets from file or env."""

from __future__ import annotations

import msgspec
import pytest

from coldchain.config import MIN_SECRET_LENGTH, PLACEHOLDER_SECRETS, load_toml, resolve_secret
from coldchain.errors import ConfigError

GOOD_SECRET = "s3cr3t-Value-0123456789"


class Listener(msgspec.Struct, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = 1883


class SampleConfig(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    interval_s: float = 5.0
    listener: Listener = msgspec.field(default_factory=Listener)
    tags: list[str] = msgspec.field(default_factory=list)


def write(tmp_path, text: str):
    path = tmp_path / "sample.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_toml_converts_a_valid_file(tmp_path):
    path = write(tmp_path, 'name = "hub-a"\ninterval_s = 2.5\ntags = ["x", "y"]\n[listener]\nport = 8883\n')
    config = load_toml(path, SampleConfig)
    assert config == SampleConfig(name="hub-a", interval_s=2.5, listener=Listener(port=8883), tags=["x", "y"])


def test_load_toml_applies_defaults(tmp_path):
    config = load_toml(write(tmp_path, 'name = "n"\n'), SampleConfig)
    assert config.listener == Listener()
    assert config.interval_s == 5.0


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "absent.toml"
    with pytest.raises(ConfigError) as info:
        load_toml(path, SampleConfig)
    assert info.value.source == str(path)
    assert str(path) in str(info.value)
    assert "cannot read config" in str(info.value)


def test_directory_instead_of_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_toml(tmp_path, SampleConfig)
    assert str(tmp_path) in str(info.value)


def test_invalid_toml_names_the_file_and_the_line(tmp_path):
    path = write(tmp_path, 'name = "ok"\nport = = 3\n')
    with pytest.raises(ConfigError) as info:
        load_toml(path, SampleConfig)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "not valid TOML" in message
    assert "line 2" in message


def test_non_utf8_file_is_a_config_error(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "caf\u00e9"\n'.encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_toml(path, SampleConfig)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("text", "fragments"),
    [
        pytest.param("interval_s = 1.0\n", ["missing required field", "`name`"], id="missing-field"),
        pytest.param("name = 3\n", ["$.name", "Expected `str`"], id="wrong-type"),
        pytest.param('name = "n"\ninterval_s = "5"\n', ["$.interval_s"], id="string-for-float"),
        pytest.param('name = "n"\n[listener]\nport = "1883"\n', ["$.listener.port"], id="nested-type"),
        pytest.param('name = "n"\nbogus = 1\n', ["unknown field `bogus`"], id="unknown-top-level"),
        pytest.param(
            'name = "n"\n[listener]\nbogus = 1\n', ["unknown field `bogus`", "$.listener"], id="unknown-nested"
        ),
        pytest.param('name = "n"\ntags = ["a", 2]\n', ["$.tags[1]"], id="list-item"),
    ],
)
def test_invalid_content_names_the_file_and_the_field(tmp_path, text, fragments):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_toml(path, SampleConfig)
    message = str(info.value)
    assert info.value.source == str(path)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message


def test_strict_conversion_does_not_coerce_bool_to_int(tmp_path):
    with pytest.raises(ConfigError, match=r"\$\.listener\.port"):
        load_toml(write(tmp_path, 'name = "n"\n[listener]\nport = true\n'), SampleConfig)


# ---------------------------------------------------------------------------------------------
# secrets
# ---------------------------------------------------------------------------------------------


def test_secret_from_file_is_stripped(tmp_path):
    secret_file = tmp_path / "mqtt.pw"
    secret_file.write_text(f"  {GOOD_SECRET}\n", encoding="utf-8")
    assert resolve_secret(name="mqtt", file=str(secret_file), env=None) == GOOD_SECRET


def test_secret_from_environment(monkeypatch):
    monkeypatch.setenv("CC_TEST_SECRET", GOOD_SECRET)
    assert resolve_secret(name="mqtt", file=None, env="CC_TEST_SECRET") == GOOD_SECRET


def test_file_takes_precedence_over_environment(tmp_path, monkeypatch):
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-the-file-0123", encoding="utf-8")
    monkeypatch.setenv("CC_TEST_SECRET", "from-the-environment-0123")
    assert resolve_secret(name="mqtt", file=str(secret_file), env="CC_TEST_SECRET") == "from-the-file-0123"


def test_unset_environment_variable_is_named(monkeypatch):
    monkeypatch.delenv("CC_TEST_SECRET_ABSENT", raising=False)
    with pytest.raises(ConfigError) as info:
        resolve_secret(name="mqtt password", file=None, env="CC_TEST_SECRET_ABSENT")
    assert "CC_TEST_SECRET_ABSENT" in str(info.value)
    assert "mqtt password" in str(info.value)


def test_neither_file_nor_environment_is_refused():
    with pytest.raises(ConfigError, match="give a file or an environment variable"):
        resolve_secret(name="mqtt", file=None, env=None)
    with pytest.raises(ConfigError):
        resolve_secret(name="mqtt", file=None, env=None, allow_placeholder=True)


def test_unreadable_secret_file_names_the_file(tmp_path):
    missing = tmp_path / "nope.pw"
    with pytest.raises(ConfigError) as info:
        resolve_secret(name="mqtt", file=str(missing), env=None)
    assert str(missing) in str(info.value)


@pytest.mark.parametrize("placeholder", [*sorted(PLACEHOLDER_SECRETS), "ChangeMe", "PASSWORD"])
def test_placeholders_are_refused_from_a_file(tmp_path, placeholder):
    secret_file = tmp_path / "pw"
    secret_file.write_text(placeholder + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        resolve_secret(name="mqtt", file=str(secret_file), env=None)
    assert "placeholder" in str(info.value)
    assert resolve_secret(name="mqtt", file=str(secret_file), env=None, allow_placeholder=True) == placeholder


def test_undecodable_secret_file_is_a_config_error(tmp_path):
    secret_file = tmp_path / "pw"
    secret_file.write_bytes(b"\xe9\xff binary-secret-0123456789")
    with pytest.raises(ConfigError) as info:
        resolve_secret(name="mqtt", file=str(secret_file), env=None)
    assert str(secret_file) in str(info.value)
    assert "binary-secret" not in str(info.value)


def test_placeholder_from_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("CC_TEST_SECRET", "changeme")
    with pytest.raises(ConfigError, match="placeholder"):
        resolve_secret(name="mqtt", file=None, env="CC_TEST_SECRET")
    monkeypatch.setenv("CC_TEST_SECRET", "")
    with pytest.raises(ConfigError, match="placeholder"):
        resolve_secret(name="mqtt", file=None, env="CC_TEST_SECRET")


def test_short_secret_is_refused_without_echoing_it(monkeypatch):
    short = "Zq8#kW1!pX4"
    assert len(short) == MIN_SECRET_LENGTH - 1
    monkeypatch.setenv("CC_TEST_SECRET", short)
    with pytest.raises(ConfigError) as info:
        resolve_secret(name="mqtt", file=None, env="CC_TEST_SECRET")
    assert str(MIN_SECRET_LENGTH) in str(info.value)
    assert short not in str(info.value)
    assert short not in repr(info.value)
    assert resolve_secret(name="mqtt", file=None, env="CC_TEST_SECRET", allow_placeholder=True) == short


def test_secret_of_exactly_the_minimum_length_is_accepted(monkeypatch):
    value = "Zq8#kW1!pX4m"
    assert len(value) == MIN_SECRET_LENGTH
    monkeypatch.setenv("CC_TEST_SECRET", value)
    assert resolve_secret(name="mqtt", file=None, env="CC_TEST_SECRET") == value


def test_placeholder_check_ignores_case_but_not_content(monkeypatch):
    monkeypatch.setenv("CC_TEST_SECRET", "PaSsWoRd")
    with pytest.raises(ConfigError) as info:
        resolve_secret(name="broker", file=None, env="CC_TEST_SECRET")
    assert "PaSsWoRd" not in str(info.value)
