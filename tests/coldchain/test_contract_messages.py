"""The wire messages: strict JSON round trips, rejections with stable reasons, telemetry salvage."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coldchain import messages
from coldchain.errors import ContractError
from coldchain.messages import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    MAX_READINGS_PER_BATCH,
    MAX_SEQ,
    MAX_TS_MS,
    MIN_TS_MS,
    QUANTITY_LIMITS,
    GatewayStatus,
    InvalidReading,
    Quality,
    Quantity,
    Reading,
    Receipt,
    TelemetryBatch,
    decode,
    decode_telemetry,
    encode,
)

BOOT_ID = "0123456789abcdef0123456789abcdef"
TS = 1_700_000_000_000

# ---------------------------------------------------------------------------------------------
# strategies: only values the contract accepts
# ---------------------------------------------------------------------------------------------

gateway_ids = st.from_regex(r"[a-z0-9][a-z0-9_-]{0,62}", fullmatch=True)
sensor_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", fullmatch=True)
boot_ids = st.from_regex(r"[0-9a-f]{32}", fullmatch=True)
timestamps = st.integers(MIN_TS_MS, MAX_TS_MS)
seqs = st.integers(1, MAX_SEQ)


@st.composite
def readings(draw: st.DrawFn) -> Reading:
    quantity = draw(st.sampled_from(Quantity))
    low, high = QUANTITY_LIMITS[quantity]
    return Reading(
        sensor_id=draw(sensor_ids),
        quantity=quantity,
        ts_ms=draw(timestamps),
        value=draw(st.floats(low, high, allow_nan=False, allow_infinity=False)),
        quality=draw(st.sampled_from(Quality)),
    )


@st.composite
def batches(draw: st.DrawFn) -> TelemetryBatch:
    seq = draw(seqs)
    return TelemetryBatch(
        gateway_id=draw(gateway_ids),
        boot_id=draw(boot_ids),
        seq=seq,
        oldest_held_seq=draw(st.integers(1, seq)),
        readings=draw(st.lists(readings(), min_size=1, max_size=20)),
    )


receipts = st.builds(Receipt, gateway_id=gateway_ids, acked_seq=st.integers(0, MAX_SEQ), ts_ms=timestamps)
statuses = st.builds(
    GatewayStatus,
    gateway_id=gateway_ids,
    boot_id=boot_ids,
    state=st.sampled_from(["online", "offline"]),
    ts_ms=timestamps,
    agent_version=st.text(max_size=64),
)


# ---------------------------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------------------------


@settings(max_examples=200)
@given(batches())
def test_telemetry_batch_round_trips(batch):
    payload = encode(batch)
    assert decode(payload, TelemetryBatch) == batch
    decoded = decode_telemetry(payload)
    assert decoded.batch == batch
    assert decoded.invalid_readings == []


@given(receipts)
def test_receipt_round_trips(receipt):
    assert decode(encode(receipt), Receipt) == receipt


@given(statuses)
def test_gateway_status_round_trips(status):
    assert decode(encode(status), GatewayStatus) == status


def test_reading_is_encoded_as_a_compact_array_and_message_carries_its_schema_tag():
    batch = TelemetryBatch("gw-1", BOOT_ID, 7, 3, [Reading("probe-1", Quantity.TEMPERATURE, TS, 4.5)])
    raw = msgspec.json.decode(encode(batch))
    assert raw["schema"] == "cc.telemetry/1"
    assert raw["readings"] == [["probe-1", "temperature", TS, 4.5, "good"]]
    assert msgspec.json.decode(encode(Receipt("gw-1", 0, TS)))["schema"] == "cc.receipt/1"
    assert msgspec.json.decode(encode(GatewayStatus("gw-1", BOOT_ID, "online", TS, "1.0")))["schema"] == "cc.status/1"


def test_message_types_are_not_interchangeable():
    receipt = encode(Receipt("gw-1", 3, TS))
    with pytest.raises(ContractError) as info:
        decode(receipt, TelemetryBatch)
    assert info.value.reason == "invalid"
    assert "$.schema" in str(info.value)


def test_constructing_a_reading_out_of_range_or_not_finite_fails():
    for value in (float("nan"), float("inf"), -float("inf"), 200.5, -100.5):
        with pytest.raises(ValueError, match="outside"):
            Reading("p1", Quantity.TEMPERATURE, TS, value)
    with pytest.raises(ValueError, match="outside"):
        Reading("p1", Quantity.HUMIDITY, TS, 100.1)
    # the bounds themselves are valid measurements
    Reading("p1", Quantity.TEMPERATURE, TS, -100.0)
    Reading("p1", Quantity.HUMIDITY, TS, 100.0)


def test_constructing_a_batch_with_oldest_held_above_seq_fails():
    with pytest.raises(ValueError, match="oldest_held_seq"):
        TelemetryBatch("gw-1", BOOT_ID, 2, 3, [Reading("p1", Quantity.TEMPERATURE, TS, 1.0)])


# ---------------------------------------------------------------------------------------------
# rejections
# ---------------------------------------------------------------------------------------------


def reading_row(**overrides: Any) -> list[Any]:
    row = {"sensor_id": "probe-1", "quantity": "temperature", "ts_ms": TS, "value": 4.5, "quality": "good"}
    row.update(overrides)
    return list(row.values())


def telemetry_doc(**overrides: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "schema": "cc.telemetry/1",
        "gateway_id": "gw-1",
        "boot_id": BOOT_ID,
        "seq": 5,
        "oldest_held_seq": 2,
        "readings": [reading_row()],
    }
    doc.update(overrides)
    return doc


def raw(doc: dict[str, Any]) -> bytes:
    return msgspec.json.encode(doc)


def test_the_valid_base_document_is_accepted():
    # guards the rejection table below: each case differs from this one in a single field
    batch = decode(raw(telemetry_doc()), TelemetryBatch)
    assert batch.seq == 5
    assert batch.readings[0] == Reading("probe-1", Quantity.TEMPERATURE, TS, 4.5, Quality.GOOD)


INVALID_TELEMETRY = [
    pytest.param(telemetry_doc(extra=1), "extra", id="unknown-field"),
    pytest.param(telemetry_doc(schema="cc.telemetry/2"), "$.schema", id="future-version"),
    pytest.param(telemetry_doc(schema="cc.receipt/1"), "$.schema", id="wrong-schema"),
    pytest.param({k: v for k, v in telemetry_doc().items() if k != "schema"}, "schema", id="no-schema"),
    pytest.param(telemetry_doc(seq=0, oldest_held_seq=0), "$.seq", id="seq-zero"),
    pytest.param(telemetry_doc(seq=-1), "$.seq", id="seq-negative"),
    pytest.param(telemetry_doc(seq=2**63), "$.seq", id="seq-above-int64"),
    pytest.param(telemetry_doc(seq="5"), "$.seq", id="seq-as-string"),
    pytest.param(telemetry_doc(seq=5.0), "$.seq", id="seq-as-float"),
    pytest.param(telemetry_doc(oldest_held_seq=0), "$.oldest_held_seq", id="oldest-zero"),
    pytest.param(telemetry_doc(seq=2, oldest_held_seq=3), "oldest_held_seq", id="oldest-above-seq"),
    pytest.param(
        telemetry_doc(readings=[reading_row()] * (MAX_READINGS_PER_BATCH + 1)), "$.readings", id="too-many-readings"
    ),
    pytest.param(telemetry_doc(gateway_id="GW-1"), "$.gateway_id", id="gateway-uppercase"),
    pytest.param(telemetry_doc(gateway_id="gw/1"), "$.gateway_id", id="gateway-slash"),
    pytest.param(telemetry_doc(gateway_id="gw+"), "$.gateway_id", id="gateway-wildcard"),
    pytest.param(telemetry_doc(gateway_id=""), "$.gateway_id", id="gateway-empty"),
    pytest.param(telemetry_doc(gateway_id="g" * 64), "$.gateway_id", id="gateway-too-long"),
    pytest.param(telemetry_doc(gateway_id="gw-1\n"), "$.gateway_id", id="gateway-trailing-newline"),
    pytest.param(telemetry_doc(boot_id="A" * 32), "$.boot_id", id="boot-id-uppercase"),
    pytest.param(telemetry_doc(boot_id="a" * 31), "$.boot_id", id="boot-id-short"),
    # The pattern is checked once per distinct id after decoding (Reading.__post_init__): the text names the field.
    pytest.param(
        telemetry_doc(readings=[reading_row(sensor_id="-p1")]),
        "sensor_id '-p1' does not match",
        id="sensor-leading-dash",
    ),
    pytest.param(telemetry_doc(readings=[reading_row(sensor_id="p 1")]), "sensor_id 'p 1'", id="sensor-space"),
    pytest.param(telemetry_doc(readings=[reading_row(sensor_id="p" * 65)]), "$.readings[0][0]", id="sensor-too-long"),
    pytest.param(
        telemetry_doc(readings=[reading_row(sensor_id="p1\n")]), "sensor_id 'p1\\n'", id="sensor-trailing-newline"
    ),
    pytest.param(telemetry_doc(readings=[reading_row(quantity="pressure")]), "$.readings[0][1]", id="quantity"),
    pytest.param(telemetry_doc(readings=[reading_row(quality="great")]), "$.readings[0][4]", id="quality"),
    pytest.param(telemetry_doc(readings=[reading_row(ts_ms=MIN_TS_MS - 1)]), "$.readings[0][2]", id="ts-before-2000"),
    pytest.param(telemetry_doc(readings=[reading_row(ts_ms=MAX_TS_MS + 1)]), "$.readings[0][2]", id="ts-after-2100"),
    pytest.param(telemetry_doc(readings=[reading_row(ts_ms=TS / 1000)]), "$.readings[0][2]", id="ts-float"),
    pytest.param(telemetry_doc(readings=[reading_row(value=None)]), "$.readings[0][3]", id="value-null"),
    pytest.param(telemetry_doc(readings=[reading_row(value="4.5")]), "$.readings[0][3]", id="value-string"),
    pytest.param(telemetry_doc(readings=[reading_row(value=200.01)]), "$.readings[0]", id="temperature-too-hot"),
    pytest.param(telemetry_doc(readings=[reading_row(value=-100.01)]), "$.readings[0]", id="temperature-too-cold"),
    pytest.param(
        telemetry_doc(readings=[reading_row(quantity="humidity", value=-0.5)]), "$.readings[0]", id="humidity-negative"
    ),
    pytest.param(
        telemetry_doc(readings=[reading_row(quantity="humidity", value=100.5)]), "$.readings[0]", id="humidity-above"
    ),
    # msgspec gives no path for an over-long array-like struct; the text still says what is wrong
    pytest.param(
        telemetry_doc(readings=[reading_row(), [*reading_row(), "extra"]]), "at most length 5", id="reading-too-long"
    ),
    pytest.param(telemetry_doc(readings=[reading_row()[:3]]), "$.readings[0]", id="reading-too-short"),
]


@pytest.mark.parametrize(("document", "field"), INVALID_TELEMETRY)
def test_invalid_telemetry_is_rejected_naming_the_field(document, field):
    with pytest.raises(ContractError) as info:
        decode(raw(document), TelemetryBatch)
    assert info.value.reason == "invalid"
    assert field in str(info.value)


def test_a_sensor_id_is_refused_every_time_and_the_memory_of_valid_ones_stays_bounded(monkeypatch):
    monkeypatch.setattr(messages, "VALID_SENSOR_IDS_MAX", 3)
    monkeypatch.setattr(messages, "_VALID_SENSOR_IDS", set())
    for _ in range(2):  # a refused id is not remembered as valid
        with pytest.raises(ContractError, match="sensor_id '-p1'"):
            decode(raw(telemetry_doc(readings=[reading_row(sensor_id="-p1")])), TelemetryBatch)
    for sensor in ("p1", "p2", "p3", "p4", "p5"):
        decode(raw(telemetry_doc(readings=[reading_row(sensor_id=sensor)])), TelemetryBatch)
        assert len(messages._VALID_SENSOR_IDS) <= 3
    assert "-p1" not in messages._VALID_SENSOR_IDS


def test_overflowing_number_is_invalid_not_infinite():
    payload = raw(telemetry_doc()).replace(b"4.5", b"1e999")
    assert b"1e999" in payload
    with pytest.raises(ContractError) as info:
        decode(payload, TelemetryBatch)
    assert info.value.reason == "invalid"
    assert "$.readings[0][3]" in str(info.value)


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_standard_float_literals_are_malformed(literal):
    payload = raw(telemetry_doc()).replace(b"4.5", literal)
    with pytest.raises(ContractError) as info:
        decode(payload, TelemetryBatch)
    assert info.value.reason == "malformed"


def test_non_finite_values_never_reach_the_wire():
    # the encoder writes a non-finite float as null, which the decoder refuses
    doc = telemetry_doc(readings=[reading_row(value=float("nan"))])
    with pytest.raises(ContractError) as info:
        decode(msgspec.json.encode(doc), TelemetryBatch)
    assert info.value.reason == "invalid"


@pytest.mark.parametrize(
    "payload",
    [b"", b"not json", b"\xff\xfe\x00", b"{", b'{"schema": ', b"{,}", b"{'schema': 1}"],
)
def test_non_json_bytes_are_malformed(payload):
    for message_type in (TelemetryBatch, Receipt, GatewayStatus):
        with pytest.raises(ContractError) as info:
            decode(payload, message_type)
        assert info.value.reason == "malformed"
        assert message_type.__name__ in str(info.value)


def test_size_limit_is_checked_before_parsing():
    # garbage over the limit is too_large, not malformed: the parser never saw it
    garbage = b"\xff" * (DEFAULT_MAX_PAYLOAD_BYTES + 1)
    with pytest.raises(ContractError) as info:
        decode(garbage, TelemetryBatch)
    assert info.value.reason == "too_large"
    with pytest.raises(ContractError) as info:
        decode_telemetry(garbage)
    assert info.value.reason == "too_large"


def test_size_limit_is_inclusive_and_configurable():
    payload = raw(telemetry_doc())
    assert decode(payload, TelemetryBatch, max_bytes=len(payload)).seq == 5
    with pytest.raises(ContractError) as info:
        decode(payload, TelemetryBatch, max_bytes=len(payload) - 1)
    assert info.value.reason == "too_large"
    assert str(len(payload)) in str(info.value)


def test_a_full_batch_fits_the_default_size_limit():
    batch = TelemetryBatch(
        "gw-1",
        BOOT_ID,
        MAX_SEQ,
        1,
        [Reading("probe-12345678", Quantity.HUMIDITY, MAX_TS_MS, 99.999, Quality.SUSPECT)] * MAX_READINGS_PER_BATCH,
    )
    assert decode(encode(batch), TelemetryBatch) == batch


RECEIPT_BASE = {"schema": "cc.receipt/1", "gateway_id": "gw-1", "acked_seq": 0, "ts_ms": TS}
STATUS_BASE = {"schema": "cc.status/1", "gateway_id": "gw-1", "boot_id": BOOT_ID, "state": "online", "ts_ms": TS}
STATUS_BASE["agent_version"] = "0.1.0"


@pytest.mark.parametrize(
    ("message_type", "document", "field"),
    [
        pytest.param(Receipt, {**RECEIPT_BASE, "acked_seq": -1}, "$.acked_seq", id="receipt-negative"),
        pytest.param(Receipt, {**RECEIPT_BASE, "acked_seq": 2**63}, "$.acked_seq", id="receipt-overflow"),
        pytest.param(Receipt, {**RECEIPT_BASE, "ts_ms": 0}, "$.ts_ms", id="receipt-epoch"),
        pytest.param(Receipt, {**RECEIPT_BASE, "gateway_id": "gw#"}, "$.gateway_id", id="receipt-gateway"),
        pytest.param(Receipt, {**RECEIPT_BASE, "extra": True}, "extra", id="receipt-unknown-field"),
        pytest.param(Receipt, {**RECEIPT_BASE, "schema": "cc.receipt/2"}, "$.schema", id="receipt-version"),
        pytest.param(GatewayStatus, {**STATUS_BASE, "state": "sleeping"}, "$.state", id="status-state"),
        pytest.param(GatewayStatus, {**STATUS_BASE, "agent_version": "v" * 65}, "$.agent_version", id="status-ver"),
        pytest.param(GatewayStatus, {**STATUS_BASE, "ts_ms": MAX_TS_MS + 1}, "$.ts_ms", id="status-ts"),
        pytest.param(GatewayStatus, {**STATUS_BASE, "boot_id": "x"}, "$.boot_id", id="status-boot"),
        pytest.param(GatewayStatus, {**STATUS_BASE, "extra": 1}, "extra", id="status-unknown-field"),
    ],
)
def test_invalid_receipt_and_status_are_rejected_naming_the_field(message_type, document, field):
    assert decode(raw(RECEIPT_BASE), Receipt).acked_seq == 0
    assert decode(raw(STATUS_BASE), GatewayStatus).state == "online"
    with pytest.raises(ContractError) as info:
        decode(raw(document), message_type)
    assert info.value.reason == "invalid"
    assert field in str(info.value)


# ---------------------------------------------------------------------------------------------
# decode_telemetry: salvage
# ---------------------------------------------------------------------------------------------


def test_salvage_keeps_valid_readings_and_reports_invalid_ones_by_index():
    rows = [
        reading_row(sensor_id="p0", value=1.0),
        reading_row(sensor_id="p1", value=999.0),  # out of range
        reading_row(sensor_id="p2", quantity="humidity", value=55.0),
        reading_row(sensor_id="p3", ts_ms=5),  # broken clock
        ["p4", "temperature"],  # truncated
        reading_row(sensor_id="p5", value=-3.25, quality="suspect"),
    ]
    decoded = decode_telemetry(raw(telemetry_doc(readings=rows)))
    assert decoded.batch.gateway_id == "gw-1"
    assert decoded.batch.boot_id == BOOT_ID
    assert (decoded.batch.seq, decoded.batch.oldest_held_seq) == (5, 2)
    assert decoded.batch.readings == [
        Reading("p0", Quantity.TEMPERATURE, TS, 1.0),
        Reading("p2", Quantity.HUMIDITY, TS, 55.0),
        Reading("p5", Quantity.TEMPERATURE, TS, -3.25, Quality.SUSPECT),
    ]
    assert [bad.index for bad in decoded.invalid_readings] == [1, 3, 4]
    assert all(isinstance(bad, InvalidReading) for bad in decoded.invalid_readings)
    assert msgspec.json.decode(decoded.invalid_readings[0].raw) == rows[1]
    assert msgspec.json.decode(decoded.invalid_readings[2].raw) == rows[4]
    assert "reading 1 of seq 5" in decoded.invalid_readings[0].detail
    assert "outside" in decoded.invalid_readings[0].detail
    assert "reading 3 of seq 5" in decoded.invalid_readings[1].detail


def test_salvage_of_a_batch_with_only_invalid_readings_keeps_the_envelope():
    decoded = decode_telemetry(raw(telemetry_doc(readings=[reading_row(value=500.0), reading_row(quantity="x")])))
    assert decoded.batch.seq == 5
    assert decoded.batch.readings == []
    assert [bad.index for bad in decoded.invalid_readings] == [0, 1]


@pytest.mark.parametrize(
    ("document", "field"),
    [
        pytest.param(telemetry_doc(seq=0, readings=[reading_row(value=500.0)]), "$.seq", id="seq-zero"),
        pytest.param(telemetry_doc(gateway_id="GW", readings=[reading_row(value=500.0)]), "$.gateway_id", id="gw"),
        pytest.param(telemetry_doc(extra=1, readings=[reading_row()]), "extra", id="unknown-field"),
        # strict decode fails on the reading first; the envelope then fails too, and the strict error is raised
        pytest.param(telemetry_doc(extra=1, readings=[reading_row(value=500.0)]), "$.readings[0]", id="unknown+bad"),
        pytest.param(telemetry_doc(schema="cc.telemetry/2"), "$.schema", id="version"),
        pytest.param(telemetry_doc(seq=1, oldest_held_seq=4), "oldest_held_seq", id="oldest-above-seq"),
        pytest.param(
            telemetry_doc(readings=[reading_row()] * (MAX_READINGS_PER_BATCH + 1)), "$.readings", id="too-many"
        ),
    ],
)
def test_salvage_still_raises_for_a_broken_envelope(document, field):
    with pytest.raises(ContractError) as info:
        decode_telemetry(raw(document))
    assert info.value.reason == "invalid"
    assert field in str(info.value)


def test_decode_telemetry_raises_malformed_for_non_json():
    with pytest.raises(ContractError) as info:
        decode_telemetry(b"\x00garbage")
    assert info.value.reason == "malformed"


def test_decode_telemetry_fast_path_for_a_valid_batch():
    payload = raw(telemetry_doc(readings=[reading_row(sensor_id=f"p{i}", value=i) for i in range(10)]))
    decoded = decode_telemetry(payload)
    assert decoded.invalid_readings == []
    assert decoded.batch == decode(payload, TelemetryBatch)
    assert [r.sensor_id for r in decoded.batch.readings] == [f"p{i}" for i in range(10)]


@settings(max_examples=100)
@given(
    batch=batches(),
    bad_positions=st.sets(st.integers(0, 19), max_size=5),
)
def test_salvage_property_valid_readings_survive_in_order(batch, bad_positions):
    rows: list[Any] = [msgspec.json.decode(encode(r)) for r in batch.readings]
    bad_row = reading_row(value=1000.0)
    bad_indexes = sorted({min(p, len(rows)) for p in bad_positions})
    for index in bad_indexes:
        rows.insert(index, bad_row)
    doc = msgspec.json.decode(encode(batch))
    doc["readings"] = rows[:MAX_READINGS_PER_BATCH]
    decoded = decode_telemetry(msgspec.json.encode(doc))
    assert decoded.batch.readings == batch.readings
    assert [bad.index for bad in decoded.invalid_readings] == bad_indexes


def test_a_batch_with_nothing_in_it_is_refused_as_empty_by_both_decoders():
    for decoder in (lambda p: decode(p, TelemetryBatch), decode_telemetry):
        with pytest.raises(ContractError) as info:
            decoder(raw(telemetry_doc(readings=[])))
        assert info.value.reason == "empty"
        assert "no readings, tag reads, fixes or gap records" in str(info.value)
