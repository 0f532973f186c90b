"""The topic scheme ``cc/v1/gw/{gateway_id}/{channel}``: building, parsing and refusing."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldchain.errors import ContractError
from coldchain.topics import TOPIC_ROOT, Channel, is_valid_gateway_id, parse_topic, subscription_for, topic_for

gateway_ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)


@given(gateway_ids, st.sampled_from(Channel))
def test_topic_for_and_parse_topic_round_trip(gateway_id, channel):
    topic = topic_for(gateway_id, channel)
    assert topic == f"cc/v1/gw/{gateway_id}/{channel.value}"
    assert parse_topic(topic) == (gateway_id, channel)


def test_known_topics_are_spelled_as_documented():
    assert TOPIC_ROOT == "cc/v1/gw"
    assert topic_for("truck-07", Channel.TELEMETRY) == "cc/v1/gw/truck-07/telemetry"
    assert topic_for("truck-07", Channel.STATUS) == "cc/v1/gw/truck-07/status"
    assert topic_for("truck-07", Channel.ACK) == "cc/v1/gw/truck-07/ack"
    assert topic_for("truck-07", Channel.CMD_ACK) == "cc/v1/gw/truck-07/cmd/ack"


def test_cmd_and_cmd_ack_are_distinct_channels():
    assert parse_topic("cc/v1/gw/gw1/cmd/ack") == ("gw1", Channel.CMD_ACK)
    assert parse_topic("cc/v1/gw/gw1/cmd") == ("gw1", Channel.CMD)


def test_subscription_for_uses_a_single_level_wildcard():
    assert subscription_for(Channel.TELEMETRY) == "cc/v1/gw/+/telemetry"
    assert subscription_for(Channel.STATUS) == "cc/v1/gw/+/status"


@pytest.mark.parametrize(
    "gateway_id",
    ["+", "#", "gw/1", "gw+", "gw#", "", "-gw", "_gw", "GW1", "gw 1", "g" * 64, "gw1\n", "gw\u00e9", "gw.1"],
)
def test_topic_for_refuses_ids_that_break_the_scheme(gateway_id):
    assert not is_valid_gateway_id(gateway_id)
    with pytest.raises(ContractError) as info:
        topic_for(gateway_id, Channel.TELEMETRY)
    assert info.value.reason == "bad_gateway_id"
    assert repr(gateway_id) in str(info.value)


@pytest.mark.parametrize("gateway_id", ["a", "0", "gw-1", "truck_07", "g" * 63])
def test_valid_ids_are_accepted(gateway_id):
    assert is_valid_gateway_id(gateway_id)


@pytest.mark.parametrize(
    ("topic", "fragment"),
    [
        pytest.param("xx/v1/gw/gw1/telemetry", "outside", id="foreign-root"),
        pytest.param("cc/v2/gw/gw1/telemetry", "outside", id="other-version"),
        pytest.param("/cc/v1/gw/gw1/telemetry", "outside", id="leading-slash"),
        pytest.param("cc/v1/gw", "outside", id="root-only"),
        pytest.param("cc/v1/gwx/gw1/telemetry", "outside", id="prefix-not-a-level"),
        pytest.param("cc/v1/gw/+/telemetry", "invalid gateway id", id="plus-wildcard"),
        pytest.param("cc/v1/gw/#", "invalid gateway id", id="hash-wildcard"),
        pytest.param("cc/v1/gw//telemetry", "invalid gateway id", id="empty-id"),
        pytest.param("cc/v1/gw/GW1/telemetry", "invalid gateway id", id="uppercase-id"),
        pytest.param("cc/v1/gw/gw1/pressure", "unknown channel", id="unknown-channel"),
        pytest.param("cc/v1/gw/gw1", "unknown channel", id="no-channel"),
        pytest.param("cc/v1/gw/gw1/", "unknown channel", id="empty-channel"),
        pytest.param("cc/v1/gw/gw1/telemetry/extra", "unknown channel", id="extra-level"),
        pytest.param("cc/v1/gw/gw1/ack/cmd", "unknown channel", id="reversed-cmd-ack"),
        pytest.param("cc/v1/gw/gw1/TELEMETRY", "unknown channel", id="channel-case"),
    ],
)
def test_parse_topic_refuses_topics_that_are_not_ours(topic, fragment):
    with pytest.raises(ContractError) as info:
        parse_topic(topic)
    assert info.value.reason == "bad_topic"
    assert fragment in str(info.value)
    assert repr(topic) in str(info.value)
