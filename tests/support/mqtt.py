"""A plain paho client for tests: publish raw payloads and collect receipts."""

from __future__ import annotations

import threading
import time
import uuid

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from coldchain import topics
from coldchain.messages import Quantity, Reading, Receipt, TelemetryBatch, decode, encode


def make_batches(gateway_id: str, count: int, readings_per_batch: int, *, start_ms: int | None = None) -> list[bytes]:
    """``count`` valid encoded batches with seqs 1..count and distinct reading timestamps."""
    boot_id = uuid.uuid4().hex
    base = start_ms or int(time.time() * 1000) - 3_600_000
    payloads = []
    for seq in range(1, count + 1):
        readings = [
            Reading("probe-1", Quantity.TEMPERATURE, base + (seq * readings_per_batch + i) * 1000, 2.0 + i / 10)
            for i in range(readings_per_batch)
        ]
        payloads.append(encode(TelemetryBatch(gateway_id, boot_id, seq, 1, readings)))
    return payloads


class TestClient:
    """Connects, remembers the newest receipt per gateway, publishes with QoS 1 and waits for PUBACK."""

    __test__ = False

    def __init__(
        self, port: int, client_id: str | None = None, username: str | None = None, password: str | None = None
    ) -> None:
        self.receipts: dict[str, int] = {}
        self._changed = threading.Condition()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-{uuid.uuid4().hex[:8]}")
        if username is not None:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        receipt = decode(bytes(msg.payload), Receipt)
        with self._changed:
            self.receipts[receipt.gateway_id] = max(self.receipts.get(receipt.gateway_id, 0), receipt.acked_seq)
            self._changed.notify_all()

    def watch_receipts(self, gateway_id: str) -> None:
        self.client.subscribe(topics.topic_for(gateway_id, topics.Channel.ACK), qos=1)
        time.sleep(0.2)

    def publish(self, topic: str, payload: bytes) -> None:
        info = self.client.publish(topic, payload, qos=1)
        info.wait_for_publish(timeout=10)
        assert info.is_published(), f"no PUBACK for {topic}"

    def publish_telemetry(self, gateway_id: str, payloads: list[bytes]) -> None:
        topic = topics.topic_for(gateway_id, topics.Channel.TELEMETRY)
        for payload in payloads:
            self.publish(topic, payload)

    def wait_receipt(self, gateway_id: str, seq: int, timeout_s: float = 20) -> None:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while self.receipts.get(gateway_id, 0) < seq:
                remaining = deadline - time.monotonic()
                assert remaining > 0, f"receipt for {gateway_id} stuck at {self.receipts.get(gateway_id)} < {seq}"
                self._changed.wait(remaining)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()
