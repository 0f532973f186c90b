"""Ingest: MQTT messages in, committed readings and end-to-end receipts out.

``IngestPipeline`` is the core: it takes a group of raw messages, validates them, asks the ledger
which batches are new and the detectors what they find (``prepare``), commits everything in one
transaction and returns the receipts to send (``commit``). ``MqttIngest`` is the I/O edge around it:
paho-mqtt 2 with ``manual_ack``, so the broker gets its PUBACK only after the group holding the
message is committed. If the hub dies before that, the broker redelivers, and the ledger drops what
was already stored. It prepares the next group on one thread while a writer thread commits the one
before it: judging holds the GIL, the database's work mostly does not.
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, Final, Protocol, TypeVar, cast

import msgspec
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

from coldchain import topics
from coldchain.errors import ContractError
from coldchain.messages import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    Command,
    CommandAck,
    DecodedTelemetry,
    GatewayHealth,
    GatewayStatus,
    LocalAlarm,
    Receipt,
    TelemetryBatch,
    decode,
    decode_telemetry,
    encode,
)
from coldchain.mqtt import MqttConfig, configure_client
from hub.alarms import AlarmChange
from hub.db import StoreError
from hub.detectors.base import Finding, series_runs
from hub.detectors.detector_set import DetectorSet
from hub.ledger import DeliveryLedger, Plan
from hub.series_fold import SeriesFold
from hub.store import IngestWriter, Rejection, SideMessage

log = logging.getLogger(__name__)
T = TypeVar("T")

GROUP_MAX_MESSAGES: Final = 5000
"""Messages per transaction. Small batches pay the per-transaction costs too: at 10 readings per batch a
500-message group held 5,000 readings and drained 40,000-49,000 readings/s, a 5,000-message one (bytes
bound it from 20 readings per batch up) 54,000-73,000. At one reading per batch, where a group is nothing
but messages, 5,000 take about half a second of work, as long as a full group of 500-reading batches
(bench/ingest_e2e.py --ingest group_max_messages=N; docs/benchmarks.md)."""
GROUP_MAX_BYTES: Final = 2 * 1024 * 1024
"""Payload bytes per transaction (about 45,000 readings, a quarter of a second of work): SQLite's fsync and
index pages are paid per transaction, so draining a backlog at 500 readings per batch ran 1.2-1.36x faster
than at 512 KiB; below the ceiling a group holds only what arrived while the last one was worked on
(bench/ingest_e2e.py, bench/alarm_latency.py; docs/benchmarks.md)."""
INBOX_MAX_BYTES: Final = 16 * 1024 * 1024
"""Payload bytes taken off the broker and not yet in a commit group. Past it paho's network thread waits
before reading more, so TCP pushes back and the broker queues (its max_queued_messages): the hub's memory
stays bounded whatever the load (bench/ingest_e2e.py overload grew 4.4 MiB/s without it)."""
GROUP_MAX_WAIT_S: Final = 0.02
"""Longest a message waits for its group to fill; bounds the added receipt latency."""
DETECTOR_WARMUP_S: Final = 24 * 3600.0
"""Without a checkpoint, readings replayed into fresh detectors: the longest window one looks at (MKT)."""
CHECKPOINT_INTERVAL_S: Final = 60.0
"""Detector state is saved this often, so a restart replays about a minute of readings, not a day."""
COMMIT_RETRY_S: Final = 1.0
"""Pause before retrying a failed commit (disk full, locked): the group is kept, never dropped."""
TICK_INTERVAL_S: Final = 5.0
"""How often silence and escalations are checked: far finer than their minutes-long thresholds."""
RECONNECT_MIN_S: Final = 1
RECONNECT_MAX_S: Final = 30
INBOX_POLL_S: Final = 0.2
"""Longest the ingest thread waits for a message with nothing in flight, so it notices ticks and a stop."""
INBOX_WAIT_S: Final = 0.5
"""A full inbox is re-checked at least this often, so a stopping hub never waits on it for long."""
RECEIPTS_IN_FLIGHT: Final = 1000
"""paho's limit on unacknowledged QoS 1 publishes: at most one receipt per gateway is in flight (coalesced),
so this only needs to exceed the gateways one hub serves, or receipts queue inside paho behind the limit."""
RECEIPT_STALL_S: Final = 30.0
"""A receipt not acknowledged by the broker this long is superseded by the newer one all the same."""
SESSION_SUBSCRIPTIONS: Final = (
    topics.Channel.TELEMETRY,
    topics.Channel.STATUS,
    topics.Channel.HEALTH,
    topics.Channel.ALARM,
    topics.Channel.CMD_ACK,
)
# The side channels and the message type each carries.
SIDE_CHANNELS: Final[dict[topics.Channel, type[SideMessage]]] = {
    topics.Channel.STATUS: GatewayStatus,
    topics.Channel.HEALTH: GatewayHealth,
    topics.Channel.ALARM: LocalAlarm,
    topics.Channel.CMD_ACK: CommandAck,
}


class IngestConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Tuning of the ingest pipeline."""

    client_id: str = "coldchain-hub"
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    group_max_messages: int = GROUP_MAX_MESSAGES
    group_max_bytes: int = GROUP_MAX_BYTES
    group_max_wait_s: float = GROUP_MAX_WAIT_S
    inbox_max_bytes: int = INBOX_MAX_BYTES


@dataclass(frozen=True)
class Inbound:
    """A message as received from the broker."""

    topic: str
    payload: bytes
    received_ms: int
    mid: int = 0
    qos: int = 0
    connection: int = 0
    """Which broker connection delivered it: a mid is only meaningful on that connection."""


@dataclass(frozen=True)
class IngestBacklog:
    """Messages taken off the broker and not yet committed, as ``MqttIngest.backlog`` saw them."""

    messages: int
    oldest_received_ms: int | None
    """When the oldest of them arrived (wall clock, ms); None when there are none."""


class IngestStats:
    """Counters of the pipeline, readable from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def add(self, name: str, amount: int = 1) -> None:
        """Increase counter ``name``."""
        with self._lock:
            self._counts[name] += amount

    def snapshot(self) -> dict[str, int]:
        """A copy of every counter."""
        with self._lock:
            return dict(self._counts)


class PipelineTimings(Protocol):
    """Receives how long the pipeline's work took (``hub.metrics`` feeds Prometheus histograms from it)."""

    def observe_commit(self, seconds: float) -> None:
        """One commit group took ``seconds`` of wall time, from decoding to the committed write."""

    def observe_detectors(self, seconds: float) -> None:
        """The detectors took ``seconds`` on one commit group."""


class _NoTimings:
    """The default: timings are discarded, so the pipeline runs without any metrics library."""

    def observe_commit(self, seconds: float) -> None:
        """Discard ``seconds``."""

    def observe_detectors(self, seconds: float) -> None:
        """Discard ``seconds``."""


@dataclass(frozen=True, slots=True)
class PreparedGroup:
    """A group validated, deduplicated and judged by ``IngestPipeline.prepare``, waiting for its commit."""

    messages: int
    plan: Plan
    rejections: list[Rejection]
    side_messages: list[SideMessage]
    findings: list[Finding]
    fold: SeriesFold
    now_ms: int
    started: float
    """``time.perf_counter()`` when preparing began: the commit timing covers the whole group."""
    tick_findings: list[Finding] | None = None
    """A tick rides on this group: its time-driven findings (as of the groups before), applied with the due
    escalations ahead of the group in its commit."""
    checkpoint: bytes | None = None
    """The detectors' state once they judged this group, saved by its commit as of its last reading."""


class IngestPipeline:
    """Validate, deduplicate and commit groups of messages; return receipts to publish."""

    def __init__(
        self,
        writer: IngestWriter,
        *,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        stats: IngestStats | None = None,
        wall_clock: Callable[[], float] = time.time,
        detectors: Callable[[], DetectorSet] | None = None,
        timings: PipelineTimings | None = None,
    ) -> None:
        self._writer = writer
        self._timings: PipelineTimings = timings if timings is not None else _NoTimings()
        self._ledger = DeliveryLedger(writer.load_cursors())
        self._make_detectors = detectors
        self._max_payload_bytes = max_payload_bytes
        self.stats = stats or IngestStats()
        self._wall_clock = wall_clock
        self._write_lock = threading.Lock()
        self.warmup_readings = 0
        """Readings replayed into the detectors at start (the ones after the last checkpoint)."""
        self._detectors = self._warm_detectors()
        self.after_alarm_changes: Callable[[Sequence[AlarmChange]], None] | None = None
        """Called after a commit that changed alarms (the hub wakes its outbox dispatcher)."""
        self.before_commit: Callable[[], object] | None = None
        """Called before each group, outside any transaction; may block. The series exporter's ``admit``
        waits here while the export lag is over its limit, so the broker holds the messages and the
        gateways keep their batches instead of anything being dropped."""

    def process(self, group: Sequence[Inbound]) -> list[Receipt]:
        """Prepare and commit ``group`` atomically; raise ``StoreError`` (nothing changed, the pipeline
        rewound to what is committed) if the commit fails."""
        prepared = self.prepare(group)
        try:
            return self.commit(prepared)
        except StoreError:
            self.rewind()
            raise

    def prepare(self, group: Sequence[Inbound], *, tick: bool = False, checkpoint: bool = False) -> PreparedGroup:
        """Validate, deduplicate and judge ``group``, ready for ``commit``.

        The ledger and the detectors move past the group at once, so the next group can be prepared
        while this one commits on another thread. If a commit fails, everything prepared after it was
        prepared on top of it: ``rewind`` before preparing again.

        With ``tick`` the group carries what ``tick`` would commit (time-driven findings, as of the groups
        before it, and the due escalations), with ``checkpoint`` what ``checkpoint`` would save: its commit
        does that work, so a busy hub never stops preparing for it. If that commit fails the work is not
        redone when the group is committed again; the next tick or checkpoint does it.
        """
        if self.before_commit is not None:
            self.before_commit()
        started = time.perf_counter()
        batches: list[TelemetryBatch] = []
        side_messages: list[SideMessage] = []
        rejections: list[Rejection] = []
        for message in group:
            try:
                parsed = self._parse(message)
            except ContractError as exc:
                rejections.append(Rejection(message.topic, exc.reason, str(exc), message.payload, message.received_ms))
                continue
            if isinstance(parsed, DecodedTelemetry):
                batches.append(parsed.batch)
                rejections.extend(
                    Rejection(message.topic, "invalid_reading", bad.detail, bad.raw, message.received_ms)
                    for bad in parsed.invalid_readings
                )
            else:
                side_messages.append(parsed)
        plan = self._ledger.plan(batches)
        self._ledger.apply(plan)
        now_ms = int(self._wall_clock() * 1000)
        tick_findings = None
        if tick:  # before judging: it sees what the groups before this one brought, as a tick between them would
            tick_findings = self._detectors.tick(now_ms) if self._detectors is not None else []
        judging = time.perf_counter()
        findings, fold = self._judge_and_fold(plan.new_batches)
        if self._detectors is not None:  # a hub without profiles judges nothing: no zero-length samples
            self._timings.observe_detectors(time.perf_counter() - judging)
        snapshot = self._detectors.snapshot() if checkpoint and self._detectors is not None else None
        return PreparedGroup(
            len(group),
            plan,
            rejections,
            side_messages,
            findings,
            fold,
            now_ms,
            started,
            tick_findings=tick_findings,
            checkpoint=snapshot,
        )

    def commit(self, prepared: PreparedGroup) -> list[Receipt]:
        """Commit a prepared group atomically and return the receipts to publish.

        May run on a second thread while the next group is prepared; groups must be committed in the
        order they were prepared. On ``StoreError`` nothing changed: ``rewind`` before going on.
        """
        plan = prepared.plan
        with self._write_lock:
            changes = self._writer.commit(
                plan,
                prepared.rejections,
                prepared.side_messages,
                prepared.now_ms,
                findings=prepared.findings,
                fold=prepared.fold,
                tick_findings=prepared.tick_findings,
                checkpoint=prepared.checkpoint,
            )
        self._report(changes)

        stats = self.stats
        stats.add("messages", prepared.messages)
        stats.add("batches_stored", len(plan.new_batches))
        stats.add("readings_stored", sum(len(b.readings) for b in plan.new_batches))
        stats.add("tag_reads_stored", sum(len(b.tag_reads) for b in plan.new_batches))
        stats.add("fixes_stored", sum(len(b.fixes) for b in plan.new_batches))
        stats.add("gap_records", sum(len(b.released) for b in plan.new_batches))
        stats.add("duplicates", plan.duplicates)
        stats.add("gaps", len(plan.gaps))
        for rejection in prepared.rejections:
            stats.add(f"rejected_{rejection.reason}")
            log.warning("set aside message on %s: %s", rejection.topic, rejection.detail)
        for gap in plan.gaps:
            log.warning("gateway %s released seqs %d..%d unreceipted", gap.gateway_id, gap.first_seq, gap.last_seq)
        # Only committed groups are timed; a failed one is counted as a commit failure and timed on its retry.
        self._timings.observe_commit(time.perf_counter() - prepared.started)
        committed_ms = int(self._wall_clock() * 1000)  # the receipt's time: when what it vouches for was stored
        return [
            Receipt(gateway_id=gateway_id, acked_seq=cursor.acked_seq, ts_ms=committed_ms)
            for gateway_id, cursor in plan.cursors.items()
        ]

    def rewind(self) -> None:
        """Put the ledger and the detectors back to what is committed, after a failed commit.

        The detectors are rebuilt from the last checkpoint and the readings committed since, so the
        groups prepared after the failed one are judged again when they are prepared again, not skipped
        as late or duplicate. Raises ``StoreError`` if the store cannot be read.
        """
        with self._write_lock:
            self._ledger = DeliveryLedger(self._writer.load_cursors())
            self._detectors = self._warm_detectors()

    def tick(self) -> list[AlarmChange]:
        """Time-driven findings (silent sensors) and alarm escalations, committed."""
        now_ms = int(self._wall_clock() * 1000)
        findings = self._detectors.tick(now_ms) if self._detectors else []
        with self._write_lock:
            changes = self._writer.commit_tick(findings, now_ms)
        self._report(changes)
        return changes

    def staff_action(self, action: Callable[[IngestWriter, int], T]) -> T:
        """Run a staff or API write (acknowledge, close, create an order) serialised with ingest."""
        with self._write_lock:
            return action(self._writer, int(self._wall_clock() * 1000))

    def _judge_and_fold(self, batches: Sequence[TelemetryBatch]) -> tuple[list[Finding], SeriesFold]:
        """The detectors' findings on ``batches``, and their rollups and latest values: each batch's
        readings are grouped by series once for both."""
        findings: list[Finding] = []
        fold = SeriesFold()
        for batch in batches:
            runs = series_runs(batch.readings)
            fold.add(batch.gateway_id, batch.seq, runs)
            if self._detectors is not None:
                findings += self._detectors.feed_runs(batch.gateway_id, runs)
        return findings, fold

    def checkpoint(self) -> None:
        """Persist the detectors' state, so a restart replays only the readings committed after it."""
        if self._detectors is None:
            return
        with self._write_lock:
            self._writer.save_checkpoint(self._detectors.snapshot(), int(self._wall_clock() * 1000))

    def _warm_detectors(self) -> DetectorSet | None:
        """Detectors as they were: the last checkpoint plus the readings committed after it, in commit
        order (or, without a usable checkpoint, the last ``DETECTOR_WARMUP_S`` of readings). Their
        findings were applied when those readings were committed, so the replay's are dropped."""
        if self._make_detectors is None:
            return None
        detectors = self._make_detectors()
        checkpoint = self._writer.load_checkpoint()
        replay = None
        if checkpoint is not None:
            try:
                detectors.restore(checkpoint[1])
                replay = self._writer.readings_after(checkpoint[0])
            except ValueError:
                log.warning("detector checkpoint does not fit these detectors; warming up from readings")
                detectors = self._make_detectors()
        if replay is None:
            replay = self._writer.recent_readings(int((self._wall_clock() - DETECTOR_WARMUP_S) * 1000))
        self.warmup_readings = 0
        # Readings of a gateway come in runs (a batch each): judged run by run, as ingest judges them.
        for gateway_id, run in itertools.groupby(replay, key=itemgetter(0)):
            readings = [reading for _, reading in run]
            detectors.feed_batch(gateway_id, readings)
            self.warmup_readings += len(readings)
        return detectors

    def _report(self, changes: Sequence[AlarmChange]) -> None:
        if changes and self.after_alarm_changes is not None:
            self.after_alarm_changes(changes)
        for change in changes:
            self.stats.add(f"alarms_{change.action}")
            self.stats.add("claims_created", change.claims)
            log.warning(
                "alarm %s %s: %s %s on %s/%s%s",
                change.alarm_id[:8],
                change.action,
                change.severity,
                change.kind,
                change.gateway_id,
                change.sensor_id,
                f", {change.claims} claim(s) created" if change.claims else "",
            )

    def record_command(self, command: Command) -> None:
        """Store a command before it is sent (from an API thread: serialised with the writer)."""
        with self._write_lock:
            self._writer.record_command(command, int(self._wall_clock() * 1000))

    def _parse(self, message: Inbound) -> DecodedTelemetry | SideMessage:
        gateway_id, channel = topics.parse_topic(message.topic)
        parsed: DecodedTelemetry | SideMessage
        if channel is topics.Channel.TELEMETRY:
            parsed = decode_telemetry(message.payload, max_bytes=self._max_payload_bytes)
            payload_gateway = parsed.batch.gateway_id
        elif channel in SIDE_CHANNELS:
            side_type: type[Any] = SIDE_CHANNELS[channel]  # decode() is generic per type, not per union
            parsed = cast(SideMessage, decode(message.payload, side_type, max_bytes=self._max_payload_bytes))
            payload_gateway = parsed.gateway_id
        else:
            raise ContractError("unexpected_channel", f"the hub does not ingest {channel.value}")
        if payload_gateway != gateway_id:
            raise ContractError(
                "id_mismatch", f"payload gateway_id {payload_gateway!r} differs from topic gateway {gateway_id!r}"
            )
        return parsed


class _Settled(enum.Enum):
    """How an in-flight commit ended (``MqttIngest._settle``)."""

    COMMITTED = "committed"
    RECOMMITTED = "recommitted"
    """It failed; it and the groups prepared after it were committed again, in order."""
    STOPPED = "stopped"
    """It failed, and the hub stopped before it could be committed again."""


@dataclass(frozen=True, slots=True)
class _InFlight:
    """A group whose commit runs on the writer thread."""

    group: list[Inbound]
    future: Future[None]


class MqttIngest:
    """Runs an ``IngestPipeline`` against a broker: paho's network thread, an ingest thread that prepares
    groups, and a writer thread that commits them."""

    def __init__(
        self,
        pipeline: IngestPipeline,
        mqtt: MqttConfig,
        config: IngestConfig,
        *,
        allow_placeholder_secret: bool = False,
    ) -> None:
        self._pipeline = pipeline
        self._mqtt = mqtt
        self._config = config
        self._inbox: queue.Queue[Inbound] = queue.Queue()
        self._inbox_room = threading.Condition()
        self._inbox_bytes = 0
        """Payload bytes in ``_inbox``, held under ``config.inbox_max_bytes`` by ``_on_message`` waiting."""
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._connection = 0
        # Backlog bookkeeping for /metrics, kept off the per-message path but for one integer increment:
        # each counter has a single writing thread (paho's network thread, the writer thread), so plain
        # ints suffice; readers only ever read them.
        self._received = 0
        self._committed = 0
        self._in_hand_oldest_ms: int | None = None
        """received_ms of the first message of the oldest group in hand (None when none is)."""
        # Receipts are cumulative and retained: only a gateway's newest one matters. One per gateway is in
        # flight at a time and a newer one waits here, replacing any older waiting one. Without this,
        # under load every group queued a receipt per gateway inside paho, behind the broker's PUBACKs
        # (which wait behind megabytes of telemetry on the same socket): minutes of delay and hundreds of
        # MiB (bench/ingest_e2e.py overload). Touched under ``_receipts_lock``: the writer thread publishes
        # after each commit, the ingest thread sends the waiting ones between groups.
        self._receipts_lock = threading.Lock()
        self._receipt_in_flight: dict[str, tuple[paho.MQTTMessageInfo, float]] = {}
        self._receipt_waiting: dict[str, Receipt] = {}
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            clean_session=False,  # the broker keeps our subscription and queues while we are away
            protocol=paho.MQTTv311,
            manual_ack=True,
        )
        configure_client(client, mqtt, allow_placeholder_secret=allow_placeholder_secret)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.max_inflight_messages_set(RECEIPTS_IN_FLIGHT)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        self._client = client
        self._ingest_thread = threading.Thread(target=self._ingest_loop, name="hub-ingest", daemon=True)

    @property
    def connected(self) -> bool:
        """Whether the broker connection is up."""
        return self._connected.is_set()

    def start(self) -> None:
        """Connect (retrying in the background) and start committing."""
        self._ingest_thread.start()
        self._client.connect_async(self._mqtt.host, self._mqtt.port, keepalive=self._mqtt.keepalive_s)
        self._client.loop_start()

    def stop(self) -> None:
        """Stop taking messages, finish the group in hand, save the detectors' state and disconnect."""
        self._stop.set()
        self._ingest_thread.join(timeout=10)
        with self._receipts_lock:
            for receipt in list(self._receipt_waiting.values()):  # the newest of each gateway, whatever is in flight
                self._receipt_in_flight.pop(receipt.gateway_id, None)
                self._publish_receipt(receipt)
        try:
            self._pipeline.checkpoint()
        except StoreError as exc:
            log.error("detector checkpoint at stop failed: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()

    def _on_connect(
        self,
        client: paho.Client,
        _userdata: object,
        _flags: paho.ConnectFlags,
        reason_code: ReasonCode,
        _properties: object,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the hub: %s", reason_code)
            return
        log.info("hub connected to %s:%d", self._mqtt.host, self._mqtt.port)
        self._connection += 1
        self._connected.set()
        client.subscribe([(topics.subscription_for(channel), 1) for channel in SESSION_SUBSCRIPTIONS])

    def _on_disconnect(self, *_args: object) -> None:
        self._connected.clear()

    def backlog(self) -> IngestBacklog:
        """Messages received and not yet committed (queued or in the group being committed), and the age of
        the oldest. Safe from any thread; a snapshot taken while a group leaves the queue may see that group's
        oldest message a moment late, which a gauge scraped every few seconds does not notice."""
        committed = self._committed  # read first: received only grows, so the difference is never negative
        messages = self._received - committed
        if messages == 0:
            return IngestBacklog(0, None)
        oldest = self._in_hand_oldest_ms
        if oldest is None:
            with self._inbox.mutex:
                head: Inbound | None = self._inbox.queue[0] if self._inbox.queue else None
            oldest = head.received_ms if head is not None else None
        return IngestBacklog(messages, oldest)

    def _on_message(self, _client: paho.Client, _userdata: object, msg: paho.MQTTMessage) -> None:
        size = len(msg.payload)
        with self._inbox_room:
            # An empty inbox always takes the message, so one larger than the limit cannot wedge ingest.
            while self._inbox_bytes and self._inbox_bytes + size > self._config.inbox_max_bytes:
                if self._stop.is_set():
                    break
                self._inbox_room.wait(INBOX_WAIT_S)
            self._inbox_bytes += size
        self._received += 1  # before the put, so a message is never committed before it is counted
        self._inbox.put(
            Inbound(msg.topic, bytes(msg.payload), int(time.time() * 1000), msg.mid, msg.qos, self._connection)
        )

    def _ingest_loop(self) -> None:
        """Take groups off the inbox and prepare each while the one before it commits on the writer thread.

        Judging holds the GIL; SQLite's insert of a group's readings does not (one statement, see
        ``hub.store``), so the two overlap on two cores. At most one group commits while the next is
        prepared. A tick or checkpoint that falls due rides on the next group (``IngestPipeline.prepare``):
        waiting for the commit in flight to do it alone left a gap in the work every few seconds, and at
        80 % load a backlog that takes four times the gap to clear (docs/decisions.md). With no group to
        ride on, it runs on its own once nothing is in flight.
        """
        next_tick = time.monotonic()
        next_checkpoint = time.monotonic() + CHECKPOINT_INTERVAL_S
        in_flight: _InFlight | None = None
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="hub-ingest-writer") as writer:
            while not self._stop.is_set():
                now = time.monotonic()
                tick, checkpoint = now >= next_tick, now >= next_checkpoint
                if tick:
                    next_tick = now + TICK_INTERVAL_S
                if checkpoint:
                    next_checkpoint = now + CHECKPOINT_INTERVAL_S
                self._publish_waiting_receipts()
                group = self._next_group(INBOX_POLL_S if in_flight is None and not (tick or checkpoint) else 0.0)
                if not group:
                    if not self._settle_last(in_flight):
                        return
                    in_flight = None
                    self._periodic(tick=tick, checkpoint=checkpoint)
                    continue
                prepared = self._pipeline.prepare(group, tick=tick, checkpoint=checkpoint)
                if in_flight is not None:
                    settled = self._settle(in_flight, [group])
                    in_flight = None
                    if settled is _Settled.STOPPED:
                        return
                    if settled is _Settled.RECOMMITTED:
                        self._in_hand_oldest_ms = None
                        continue  # this group was committed with it
                self._in_hand_oldest_ms = group[0].received_ms
                in_flight = _InFlight(group, writer.submit(self._commit_and_finish, group, prepared))
            if in_flight is not None:  # stopping: finish the commit in hand, retry nothing
                with contextlib.suppress(StoreError):
                    in_flight.future.result()

    def _commit_and_finish(self, group: list[Inbound], prepared: PreparedGroup) -> None:
        """The writer thread's job: commit, then ack and receipt at once, not after the next group is judged."""
        self._finish(group, self._pipeline.commit(prepared))

    def _settle_last(self, in_flight: _InFlight | None) -> bool:
        """Settle the commit in flight, if any, with nothing prepared after it; False if the hub stopped."""
        if in_flight is not None and self._settle(in_flight, []) is _Settled.STOPPED:
            return False
        self._in_hand_oldest_ms = None
        return True

    def _settle(self, in_flight: _InFlight, prepared_after: list[list[Inbound]]) -> _Settled:
        """Wait for the in-flight commit (which acks its messages and publishes its receipts itself).

        If it failed, the pipeline was ahead of the store: the failed group and ``prepared_after``
        (prepared on top of it) are committed again, in order. If the hub stops first their messages
        stay unacked, and the broker redelivers them to the next hub.
        """
        try:
            in_flight.future.result()
        except StoreError as exc:
            self._commit_failed(exc)
            return _Settled.RECOMMITTED if self._recommit([in_flight.group, *prepared_after]) else _Settled.STOPPED
        return _Settled.COMMITTED

    def _recommit(self, groups: list[list[Inbound]]) -> bool:
        """Rewind the pipeline and commit ``groups`` in order, retrying until all are in; False if stopped."""
        pending = list(groups)
        while pending:
            if self._stop.wait(COMMIT_RETRY_S):
                return False
            try:
                self._pipeline.rewind()
                while pending:
                    receipts = self._pipeline.commit(self._pipeline.prepare(pending[0]))
                    self._finish(pending.pop(0), receipts)
            except StoreError as exc:
                self._commit_failed(exc)
        return True

    def _commit_failed(self, exc: StoreError) -> None:
        self._pipeline.stats.add("commit_failures")
        log.error("%s; retrying in %.0f s", exc, COMMIT_RETRY_S)

    def _finish(self, group: list[Inbound], receipts: list[Receipt]) -> None:
        """Ack a committed group's messages to the broker and publish its receipts (writer thread, or the
        ingest thread while recommitting with the writer idle)."""
        self._committed += len(group)
        for message in group:
            # After a reconnect the broker redelivers unacked messages under new mids;
            # acking an old mid could confirm a different message.
            if message.qos > 0 and message.connection == self._connection:
                self._client.ack(message.mid, message.qos)
        with self._receipts_lock:
            for receipt in receipts:
                self._publish_receipt(receipt)

    def _periodic(self, *, tick: bool, checkpoint: bool) -> None:
        """Silence and escalations, and the detectors' checkpoint, with no group to ride on and no commit
        in flight."""
        if tick:
            try:
                self._pipeline.tick()
            except StoreError as exc:
                log.error("alarm tick failed: %s", exc)
        if checkpoint:
            try:
                self._pipeline.checkpoint()
            except StoreError as exc:
                log.error("detector checkpoint failed: %s", exc)

    def _taken(self, message: Inbound) -> None:
        with self._inbox_room:
            self._inbox_bytes -= len(message.payload)
            self._inbox_room.notify()

    def _next_group(self, wait_s: float) -> list[Inbound]:
        """The next commit group; empty if no message arrived within ``wait_s``."""
        try:
            first = self._inbox.get(timeout=wait_s) if wait_s > 0 else self._inbox.get_nowait()
        except queue.Empty:
            return []
        self._taken(first)
        if self._in_hand_oldest_ms is None:
            self._in_hand_oldest_ms = first.received_ms
        group = [first]
        size = len(first.payload)
        deadline = time.monotonic() + self._config.group_max_wait_s
        while len(group) < self._config.group_max_messages and size < self._config.group_max_bytes:
            try:
                message = self._inbox.get_nowait()
            except queue.Empty:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                try:
                    message = self._inbox.get(timeout=remaining)
                except queue.Empty:
                    break
            self._taken(message)
            group.append(message)
            size += len(message.payload)
        return group

    def _publish_receipt(self, receipt: Receipt) -> None:
        """Publish ``receipt`` now, or keep it as the gateway's next one while an older one is in flight.

        The caller holds ``_receipts_lock``."""
        in_flight = self._receipt_in_flight.get(receipt.gateway_id)
        if (
            in_flight is not None
            and not _acknowledged(in_flight[0])
            and time.monotonic() - in_flight[1] < RECEIPT_STALL_S
        ):
            self._receipt_waiting[receipt.gateway_id] = receipt
            return
        self._receipt_waiting.pop(receipt.gateway_id, None)
        info = self._client.publish(
            topics.topic_for(receipt.gateway_id, topics.Channel.ACK), encode(receipt), qos=1, retain=True
        )
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            self._receipt_in_flight[receipt.gateway_id] = (info, time.monotonic())
            return
        # Not connected: paho keeps it and sends it after the reconnect; nothing to wait for meanwhile.
        self._receipt_in_flight.pop(receipt.gateway_id, None)
        if info.rc != MQTTErrorCode.MQTT_ERR_NO_CONN:
            log.warning("receipt for %s not queued: %s", receipt.gateway_id, info.rc)

    def _publish_waiting_receipts(self) -> None:
        """Send each waiting receipt whose predecessor the broker has acknowledged (or that stalled)."""
        with self._receipts_lock:
            for receipt in list(self._receipt_waiting.values()):
                self._publish_receipt(receipt)

    def send_command(self, command: Command) -> None:
        """Record ``command`` and publish it to its gateway (QoS 1); the answer arrives on ``cmd/ack``."""
        self._pipeline.record_command(command)
        info = self._client.publish(topics.topic_for(command.gateway_id, topics.Channel.CMD), encode(command), qos=1)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise StoreError(f"command {command.command_id} not queued for the broker: {info.rc.name}")

    def wait_connected(self, timeout_s: float) -> bool:
        """Block until connected or ``timeout_s`` passed."""
        return self._connected.wait(timeout_s)


def _acknowledged(info: paho.MQTTMessageInfo) -> bool:
    """Whether the broker acknowledged a publish (``is_published`` raises for one that failed to queue)."""
    try:
        return info.is_published()
    except (RuntimeError, ValueError):
        return False
