"""The M100 reader simulator: its own encoder against the manual's frames, its command decoder, and
its behaviour over a real pseudo-terminal (inventories, faults, unplug / replug)."""

from __future__ import annotations

import termios
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import serial

from firmware_sims.uhf_reader import (
    Command,
    CommandDecoder,
    UhfReaderSimulator,
    encode_error,
    encode_frame,
    encode_inventory_notification,
    gen2_crc16,
    normalize_epc,
    pc_word,
)

INVENTORY = bytes.fromhex("BB 00 22 00 00 22 7E")
MANUAL_NOTIFICATION = bytes.fromhex("BB 02 22 00 11 C9 34 00 30 75 1F EB 70 5C 59 04 E3 D5 0D 70 3A 76 EF 7E")
NO_TAG = bytes.fromhex("BB 01 FF 00 01 15 16 7E")
SGTIN = "3074257bf7194e4000001a85"
SSCC = "3174257bf4499602d2000000"


# --- encoding and decoding -----------------------------------------------------------------------


def test_notification_encoder_reproduces_the_manual_example() -> None:
    assert encode_inventory_notification("30751FEB705C5904E3D50D70", -55, pc=0x3400) == MANUAL_NOTIFICATION


def test_gen2_crc_of_the_manual_example() -> None:
    assert gen2_crc16(bytes.fromhex("3400 30751FEB705C5904E3D50D70")) == 0x3A76


def test_error_and_command_frames_match_the_manual() -> None:
    assert encode_error(0x15) == NO_TAG
    assert encode_frame(0x00, 0x22) == INVENTORY
    assert encode_frame(0x00, 0x07, b"\x01") == bytes.fromhex("BB 00 07 00 01 01 09 7E")


@pytest.mark.parametrize(("epc_hex", "pc"), [("1234", 0x0800), (SGTIN, 0x3000), ("ab" * 62, 0xF800)])
def test_pc_word_holds_the_epc_length_in_words(epc_hex: str, pc: int) -> None:
    assert pc_word(bytes.fromhex(epc_hex)) == pc


@pytest.mark.parametrize("epc_hex", ["", "123", "12345", "xyzw", "ab" * 64])
def test_epc_must_be_whole_words_of_hex(epc_hex: str) -> None:
    with pytest.raises(ValueError, match=r"1\.\.31 words of hex"):
        normalize_epc(epc_hex)


def test_command_decoder_resynchronises_after_noise() -> None:
    decoder = CommandDecoder()
    bad = bytearray(INVENTORY)
    bad[-2] ^= 0xFF
    stream = b"\x00\xbb\x01" + bytes(bad) + INVENTORY + bytes.fromhex("BB 00 03 00 01 00 04 7E")
    assert decoder.feed(stream[:9]) == []
    assert decoder.feed(stream[9:]) == [Command(0x22, b""), Command(0x03, b"\x00")]
    assert decoder.checksum_errors == 1
    assert decoder.garbage_bytes == 3 + len(bad)


# --- the field, without a pty --------------------------------------------------------------------


@dataclass
class Clock:
    now: float = 100.0

    def __call__(self) -> float:
        return self.now


def test_empty_field_answers_no_tag_and_unknown_commands_a_command_error() -> None:
    reader = UhfReaderSimulator()
    assert reader.answer(Command(0x22, b"")) == [NO_TAG]
    assert reader.answer(Command(0x03, b"\x00")) == [encode_error(0x17)]


def test_each_tag_is_reported_once_and_sometimes_twice() -> None:
    reader = UhfReaderSimulator(seed=3)
    reader.place_tags([SGTIN, SSCC.upper()], rssi_dbm=-60)
    reader.duplicate_read_probability = 0.0
    assert reader.answer(Command(0x22, b"")) == [
        encode_inventory_notification(SGTIN, -60),
        encode_inventory_notification(SSCC, -60),
    ]
    reader.duplicate_read_probability = 0.5
    counts = [len(reader.answer(Command(0x22, b""))) for _ in range(200)]
    assert min(counts) == 2
    assert max(counts) == 4
    assert 200 * 2 * 1.3 < sum(counts) < 200 * 2 * 1.7


def test_place_remove_clear_and_timed_departure() -> None:
    clock = Clock()
    reader = UhfReaderSimulator(monotonic=clock)
    reader.place_tags([SGTIN, SSCC])
    reader.remove_tags([SGTIN, "abcd"])
    assert reader.tags_in_field == [SSCC]
    reader.clear()
    assert reader.tags_in_field == []
    reader.place_tags([SGTIN], for_s=2.0)
    clock.now += 1.9
    assert reader.tags_in_field == [SGTIN]
    clock.now += 0.2
    assert reader.tags_in_field == []


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"rssi_dbm": 128}, "signed byte"), ({"for_s": 0.0}, "for_s must be positive")],
)
def test_place_tags_rejects_bad_arguments(kwargs: dict[str, float], message: str) -> None:
    reader = UhfReaderSimulator()
    with pytest.raises(ValueError, match=message):
        reader.place_tags([SGTIN], **kwargs)  # type: ignore[arg-type]
    assert reader.tags_in_field == []


def test_stuck_reader_keeps_reporting_the_field_it_froze_on() -> None:
    reader = UhfReaderSimulator()
    reader.duplicate_read_probability = 0.0
    reader.place_tags([SGTIN])
    reader.faults.stuck = True
    reader.remove_tags([SGTIN])
    reader.place_tags([SSCC])
    assert reader.answer(Command(0x22, b"")) == [encode_inventory_notification(SGTIN)]
    assert reader.tags_in_field == [SSCC]
    reader.faults.stuck = False
    assert reader.answer(Command(0x22, b"")) == [encode_inventory_notification(SSCC)]


# --- over a pty ----------------------------------------------------------------------------------


@pytest.fixture
def reader(tmp_path: Path) -> Iterator[UhfReaderSimulator]:
    simulator = UhfReaderSimulator(link=tmp_path / "ttyUHF", seed=1)
    simulator.duplicate_read_probability = 0.0
    with simulator:
        yield simulator


def exchange(port: serial.Serial, request: bytes, quiet_s: float = 0.2) -> bytes:
    """Send ``request`` and collect what comes back until the line has been quiet for ``quiet_s``."""
    port.reset_input_buffer()
    port.write(request)
    port.timeout = quiet_s
    answer = b""
    while chunk := port.read(4096):
        answer += chunk
    return answer


def test_pyserial_client_runs_inventories_over_the_link(reader: UhfReaderSimulator, tmp_path: Path) -> None:
    assert reader.path == tmp_path / "ttyUHF"
    with serial.Serial(str(reader.path), 115200) as port:
        assert exchange(port, INVENTORY) == NO_TAG
        reader.place_tags([SGTIN, SSCC], rssi_dbm=-40)
        assert exchange(port, INVENTORY) == encode_inventory_notification(SGTIN, -40) + encode_inventory_notification(
            SSCC, -40
        )
        # A command split over two writes, behind line noise, is still understood.
        port.write(b"\x13\x37" + INVENTORY[:3])
        time.sleep(0.05)
        assert exchange(port, INVENTORY[3:]).startswith(encode_inventory_notification(SGTIN, -40))
    assert reader.inventories_served == 3
    assert reader.decoder.garbage_bytes == 2


def test_silent_reader_sends_nothing(reader: UhfReaderSimulator) -> None:
    reader.faults.silent = True
    with serial.Serial(str(reader.path), 115200) as port:
        assert exchange(port, INVENTORY) == b""


def test_corruption_flips_bits_in_the_frames_sent(reader: UhfReaderSimulator) -> None:
    reader.place_tags([SGTIN])
    reader.faults.corrupt_probability = 1.0
    with serial.Serial(str(reader.path), 115200) as port:
        answer = exchange(port, INVENTORY)
    clean = encode_inventory_notification(SGTIN)
    assert len(answer) == len(clean)
    differing = [(a ^ b) for a, b in zip(answer, clean, strict=True) if a != b]
    assert len(differing) == 1
    assert bin(differing[0]).count("1") == 1


def test_unplug_removes_the_link_and_replug_brings_a_new_pty_back(reader: UhfReaderSimulator) -> None:
    link = reader.path
    reader.place_tags([SGTIN])
    with serial.Serial(str(link), 115200) as port:
        reader.unplug()
        assert not link.exists()
        # pyserial's flush raises termios.error on a vanished pty, its reads and writes SerialException.
        with pytest.raises((serial.SerialException, OSError, termios.error)):
            exchange(port, INVENTORY)
    reader.replug()
    assert reader.path == link
    assert link.is_symlink()
    with serial.Serial(str(link), 115200) as port:
        assert exchange(port, INVENTORY) == encode_inventory_notification(SGTIN)


def test_start_twice_is_refused_and_stop_is_idempotent(tmp_path: Path) -> None:
    simulator = UhfReaderSimulator(link=tmp_path / "ttyUHF")
    with pytest.raises(RuntimeError, match="not started"):
        _ = simulator.path
    simulator.start()
    try:
        with pytest.raises(RuntimeError, match="already started"):
            simulator.start()
    finally:
        simulator.stop()
        simulator.stop()
    assert not (tmp_path / "ttyUHF").exists()
