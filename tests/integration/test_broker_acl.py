"""The sample Mosquitto ACL (config/mosquitto/coldchain.acl) on a real broker: a gateway can
publish only under its own id, and the hub still receives what gateways send as themselves."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from coldchain import topics
from tests.support.mqtt import TestClient
from tests.support.servers import Mosquitto, require_binary

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {"hub": "hub-secret-0123456789", "gw-a": "gw-a-secret-0123456789", "gw-b": "gw-b-secret-0123456789"}


@pytest.fixture
def secured_broker(broker_factory: Callable[..., Mosquitto], tmp_path: Path) -> Mosquitto:
    passwd = require_binary("mosquitto_passwd", "mosquitto")
    password_file = tmp_path / "coldchain.passwd"
    for user, password in PASSWORDS.items():
        flags = ["-b"] if password_file.exists() else ["-c", "-b"]
        subprocess.run([passwd, *flags, str(password_file), user, password], check=True)
    return broker_factory(password_file=password_file, acl_file=REPO / "config/mosquitto/coldchain.acl")


def test_a_gateway_cannot_publish_as_another(secured_broker: Mosquitto) -> None:
    received: list[str] = []
    arrived = threading.Event()
    hub = paho.Client(CallbackAPIVersion.VERSION2, client_id="acl-hub")
    hub.username_pw_set("hub", PASSWORDS["hub"])

    def on_message(_c: paho.Client, _u: object, msg: paho.MQTTMessage) -> None:
        received.append(msg.topic)
        if msg.payload == b"last":
            arrived.set()

    subscribed = threading.Event()
    hub.on_message = on_message
    hub.on_subscribe = lambda *_args: subscribed.set()
    hub.connect("127.0.0.1", secured_broker.port)
    hub.loop_start()
    hub.subscribe(topics.subscription_for(topics.Channel.TELEMETRY), qos=1)
    # Subscribing is asynchronous: a message published before the SUBACK may never reach the hub.
    assert subscribed.wait(10)

    gateway_a = TestClient(secured_broker.port, username="gw-a", password=PASSWORDS["gw-a"])
    gateway_a.publish(topics.topic_for("gw-b", topics.Channel.TELEMETRY), b"forged")  # PUBACKed, then discarded
    gateway_a.publish(topics.topic_for("gw-a", topics.Channel.TELEMETRY), b"last")
    assert arrived.wait(10)
    gateway_a.close()
    hub.loop_stop()
    hub.disconnect()

    assert received == [topics.topic_for("gw-a", topics.Channel.TELEMETRY)]


def test_wrong_password_and_anonymous_are_refused(secured_broker: Mosquitto) -> None:
    for username, password in (("gw-a", "not-the-password"), (None, None)):
        client = paho.Client(CallbackAPIVersion.VERSION2)
        if username is not None:
            client.username_pw_set(username, password)
        result: list[bool] = []
        done = threading.Event()

        def on_connect(*args: object, result: list[bool] = result, done: threading.Event = done) -> None:
            result.append(bool(args[3].is_failure))  # type: ignore[attr-defined]
            done.set()

        client.on_connect = on_connect
        client.connect("127.0.0.1", secured_broker.port)
        client.loop_start()
        assert done.wait(10)
        client.loop_stop()
        assert result == [True]
