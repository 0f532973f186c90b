"""The gateway's own range alarm (pure) and the external command it runs on a transition."""

from __future__ import annotations

import logging

import pytest

from coldchain.messages import Quantity, Reading
from edge_agent import alarm as alarm_module
from edge_agent.alarm import AlarmTransition, CommandHook, RangeAlarm

TS = 1_767_225_600_000


def temp(value: float, sensor: str = "probe-1", i: int = 0) -> Reading:
    return Reading(sensor, Quantity.TEMPERATURE, TS + i, value)


def states(transitions: list[AlarmTransition]) -> list[tuple[str, str, float]]:
    return [(t.sensor_id, t.state, t.reading.value) for t in transitions]


def feed(alarm: RangeAlarm, values: list[float], sensor: str = "probe-1") -> list[tuple[str, str, float]]:
    return states(alarm.check([temp(v, sensor, i) for i, v in enumerate(values)]))


# ---------------------------------------------------------------------------------------------
# RangeAlarm
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1.99, -30.0, 8.01, 25.0])
def test_raises_out_of_range_on_either_side(value):
    alarm = RangeAlarm(2.0, 8.0, 0.5)
    transitions = alarm.check([temp(value)])
    assert transitions == [AlarmTransition("probe-1", "raised", temp(value), 2.0, 8.0)]
    assert alarm.active == ["probe-1"]


@pytest.mark.parametrize("value", [2.0, 5.0, 8.0])
def test_range_bounds_are_inside(value):
    alarm = RangeAlarm(2.0, 8.0, 0.5)
    assert alarm.check([temp(value)]) == []
    assert alarm.active == []


def test_no_repeat_while_it_stays_out():
    alarm = RangeAlarm(2.0, 8.0, 0.5)
    assert feed(alarm, [9.0, 10.0, 12.5, 8.5]) == [("probe-1", "raised", 9.0)]
    assert feed(alarm, [11.0]) == []
    # Out on the other side while raised is still the same alarm.
    assert feed(alarm, [-1.0]) == []
    assert alarm.active == ["probe-1"]


def test_clears_only_inside_the_range_minus_hysteresis_high_side():
    alarm = RangeAlarm(2.0, 8.0, 0.5)
    assert feed(alarm, [8.6]) == [("probe-1", "raised", 8.6)]
    assert feed(alarm, [8.0, 7.9, 7.51]) == []  # back in range, but inside the hysteresis band
    assert alarm.active == ["probe-1"]
    assert feed(alarm, [7.5]) == [("probe-1", "cleared", 7.5)]
    assert alarm.active == []
    assert feed(alarm, [7.9]) == []  # in range, not raised: nothing


def test_clears_only_inside_the_range_minus_hysteresis_low_side():
    alarm = RangeAlarm(2.0, 8.0, 0.5)
    assert feed(alarm, [1.0]) == [("probe-1", "raised", 1.0)]
    assert feed(alarm, [2.0, 2.2, 2.49]) == []
    assert feed(alarm, [2.5]) == [("probe-1", "cleared", 2.5)]


def test_raise_clear_raise_again():
    alarm = RangeAlarm(2.0, 8.0, 0.5)
    assert feed(alarm, [9.0, 7.7, 5.0, 7.9, 8.2, 8.1, 3.0]) == [
        ("probe-1", "raised", 9.0),
        ("probe-1", "cleared", 5.0),
        ("probe-1", "raised", 8.2),
        ("probe-1", "cleared", 3.0),
    ]


def test_zero_hysteresis_clears_at_the_bound():
    alarm = RangeAlarm(2.0, 8.0, 0.0)
    assert feed(alarm, [8.1, 8.0]) == [("probe-1", "raised", 8.1), ("probe-1", "cleared", 8.0)]


def test_sensors_are_independent():
    alarm = RangeAlarm(2.0, 8.0, 0.5)
    transitions = alarm.check([temp(9.0, "a"), temp(5.0, "b"), temp(1.0, "c"), temp(9.5, "a"), temp(7.8, "c")])
    assert states(transitions) == [("a", "raised", 9.0), ("c", "raised", 1.0)]
    assert alarm.active == ["a", "c"]
    transitions = alarm.check([temp(5.0, "a"), temp(7.9, "c"), temp(10.0, "b")])
    assert states(transitions) == [("a", "cleared", 5.0), ("b", "raised", 10.0)]
    assert alarm.active == ["b", "c"]


def test_humidity_readings_are_ignored():
    alarm = RangeAlarm(2.0, 8.0, 0.5)
    humid = Reading("probe-1", Quantity.HUMIDITY, TS, 95.0)
    assert alarm.check([humid]) == []
    assert alarm.active == []
    alarm.check([temp(9.0)])
    assert alarm.check([Reading("probe-1", Quantity.HUMIDITY, TS + 1, 5.0)]) == []
    assert alarm.active == ["probe-1"]


def test_set_range_applies_to_the_next_readings():
    alarm = RangeAlarm(2.0, 8.0, 0.5)
    assert feed(alarm, [9.0]) == [("probe-1", "raised", 9.0)]
    alarm.set_range(0.0, 12.0)
    (cleared,) = alarm.check([temp(9.0)])
    assert (cleared.state, cleared.low_c, cleared.high_c) == ("cleared", 0.0, 12.0)
    alarm.set_range(-20.0, -15.0)  # frozen goods now on board
    (raised,) = alarm.check([temp(-10.0)])
    assert (raised.state, raised.low_c, raised.high_c) == ("raised", -20.0, -15.0)
    assert (alarm.low_c, alarm.high_c) == (-20.0, -15.0)


@pytest.mark.parametrize(("low", "high"), [(None, None), (2.0, None), (None, 8.0)])
def test_no_range_means_no_transitions(low, high):
    alarm = RangeAlarm(low, high, 0.5)
    assert feed(alarm, [-50.0, 100.0, 5.0]) == []
    assert alarm.active == []


# ---------------------------------------------------------------------------------------------
# CommandHook
# ---------------------------------------------------------------------------------------------


def transition(state: str = "raised", value: float = 9.126) -> AlarmTransition:
    return AlarmTransition("probe-7", state, temp(value, "probe-7"), 2.0, 8.0)  # type: ignore[arg-type]


def read_env(path) -> dict[str, str]:
    return dict(line.split("=", 1) for line in path.read_text().splitlines() if "=" in line)


def test_command_hook_passes_the_transition_in_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("COLDCHAIN_TEST_MARKER", "kept")
    out = tmp_path / "env.txt"
    hook = CommandHook(["sh", "-c", f"env > '{out}'"])
    hook(transition())
    env = read_env(out)
    assert env["COLDCHAIN_ALARM_STATE"] == "raised"
    assert env["COLDCHAIN_ALARM_SENSOR"] == "probe-7"
    assert env["COLDCHAIN_ALARM_VALUE"] == "9.13"
    assert env["COLDCHAIN_ALARM_LOW"] == "2.00"
    assert env["COLDCHAIN_ALARM_HIGH"] == "8.00"
    assert env["COLDCHAIN_TEST_MARKER"] == "kept"  # the agent's environment is passed on
    hook(transition("cleared", 5.0))
    assert read_env(out)["COLDCHAIN_ALARM_STATE"] == "cleared"
    assert read_env(out)["COLDCHAIN_ALARM_VALUE"] == "5.00"


@pytest.mark.parametrize(
    "command",
    [["sh", "-c", "echo nope >&2; exit 3"], ["/nonexistent/coldchain-buzzer"], ["/dev/null"]],
    ids=["fails", "missing", "not-executable"],
)
def test_a_failing_or_missing_command_is_logged_not_raised(command, caplog):
    with caplog.at_level(logging.WARNING, logger="edge_agent.alarm"):
        CommandHook(command)(transition())
    assert "alarm hook" in caplog.text
    assert command[0] in caplog.text


def test_a_hanging_command_is_cut_off(monkeypatch, caplog):
    monkeypatch.setattr(alarm_module, "HOOK_TIMEOUT_S", 0.2)
    with caplog.at_level(logging.WARNING, logger="edge_agent.alarm"):
        CommandHook(["sleep", "30"])(transition())
    assert "alarm hook sleep failed" in caplog.text


def test_an_empty_command_does_nothing(caplog):
    with caplog.at_level(logging.DEBUG, logger="edge_agent.alarm"):
        CommandHook([])(transition())
    assert caplog.records == []
