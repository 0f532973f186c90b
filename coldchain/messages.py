"""Versioned wire messages and their strict JSON codec.

Every message is a msgspec ``Struct`` tagged with its schema name and version in the ``schema``
field, so a v2 can be added beside v1 as a tagged union without guessing. Decoding enforces a size
limit first and then every type, range and pattern below; any failure becomes a ``ContractError``
whose ``reason`` is a stable counter label and whose text names the offending field.

JSON rather than MessagePack: batches keep the per-message overhead small, msgspec decodes JSON at
hundreds of MB/s, and operators can read the traffic with ``mosquitto_sub`` (docs/decisions.md).
"""

from __future__ import annotations

import enum
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from coldchain.errors import ContractError
from coldchain.topics import GATEWAY_ID_PATTERN

DEFAULT_MAX_PAYLOAD_BYTES: Final = 256 * 1024
"""Largest payload accepted by default: a full batch of MAX_READINGS_PER_BATCH is about 60 bytes each."""

MAX_READINGS_PER_BATCH: Final = 4096
"""Upper bound on readings in one batch, so one message cannot pin unbounded hub memory."""

# 2000-01-01 and 2100-01-01 in UTC milliseconds: anything outside is a broken clock, not a reading.
MIN_TS_MS: Final = 946_684_800_000
MAX_TS_MS: Final = 4_102_444_800_000

MAX_SEQ: Final = 2**63 - 1
"""seq is stored in signed 64-bit database columns."""

GatewayId = Annotated[str, msgspec.Meta(pattern=GATEWAY_ID_PATTERN)]
SENSOR_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z"
SensorId = Annotated[str, msgspec.Meta(pattern=SENSOR_ID_PATTERN)]
BootId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}\Z")]
Seq = Annotated[int, msgspec.Meta(ge=1, le=MAX_SEQ)]
TimestampMs = Annotated[int, msgspec.Meta(ge=MIN_TS_MS, le=MAX_TS_MS)]
# EPC banks are 16-bit words; 496 bits is the Gen2 maximum.
EpcHex = Annotated[str, msgspec.Meta(pattern=r"^(?:[0-9a-f]{4}){1,31}\Z")]


class Quantity(enum.StrEnum):
    """What a reading measures, with its unit fixed by the contract."""

    TEMPERATURE = "temperature"  # degrees Celsius
    HUMIDITY = "humidity"  # percent relative humidity


class Quality(enum.StrEnum):
    """The gateway's own verdict on a reading, kept beside the value."""

    GOOD = "good"
    SUSPECT = "suspect"  # e.g. value at the sensor's limit, or after a bus retry
    BAD = "bad"  # e.g. the sensor reported an error code; value kept for the record


# Physical ranges a reading must lie in to be a measurement at all (wider than any sensor's).
QUANTITY_LIMITS: Final[dict[Quantity, tuple[float, float]]] = {
    Quantity.TEMPERATURE: (-100.0, 200.0),
    Quantity.HUMIDITY: (0.0, 100.0),
}


_SENSOR_ID: Final = re.compile(SENSOR_ID_PATTERN)
_VALID_SENSOR_IDS: set[str] = set()
VALID_SENSOR_IDS_MAX: Final = 65_536
"""Sensor ids remembered as matching ``SENSOR_ID_PATTERN``; past this many the memory starts afresh, so
a flood of made-up ids cannot grow it."""


class Reading(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True, gc=False):
    """One measurement, encoded as ``[sensor_id, quantity, ts_ms, value, quality]`` to keep batches small.

    ``sensor_id`` is checked against ``SENSOR_ID_PATTERN`` here, once per distinct id, not by msgspec's
    pattern on every reading: a gateway sends the same few ids millions of times, and the regular
    expression was more than half of decoding a batch (bench/decode.py: 0.66 -> 0.26 us a reading).
    """

    sensor_id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    quantity: Quantity
    ts_ms: TimestampMs
    value: float
    quality: Quality = Quality.GOOD

    def __post_init__(self) -> None:
        if self.sensor_id not in _VALID_SENSOR_IDS:
            if _SENSOR_ID.match(self.sensor_id) is None:
                raise ValueError(f"sensor_id {self.sensor_id!r} does not match {SENSOR_ID_PATTERN!r}")
            if len(_VALID_SENSOR_IDS) >= VALID_SENSOR_IDS_MAX:
                _VALID_SENSOR_IDS.clear()
            _VALID_SENSOR_IDS.add(self.sensor_id)
        low, high = QUANTITY_LIMITS[self.quantity]
        if not math.isfinite(self.value) or not low <= self.value <= high:
            raise ValueError(f"{self.quantity.value} value {self.value!r} is outside [{low}, {high}]")


class TagAction(enum.StrEnum):
    """Why a tag was read: a plain observation, or a custody handover the courier scanned."""

    OBSERVE = "observe"
    PICKUP = "pickup"  # the case enters the custody of this gateway's node
    DELIVERY = "delivery"  # the case leaves it


class TagRead(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True, gc=False):
    """One (debounced) read of a UHF Gen2 tag.

    ``epc_hex`` is the EPC bank as read and is always kept; ``epc_uri`` is its pure-identity URN
    (``urn:epc:id:sgtin:...``, ``sscc``, ``giai``) when the header is one the gateway decodes, else
    ``None``: an unknown header is kept as raw hex, never dropped.
    """

    reader_id: SensorId
    epc_hex: EpcHex
    epc_uri: Annotated[str, msgspec.Meta(max_length=128, pattern=r"^urn:epc:id:[a-z0-9]+:\S+\Z")] | None
    ts_ms: TimestampMs
    rssi_dbm: Annotated[float, msgspec.Meta(ge=-150, le=20)] | None = None
    antenna: Annotated[int, msgspec.Meta(ge=1, le=64)] = 1
    action: TagAction = TagAction.OBSERVE


class GpsFix(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True, gc=False):
    """A position from the gateway's GPS receiver.

    ``ts_ms`` is the gateway's clock when the fix was read and ``gps_time_ms`` the satellites' UTC,
    so the hub can see a gateway clock that drifted or jumped.
    """

    receiver_id: SensorId
    ts_ms: TimestampMs
    gps_time_ms: TimestampMs | None
    lat: Annotated[float, msgspec.Meta(ge=-90, le=90)]
    lon: Annotated[float, msgspec.Meta(ge=-180, le=180)]
    fix_quality: Annotated[
        int, msgspec.Meta(ge=0, le=8)
    ]  # NMEA GGA: 0 invalid, 1 GPS, 2 DGPS, 4/5 RTK, 6 dead reckoning
    satellites: Annotated[int, msgspec.Meta(ge=0, le=99)] | None = None
    hdop: Annotated[float, msgspec.Meta(ge=0, le=100)] | None = None
    altitude_m: Annotated[float, msgspec.Meta(ge=-1000, le=20000)] | None = None
    speed_kmh: Annotated[float, msgspec.Meta(ge=0, le=2000)] | None = None
    course_deg: Annotated[float, msgspec.Meta(ge=0, le=360)] | None = None

    def __post_init__(self) -> None:
        for name in ("lat", "lon"):
            if not math.isfinite(getattr(self, name)):
                raise ValueError(f"{name} is not a finite number")


class ReleasedRange(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A gap record: batches the gateway gave up unreceipted, and what they held."""

    first_seq: Seq
    last_seq: Seq
    reason: Literal["disk_budget", "buffer_lost"]
    readings: Annotated[int, msgspec.Meta(ge=0)]
    tag_reads: Annotated[int, msgspec.Meta(ge=0)]
    fixes: Annotated[int, msgspec.Meta(ge=0)]
    first_ts_ms: TimestampMs | None
    last_ts_ms: TimestampMs | None

    def __post_init__(self) -> None:
        if self.first_seq > self.last_seq:
            raise ValueError(f"first_seq {self.first_seq} is above last_seq {self.last_seq}")


class TelemetryBatch(
    msgspec.Struct,
    tag_field="schema",
    tag="cc.telemetry/1",
    frozen=True,
    forbid_unknown_fields=True,
    omit_defaults=True,
):
    """A batch from one gateway, the unit of delivery and of deduplication.

    One ordered stream per gateway carries readings, tag reads, GPS fixes and gap records, so a
    handover is ordered against the temperatures around it and one receipt covers everything.
    ``seq`` grows by one per batch and survives reboots. ``oldest_held_seq`` is the lowest seq the
    gateway still holds for (re)sending: any lower seq the hub has not received is lost for good,
    so the hub records a gap instead of waiting for it forever.
    """

    gateway_id: GatewayId
    boot_id: BootId
    seq: Seq
    oldest_held_seq: Seq
    readings: Annotated[list[Reading], msgspec.Meta(max_length=MAX_READINGS_PER_BATCH)] = msgspec.field(
        default_factory=list
    )
    tag_reads: Annotated[list[TagRead], msgspec.Meta(max_length=MAX_READINGS_PER_BATCH)] = msgspec.field(
        default_factory=list
    )
    fixes: Annotated[list[GpsFix], msgspec.Meta(max_length=MAX_READINGS_PER_BATCH)] = msgspec.field(
        default_factory=list
    )
    released: Annotated[list[ReleasedRange], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.oldest_held_seq > self.seq:
            raise ValueError(f"oldest_held_seq {self.oldest_held_seq} is above seq {self.seq}")

    @property
    def item_count(self) -> int:
        """Readings, tag reads and fixes in the batch."""
        return len(self.readings) + len(self.tag_reads) + len(self.fixes)


Observation = Reading | TagRead | GpsFix
"""What a driver produces; the sampler sorts them into a batch's lists."""


class Receipt(msgspec.Struct, tag_field="schema", tag="cc.receipt/1", frozen=True, forbid_unknown_fields=True):
    """The hub's end-to-end receipt: every seq up to ``acked_seq`` is committed (or declared lost);
    ``ts_ms`` is the hub's wall clock when that commit completed."""

    gateway_id: GatewayId
    acked_seq: Annotated[int, msgspec.Meta(ge=0, le=MAX_SEQ)]
    ts_ms: TimestampMs


class GatewayStatus(msgspec.Struct, tag_field="schema", tag="cc.status/1", frozen=True, forbid_unknown_fields=True):
    """Retained birth (``online``) and last-will (``offline``) message of a gateway."""

    gateway_id: GatewayId
    boot_id: BootId
    state: Literal["online", "offline"]
    ts_ms: TimestampMs
    agent_version: Annotated[str, msgspec.Meta(max_length=64)]


class UplinkHealth(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The gateway's view of its link to the hub."""

    connected: bool
    acked_seq: Annotated[int, msgspec.Meta(ge=0)]
    resends: Annotated[int, msgspec.Meta(ge=0)]


class GatewayHealth(
    msgspec.Struct, tag_field="schema", tag="cc.health/1", frozen=True, forbid_unknown_fields=True, omit_defaults=True
):
    """Periodic health report, published retained on the ``health`` channel (lossy by design)."""

    gateway_id: GatewayId
    boot_id: BootId
    ts_ms: TimestampMs
    uptime_s: Annotated[float, msgspec.Meta(ge=0)]
    buffer_batches: Annotated[int, msgspec.Meta(ge=0)]
    buffer_items: Annotated[int, msgspec.Meta(ge=0)]
    buffer_bytes: Annotated[int, msgspec.Meta(ge=0)]
    oldest_unsent_age_s: Annotated[float, msgspec.Meta(ge=0)] | None
    uplink: UplinkHealth
    driver_errors: dict[SensorId, dict[Annotated[str, msgspec.Meta(max_length=64)], int]]
    clock_offset_ms: int | None  # gateway clock minus GPS time; None without a recent fix
    cpu_percent: Annotated[float, msgspec.Meta(ge=0)]
    rss_bytes: Annotated[int, msgspec.Meta(ge=0)]
    alarms_active: Annotated[list[SensorId], msgspec.Meta(max_length=256)] = msgspec.field(default_factory=list)
    released_batches: Annotated[int, msgspec.Meta(ge=0)] = 0


class LocalAlarm(msgspec.Struct, tag_field="schema", tag="cc.alarm/1", frozen=True, forbid_unknown_fields=True):
    """The gateway's own product-range alarm on one sensor, raised or cleared (``alarm`` channel)."""

    gateway_id: GatewayId
    boot_id: BootId
    ts_ms: TimestampMs
    sensor_id: SensorId
    state: Literal["raised", "cleared"]
    value: float
    low_c: float
    high_c: float


class SetSamplingInterval(msgspec.Struct, tag_field="action", tag="set_sampling_interval", frozen=True):
    """Read the sensors every ``interval_s``."""

    interval_s: Annotated[float, msgspec.Meta(ge=0.1, le=3600)]


class SetProductRange(msgspec.Struct, tag_field="action", tag="set_product_range", frozen=True):
    """The temperature range the local alarm guards (the product now on board)."""

    low_c: Annotated[float, msgspec.Meta(ge=-100, le=200)]
    high_c: Annotated[float, msgspec.Meta(ge=-100, le=200)]

    def __post_init__(self) -> None:
        if self.low_c >= self.high_c:
            raise ValueError(f"low_c {self.low_c} must be below high_c {self.high_c}")


class SetCustodyMode(msgspec.Struct, tag_field="action", tag="set_custody_mode", frozen=True):
    """How tag reads count: plain observations, or pickups / deliveries at a handover point."""

    mode: TagAction


ConfigChange = SetSamplingInterval | SetProductRange | SetCustodyMode


class Command(msgspec.Struct, tag_field="schema", tag="cc.command/1", frozen=True, forbid_unknown_fields=True):
    """A remote configuration change from the hub (``cmd`` channel); answered by a ``CommandAck``."""

    command_id: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.:-]{1,64}\Z")]
    gateway_id: GatewayId
    issued_ms: TimestampMs
    change: ConfigChange


class CommandAck(msgspec.Struct, tag_field="schema", tag="cc.command_ack/1", frozen=True, forbid_unknown_fields=True):
    """The gateway's answer to a command (``cmd/ack`` channel): applied, or refused with the reason."""

    command_id: Annotated[str, msgspec.Meta(max_length=64)]
    gateway_id: GatewayId
    ts_ms: TimestampMs
    accepted: bool
    reason: Annotated[str, msgspec.Meta(max_length=512)] | None = None
    config_version: Annotated[int, msgspec.Meta(ge=0)] = 0


class _TelemetryEnvelope(
    msgspec.Struct, tag_field="schema", tag="cc.telemetry/1", frozen=True, forbid_unknown_fields=True
):
    """A telemetry batch whose items are checked one by one (the salvage path)."""

    gateway_id: GatewayId
    boot_id: BootId
    seq: Seq
    oldest_held_seq: Seq
    readings: Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_READINGS_PER_BATCH)] = msgspec.field(
        default_factory=list
    )
    tag_reads: Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_READINGS_PER_BATCH)] = msgspec.field(
        default_factory=list
    )
    fixes: Annotated[list[msgspec.Raw], msgspec.Meta(max_length=MAX_READINGS_PER_BATCH)] = msgspec.field(
        default_factory=list
    )
    released: Annotated[list[ReleasedRange], msgspec.Meta(max_length=64)] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        if self.oldest_held_seq > self.seq:
            raise ValueError(f"oldest_held_seq {self.oldest_held_seq} is above seq {self.seq}")


@dataclass(frozen=True)
class InvalidReading:
    """An item refused inside an otherwise valid batch: which list, its index, raw bytes and why."""

    index: int
    raw: bytes
    detail: str


@dataclass(frozen=True)
class DecodedTelemetry:
    """A telemetry batch holding its valid readings, and the readings that were refused."""

    batch: TelemetryBatch
    invalid_readings: list[InvalidReading]


Message = TelemetryBatch | Receipt | GatewayStatus | GatewayHealth | LocalAlarm | Command | CommandAck
M = TypeVar("M", TelemetryBatch, Receipt, GatewayStatus, GatewayHealth, LocalAlarm, Command, CommandAck)
T = TypeVar("T")

_ENCODER: Final = msgspec.json.Encoder()


class _NoSchema(msgspec.Struct, tag_field="schema", tag=""):
    """Never a message. msgspec treats the tag of a struct decoded on its own as optional, which
    would guess the version; decoding ``T | _NoSchema`` makes ``schema`` mandatory and exact."""


_DECODERS: Final[dict[type[Message], msgspec.json.Decoder[Any]]] = {
    message_type: msgspec.json.Decoder(message_type | _NoSchema)
    for message_type in (TelemetryBatch, Receipt, GatewayStatus, GatewayHealth, LocalAlarm, Command, CommandAck)
}
_ENVELOPE_DECODER: Final = msgspec.json.Decoder(_TelemetryEnvelope | _NoSchema)
_READING_DECODER: Final = msgspec.json.Decoder(Reading)
_TAG_READ_DECODER: Final = msgspec.json.Decoder(TagRead)
_FIX_DECODER: Final = msgspec.json.Decoder(GpsFix)


def encode(message: Message) -> bytes:
    """Encode a message to its JSON wire form."""
    return _ENCODER.encode(message)


def decode(payload: bytes, message_type: type[M], *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> M:
    """Decode and validate ``payload`` as ``message_type``.

    Raises ``ContractError`` with reason ``too_large`` (checked before parsing), ``malformed``
    (not JSON) or ``invalid`` (JSON that breaks the schema; the text names the field).
    """
    if len(payload) > max_bytes:
        raise ContractError("too_large", f"payload of {len(payload)} bytes exceeds the limit of {max_bytes}")
    try:
        message = _DECODERS[message_type].decode(payload)
    except msgspec.ValidationError as exc:
        raise ContractError("invalid", f"{message_type.__name__} rejected: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise ContractError("malformed", f"{message_type.__name__} is not valid JSON: {exc}") from exc
    if not isinstance(message, message_type):
        raise ContractError("invalid", f"{message_type.__name__} rejected: empty value - at `$.schema`")
    if isinstance(message, TelemetryBatch) and not (message.item_count or message.released):
        # Checked here, not in __post_init__: the hub's salvage path must be able to build the
        # empty batch that remains when every item of a received batch was refused.
        raise ContractError("empty", "TelemetryBatch rejected: no readings, tag reads, fixes or gap records")
    return message


def decode_telemetry(payload: bytes, *, max_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES) -> DecodedTelemetry:
    """Decode a telemetry batch, salvaging the valid readings of a batch that holds invalid ones.

    One out-of-range value must not cost the batch's other readings, nor block the gateway (a
    batch the hub never receipts would be re-sent forever). So when the strict decode fails, the
    envelope is decoded alone and each reading checked on its own; the batch keeps the good ones
    (possibly none) and the bad ones are returned for the hub to set aside. A broken envelope
    (no usable ``gateway_id`` / ``seq``) still raises ``ContractError``.
    """
    try:
        return DecodedTelemetry(decode(payload, TelemetryBatch, max_bytes=max_bytes), [])
    except ContractError as strict_error:
        if strict_error.reason != "invalid":
            raise
        try:
            envelope = _ENVELOPE_DECODER.decode(payload)
        except msgspec.DecodeError:
            raise strict_error from None
        if not isinstance(envelope, _TelemetryEnvelope):
            raise strict_error
    invalid: list[InvalidReading] = []
    readings = _salvage(envelope.readings, _READING_DECODER, "reading", envelope.seq, invalid)
    tag_reads = _salvage(envelope.tag_reads, _TAG_READ_DECODER, "tag read", envelope.seq, invalid)
    fixes = _salvage(envelope.fixes, _FIX_DECODER, "fix", envelope.seq, invalid)
    # May be empty when every item was refused; it is still receipted so the gateway moves on.
    batch = TelemetryBatch(
        gateway_id=envelope.gateway_id,
        boot_id=envelope.boot_id,
        seq=envelope.seq,
        oldest_held_seq=envelope.oldest_held_seq,
        readings=readings,
        tag_reads=tag_reads,
        fixes=fixes,
        released=envelope.released,
    )
    return DecodedTelemetry(batch, invalid)


def _salvage(
    raws: list[msgspec.Raw], decoder: msgspec.json.Decoder[T], kind: str, seq: int, invalid: list[InvalidReading]
) -> list[T]:
    kept: list[T] = []
    for index, raw in enumerate(raws):
        try:
            kept.append(decoder.decode(raw))
        except msgspec.DecodeError as exc:
            invalid.append(InvalidReading(index, bytes(raw), f"{kind} {index} of seq {seq}: {exc}"))
    return kept
