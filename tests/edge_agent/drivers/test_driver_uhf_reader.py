"""UhfReader: configuration, reads, debounce and handover on a manual clock, and the simulator on a pty.

The scripted tests answer with the simulator's own ``answer`` (its encoder, not the driver's)
behind the ``ScriptedPort`` of conftest.py, so time only moves when the test or a read wait says.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import msgspec
import pytest

from coldchain.messages import TagAction, TagRead
from edge_agent.drivers import Driver, DriverKind
from edge_agent.drivers.uhf_m100 import (
    DEFAULT_RESPONSE_TIMEOUT_S,
    INVENTORY_COMMAND,
    INVENTORY_QUIET_S,
    ErrorKind,
    UhfReader,
)
from firmware_sims import uhf_reader as sim
from firmware_sims.uhf_reader import CommandDecoder, UhfReaderSimulator

WALL_CLOCK_S = 1_767_225_600.1234  # 2026-01-01T00:00:00.1234Z
SGTIN = "3074257bf7194e4000001a85"
SSCC = "3174257bf4499602d2000000"
GIAI = "3474257bf40000000000162e"
FACTORY_EPC = "e2000017270202671280ee17"  # no GS1 header: kept as raw hex


def simulated(simulator: UhfReaderSimulator) -> Callable[[bytes], bytes]:
    """A port answering every command the way ``simulator`` would, without a pty."""
    decoder = CommandDecoder()

    def respond(request: bytes) -> bytes:
        return b"".join(frame for command in decoder.feed(request) for frame in simulator.answer(command))

    return respond


@pytest.fixture
def field(clock) -> UhfReaderSimulator:
    simulator = UhfReaderSimulator(monotonic=clock)
    simulator.duplicate_read_probability = 0.0
    return simulator


def scripted_reader(make_factory, clock, respond, **kwargs):
    factory = make_factory(respond, kwargs.pop("failures", 0))
    reader = UhfReader(
        "/dev/ttyUSB0",
        "dock-reader",
        wall_clock=lambda: WALL_CLOCK_S,
        monotonic=clock,
        serial_factory=factory,
        **kwargs,
    )
    return reader, factory


def epcs(reads: list[TagRead]) -> list[str]:
    return [read.epc_hex for read in reads]


# --- configuration -------------------------------------------------------------------------------


def test_driver_kind_and_protocol(make_factory, clock, field) -> None:
    reader, _ = scripted_reader(make_factory, clock, simulated(field))
    assert DriverKind("uhf_m100") is DriverKind.UHF_M100
    assert isinstance(reader, Driver)
    assert set(reader.counters) == {kind.value for kind in ErrorKind}
    assert not any(reader.counters.values())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"reader_id": "has space"}, "not a valid sensor id"),
        ({"debounce_s": -1.0}, "debounce_s must be 0 or more"),
        ({"debounce_s": math.nan}, "debounce_s must be 0 or more"),
        ({"response_timeout_s": 0.0}, "response_timeout_s must be positive"),
    ],
)
def test_reader_rejects_bad_configuration(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"port": "/dev/ttyUSB0", "reader_id": "dock-reader", **kwargs}
    with pytest.raises(ValueError, match=message):
        UhfReader(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize("window_s", [0.0, -1.0, math.inf])
def test_handover_window_must_be_positive_and_finite(make_factory, clock, field, window_s: float) -> None:
    reader, _ = scripted_reader(make_factory, clock, simulated(field))
    with pytest.raises(ValueError, match="window_s must be positive"):
        reader.arm_handover(TagAction.PICKUP, window_s)


def test_construction_does_not_touch_the_port(make_factory, clock, field) -> None:
    _, factory = scripted_reader(make_factory, clock, simulated(field))
    assert factory.attempts == 0


# --- reads ---------------------------------------------------------------------------------------


def test_tags_in_the_field_become_reads_with_decoded_uris(make_factory, clock, field) -> None:
    field.place_tags([SGTIN, SSCC, FACTORY_EPC])
    field.place_tags([GIAI], rssi_dbm=-71)
    reader, factory = scripted_reader(make_factory, clock, simulated(field))
    reads = reader.poll()
    assert factory.opened[0].writes == [INVENTORY_COMMAND]
    assert reads == [
        TagRead("dock-reader", SGTIN, "urn:epc:id:sgtin:0614141.812345.6789", 1_767_225_600_123, -55.0),
        TagRead("dock-reader", SSCC, "urn:epc:id:sscc:0614141.1234567890", 1_767_225_600_123, -55.0),
        TagRead("dock-reader", FACTORY_EPC, None, 1_767_225_600_123, -55.0),
        TagRead("dock-reader", GIAI, "urn:epc:id:giai:0614141.5678", 1_767_225_600_123, -71.0),
    ]
    # Every read passes the wire contract's own validation.
    for read in reads:
        assert msgspec.json.decode(msgspec.json.encode(read), type=TagRead) == read
    assert not any(reader.counters.values())


def test_empty_field_answers_at_once_with_no_reads_and_no_error(make_factory, clock, field) -> None:
    reader, _ = scripted_reader(make_factory, clock, simulated(field))
    start = clock.now
    assert reader.poll() == []
    assert clock.now == start  # the "no tag" error ends the exchange: no waiting
    assert not any(reader.counters.values())


def test_inventory_ends_after_a_quiet_gap_not_the_full_timeout(make_factory, clock, field) -> None:
    field.place_tags([SGTIN])
    reader, _ = scripted_reader(make_factory, clock, simulated(field))
    start = clock.now
    assert epcs(reader.poll()) == [SGTIN]
    assert clock.now - start == pytest.approx(INVENTORY_QUIET_S)


def test_tag_read_twice_in_one_inventory_is_one_read_at_its_strongest(make_factory, clock) -> None:
    def respond(_request: bytes) -> bytes:
        return (
            sim.encode_inventory_notification(SGTIN, -60)
            + sim.encode_inventory_notification(SSCC, -50)
            + sim.encode_inventory_notification(SGTIN, -48)
        )

    reader, _ = scripted_reader(make_factory, clock, respond)
    assert [(read.epc_hex, read.rssi_dbm) for read in reader.poll()] == [(SGTIN, -48.0), (SSCC, -50.0)]


def test_rssi_beyond_the_contract_ceiling_is_dropped_not_the_read(make_factory, clock) -> None:
    reader, _ = scripted_reader(make_factory, clock, lambda _request: sim.encode_inventory_notification(SGTIN, 100))
    (read,) = reader.poll()
    assert read.rssi_dbm is None


def test_error_response_other_than_no_tag_is_counted(make_factory, clock) -> None:
    reader, _ = scripted_reader(make_factory, clock, lambda _request: sim.encode_error(0x20))
    assert reader.poll() == []
    assert reader.counters[ErrorKind.ERROR_RESPONSE] == 1
    assert reader.counters[ErrorKind.TIMEOUT] == 0


def test_malformed_and_unexpected_frames_are_counted_and_the_good_read_kept(make_factory, clock) -> None:
    def respond(_request: bytes) -> bytes:
        return (
            sim.encode_frame(sim.TYPE_NOTIFICATION, sim.SINGLE_INVENTORY, bytes.fromhex("C9 3800") + bytes(14))
            + sim.encode_frame(sim.TYPE_RESPONSE, 0x28, b"\x00")
            + sim.encode_inventory_notification(SGTIN)
        )

    reader, _ = scripted_reader(make_factory, clock, respond)
    assert epcs(reader.poll()) == [SGTIN]
    assert reader.counters[ErrorKind.MALFORMED] == 1
    assert reader.counters[ErrorKind.UNEXPECTED_FRAME] == 1


def test_silent_reader_times_out_and_polls_return_nothing(make_factory, clock) -> None:
    reader, _ = scripted_reader(make_factory, clock, lambda _request: b"")
    start = clock.now
    assert reader.poll() == []
    assert clock.now - start == pytest.approx(DEFAULT_RESPONSE_TIMEOUT_S)
    assert reader.poll() == []
    assert reader.counters[ErrorKind.TIMEOUT] == 2


def test_partial_frame_left_at_the_end_is_counted_as_garbage(make_factory, clock) -> None:
    notification = sim.encode_inventory_notification(SGTIN)
    reader, _ = scripted_reader(make_factory, clock, lambda _request: notification + notification[:9])
    assert epcs(reader.poll()) == [SGTIN]
    assert reader.counters[ErrorKind.GARBAGE_BYTES] == 9


def test_port_that_cannot_be_opened_yields_nothing_until_it_can(make_factory, clock, field) -> None:
    field.place_tags([SGTIN])
    reader, factory = scripted_reader(make_factory, clock, simulated(field), failures=1, open_backoff_s=1.0)
    assert reader.poll() == []
    assert reader.counters[ErrorKind.SERIAL_ERROR] == 1
    clock.sleep(1.5)
    assert epcs(reader.poll()) == [SGTIN]
    assert factory.attempts == 2


def test_device_failing_mid_exchange_returns_nothing_and_reopens(make_factory, clock, field) -> None:
    field.place_tags([SGTIN])
    reader, factory = scripted_reader(make_factory, clock, simulated(field), open_backoff_s=1.0, debounce_s=0.0)
    assert epcs(reader.poll()) == [SGTIN]
    factory.opened[0].fail_on = "read"
    assert reader.poll() == []
    assert reader.counters[ErrorKind.SERIAL_ERROR] == 1
    clock.sleep(1.5)
    assert epcs(reader.poll()) == [SGTIN]
    assert reader.counters[ErrorKind.REOPEN] == 1


# --- debounce and custody ------------------------------------------------------------------------


def poll_every(reader: UhfReader, clock, seconds: float, step_s: float = 1.0) -> list[TagRead]:
    """Poll once per ``step_s`` for ``seconds`` of the manual clock; all reads in order."""
    reads: list[TagRead] = []
    end = clock.now + seconds
    while clock.now < end:
        reads += reader.poll()
        clock.sleep(step_s)
    return reads


def test_tag_sitting_in_the_field_is_reported_once(make_factory, clock, field) -> None:
    field.place_tags([SGTIN])
    reader, _ = scripted_reader(make_factory, clock, simulated(field), debounce_s=5.0)
    assert epcs(poll_every(reader, clock, 600)) == [SGTIN]


def test_tag_absent_for_less_than_the_debounce_is_not_reported_again(make_factory, clock, field) -> None:
    field.place_tags([SGTIN])
    reader, _ = scripted_reader(make_factory, clock, simulated(field), debounce_s=5.0)
    assert epcs(reader.poll()) == [SGTIN]
    field.clear()
    poll_every(reader, clock, 4.0)
    field.place_tags([SGTIN])
    assert reader.poll() == []


def test_tag_absent_for_longer_than_the_debounce_is_reported_again(make_factory, clock, field) -> None:
    field.place_tags([SGTIN, SSCC])
    reader, _ = scripted_reader(make_factory, clock, simulated(field), debounce_s=5.0)
    assert epcs(reader.poll()) == [SGTIN, SSCC]
    field.remove_tags([SGTIN])
    assert poll_every(reader, clock, 6.0) == []
    field.place_tags([SGTIN])
    assert epcs(reader.poll()) == [SGTIN]


def test_zero_debounce_reports_every_sighting(make_factory, clock, field) -> None:
    field.place_tags([SGTIN])
    reader, _ = scripted_reader(make_factory, clock, simulated(field), debounce_s=0.0)
    assert epcs(poll_every(reader, clock, 3.0)) == [SGTIN] * 3


def test_custody_mode_sets_the_action_of_reads(make_factory, clock, field) -> None:
    field.place_tags([SGTIN])
    reader, _ = scripted_reader(make_factory, clock, simulated(field))
    reader.custody_mode = TagAction.DELIVERY
    assert [read.action for read in reader.poll()] == [TagAction.DELIVERY]


def test_handover_reports_a_debounced_case_once_with_its_action(make_factory, clock, field) -> None:
    field.place_tags([SGTIN])
    reader, _ = scripted_reader(make_factory, clock, simulated(field), debounce_s=5.0)
    assert [read.action for read in reader.poll()] == [TagAction.OBSERVE]
    clock.sleep(1.0)
    # The courier presses "pickup" and holds the same case to the antenna.
    reader.arm_handover(TagAction.PICKUP, 10.0)
    assert [(read.epc_hex, read.action) for read in reader.poll()] == [(SGTIN, TagAction.PICKUP)]
    # Once only: the case still in the field is debounced again.
    assert poll_every(reader, clock, 5.0) == []
    # A second case shown within the window is a pickup too.
    field.place_tags([SSCC])
    assert [(read.epc_hex, read.action) for read in reader.poll()] == [(SSCC, TagAction.PICKUP)]


def test_handover_window_expires(make_factory, clock, field) -> None:
    reader, _ = scripted_reader(make_factory, clock, simulated(field), debounce_s=5.0)
    reader.arm_handover(TagAction.DELIVERY, 3.0)
    clock.sleep(3.5)
    field.place_tags([SGTIN])
    assert [read.action for read in reader.poll()] == [TagAction.OBSERVE]


def test_arming_again_replaces_the_window(make_factory, clock, field) -> None:
    field.place_tags([SGTIN])
    reader, _ = scripted_reader(make_factory, clock, simulated(field), debounce_s=5.0)
    reader.arm_handover(TagAction.PICKUP, 10.0)
    assert [read.action for read in reader.poll()] == [TagAction.PICKUP]
    reader.arm_handover(TagAction.DELIVERY, 10.0)
    assert [read.action for read in reader.poll()] == [TagAction.DELIVERY]


# --- the simulator on a pty ----------------------------------------------------------------------


@pytest.fixture
def reader_sim(tmp_path: Path) -> Iterator[UhfReaderSimulator]:
    simulator = UhfReaderSimulator(link=tmp_path / "ttyUHF", seed=7)
    simulator.duplicate_read_probability = 0.5
    with simulator:
        yield simulator


def test_tags_placed_and_removed_on_a_real_pty_are_debounced(reader_sim: UhfReaderSimulator) -> None:
    reader = UhfReader(str(reader_sim.path), "dock-reader", debounce_s=1.0)
    try:
        assert reader.poll() == []
        reader_sim.place_tags([SGTIN, SSCC])
        reads = reader.poll()
        assert sorted(epcs(reads)) == sorted([SGTIN, SSCC])
        assert {read.epc_uri for read in reads} == {
            "urn:epc:id:sgtin:0614141.812345.6789",
            "urn:epc:id:sscc:0614141.1234567890",
        }
        assert reader.poll() == []  # still in the field: debounced
        reader_sim.remove_tags([SGTIN])
        # Polled on: SSCC keeps being seen within the debounce (never reported), SGTIN is absent.
        until = time.monotonic() + 1.3
        while time.monotonic() < until:
            assert reader.poll() == []
            time.sleep(0.1)
        reader_sim.place_tags([SGTIN])
        assert epcs(reader.poll()) == [SGTIN]  # absent for longer than the debounce
        assert not any(reader.counters.values())
    finally:
        reader.close()


def test_corrupted_frames_are_counted_and_survived(reader_sim: UhfReaderSimulator) -> None:
    reader_sim.place_tags([SGTIN, SSCC, GIAI])
    reader_sim.faults.corrupt_probability = 0.3
    reader = UhfReader(str(reader_sim.path), "dock-reader", debounce_s=0.0)
    try:
        seen: list[str] = []
        for _ in range(30):
            seen += epcs(reader.poll())
        counters = reader.counters
        assert counters[ErrorKind.CHECKSUM] + counters[ErrorKind.BAD_END] > 0
        assert counters[ErrorKind.GARBAGE_BYTES] > 0
        # Most inventories still read every tag, and nothing read is a tag that is not there.
        assert set(seen) == {SGTIN, SSCC, GIAI}
        assert len(seen) > 30
    finally:
        reader.close()


def test_silent_reader_on_a_pty_times_out(reader_sim: UhfReaderSimulator) -> None:
    reader_sim.place_tags([SGTIN])
    reader_sim.faults.silent = True
    reader = UhfReader(str(reader_sim.path), "dock-reader", response_timeout_s=0.2)
    try:
        started = time.monotonic()
        assert reader.poll() == []
        assert time.monotonic() - started >= 0.2
        assert reader.counters[ErrorKind.TIMEOUT] == 1
        reader_sim.faults.silent = False
        assert epcs(reader.poll()) == [SGTIN]
    finally:
        reader.close()


def test_unplugged_reader_is_reopened_on_its_link_without_raising(reader_sim: UhfReaderSimulator) -> None:
    reader_sim.place_tags([SGTIN])
    link = reader_sim.path
    reader = UhfReader(str(link), "dock-reader", debounce_s=0.0, open_backoff_s=0.05)
    try:
        assert epcs(reader.poll()) == [SGTIN]
        reader_sim.unplug()
        assert not link.exists()
        for _ in range(3):
            assert reader.poll() == []
        assert reader.counters[ErrorKind.SERIAL_ERROR] >= 1
        reader_sim.replug()
        assert reader_sim.path == link
        deadline = time.monotonic() + 5.0
        reads: list[TagRead] = []
        while not reads and time.monotonic() < deadline:
            reads = reader.poll()
            time.sleep(0.05)
        assert epcs(reads) == [SGTIN]
        assert reader.counters[ErrorKind.REOPEN] >= 1
    finally:
        reader.close()
