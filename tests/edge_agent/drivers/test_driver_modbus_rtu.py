"""The agent's sans-IO Modbus RTU codec, checked against byte vectors and the simulator's own encoder."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.drivers.modbus_rtu import (
    ExceptionResponse,
    Frame,
    RegisterResponse,
    RtuResponseDecoder,
    build_read_request,
)
from firmware_sims.modbus_rtu import (
    crc16,
    encode_exception_response,
    encode_read_request,
    encode_registers_response,
    encode_write_single_response,
)

# The XY-MD02 manual's example: slave 1 answers 0x0131 (30.5 °C) and 0x0222 (54.6 %RH).
MANUAL_RESPONSE = bytes.fromhex("01 04 04 01 31 02 22 2A CE")
MANUAL_FRAME = RegisterResponse(address=1, function=4, registers=(0x0131, 0x0222))
# -18.5 °C is -185 tenths, 0xFF47 in two's complement; 85.0 %RH is 0x0352.
FROZEN_RESPONSE = encode_registers_response(2, 4, [0xFF47, 0x0352])
FROZEN_FRAME = RegisterResponse(address=2, function=4, registers=(0xFF47, 0x0352))
EXCEPTION_RESPONSE = encode_exception_response(3, 4, 0x02)
EXCEPTION_FRAME = ExceptionResponse(address=3, function=4, code=0x02)


def corrupt(frame: bytes) -> bytes:
    """The frame with its last CRC byte flipped."""
    return frame[:-1] + bytes([frame[-1] ^ 0xFF])


def counts(
    *, crc: int = 0, garbage_bytes: int = 0, exception_response: int = 0, short_frame: int = 0
) -> dict[str, int]:
    return {
        "crc": crc,
        "garbage_bytes": garbage_bytes,
        "exception_response": exception_response,
        "short_frame": short_frame,
    }


MAX_FRAME = encode_registers_response(247, 3, list(range(125)))

VECTORS: list[tuple[str, bytes, list[Frame], dict[str, int]]] = [
    ("nothing", b"", [], counts()),
    ("manual frame", MANUAL_RESPONSE, [MANUAL_FRAME], counts()),
    ("negative temperature", FROZEN_RESPONSE, [FROZEN_FRAME], counts()),
    ("exception response", EXCEPTION_RESPONSE, [EXCEPTION_FRAME], counts(exception_response=1)),
    ("largest register response", MAX_FRAME, [RegisterResponse(247, 3, tuple(range(125)))], counts()),
    ("two frames back to back", MANUAL_RESPONSE + FROZEN_RESPONSE, [MANUAL_FRAME, FROZEN_FRAME], counts()),
    (
        "bad crc then good frame",
        corrupt(MANUAL_RESPONSE) + FROZEN_RESPONSE,
        [FROZEN_FRAME],
        counts(crc=1, garbage_bytes=9),
    ),
    (
        "two bad crcs then good frame",
        corrupt(MANUAL_RESPONSE) + corrupt(EXCEPTION_RESPONSE) + MANUAL_RESPONSE,
        [MANUAL_FRAME],
        counts(crc=2, garbage_bytes=14),
    ),
    (
        "flipped data bit",
        MANUAL_RESPONSE[:4] + bytes([MANUAL_RESPONSE[4] ^ 0x10]) + MANUAL_RESPONSE[5:] + EXCEPTION_RESPONSE,
        [EXCEPTION_FRAME],
        counts(crc=1, garbage_bytes=9, exception_response=1),
    ),
    ("garbage before", b"\x00\xff\xfe\x00" + MANUAL_RESPONSE, [MANUAL_FRAME], counts(garbage_bytes=4)),
    ("garbage after", MANUAL_RESPONSE + b"\x00\xff", [MANUAL_FRAME], counts(garbage_bytes=2)),
    (
        "garbage between",
        MANUAL_RESPONSE + b"\xaa\x55\x00" + FROZEN_RESPONSE,
        [MANUAL_FRAME, FROZEN_FRAME],
        counts(garbage_bytes=3),
    ),
    (
        "garbage posing as the header of a long frame",
        b"\x01\x04\xf0" + MANUAL_RESPONSE,
        [MANUAL_FRAME],
        counts(garbage_bytes=3),
    ),
    (
        "truncated frame then the retransmission",
        MANUAL_RESPONSE[:5] + MANUAL_RESPONSE,
        [MANUAL_FRAME],
        counts(crc=1, garbage_bytes=5),
    ),
    (
        "odd byte count is noise",
        b"\x01\x04\x03" + EXCEPTION_RESPONSE,
        [EXCEPTION_FRAME],
        counts(garbage_bytes=3, exception_response=1),
    ),
    (
        "function this master never asks for",
        encode_write_single_response(1, 0x0101, 5) + MANUAL_RESPONSE,
        [MANUAL_FRAME],
        counts(garbage_bytes=8),
    ),
    # The last byte (0xCE, a valid address) is held: it could start the next frame.
    ("broadcast address cannot answer", b"\x00" + MANUAL_RESPONSE[1:], [], counts(garbage_bytes=8)),
]


def frame_length(frame: Frame) -> int:
    if isinstance(frame, ExceptionResponse):
        return 5
    return 5 + 2 * len(frame.registers)


def feed_chunks(chunks: Sequence[bytes]) -> tuple[list[Frame], dict[str, int], int]:
    decoder = RtuResponseDecoder()
    frames = [frame for chunk in chunks for frame in decoder.feed(chunk)]
    return frames, dict(decoder.counters), decoder.pending


def assert_bytes_accounted(data: bytes, frames: list[Frame], counters: dict[str, int], pending: int) -> None:
    assert sum(map(frame_length, frames)) + counters["garbage_bytes"] + pending == len(data)


@pytest.mark.parametrize(("name", "data", "frames", "expected"), VECTORS, ids=[vector[0] for vector in VECTORS])
def test_vector_fed_whole(name: str, data: bytes, frames: list[Frame], expected: dict[str, int]) -> None:
    got_frames, got_counters, pending = feed_chunks([data])
    assert got_frames == frames
    assert got_counters == expected
    assert_bytes_accounted(data, got_frames, got_counters, pending)


@pytest.mark.parametrize(("name", "data", "frames", "expected"), VECTORS, ids=[vector[0] for vector in VECTORS])
def test_vector_fed_in_two_halves_at_every_split(
    name: str, data: bytes, frames: list[Frame], expected: dict[str, int]
) -> None:
    for split in range(len(data) + 1):
        got = feed_chunks([data[:split], data[split:]])
        assert got[:2] == (frames, expected), f"split at {split}"


@pytest.mark.parametrize(("name", "data", "frames", "expected"), VECTORS, ids=[vector[0] for vector in VECTORS])
def test_vector_fed_byte_by_byte(name: str, data: bytes, frames: list[Frame], expected: dict[str, int]) -> None:
    got_frames, got_counters, _ = feed_chunks([bytes([byte]) for byte in data])
    assert got_frames == frames
    assert got_counters == expected


def test_partial_frame_is_held_until_completed() -> None:
    decoder = RtuResponseDecoder()
    assert decoder.feed(MANUAL_RESPONSE[:6]) == []
    assert decoder.pending == 6
    assert decoder.feed(MANUAL_RESPONSE[6:]) == [MANUAL_FRAME]
    assert decoder.pending == 0


def test_reset_counts_a_cut_off_frame_and_starts_clean() -> None:
    decoder = RtuResponseDecoder()
    decoder.feed(MANUAL_RESPONSE[:6])
    decoder.reset()
    assert decoder.counters == counts(short_frame=1, garbage_bytes=6)
    assert decoder.feed(MANUAL_RESPONSE) == [MANUAL_FRAME]
    decoder.reset()
    assert decoder.counters["short_frame"] == 1


def test_read_request_matches_the_manual_and_the_simulator() -> None:
    assert build_read_request(1) == bytes.fromhex("01 04 00 01 00 02 20 0B")
    assert build_read_request(247, start=0x0101, count=4) == encode_read_request(247, 4, 0x0101, 4)


@pytest.mark.parametrize("address", [0, 248, 255, -1])
def test_read_request_rejects_addresses_no_slave_has(address: int) -> None:
    with pytest.raises(ValueError, match="slave address"):
        build_read_request(address)


def test_read_request_rejects_a_count_modbus_cannot_carry() -> None:
    with pytest.raises(ValueError):
        build_read_request(1, count=126)


addresses = st.integers(min_value=1, max_value=247)
register_lists = st.lists(st.integers(min_value=0, max_value=0xFFFF), min_size=1, max_size=125)


@given(address=addresses, function=st.sampled_from([3, 4]), registers=register_lists)
def test_round_trip_through_the_simulators_encoder(address: int, function: int, registers: list[int]) -> None:
    data = encode_registers_response(address, function, registers)
    frames, counters, pending = feed_chunks([data])
    assert frames == [RegisterResponse(address, function, tuple(registers))]
    assert counters == counts()
    assert pending == 0


@given(address=addresses, function=st.sampled_from([3, 4]), code=st.integers(min_value=0, max_value=255))
def test_exception_round_trip_through_the_simulators_encoder(address: int, function: int, code: int) -> None:
    frames, _, _ = feed_chunks([encode_exception_response(address, function, code)])
    assert frames == [ExceptionResponse(address, function, code)]


frames_or_noise = st.lists(
    st.one_of(
        st.builds(encode_registers_response, addresses, st.sampled_from([3, 4]), register_lists),
        st.builds(encode_exception_response, addresses, st.sampled_from([3, 4]), st.integers(1, 11)),
        st.binary(min_size=1, max_size=12),
    ),
    max_size=8,
)


@given(pieces=frames_or_noise, data=st.data())
def test_any_stream_decodes_the_same_however_it_is_split(pieces: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6), label="cuts"))
    chunks = [stream[start:end] for start, end in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    whole = feed_chunks([stream])
    assert feed_chunks(chunks) == whole
    assert_bytes_accounted(stream, *whole)


@given(
    noise=st.binary(max_size=40),
    trailer=st.binary(max_size=40),
    address=addresses,
    registers=register_lists,
)
def test_a_good_frame_survives_noise_on_both_sides(
    noise: bytes, trailer: bytes, address: int, registers: list[int]
) -> None:
    frames, _, _ = feed_chunks([noise + encode_registers_response(address, 4, registers) + trailer])
    assert RegisterResponse(address, 4, tuple(registers)) in frames


def test_crc_agrees_with_the_simulator() -> None:
    assert int.from_bytes(MANUAL_RESPONSE[-2:], "little") == crc16(MANUAL_RESPONSE[:-2])
