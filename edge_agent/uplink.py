"""The gateway's MQTT uplink: sends buffered batches and releases them on the hub's receipts.

Delivery is confirmed end to end. A broker PUBACK only means "in flight": the broker may still drop
the message (queue limit, crash). Two lanes share the link after every (re)connect:

* the **live lane** sends batches made since the connection came up, at once and in order, so
  current readings reach the hub while a backlog drains;
* the **replay lane** sends the backlog from the last receipt, oldest first, at most
  ``window_batches`` unreceipted and at most ``replay_batches_per_s``, so a long outage does not
  flood the broker or starve the live lane.

When receipts stop advancing for ``resend_timeout_s`` both lanes go back to the first unreceipted
batch and send again (go-back-N); the hub drops what it already has.

One thread owns the paho client (connect, network loop, publish), so the client needs no locks.
Other parts hand messages to it with ``post`` and receive commands through ``on_command``.
"""

from __future__ import annotations

import collections
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
from coldchain.messages import Command, CommandAck, GatewayStatus, Receipt, decode, encode
from coldchain.mqtt import MqttConfig, configure_client
from edge_agent.backoff import Backoff
from edge_agent.buffer import BatchBuffer, BufferError, StoredBatch

log = logging.getLogger(__name__)

WINDOW_BATCHES: Final = 64
"""Unreceipted replay batches in flight; keep it below the broker's per-client queue limit."""
RESEND_TIMEOUT_S: Final = 10.0
"""No receipt progress for this long means a batch was lost on the way: send again from the gap."""
REPLAY_BATCHES_PER_S: Final = 200.0
"""200 batches of up to 500 readings: 100,000 readings/s of backlog, well under a hub's ceiling."""
LOOP_TIMEOUT_S: Final = 0.05
"""Network loop tick: bounds the delay between a new batch and its publication."""
CONNECT_TIMEOUT_S: Final = 10.0
OUTBOX_LIMIT: Final = 256
"""Status, health, alarm and command-ack messages waiting for a connection; the oldest go first."""


class DeliveryConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Tuning of end-to-end delivery."""

    window_batches: int = WINDOW_BATCHES
    resend_timeout_s: float = RESEND_TIMEOUT_S
    replay_batches_per_s: float = REPLAY_BATCHES_PER_S


class UplinkState(msgspec.Struct):
    """What the courier view and health reports show about the link."""

    connected: bool
    acked_seq: int
    resends: int
    connects: int
    replaying: bool


class TokenBucket:
    """Allows ``rate`` events per second with bursts up to ``burst``; the clock is injected."""

    def __init__(self, rate: float, burst: int, monotonic: Callable[[], float]) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._monotonic = monotonic
        self._updated = monotonic()

    def take(self, wanted: int) -> int:
        """Take up to ``wanted`` tokens and return how many were granted."""
        now = self._monotonic()
        self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
        self._updated = now
        granted = min(wanted, int(self._tokens))
        self._tokens -= granted
        return granted


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
        on_command: Callable[[Command], CommandAck] | None = None,
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
        self._on_command = on_command
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._backoff = backoff or Backoff()
        self._replay_bucket = TokenBucket(delivery.replay_batches_per_s, delivery.window_batches, monotonic)
        self._telemetry_topic = topics.topic_for(gateway_id, topics.Channel.TELEMETRY)
        self._status_topic = topics.topic_for(gateway_id, topics.Channel.STATUS)
        self._ack_topic = topics.topic_for(gateway_id, topics.Channel.ACK)
        self._cmd_topic = topics.topic_for(gateway_id, topics.Channel.CMD)

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"uplink-{gateway_id}", daemon=True)
        self._outbox: collections.deque[tuple[str, bytes, bool]] = collections.deque(maxlen=OUTBOX_LIMIT)
        self._online = False  # CONNACK accepted and not disconnected since
        self._acked_seq = 0
        self._live_from = 1  # first seq of the live lane on this connection
        self._live_after = 0  # last seq the live lane sent
        self._replay_after = 0  # last seq the replay lane sent
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
        client.message_callback_add(self._ack_topic, self._on_receipt)
        client.message_callback_add(self._cmd_topic, self._on_cmd)
        self._client = client

    def start(self) -> None:
        """Start the network thread; everything in the buffer counts as unreceipted until told otherwise."""
        held = self._buffer.pending(0, 1)
        self._acked_seq = held[0].seq - 1 if held else self._buffer.last_seq
        self._thread.start()

    def stop(self) -> None:
        """Publish the offline status if connected, disconnect and end the thread."""
        self._stop.set()
        self._thread.join(timeout=10)

    def post(self, channel: topics.Channel, payload: bytes, *, retain: bool = False) -> None:
        """Queue a message (status, health, alarm) for the network thread; kept while offline, bounded."""
        self._outbox.append((topics.topic_for(self._gateway_id, channel), payload, retain))

    def state(self) -> UplinkState:
        """A snapshot for display and health."""
        return UplinkState(
            self._online, self._acked_seq, self.resends, self.connects, self._replay_after < self._live_from - 1
        )

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
            if self._online:
                self._flush_outbox()
                self._pump()
        if connected_socket:
            self._publish_status("offline")
            client.loop(timeout=LOOP_TIMEOUT_S)
            client.disconnect()

    def _connect(self) -> bool:
        offline = self._status("offline")
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
        # Whatever was in flight on the old connection may be gone: both lanes resume from the receipt.
        self._live_from = self._buffer.last_seq + 1
        self._replay_after = self._acked_seq
        self._live_after = max(self._acked_seq, self._live_from - 1)
        self._last_progress = self._monotonic()
        client.subscribe([(self._ack_topic, 1), (self._cmd_topic, 1)])
        self._publish_status("online")
        log.info("gateway %s online at %s:%d", self._gateway_id, self._mqtt.host, self._mqtt.port)

    def _on_disconnect(self, *_args: object) -> None:
        self._online = False

    def _on_receipt(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        try:
            receipt = decode(bytes(msg.payload), Receipt)
        except ContractError as exc:
            log.warning("ignored bad receipt: %s", exc)
            return
        if receipt.gateway_id != self._gateway_id or receipt.acked_seq <= self._acked_seq:
            return
        try:
            self._buffer.raise_seq_floor(receipt.acked_seq)  # a lost or replaced buffer must not reuse seqs
            released = self._buffer.release_through(receipt.acked_seq)
        except BufferError:
            log.exception("cannot apply receipt %d", receipt.acked_seq)
            return
        self._acked_seq = receipt.acked_seq
        self._replay_after = max(self._replay_after, receipt.acked_seq)
        self._live_after = max(self._live_after, receipt.acked_seq)
        self._last_progress = self._monotonic()
        log.debug("receipt %d released %d batches", receipt.acked_seq, released)

    def _on_cmd(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        now_ms = int(self._wall_clock() * 1000)
        try:
            command = decode(bytes(msg.payload), Command)
        except ContractError as exc:
            command_id = _command_id_of(bytes(msg.payload))
            ack = CommandAck(command_id, self._gateway_id, now_ms, accepted=False, reason=str(exc)[:512])
        else:
            if command.gateway_id != self._gateway_id:
                ack = CommandAck(
                    command.command_id,
                    self._gateway_id,
                    now_ms,
                    accepted=False,
                    reason="command is for another gateway",
                )
            elif self._on_command is None:
                ack = CommandAck(command.command_id, self._gateway_id, now_ms, False, "this gateway takes no commands")
            else:
                ack = self._on_command(command)
        self.post(topics.Channel.CMD_ACK, encode(ack))

    def _pump(self) -> None:
        now = self._monotonic()
        sent_up_to = max(self._live_after, self._replay_after)
        if sent_up_to > self._acked_seq and now - self._last_progress > self._delivery.resend_timeout_s:
            log.info("no receipt for %.0f s: resending from seq %d", now - self._last_progress, self._acked_seq + 1)
            self.resends += 1
            self._replay_after = self._acked_seq
            self._live_after = max(self._acked_seq, self._live_from - 1)
            self._last_progress = now
        window = self._delivery.window_batches
        # Live lane: batches made since this connection came up, sent at once (also windowed, so a
        # hub that is away for hours behind a reachable broker is not sent every batch each round).
        live_room = window - max(0, self._live_after - max(self._acked_seq, self._live_from - 1))
        live = self._buffer.pending(self._live_after, live_room) if live_room > 0 else []
        if live and not self._publish_batches(live, lane="live"):
            return
        # Replay lane: the backlog, oldest first, windowed and rate-limited.
        if self._replay_after >= self._live_from - 1:
            return
        room = window - max(0, self._replay_after - self._acked_seq)
        if room <= 0:
            return
        backlog = self._buffer.pending(self._replay_after, room, below_seq=self._live_from)
        granted = self._replay_bucket.take(len(backlog))
        if granted:
            self._publish_batches(backlog[:granted], lane="replay")

    def _publish_batches(self, batches: list[StoredBatch], *, lane: Literal["live", "replay"]) -> bool:
        now = self._monotonic()
        for stored in batches:
            info = self._client.publish(self._telemetry_topic, stored.payload, qos=1)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.warning("publish of seq %d failed: %s", stored.seq, info.rc.name)
                return False
            if max(self._live_after, self._replay_after) <= self._acked_seq:
                self._last_progress = now  # the timeout counts from the first unreceipted send
            if lane == "live":
                self._live_after = stored.seq
            else:
                self._replay_after = stored.seq
        return True

    def _flush_outbox(self) -> None:
        while self._outbox:
            topic, payload, retain = self._outbox[0]
            info = self._client.publish(topic, payload, qos=1, retain=retain)
            if info.rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            self._outbox.popleft()

    def _status(self, state: Literal["online", "offline"]) -> GatewayStatus:
        return GatewayStatus(
            gateway_id=self._gateway_id,
            boot_id=self._boot_id,
            state=state,
            ts_ms=int(self._wall_clock() * 1000),
            agent_version=self._agent_version,
        )

    def _publish_status(self, state: Literal["online", "offline"]) -> None:
        self._client.publish(self._status_topic, encode(self._status(state)), qos=1, retain=True)


def _command_id_of(payload: bytes) -> str:
    """The command id of an invalid command, if it can be read, so the hub can match the refusal."""
    try:
        raw = msgspec.json.decode(payload)
    except msgspec.DecodeError:
        return "unknown"
    command_id = raw.get("command_id") if isinstance(raw, dict) else None
    return command_id[:64] if isinstance(command_id, str) and command_id else "unknown"
