"""Scenario files and the player: validation, the journey's air, handovers and route, over real ptys.

Time-sensitive checks drive the player with an injected clock, so they do not depend on how fast
the machine runs; one check plays a journey on the real clock at a high speed.
"""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import serial

from edge_agent.epc import decode_epc
from firmware_sims.modbus_rtu import crc16, encode_read_request
from firmware_sims.scenario import (
    Handover,
    JourneyAir,
    Scenario,
    ScenarioError,
    ScenarioPlayer,
    encode_sgtin96,
    handovers,
    journey_position,
    load_scenario,
    parse_scenario,
)
from firmware_sims.uhf_reader import encode_inventory_notification

REPO = Path(__file__).resolve().parents[2]
SCENARIOS = REPO / "scenarios"
BERRIES = SCENARIOS / "berries-farm-to-buyer.toml"
REEFER_FAILURE = SCENARIOS / "reefer-failure.toml"
CASES = ["3074257bf7194e40000003e9", "3074257bf7194e40000003ea", "3074257bf7194e40000003eb"]
INVENTORY = bytes.fromhex("BB 00 22 00 00 22 7E")

MINIMAL = """
name = "minimal"
[[nodes]]
id = "room"
kind = "cold_store"
set_point_c = 4.0
ambient_c = 25.0
location = [10.8, 106.6]
[[nodes]]
id = "van"
kind = "reefer_truck"
set_point_c = 4.0
ambient_c = 30.0
[[legs]]
node = "room"
duration_s = 600
door_openings = [[100, 60]]
pickup = ["3074257bf7194e4000001a85"]
[[legs]]
node = "van"
duration_s = 600
route = [{ lat = 10.8, lon = 106.6 }, { lat = 10.81, lon = 106.6 }]
"""


# --- files and validation ------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SCENARIOS.glob("*.toml")), ids=lambda path: path.stem)
def test_every_scenario_file_loads_and_reads_real_epcs(path: Path) -> None:
    scenario = load_scenario(path)
    assert scenario.name == path.stem
    epcs = {epc for leg in scenario.legs for epc in (*leg.pickup, *leg.delivery)}
    assert epcs
    # The agent's own decoder (not the simulator's) agrees these are GS1 SGTIN-96 / SSCC-96 EPCs.
    assert all((decode_epc(epc) or "").startswith(("urn:epc:id:sgtin:", "urn:epc:id:sscc:")) for epc in epcs)


def test_the_three_scenarios_of_the_brief_are_there() -> None:
    berries = load_scenario(BERRIES)
    assert [berries.node(i).kind for i in range(len(berries.legs))] == [
        "packhouse",
        "cold_store",
        "reefer_truck",
        "courier_box",
    ]
    assert any(leg.door_openings for leg in berries.legs)
    failure = load_scenario(REEFER_FAILURE)
    assert [leg.cooling_failures for leg in failure.legs if leg.cooling_failures] == [[(5400.0, 2400.0)]]
    normal = load_scenario(SCENARIOS / "normal-day.toml")
    assert normal.total_s == 24 * 3600
    assert not any(leg.cooling_failures for leg in normal.legs)


def test_sgtin96_encoder_reproduces_the_tag_data_standard_example() -> None:
    # urn:epc:tag:sgtin-96:3.0614141.812345.6789, GS1 EPC Tag Data Standard.
    assert encode_sgtin96("0614141", "812345", 6789, filter_value=3) == "3074257bf7194e4000001a85"
    assert decode_epc(encode_sgtin96("061414123", "4567", 42)) == "urn:epc:id:sgtin:061414123.4567.42"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("0614141", "81234", 1), "13 digits together"),
        (("06141", "81234567", 1), "6..12 digits"),
        (("0614141", "812345", 1 << 38), r"0\.\.2\^38-1"),
        (("061414a", "812345", 1), "decimal digits"),
    ],
)
def test_sgtin96_encoder_refuses_what_does_not_fit(args: tuple[str, str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        encode_sgtin96(*args)


def test_the_minimal_scenario_is_valid_and_has_the_defaults() -> None:
    scenario = parse_scenario(MINIMAL)
    assert scenario.speed == 60.0
    assert scenario.read_window_s == 120.0
    assert scenario.leg_starts_s == [0.0, 600.0]
    assert scenario.total_s == 1200.0
    assert [scenario.leg_at(t) for t in (0, 599.9, 600, 5000)] == [0, 0, 1, 1]


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name = "minimal"', 'name = "minimal"\ncolour = "blue"', "unknown field `colour`"),
        ("duration_s = 600\ndoor", "duration_s = -5\ndoor", "at `$.legs[0].duration_s`"),
        ('kind = "cold_store"', 'kind = "fridge"', "at `$.nodes[0].kind`"),
        ("location = [10.8, 106.6]", "location = [100.0, 106.6]", "at `$.nodes[0].location[0]`"),
        ('pickup = ["3074', 'pickup = ["9974', "at `$.legs[0].pickup[0]`"),
        ('node = "room"', 'node = "attic"', "legs[0].node: unknown node 'attic'"),
        ("[[100, 60]]", "[[580, 60]]", "door_openings[0] = [580, 60] ends after duration_s 600 - at `$.legs[0]`"),
        ("lon = 106.6 }, { lat = 10.81", "lon = 106.6 }, { lat = 10.99", "route takes 1268 s to drive"),
        ('id = "van"', 'id = "room"', "nodes: ids must be unique, repeated: room"),
        ("location = [10.8, 106.6]", "", "legs[0]: node room has no location"),
        (
            "duration_s = 600\ndoor_openings = [[100, 60]]",
            "duration_s = 600\nroute = [{ lat = 1, lon = 2 }]",
            "legs[0].route: room is a cold_store, which does not move",
        ),
        ('name = "minimal"', 'name = "minimal"\nstart_utc = 2026-03-01T05:00:00', "at `$.start_utc`"),
        ('name = "minimal"', 'name = "minimal"\nspeed = 0', "at `$.speed`"),
        ('name = "minimal"', 'name = "minimal', "not valid TOML"),
    ],
)
def test_bad_scenarios_are_refused_naming_the_field(old: str, new: str, message: str) -> None:
    assert old in MINIMAL
    with pytest.raises(ScenarioError) as caught:
        parse_scenario(MINIMAL.replace(old, new, 1), origin="bad.toml")
    assert str(caught.value).startswith("bad.toml: ")
    assert message in str(caught.value)


def test_a_missing_required_field_is_named(tmp_path: Path) -> None:
    path = tmp_path / "no-legs.toml"
    path.write_text(MINIMAL.split("[[legs]]", maxsplit=1)[0])
    with pytest.raises(ScenarioError, match=r"no-legs\.toml: Object missing required field `legs`"):
        load_scenario(path)


# --- the journey as pure functions ---------------------------------------------------------------


def test_handovers_open_and_close_their_legs_within_the_read_window() -> None:
    scenario = load_scenario(BERRIES)
    found = handovers(scenario)
    assert found[:2] == [
        Handover(0, "pickup", tuple(CASES), 0.0, 120.0),
        Handover(1, "pickup", tuple(CASES), 1800.0, 1920.0),
    ]
    assert found[-1] == Handover(3, "delivery", (CASES[0],), 25_080.0, 25_200.0)
    short = parse_scenario(MINIMAL.replace("duration_s = 600\ndoor_openings = [[100, 60]]", "duration_s = 100", 1))
    assert handovers(short) == [Handover(0, "pickup", ("3074257bf7194e4000001a85",), 0.0, 50.0)]


def test_journey_position_stands_at_nodes_and_drives_the_routes() -> None:
    scenario = load_scenario(BERRIES)
    assert journey_position(scenario, 100.0) == (11.9465, 108.4419, 0.0, 0.0)
    assert journey_position(scenario, 3000.0)[:3] == (11.9380, 108.4410, 0.0)
    reefer_start = scenario.leg_starts_s[2]
    assert journey_position(scenario, reefer_start)[:3] == (11.9380, 108.4410, 45.0)
    lat, lon, speed_kmh, _ = journey_position(scenario, reefer_start + 3600.0)
    assert 11.5480 < lat < 11.9380
    assert 107.8077 < lon < 108.4410
    assert speed_kmh == 45.0
    assert journey_position(scenario, scenario.leg_starts_s[3] - 1)[:3] == (10.8420, 106.7580, 0.0)
    assert journey_position(scenario, scenario.total_s + 3600)[:3] == (10.7626, 106.6602, 0.0)


def test_journey_air_carries_the_goods_temperature_across_a_handover() -> None:
    scenario = load_scenario(BERRIES)
    air = JourneyAir(scenario)
    boundary = scenario.leg_starts_s[3]  # from the 2 °C reefer into the 6 °C courier box
    before, _ = air.sample(boundary - 1)
    after, _ = air.sample(boundary + 1)
    assert after == pytest.approx(before, abs=0.5)
    settled, _ = air.sample(boundary + 2400)
    assert settled > before + 2.5
    with pytest.raises(ValueError, match="time order"):
        air.sample(0.0)


# --- the player over ptys -------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock moved by hand, so the player's simulated time is exact."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def eventually(condition: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def play(scenario: Scenario, clock: FakeClock, link_dir: Path | None = None) -> Iterator[ScenarioPlayer]:
    player = ScenarioPlayer(scenario, speed=60.0, link_dir=link_dir, monotonic=clock)
    player.reader.duplicate_read_probability = 0.0
    with player:
        yield player


def move_to(player: ScenarioPlayer, clock: FakeClock, t_s: float) -> None:
    """Set the clock so that ``t_s`` simulated seconds have passed, and let the player catch up."""
    clock.now += (t_s - player.elapsed_s) / player.speed
    assert player.elapsed_s == pytest.approx(t_s)
    # Longer than the GPS thread's poll (50 ms) and many player ticks (10 ms): the fix due at ``t_s``
    # and the leg change are both done before the caller looks.
    time.sleep(0.12)


@pytest.fixture
def berries(clock: FakeClock, tmp_path: Path) -> Iterator[ScenarioPlayer]:
    yield from play(load_scenario(BERRIES), clock, tmp_path)


def read_probe(port: serial.Serial, address: int = 1) -> tuple[float, float]:
    port.reset_input_buffer()
    port.write(encode_read_request(address, 0x04, 0x0001, 2))
    frame = port.read(9)
    assert len(frame) == 9
    assert frame[-2:] == crc16(frame[:-2]).to_bytes(2, "little")
    temp_raw, rh_raw = struct.unpack(">hH", frame[3:7])
    return temp_raw / 10, rh_raw / 10


def test_paths_are_the_links_and_stop_removes_them(berries: ScenarioPlayer, tmp_path: Path) -> None:
    assert berries.paths == {"probe": tmp_path / "probe", "rfid": tmp_path / "rfid", "gps": tmp_path / "gps"}
    assert all(path.is_symlink() for path in berries.paths.values())
    berries.stop()
    assert not any(os.path.lexists(tmp_path / role) for role in ("probe", "rfid", "gps"))
    with pytest.raises(RuntimeError):
        _ = berries.paths


def test_the_probe_sees_the_reefer_warm_during_the_failure_and_recover(clock: FakeClock) -> None:
    scenario = load_scenario(REEFER_FAILURE)
    reefer = scenario.leg_starts_s[1]
    player = ScenarioPlayer(scenario, speed=60.0, monotonic=clock)
    with player, serial.Serial(str(player.paths["probe"]), 9600, timeout=1.0) as port:
        move_to(player, clock, reefer + 5300)
        assert player.current_leg == 1
        before, _ = read_probe(port)
        move_to(player, clock, reefer + 5400 + 2350)
        warmest, _ = read_probe(port)
        move_to(player, clock, reefer + 5400 + 2400 + 3600)
        recovered, _ = read_probe(port)
    assert before == pytest.approx(2.0, abs=0.5)
    assert warmest > before + 4
    assert recovered < warmest - 4
    assert recovered == pytest.approx(2.0, abs=0.7)


def test_tags_are_in_the_field_at_the_handovers(berries: ScenarioPlayer, clock: FakeClock) -> None:
    starts = berries.scenario.leg_starts_s
    # Pickups at time 0 are placed by start() itself.
    assert berries.reader.tags_in_field == CASES
    expected = [
        (60.0, CASES),  # packed at the packhouse
        (300.0, []),
        (starts[1] + 60, CASES),  # into the cold store
        (starts[2] - 60, []),
        (starts[2] + 60, CASES),  # loaded into the reefer
        (starts[2] + 3600, []),
        (starts[3] - 60, CASES),  # unloaded at the city hub...
        (starts[3] + 60, [CASES[0]]),  # ...and the buyer's case picked up by the courier
        (starts[3] + 600, []),
        (berries.scenario.total_s - 60, [CASES[0]]),  # delivered to the buyer
    ]
    with serial.Serial(str(berries.paths["rfid"]), 115200, timeout=0.2) as port:
        for t_s, epcs in expected:
            move_to(berries, clock, t_s)
            assert eventually(lambda epcs=epcs: berries.reader.tags_in_field == epcs), (t_s, epcs)
            port.reset_input_buffer()
            port.write(INVENTORY)
            answer = b""
            while chunk := port.read(4096):
                answer += chunk
            if epcs:
                assert answer == b"".join(encode_inventory_notification(epc) for epc in epcs)
            else:
                assert answer == bytes.fromhex("BB 01 FF 00 01 15 16 7E")


def gps_fixes(port: serial.Serial, start_utc: datetime) -> list[tuple[float, float, float]]:
    """``(seconds since start_utc, lat, lon)`` of the RMC sentences waiting on the port."""
    text = b""
    while chunk := port.read(4096):
        text += chunk
    fixes = []
    for line in text.decode("ascii").split("\r\n"):
        fields = line.split("*")[0].split(",")
        if fields[0] != "$GNRMC" or fields[2] != "A":
            continue
        utc = datetime.strptime(fields[9] + fields[1], "%d%m%y%H%M%S.%f").replace(tzinfo=UTC)
        lat = (int(fields[3][:2]) + float(fields[3][2:]) / 60) * (1 if fields[4] == "N" else -1)
        lon = (int(fields[5][:3]) + float(fields[5][3:]) / 60) * (1 if fields[6] == "E" else -1)
        fixes.append(((utc - start_utc).total_seconds(), lat, lon))
    return fixes


def test_gps_fixes_follow_the_route_of_each_leg(berries: ScenarioPlayer, clock: FakeClock) -> None:
    scenario = berries.scenario
    assert scenario.start_utc == datetime(2026, 3, 1, 22, 0, tzinfo=UTC)
    starts = scenario.leg_starts_s
    moments = [600.0, starts[1] + 600, starts[2] + 4000, starts[2] + 12_000, starts[3] + 900, scenario.total_s + 60]
    with serial.Serial(str(berries.paths["gps"]), 4800, timeout=0.2) as port:
        seen = []
        for t_s in moments:
            move_to(berries, clock, t_s)
            port.reset_input_buffer()
            move_to(berries, clock, t_s + 60)  # one fix a real second: 60 simulated seconds at speed 60
            fixes = gps_fixes(port, scenario.start_utc)
            assert fixes, t_s
            for since_start, lat, lon in fixes:
                expected_lat, expected_lon, _, _ = journey_position(scenario, since_start)
                assert (lat, lon) == (pytest.approx(expected_lat, abs=1e-6), pytest.approx(expected_lon, abs=1e-6))
            seen.append(fixes[-1][1:])
    assert seen[0] == (pytest.approx(11.9465), pytest.approx(108.4419))  # the packhouse
    assert seen[-1] == (pytest.approx(10.7626), pytest.approx(106.6602))  # the buyer
    assert len(set(seen)) == len(seen)


def test_player_plays_the_legs_in_order_on_the_real_clock() -> None:
    scenario = load_scenario(BERRIES)
    player = ScenarioPlayer(scenario, speed=14_400.0)  # 7 hours in under 2 seconds
    legs = []
    with player:
        began = time.monotonic()
        while not player.done:
            legs.append(player.current_leg)
            time.sleep(0.005)
        assert player.wait(1.0)
        took = time.monotonic() - began
    assert took == pytest.approx(scenario.total_s / 14_400, abs=0.5)
    assert sorted(legs) == legs
    assert set(legs) == {0, 1, 2, 3}
    assert player.current_leg == 3


def test_player_settings() -> None:
    scenario = parse_scenario(MINIMAL)
    assert ScenarioPlayer(scenario).speed == scenario.speed
    assert ScenarioPlayer(scenario, speed=3600).speed == 3600
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="speed must be positive"):
            ScenarioPlayer(scenario, speed=bad)
    player = ScenarioPlayer(scenario)
    assert player.elapsed_s == 0.0
    assert player.current_leg == 0
    assert not player.done
    with player:
        with pytest.raises(RuntimeError, match="already started"):
            player.start()
        assert not player.wait(0.05)
    player.stop()


def test_start_utc_defaults_to_the_wall_clock(clock: FakeClock) -> None:
    start = datetime(2026, 5, 1, 8, 0, tzinfo=UTC)
    player = ScenarioPlayer(parse_scenario(MINIMAL), monotonic=clock, wall_clock=start.timestamp)
    with player:
        assert player.gps.start_utc == start
        assert player.gps.start_utc + timedelta(seconds=player.elapsed_s) == start
