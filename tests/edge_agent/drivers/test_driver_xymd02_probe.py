"""ModbusProbeBus: configuration checks, value conversion, error handling, and the simulator on a pty."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial

from coldchain.messages import Quality, Quantity, Reading
from edge_agent.drivers import Driver, DriverKind
from edge_agent.drivers.xymd02_probe import ModbusProbeBus, ProbeSpec
from firmware_sims import xymd02
from firmware_sims.modbus_rtu import encode_exception_response, encode_registers_response
from firmware_sims.probe import ProbeBusSimulator

WALL_CLOCK_S = 1_767_225_600.1234  # 2026-01-01T00:00:00.1234Z


def answering(registers: dict[int, list[int]]) -> Callable[[bytes], bytes]:
    """A bus where each listed address answers its registers and every other address is silent."""

    def respond(request: bytes) -> bytes:
        address = request[0]
        if address not in registers:
            return b""
        return encode_registers_response(address, 4, registers[address])

    return respond


ONE_PROBE = (ProbeSpec("probe-1", 1),)


def scripted_bus(make_factory, clock, respond, probes=ONE_PROBE, **kwargs):
    factory = make_factory(respond, kwargs.pop("failures", 0))
    bus = ModbusProbeBus(
        "/dev/ttyUSB0",
        9600,
        list(probes),
        wall_clock=lambda: WALL_CLOCK_S,
        serial_factory=factory,
        monotonic=clock,
        **kwargs,
    )
    return bus, factory


def values(readings: list[Reading]) -> list[tuple[str, Quantity, float, Quality]]:
    return [(r.sensor_id, r.quantity, r.value, r.quality) for r in readings]


# --- configuration -------------------------------------------------------------------------------


def test_driver_kind_and_protocol(make_factory, clock) -> None:
    bus, _ = scripted_bus(make_factory, clock, answering({}))
    assert DriverKind("modbus_rtu_probe") is DriverKind.MODBUS_RTU_PROBE
    assert isinstance(bus, Driver)


@pytest.mark.parametrize("address", [0, 248, 255, -3])
def test_probe_address_must_be_a_slave_address(address: int) -> None:
    with pytest.raises(ValueError, match=r"slave address must be 1\.\.247"):
        ProbeSpec("probe-1", address)


@pytest.mark.parametrize("sensor_id", ["", "-leading-dash", "has space", "x" * 65])
def test_probe_sensor_id_must_fit_the_wire_contract(sensor_id: str) -> None:
    with pytest.raises(ValueError, match="not a valid sensor id"):
        ProbeSpec(sensor_id, 1)


@pytest.mark.parametrize(
    ("probes", "message"),
    [
        ([], "at least one probe"),
        ([ProbeSpec("a", 1), ProbeSpec("b", 1)], "own slave address; repeated: 1"),
        ([ProbeSpec("a", 1), ProbeSpec("a", 2)], "own sensor id; repeated: 'a'"),
    ],
)
def test_bus_rejects_a_bad_probe_list(probes: list[ProbeSpec], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ModbusProbeBus("/dev/ttyUSB0", 9600, probes)


@pytest.mark.parametrize(("option", "value"), [("response_timeout_s", 0.0), ("retries", -1)])
def test_bus_rejects_bad_timing_options(option: str, value: float) -> None:
    with pytest.raises(ValueError, match=option):
        ModbusProbeBus("/dev/ttyUSB0", 9600, [ProbeSpec("a", 1)], **{option: value})


def test_construction_does_not_touch_the_port(make_factory, clock) -> None:
    _, factory = scripted_bus(make_factory, clock, answering({}))
    assert factory.attempts == 0


# --- conversion and quality -----------------------------------------------------------------------


def test_manual_example_becomes_two_good_readings_stamped_by_the_wall_clock(make_factory, clock) -> None:
    bus, factory = scripted_bus(make_factory, clock, answering({1: [0x0131, 0x0222]}))
    readings = bus.poll()
    assert factory.opened[0].writes == [bytes.fromhex("01 04 00 01 00 02 20 0B")]
    assert readings == [
        Reading("probe-1", Quantity.TEMPERATURE, 1_767_225_600_123, 30.5, Quality.GOOD),
        Reading("probe-1", Quantity.HUMIDITY, 1_767_225_600_123, 54.6, Quality.GOOD),
    ]


@pytest.mark.parametrize(
    ("registers", "expected"),
    [
        ([0xFF47, 850], [(Quantity.TEMPERATURE, -18.5, Quality.GOOD), (Quantity.HUMIDITY, 85.0, Quality.GOOD)]),
        ([0xFE70, 0], [(Quantity.TEMPERATURE, -40.0, Quality.SUSPECT), (Quantity.HUMIDITY, 0.0, Quality.SUSPECT)]),
        ([1250, 1000], [(Quantity.TEMPERATURE, 125.0, Quality.SUSPECT), (Quantity.HUMIDITY, 100.0, Quality.SUSPECT)]),
        ([0xFE6F, 1], [(Quantity.TEMPERATURE, -40.1, Quality.BAD), (Quantity.HUMIDITY, 0.1, Quality.GOOD)]),
        ([1300, 999], [(Quantity.TEMPERATURE, 130.0, Quality.BAD), (Quantity.HUMIDITY, 99.9, Quality.GOOD)]),
    ],
)
def test_values_at_the_sensor_limits_are_suspect_and_beyond_them_bad(
    make_factory, clock, registers: list[int], expected: list[tuple[Quantity, float, Quality]]
) -> None:
    bus, _ = scripted_bus(make_factory, clock, answering({1: registers}))
    assert values(bus.poll()) == [("probe-1", *reading) for reading in expected]
    assert bus.counters["out_of_range"] == 0


def test_values_no_reading_may_carry_are_dropped_and_counted(make_factory, clock) -> None:
    # 0x8000 is -3276.8 °C, 1005 is 100.5 %RH: neither fits the wire contract's ranges.
    bus, _ = scripted_bus(make_factory, clock, answering({1: [0x8000, 1005]}))
    assert bus.poll() == []
    assert bus.counters["out_of_range"] == 2


# --- protocol and I/O errors ------------------------------------------------------------------------


def test_corrupted_answer_is_retried_once(make_factory, clock) -> None:
    answers = iter(
        [encode_registers_response(1, 4, [40, 850])[:-1] + b"\x00", encode_registers_response(1, 4, [41, 850])]
    )
    bus, factory = scripted_bus(make_factory, clock, lambda _request: next(answers))
    assert values(bus.poll())[0] == ("probe-1", Quantity.TEMPERATURE, 4.1, Quality.GOOD)
    assert len(factory.opened[0].writes) == 2
    # The corrupted frame's tail posed as the start of a long frame until the response timeout.
    assert (bus.counters["crc"], bus.counters["timeout"], bus.counters["short_frame"]) == (1, 1, 1)


def test_silent_probe_times_out_after_the_retries_and_the_others_still_read(make_factory, clock) -> None:
    probes = [ProbeSpec("a", 1), ProbeSpec("ghost", 9), ProbeSpec("b", 2)]
    bus, _ = scripted_bus(
        make_factory, clock, answering({1: [40, 850], 2: [50, 800]}), probes=probes, retries=2, response_timeout_s=0.2
    )
    start = clock.now
    readings = bus.poll()
    assert {r.sensor_id for r in readings} == {"a", "b"}
    assert bus.counters["timeout"] == 3
    assert bus.probe_counters["ghost"]["timeout"] == 3
    assert bus.probe_counters["a"]["timeout"] == 0
    assert clock.now - start == pytest.approx(3 * 0.2, abs=0.05)


def test_exception_response_is_counted_and_not_retried(make_factory, clock) -> None:
    bus, factory = scripted_bus(
        make_factory, clock, lambda request: encode_exception_response(request[0], 4, 0x02), retries=3
    )
    assert bus.poll() == []
    assert len(factory.opened[0].writes) == 1
    assert bus.counters["exception_response"] == 1
    assert bus.probe_counters["probe-1"]["exception_response"] == 1


def test_answer_from_another_slave_is_not_taken_for_the_one_asked(make_factory, clock) -> None:
    def respond(request: bytes) -> bytes:
        return encode_registers_response(7, 4, [999, 999]) + encode_registers_response(request[0], 4, [40, 850])

    bus, _ = scripted_bus(make_factory, clock, respond)
    assert values(bus.poll())[0] == ("probe-1", Quantity.TEMPERATURE, 4.0, Quality.GOOD)
    assert bus.counters["unexpected_address"] == 1


def test_answer_with_the_wrong_register_count_is_counted(make_factory, clock) -> None:
    bus, _ = scripted_bus(make_factory, clock, answering({1: [40]}))
    assert bus.poll() == []
    assert bus.counters["unexpected_response"] == 1


def test_port_that_cannot_be_opened_yields_nothing_until_it_can(make_factory, clock) -> None:
    bus, factory = scripted_bus(make_factory, clock, answering({1: [40, 850]}), failures=3, open_backoff_s=1.0)
    results = []
    for _ in range(12):
        results.append(len(bus.poll()))
        clock.sleep(1.0)
    # Backoff 1 s, 2 s, 4 s after the three failures: readings from the poll at t = 7 s on.
    assert results == [0] * 7 + [2] * 5
    assert factory.attempts == 4
    assert bus.counters["serial_error"] == 3


def test_device_vanishing_mid_poll_skips_the_rest_and_recovers(make_factory, clock) -> None:
    probes = [ProbeSpec("a", 1), ProbeSpec("b", 2)]
    bus, factory = scripted_bus(make_factory, clock, answering({1: [40, 850], 2: [50, 800]}), probes=probes)
    assert len(bus.poll()) == 4
    factory.opened[0].fail_on = "write"
    assert bus.poll() == []
    assert len(factory.opened[0].writes) == 2, "no request was tried after the port failed"
    clock.sleep(5.0)
    assert len(bus.poll()) == 4
    assert bus.counters["serial_error"] == 1
    assert bus.counters["reopen"] == 1
    assert bus.counters["timeout"] == 0


# --- against the simulator on a pty -------------------------------------------------------------------


@pytest.fixture
def two_probe_sim() -> Iterator[ProbeBusSimulator]:
    specs = [
        xymd02.ProbeSpec(address=1, set_point_c=4.0, noise_c=0.05, seed=1),
        xymd02.ProbeSpec(address=2, set_point_c=-18.0, noise_c=0.05, seed=2),
    ]
    with ProbeBusSimulator(specs) as sim:
        yield sim


def by_sensor(readings: list[Reading]) -> dict[tuple[str, Quantity], float]:
    return {(r.sensor_id, r.quantity): r.value for r in readings}


def test_two_probes_on_one_bus_read_near_their_set_points(two_probe_sim: ProbeBusSimulator) -> None:
    bus = ModbusProbeBus(str(two_probe_sim.path), 9600, [ProbeSpec("chiller", 1), ProbeSpec("freezer", 2)])
    try:
        for _ in range(3):
            readings = bus.poll()
            got = by_sensor(readings)
            assert got[("chiller", Quantity.TEMPERATURE)] == pytest.approx(4.0, abs=0.5)
            assert got[("freezer", Quantity.TEMPERATURE)] == pytest.approx(-18.0, abs=0.5)
            assert got[("chiller", Quantity.HUMIDITY)] == pytest.approx(85.0, abs=2.0)
            assert all(r.quality is Quality.GOOD for r in readings)
            assert len(readings) == 4
    finally:
        bus.close()
    assert set(bus.counters.values()) == {0}


def test_missing_probe_times_out_and_the_others_still_read(two_probe_sim: ProbeBusSimulator) -> None:
    probes = [ProbeSpec("chiller", 1), ProbeSpec("nobody", 42), ProbeSpec("freezer", 2)]
    bus = ModbusProbeBus(str(two_probe_sim.path), 9600, probes, response_timeout_s=0.1, retries=1)
    try:
        readings = bus.poll()
    finally:
        bus.close()
    assert {r.sensor_id for r in readings} == {"chiller", "freezer"}
    assert bus.counters["timeout"] == 2
    assert bus.probe_counters["nobody"]["timeout"] == 2
    assert bus.probe_counters["freezer"]["timeout"] == 0


def test_port_that_fails_to_open_a_few_times_is_reopened(two_probe_sim: ProbeBusSimulator) -> None:
    failures = 3

    def flaky_serial(port: str, baudrate: int) -> serial.Serial:
        nonlocal failures
        if failures:
            failures -= 1
            raise serial.SerialException(f"could not open port {port}: [Errno 2] No such file or directory")
        return serial.Serial(port, baudrate)

    bus = ModbusProbeBus(
        str(two_probe_sim.path), 9600, [ProbeSpec("chiller", 1)], serial_factory=flaky_serial, open_backoff_s=0.0
    )
    try:
        assert [len(bus.poll()) for _ in range(5)] == [0, 0, 0, 2, 2]
    finally:
        bus.close()
    assert bus.counters["serial_error"] == 3


def test_simulator_restarted_on_the_same_link_is_reopened(tmp_path: Path) -> None:
    link = tmp_path / "ttyRS485"
    specs = [xymd02.ProbeSpec(address=1, set_point_c=4.0, noise_c=0.05, seed=0)]
    bus = ModbusProbeBus(str(link), 9600, [ProbeSpec("chiller", 1)], open_backoff_s=0.05, response_timeout_s=0.1)
    try:
        with ProbeBusSimulator(specs, link=link):
            assert len(bus.poll()) == 2
        # Unplugged: the link is gone and the old pty is dead; polls return nothing, never raise.
        for _ in range(3):
            assert bus.poll() == []
            time.sleep(0.06)
        with ProbeBusSimulator(specs, link=link):
            deadline = time.monotonic() + 5.0
            while not (readings := bus.poll()) and time.monotonic() < deadline:
                time.sleep(0.06)
            assert len(readings) == 2
    finally:
        bus.close()
    assert bus.counters["serial_error"] >= 1
    assert bus.counters["reopen"] == 1
