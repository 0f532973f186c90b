"""The gateway's MQTT uplink: sends buffered batches and releases them on the hub's receipts.

Delivery is confirmed end to end. A broker PUBACK only means "in flight": the broker may still drop
the message (queue limit, crash). The uplink keeps at most ``window`` batches unreceipted in
flight; when receipts stop advancing for ``resend_timeout_s`` it goes back to the first
unreceipted batch and sends again (go-back-N). The hub drops what it already has.

One thread owns the paho client (connect, network loop, publish), so the client needs no locks;
the sampler only appends to the thread-safe buffer, which the thread polls every loop tick.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Final, Literal

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from coldchain import topics
from coldchain.errors import ContractError
from coldchain.messages import GatewayStatus, Receipt, decode, encode
from coldchain.mqtt import MqttConfig, configure_client
from edge_agent.backoff import Backoff
from edge_agent.buffer import BatchBuffer

log = logging.getLogger(__name__)

WINDOW_BATCHES: Final = 64
"""Unreceipted batches in flight; keep it below the broker's per-client queue limit."""
RESEND_TIMEOUT_S: Final = 10.0
"""No receipt progress for this long means a batch was lost on the way: send again from the gap."""
LOOP_TIMEOUT_S: Final = 0.05
"""Network loop tick: bounds the delay between a new batch and its publication."""
CONNECT_TIMEOUT_S: Final = 10.0


class DeliveryConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Tuning of end-to-end delivery."""

    window_batches: int = WINDOW_BATCHES
    resend_timeout_s: float = RESEND_TIMEOUT_S


class UplinkState(msgspec.Struct):
    """What the courier view and health reports show about the link."""

    connected: bool
    acked_seq: int
    last_sent_seq: int
    resends: int
    connects: int


class Uplink:
    """Publishes telemetry from a ``BatchBuffer`` and applies receipts to it."""

    def __init__(
        self,
        gateway_id: str,
        boot_id: str,
        buffer: BatchBuffer,
        mqtt: MqttConfig,
        delivery: DeliveryConfig,
        *,
        agent_version: str,
        allow_placeholder_secret: bool = False,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        backoff: Backoff | None = None,
    ) -> None:
        self._gateway_id = gateway_id
        self._boot_id = boot_id
        self._buffer = buffer
        self._mqtt = mqtt
        self._delivery = delivery
        self._agent_version = agent_version
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._backoff = backoff or Backoff()
        self._telemetry_topic = topics.topic_for(gateway_id, topics.Channel.TELEMETRY)
        self._status_topic = topics.topic_for(gateway_id, topics.Channel.STATUS)
        self._ack_topic = topics.topic_for(gateway_id, topics.Channel.ACK)

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"uplink-{gateway_id}", daemon=True)
        self._online = False  # CONNACK accepted and not disconnected since
        self._acked_seq = 0
        self._last_sent_seq = 0
        self._in_flight = 0
        self._last_progress = monotonic()
        self.resends = 0
        self.connects = 0

        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=f"cc-gw-{gateway_id}", clean_session=True, protocol=paho.MQTTv311
        )
        configure_client(client, mqtt, allow_placeholder_secret=allow_placeholder_secret)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.message_callback_add(self._ack_topic, self._on_receipt)
        self._client = client

    def start(self, resume_after_seq: int) -> None:
        """Start the network thread; batches above ``resume_after_seq`` are sent first."""
        self._last_sent_seq = self._acked_seq = resume_after_seq
        self._thread.start()

    def stop(self) -> None:
        """Publish the offline status if connected, disconnect and end the thread."""
        self._stop.set()
        self._thread.join(timeout=10)

    def state(self) -> UplinkState:
        """A snapshot for display and health."""
        return UplinkState(self._online, self._acked_seq, self._last_sent_seq, self.resends, self.connects)

    # -- network thread ---------------------------------------------------------------------

    def _run(self) -> None:
        client = self._client
        connected_socket = False
        while not self._stop.is_set():
            if not connected_socket:
                connected_socket = self._connect()
                if not connected_socket:
                    self._stop.wait(self._backoff.next_delay())
                    continue
            rc = client.loop(timeout=LOOP_TIMEOUT_S)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.warning("link to broker lost (%s)", rc.name)
                self._online = False
                connected_socket = False
                self._stop.wait(self._backoff.next_delay())
                continue
            self._pump()
        if connected_socket:
            self._publish_status("offline")
            client.loop(timeout=LOOP_TIMEOUT_S)
            client.disconnect()

    def _connect(self) -> bool:
        offline = GatewayStatus(
            gateway_id=self._gateway_id,
            boot_id=self._boot_id,
            state="offline",
            ts_ms=int(self._wall_clock() * 1000),
            agent_version=self._agent_version,
        )
        self._client.will_set(self._status_topic, encode(offline), qos=1, retain=True)
        try:
            self._client.connect(self._mqtt.host, self._mqtt.port, keepalive=self._mqtt.keepalive_s)
        except (OSError, ValueError) as exc:
            log.warning("cannot reach broker %s:%d: %s", self._mqtt.host, self._mqtt.port, exc)
            return False
        return True

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: object,
        _flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused gateway %s: %s", self._gateway_id, reason_code)
            return
        self._backoff.reset()
        self._online = True
        self.connects += 1
        # Whatever was in flight on the old connection may be gone: resume from the last receipt.
        self._last_sent_seq = self._acked_seq
        self._in_flight = 0
        self._last_progress = self._monotonic()
        client.subscribe(self._ack_topic, qos=1)
        self._publish_status("online")
        log.info("gateway %s online at %s:%d", self._gateway_id, self._mqtt.host, self._mqtt.port)

    def _on_disconnect(self, *_args: object) -> None:
        self._online = False

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        log.debug("ignored message on %s", msg.topic)

    def _on_receipt(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        try:
            receipt = decode(bytes(msg.payload), Receipt)
        except ContractError as exc:
            log.warning("ignored bad receipt: %s", exc)
            return
        if receipt.gateway_id != self._gateway_id or receipt.acked_seq <= self._acked_seq:
            return
        released = self._buffer.release_through(receipt.acked_seq)
        self._acked_seq = receipt.acked_seq
        self._last_sent_seq = max(self._last_sent_seq, receipt.acked_seq)
        self._last_progress = self._monotonic()
        log.debug("receipt %d released %d batches", receipt.acked_seq, released)

    def _pump(self) -> None:
        if not self._online:
            return
        now = self._monotonic()
        unreceipted = self._last_sent_seq - self._acked_seq
        if unreceipted > 0 and now - self._last_progress > self._delivery.resend_timeout_s:
            log.info("no receipt for %.0f s: resending from seq %d", now - self._last_progress, self._acked_seq + 1)
            self.resends += 1
            self._last_sent_seq = self._acked_seq
            self._last_progress = now
            unreceipted = 0
        room = self._delivery.window_batches - unreceipted
        if room <= 0:
            return
        for stored in self._buffer.pending(self._last_sent_seq, room):
            info = self._client.publish(self._telemetry_topic, stored.payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.warning("publish of seq %d failed: %s", stored.seq, info.rc.name)
                return
            if self._last_sent_seq == self._acked_seq:
                self._last_progress = now  # the timeout counts from the first unreceipted send
            self._last_sent_seq = stored.seq

    def _publish_status(self, state: Literal["online", "offline"]) -> None:
        status = GatewayStatus(
            gateway_id=self._gateway_id,
            boot_id=self._boot_id,
            state=state,
            ts_ms=int(self._wall_clock() * 1000),
            agent_version=self._agent_version,
        )
        self._client.publish(self._status_topic, encode(status), qos=1, retain=True)
