"""The slave-side Modbus RTU codec: CRC, encoders, and the resynchronising request decoder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sims.modbus_rtu import (
    Request,
    RequestDecoder,
    crc16,
    encode_exception_response,
    encode_read_request,
    encode_registers_response,
    encode_write_single_request,
    encode_write_single_response,
    with_crc,
)

# From the XY-MD02 manual: slave 1, read input registers 0x0001..0x0002.
MANUAL_REQUEST = bytes.fromhex("01 04 00 01 00 02 20 0B")
MANUAL_DECODED = Request(address=1, function=4, start=1, count_or_value=2)


def test_crc_reproduces_the_manual_vector() -> None:
    assert crc16(MANUAL_REQUEST[:6]) == 0x0B20
    assert with_crc(MANUAL_REQUEST[:6]) == MANUAL_REQUEST


def test_crc_of_the_empty_frame_is_the_initial_value() -> None:
    assert crc16(b"") == 0xFFFF


def test_read_request_matches_the_manual() -> None:
    assert encode_read_request(1, 4, 1, 2) == MANUAL_REQUEST


def test_registers_response_matches_the_manual_prefix() -> None:
    # 0x0131 = 305 → 30.5 °C, 0x0222 = 546 → 54.6 %RH.
    frame = encode_registers_response(1, 4, [0x0131, 0x0222])
    assert frame[:7] == bytes.fromhex("01 04 04 01 31 02 22")
    assert frame[7:] == crc16(frame[:7]).to_bytes(2, "little")


def test_write_single_response_echoes_the_request() -> None:
    assert encode_write_single_response(1, 0x0101, 5) == encode_write_single_request(1, 0x0101, 5)
    assert encode_write_single_response(1, 0x0101, 5)[:6] == bytes.fromhex("01 06 01 01 00 05")


def test_exception_response_sets_the_high_bit() -> None:
    frame = encode_exception_response(1, 0x04, 0x02)
    assert frame[:3] == bytes.fromhex("01 84 02")
    assert len(frame) == 5
    assert frame[3:] == crc16(frame[:3]).to_bytes(2, "little")


@pytest.mark.parametrize(
    "call",
    [
        lambda: encode_read_request(256, 4, 1, 2),
        lambda: encode_read_request(1, 4, -1, 2),
        lambda: encode_read_request(1, 4, 1, 0x10000),
        lambda: encode_registers_response(1, 4, []),
        lambda: encode_registers_response(1, 4, [0x10000]),
        lambda: encode_registers_response(1, 4, [0] * 126),
        lambda: encode_exception_response(1, 4, 256),
    ],
)
def test_encoders_reject_out_of_range_fields(call: object) -> None:
    with pytest.raises(ValueError):
        call()  # type: ignore[operator]


def test_decoder_whole_frame() -> None:
    decoder = RequestDecoder()
    assert decoder.feed(MANUAL_REQUEST) == [MANUAL_DECODED]
    assert decoder.counters == {"crc": 0, "garbage_bytes": 0, "unknown_function": 0}


@pytest.mark.parametrize("split", range(1, len(MANUAL_REQUEST)))
def test_decoder_two_halves_at_every_split(split: int) -> None:
    decoder = RequestDecoder()
    assert decoder.feed(MANUAL_REQUEST[:split]) == []
    assert decoder.feed(MANUAL_REQUEST[split:]) == [MANUAL_DECODED]
    assert decoder.counters["garbage_bytes"] == 0


def test_decoder_byte_by_byte() -> None:
    decoder = RequestDecoder()
    second = encode_read_request(2, 3, 0x0101, 4)
    stream = MANUAL_REQUEST + second
    decoded = [request for byte in stream for request in decoder.feed(bytes([byte]))]
    assert decoded == [MANUAL_DECODED, Request(2, 3, 0x0101, 4)]
    assert decoder.counters["garbage_bytes"] == 0


def test_decoder_garbage_before_between_and_after_frames() -> None:
    decoder = RequestDecoder()
    second = encode_write_single_request(1, 0x0103, 0xFFF6)
    stream = b"\xff\x00\x13" + MANUAL_REQUEST + b"\x0d\x0a" + second + b"\x99"
    assert decoder.feed(stream) == [MANUAL_DECODED, Request(1, 6, 0x0103, 0xFFF6)]
    # The trailing byte waits for company; the five bytes before the frames were dropped.
    assert decoder.counters["garbage_bytes"] == 5
    assert decoder.feed(MANUAL_REQUEST) == [MANUAL_DECODED]
    assert decoder.counters["garbage_bytes"] == 6
    # Three bursts of noise, three losses of sync, whatever the number of offsets tried.
    assert decoder.counters["crc"] + decoder.counters["unknown_function"] == 3


def test_decoder_garbage_that_looks_like_a_frame_start() -> None:
    # "01 03" is a plausible header: the decoder must not swallow the real frame while testing it.
    decoder = RequestDecoder()
    assert decoder.feed(b"\x01\x03" + MANUAL_REQUEST) == [MANUAL_DECODED]
    assert decoder.counters == {"crc": 1, "garbage_bytes": 2, "unknown_function": 0}


def test_decoder_bad_crc_is_counted_and_the_next_frame_survives() -> None:
    decoder = RequestDecoder()
    corrupt = MANUAL_REQUEST[:-1] + bytes([MANUAL_REQUEST[-1] ^ 0x01])
    assert decoder.feed(corrupt + MANUAL_REQUEST) == [MANUAL_DECODED]
    assert decoder.counters == {"crc": 1, "garbage_bytes": len(corrupt), "unknown_function": 0}


def test_decoder_rejects_a_byte_swapped_crc() -> None:
    decoder = RequestDecoder()
    swapped = MANUAL_REQUEST[:6] + MANUAL_REQUEST[7:5:-1]
    assert decoder.feed(swapped) == []
    assert decoder.counters["crc"] == 1


def test_decoder_counts_unknown_functions() -> None:
    decoder = RequestDecoder()
    assert decoder.feed(b"\x01\x10" + MANUAL_REQUEST) == [MANUAL_DECODED]
    assert decoder.counters == {"crc": 0, "garbage_bytes": 2, "unknown_function": 1}


def test_decoder_frames_unsupported_fixed_length_functions() -> None:
    # Read coils is not a probe function, but it is framed so the device can answer exception 0x01.
    decoder = RequestDecoder()
    frame = with_crc(bytes.fromhex("01 01 00 00 00 08"))
    assert decoder.feed(frame) == [Request(1, 1, 0, 8)]


@given(
    address=st.integers(0, 255),
    function=st.sampled_from([0x03, 0x04]),
    start=st.integers(0, 0xFFFF),
    count=st.integers(0, 0xFFFF),
    garbage=st.binary(max_size=16),
    split=st.integers(0, 8),
)
def test_round_trip_read_request(
    address: int, function: int, start: int, count: int, garbage: bytes, split: int
) -> None:
    frame = encode_read_request(address, function, start, count)
    decoder = RequestDecoder()
    decoded = decoder.feed(garbage + frame[:split]) + decoder.feed(frame[split:])
    # Random garbage may, once in 65536, frame by chance; the real request must still come last.
    assert decoded[-1] == Request(address, function, start, count)
