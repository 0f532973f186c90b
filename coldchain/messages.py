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
SensorId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}\Z")]
BootId = Annotated[str, msgspec.Meta(pattern=r"^[0-9a-f]{32}\Z")]
Seq = Annotated[int, msgspec.Meta(ge=1, le=MAX_SEQ)]
TimestampMs = Annotated[int, msgspec.Meta(ge=MIN_TS_MS, le=MAX_TS_MS)]


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


class Reading(msgspec.Struct, array_like=True, frozen=True, forbid_unknown_fields=True):
    """One measurement, encoded as ``[sensor_id, quantity, ts_ms, value, quality]`` to keep batches small."""

    sensor_id: SensorId
    quantity: Quantity
    ts_ms: TimestampMs
    value: float
    quality: Quality = Quality.GOOD

    def __post_init__(self) -> None:
        low, high = QUANTITY_LIMITS[self.quantity]
        if not math.isfinite(self.value) or not low <= self.value <= high:
            raise ValueError(f"{self.quantity.value} value {self.value!r} is outside [{low}, {high}]")


class TelemetryBatch(msgspec.Struct, tag_field="schema", tag="cc.telemetry/1", frozen=True, forbid_unknown_fields=True):
    """A batch of readings from one gateway, the unit of delivery and of deduplication.

    ``seq`` grows by one per batch and survives reboots. ``oldest_held_seq`` is the lowest seq the
    gateway still holds for (re)sending: any lower seq the hub has not received is lost for good,
    so the hub records a gap instead of waiting for it forever.
    """

    gateway_id: GatewayId
    boot_id: BootId
    seq: Seq
    oldest_held_seq: Seq
    readings: Annotated[list[Reading], msgspec.Meta(min_length=1, max_length=MAX_READINGS_PER_BATCH)]

    def __post_init__(self) -> None:
        if self.oldest_held_seq > self.seq:
            raise ValueError(f"oldest_held_seq {self.oldest_held_seq} is above seq {self.seq}")


class Receipt(msgspec.Struct, tag_field="schema", tag="cc.receipt/1", frozen=True, forbid_unknown_fields=True):
    """The hub's end-to-end receipt: every seq up to ``acked_seq`` is committed (or declared lost)."""

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


class _TelemetryEnvelope(
    msgspec.Struct, tag_field="schema", tag="cc.telemetry/1", frozen=True, forbid_unknown_fields=True
):
    """A telemetry batch whose readings are checked one by one (the salvage path)."""

    gateway_id: GatewayId
    boot_id: BootId
    seq: Seq
    oldest_held_seq: Seq
    readings: Annotated[list[msgspec.Raw], msgspec.Meta(min_length=1, max_length=MAX_READINGS_PER_BATCH)]

    def __post_init__(self) -> None:
        if self.oldest_held_seq > self.seq:
            raise ValueError(f"oldest_held_seq {self.oldest_held_seq} is above seq {self.seq}")


@dataclass(frozen=True)
class InvalidReading:
    """A reading refused inside an otherwise valid batch: its index, raw bytes and the reason."""

    index: int
    raw: bytes
    detail: str


@dataclass(frozen=True)
class DecodedTelemetry:
    """A telemetry batch holding its valid readings, and the readings that were refused."""

    batch: TelemetryBatch
    invalid_readings: list[InvalidReading]


Message = TelemetryBatch | Receipt | GatewayStatus
M = TypeVar("M", TelemetryBatch, Receipt, GatewayStatus)

_ENCODER: Final = msgspec.json.Encoder()


class _NoSchema(msgspec.Struct, tag_field="schema", tag=""):
    """Never a message. msgspec treats the tag of a struct decoded on its own as optional, which
    would guess the version; decoding ``T | _NoSchema`` makes ``schema`` mandatory and exact."""


_DECODERS: Final[dict[type[Message], msgspec.json.Decoder[Any]]] = {
    message_type: msgspec.json.Decoder(message_type | _NoSchema)
    for message_type in (TelemetryBatch, Receipt, GatewayStatus)
}
_ENVELOPE_DECODER: Final = msgspec.json.Decoder(_TelemetryEnvelope | _NoSchema)
_READING_DECODER: Final = msgspec.json.Decoder(Reading)


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
    readings: list[Reading] = []
    invalid: list[InvalidReading] = []
    for index, raw in enumerate(envelope.readings):
        try:
            readings.append(_READING_DECODER.decode(raw))
        except msgspec.DecodeError as exc:
            invalid.append(InvalidReading(index, bytes(raw), f"reading {index} of seq {envelope.seq}: {exc}"))
    batch = TelemetryBatch(
        gateway_id=envelope.gateway_id,
        boot_id=envelope.boot_id,
        seq=envelope.seq,
        oldest_held_seq=envelope.oldest_held_seq,
        readings=readings,
    )
    return DecodedTelemetry(batch, invalid)
