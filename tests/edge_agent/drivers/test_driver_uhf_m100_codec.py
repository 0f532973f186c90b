"""M100 codec: a table of byte vectors fed whole, split and byte by byte; noise; notification parsing.

The vectors come from the M100 / QM100 firmware manual where it gives one (the inventory
notification, the "no tag" error, module info), the rest were built by hand from the frame layout.
The round trips encode with the simulator's own encoder, never with the code under test.
"""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.drivers.uhf_m100 import (
    INVENTORY_COMMAND,
    ErrorKind,
    InventoryNotification,
    M100Decoder,
    M100Frame,
    encode_command,
)
from firmware_sims import uhf_reader as sim


def h(text: str) -> bytes:
    return bytes.fromhex(text)


MANUAL_NOTIFICATION = h("BB 02 22 00 11 C9 34 00 30 75 1F EB 70 5C 59 04 E3 D5 0D 70 3A 76 EF 7E")
NO_TAG = h("BB 01 FF 00 01 15 16 7E")

# (name, bytes on the wire, the frame they decode to)
TABLE: list[tuple[str, bytes, M100Frame]] = [
    (
        "manual: inventory notification, 96-bit EPC, RSSI 0xC9",
        MANUAL_NOTIFICATION,
        M100Frame(0x02, 0x22, h("C9 3400 30751FEB705C5904E3D50D70 3A76")),
    ),
    ("manual: no tag found", NO_TAG, M100Frame(0x01, 0xFF, b"\x15")),
    (
        "manual: module info, hardware version M100 V1.00",
        h("BB 01 03 00 0B 00 4D 31 30 30 20 56 31 2E 30 30 22 7E"),
        M100Frame(0x01, 0x03, b"\x00M100 V1.00"),
    ),
    ("manual: stop multiple inventory ok", h("BB 01 28 00 01 00 2A 7E"), M100Frame(0x01, 0x28, b"\x00")),
    ("empty parameter field", h("BB 01 22 00 00 23 7E"), M100Frame(0x01, 0x22, b"")),
    (
        "128-bit EPC notification",
        h("BB 02 22 00 15 B0 40 00 E2 80 11 70 00 00 02 0A 1B 2C 3D 4E 5F 60 71 82 A2 E0 1E 7E"),
        M100Frame(0x02, 0x22, h("B0 4000 E28011700000020A1B2C3D4E5F607182 A2E0")),
    ),
    (
        "header, end and a frame start inside the parameters",
        h("BB 02 22 00 11 BB 30 00 BB 02 22 00 11 C9 7E 7E BB 01 00 01 5F 8F 80 7E"),
        M100Frame(0x02, 0x22, h("BB 3000 BB02220011C97E7EBB010001 5F8F")),
    ),
]
IDS = [name for name, _, _ in TABLE]
STREAM = b"".join(wire for _, wire, _ in TABLE)
ALL_FRAMES = [frame for _, _, frame in TABLE]


def feed_in_pieces(decoder: M100Decoder, data: bytes, cuts: list[int]) -> list[M100Frame]:
    frames: list[M100Frame] = []
    edges = [0, *sorted(cuts), len(data)]
    for start, stop in itertools.pairwise(edges):
        frames += decoder.feed(data[start:stop])
    return frames


def no_errors(decoder: M100Decoder) -> bool:
    return all(count == 0 for count in decoder.counters.values())


# --- the table ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("wire", "expected"), [(wire, frame) for _, wire, frame in TABLE], ids=IDS)
def test_vector_fed_whole(wire: bytes, expected: M100Frame) -> None:
    decoder = M100Decoder()
    assert decoder.feed(wire) == [expected]
    assert decoder.pending == 0
    assert no_errors(decoder)


@pytest.mark.parametrize(("wire", "expected"), [(wire, frame) for _, wire, frame in TABLE], ids=IDS)
def test_vector_fed_in_two_halves_at_every_split_point(wire: bytes, expected: M100Frame) -> None:
    for cut in range(1, len(wire)):
        decoder = M100Decoder()
        assert decoder.feed(wire[:cut]) == [], cut
        assert decoder.feed(wire[cut:]) == [expected], cut
        assert no_errors(decoder)


@pytest.mark.parametrize(("wire", "expected"), [(wire, frame) for _, wire, frame in TABLE], ids=IDS)
def test_vector_fed_byte_by_byte(wire: bytes, expected: M100Frame) -> None:
    decoder = M100Decoder()
    frames = feed_in_pieces(decoder, wire, list(range(1, len(wire))))
    assert frames == [expected]
    assert no_errors(decoder)


def test_whole_table_back_to_back_whole_and_byte_by_byte() -> None:
    assert M100Decoder().feed(STREAM) == ALL_FRAMES
    decoder = M100Decoder()
    assert feed_in_pieces(decoder, STREAM, list(range(1, len(STREAM)))) == ALL_FRAMES
    assert no_errors(decoder)


def test_checksums_of_the_manual_examples() -> None:
    # The documented rule, checked on the manual's own frames: low byte of the sum of Type..params.
    for _, wire, _ in TABLE:
        assert sum(wire[1:-2]) & 0xFF == wire[-2]


# --- encoding and parsing ------------------------------------------------------------------------


def test_single_inventory_command_matches_the_manual() -> None:
    assert h("BB 00 22 00 00 22 7E") == INVENTORY_COMMAND
    assert encode_command(0x03, b"\x00") == h("BB 00 03 00 01 00 04 7E")
    assert encode_command(0x27, h("22 27 10")) == h("BB 00 27 00 03 22 27 10 83 7E")


@pytest.mark.parametrize(("command", "params"), [(-1, b""), (0x100, b""), (0x22, bytes(0x10000))])
def test_encode_command_refuses_what_the_frame_cannot_carry(command: int, params: bytes) -> None:
    with pytest.raises(ValueError):
        encode_command(command, params)


def test_manual_notification_parses_to_rssi_pc_epc_crc() -> None:
    (frame,) = M100Decoder().feed(MANUAL_NOTIFICATION)
    assert InventoryNotification.from_frame(frame) == InventoryNotification(
        rssi_dbm=-55, pc=0x3400, epc_hex="30751feb705c5904e3d50d70", crc=0x3A76
    )


def test_error_code_is_read_only_from_error_responses() -> None:
    assert M100Frame(0x01, 0xFF, b"\x15").error_code == 0x15
    assert M100Frame(0x01, 0x28, b"\x00").error_code is None
    assert M100Frame(0x01, 0xFF, b"").error_code is None


@pytest.mark.parametrize(
    ("frame", "message"),
    [
        (M100Frame(0x01, 0x22, h("C9 3000") + bytes(14)), "not an inventory notification"),
        (M100Frame(0x02, 0x27, h("C9 3000") + bytes(14)), "not an inventory notification"),
        (M100Frame(0x02, 0x22, h("C9 30 00 12")), "shorter than RSSI, PC and CRC"),
        (M100Frame(0x02, 0x22, h("C9 0000 1234")), "announces a 0-byte EPC"),
        (M100Frame(0x02, 0x22, h("C9 3800") + bytes(14)), "announces a 14-byte EPC but the notification holds 12"),
    ],
)
def test_inconsistent_notifications_are_refused(frame: M100Frame, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        InventoryNotification.from_frame(frame)


# --- noise ---------------------------------------------------------------------------------------

GARBAGE = [
    pytest.param(h("00 FF 13 7E"), id="plain bytes"),
    pytest.param(h("BB"), id="lone header"),
    pytest.param(h("BB BB BB"), id="run of headers"),
    pytest.param(h("BB 02 22 00 11"), id="header claiming 17 bytes"),
    pytest.param(h("BB 01 FF 00 01 15"), id="truncated no-tag frame"),
    pytest.param(h("7E BB 00 22 00 00 22 7E"), id="a host command echoed back"),
]


@pytest.mark.parametrize("garbage", GARBAGE)
@pytest.mark.parametrize("where", ["before", "between", "after"])
def test_garbage_never_costs_a_good_frame(garbage: bytes, where: str) -> None:
    stream = {
        "before": garbage + MANUAL_NOTIFICATION + NO_TAG,
        "between": MANUAL_NOTIFICATION + garbage + NO_TAG,
        "after": MANUAL_NOTIFICATION + NO_TAG + garbage,
    }[where]
    expected = [TABLE[0][2], TABLE[1][2]]
    whole = M100Decoder()
    assert whole.feed(stream) == expected
    byte_by_byte = M100Decoder()
    assert feed_in_pieces(byte_by_byte, stream, list(range(1, len(stream)))) == expected
    # Decisions depend on the bytes only, so the counts agree however the stream was split.
    assert whole.counters == byte_by_byte.counters
    whole.reset()
    assert whole.pending == 0
    assert whole.counters[ErrorKind.GARBAGE_BYTES] == len(garbage)


def test_header_claiming_a_long_frame_does_not_hold_back_a_frame_behind_it() -> None:
    decoder = M100Decoder()
    # The fake header's 17 parameter bytes would only be complete after the real frame; the real
    # frame is returned as soon as it is complete, not when the fake one finally fails.
    assert decoder.feed(h("BB 02 22 00 11") + NO_TAG) == [M100Frame(0x01, 0xFF, b"\x15")]
    assert decoder.pending == 0
    assert decoder.counters[ErrorKind.GARBAGE_BYTES] == 5


def test_bad_checksum_is_counted_and_the_next_frame_decoded() -> None:
    corrupted = bytearray(MANUAL_NOTIFICATION)
    corrupted[-2] ^= 0x01
    decoder = M100Decoder()
    assert decoder.feed(bytes(corrupted) + NO_TAG) == [TABLE[1][2]]
    assert decoder.counters[ErrorKind.CHECKSUM] == 1
    assert decoder.counters[ErrorKind.GARBAGE_BYTES] == len(corrupted)


def test_flipped_parameter_byte_is_a_checksum_error() -> None:
    corrupted = bytearray(MANUAL_NOTIFICATION)
    corrupted[10] ^= 0x40
    decoder = M100Decoder()
    assert decoder.feed(bytes(corrupted) + MANUAL_NOTIFICATION) == [TABLE[0][2]]
    assert decoder.counters[ErrorKind.CHECKSUM] == 1


def test_wrong_end_byte_is_counted_as_bad_end() -> None:
    decoder = M100Decoder()
    assert decoder.feed(NO_TAG[:-1] + b"\x7f" + NO_TAG) == [TABLE[1][2]]
    assert decoder.counters[ErrorKind.BAD_END] == 1
    assert decoder.counters[ErrorKind.CHECKSUM] == 0


def test_length_beyond_the_maximum_is_counted_as_oversize_and_dropped_at_once() -> None:
    decoder = M100Decoder()
    assert decoder.feed(h("BB 02 22 01 00")) == []
    # Decided as soon as the length field arrives, without waiting for 256 parameter bytes.
    assert decoder.pending == 0
    assert decoder.counters[ErrorKind.OVERSIZE] == 1
    assert decoder.counters[ErrorKind.GARBAGE_BYTES] == 5
    assert decoder.feed(NO_TAG) == [TABLE[1][2]]


def test_command_type_frames_are_not_accepted_from_the_reader() -> None:
    decoder = M100Decoder()
    assert decoder.feed(INVENTORY_COMMAND) == []
    assert decoder.counters[ErrorKind.GARBAGE_BYTES] == len(INVENTORY_COMMAND)


def test_reset_counts_a_partial_frame_as_garbage() -> None:
    decoder = M100Decoder()
    assert decoder.feed(MANUAL_NOTIFICATION[:10]) == []
    decoder.reset()
    assert decoder.pending == 0
    assert decoder.counters[ErrorKind.GARBAGE_BYTES] == 10
    assert decoder.feed(MANUAL_NOTIFICATION) == [TABLE[0][2]]


# --- round trips through the simulator's encoder -------------------------------------------------

epc_words = st.integers(min_value=1, max_value=31)
epcs = epc_words.flatmap(lambda words: st.binary(min_size=2 * words, max_size=2 * words)).map(bytes.hex)
rssis = st.integers(min_value=-128, max_value=127)
tags = st.tuples(epcs, rssis)


@settings(max_examples=200, deadline=None)
@given(tags=st.lists(tags, min_size=1, max_size=8), data=st.data())
def test_round_trip_simulator_encoder_to_decoder(tags: list[tuple[str, int]], data: st.DataObject) -> None:
    stream = b"".join(sim.encode_inventory_notification(epc, rssi) for epc, rssi in tags) + sim.encode_error(0x15)
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=len(stream) - 1), max_size=12), label="cuts")
    decoder = M100Decoder()
    frames = feed_in_pieces(decoder, stream, cuts)
    assert no_errors(decoder)
    *notifications, end = frames
    assert end.error_code == 0x15
    parsed = [InventoryNotification.from_frame(frame) for frame in notifications]
    assert [(n.epc_hex, n.rssi_dbm) for n in parsed] == tags
    for notification in parsed:
        epc = bytes.fromhex(notification.epc_hex)
        assert notification.pc == sim.pc_word(epc)
        assert notification.crc == sim.gen2_crc16(notification.pc.to_bytes(2, "big") + epc)


@settings(max_examples=200, deadline=None)
@given(
    tags=st.lists(tags, min_size=2, max_size=5),
    victim=st.integers(min_value=0, max_value=4),
    position=st.integers(min_value=0),
    bit=st.integers(min_value=0, max_value=7),
)
def test_one_flipped_bit_costs_at_most_its_own_frame(
    tags: list[tuple[str, int]], victim: int, position: int, bit: int
) -> None:
    frames = [sim.encode_inventory_notification(epc, rssi) for epc, rssi in tags]
    victim %= len(frames)
    # Anywhere but the length field: a flipped length can make a frame swallow its neighbour
    # legitimately (the bytes then hold two valid readings of the stream).
    positions = [i for i in range(len(frames[victim])) if i not in (3, 4)]
    index = positions[position % len(positions)]
    corrupted = bytearray(frames[victim])
    corrupted[index] ^= 1 << bit
    stream = b"".join(frames[:victim]) + bytes(corrupted) + b"".join(frames[victim + 1 :])
    decoder = M100Decoder()
    decoded = decoder.feed(stream)
    expected = [M100Decoder().feed(frame)[0] for i, frame in enumerate(frames) if i != victim]
    assert [frame for frame in decoded if frame in expected] == expected
    decoder.reset()
    errors = decoder.counters
    assert errors[ErrorKind.CHECKSUM] + errors[ErrorKind.BAD_END] + errors[ErrorKind.GARBAGE_BYTES] > 0


@settings(max_examples=200, deadline=None)
@given(noise=st.binary(max_size=64), data=st.data())
def test_every_byte_is_a_frame_garbage_or_pending(noise: bytes, data: st.DataObject) -> None:
    stream = noise + MANUAL_NOTIFICATION + noise + NO_TAG
    cuts = data.draw(st.lists(st.integers(min_value=1, max_value=len(stream) - 1), max_size=12), label="cuts")
    decoder = M100Decoder()
    frames = feed_in_pieces(decoder, stream, cuts)
    assert TABLE[0][2] in frames
    assert TABLE[1][2] in frames
    framed = sum(len(frame.params) + 7 for frame in frames)
    assert framed + decoder.counters[ErrorKind.GARBAGE_BYTES] + decoder.pending == len(stream)
    whole = M100Decoder()
    assert whole.feed(stream) == frames
    assert whole.counters == decoder.counters
