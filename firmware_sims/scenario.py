"""Scenario files: a journey of the goods through nodes, played on the simulated devices of one gateway.

A scenario (TOML, validated strictly with msgspec; the format is specified in docs/simulators.md)
lists the nodes the goods pass through and the legs of the journey in order. ``ScenarioPlayer``
plays it on the devices of the gateway that rides with the goods:

* one probe bus with one XY-MD02 probe, reading the air around the goods: the air of the node
  of the current leg, continuous across a handover (the goods carry their temperature with them);
* one UHF reader, whose field holds the EPCs read at the handovers (pickup at the start of a leg,
  delivery at its end), each for ``read_window_s``;
* one GPS, standing at the node's location during a stationary leg and driving the leg's route
  during a moving one.

All three run on one scaled clock: simulated time is real elapsed time times ``speed``, so a 6-hour
journey plays in 6 minutes at speed 60.
"""

from __future__ import annotations

import bisect
import itertools
import math
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Annotated, Final, Literal, Self

import msgspec

from firmware_sims.gps import EARTH_RADIUS_M, GpsSimulator, Waypoint, position_at
from firmware_sims.probe import ProbeBusSimulator
from firmware_sims.thermal import (
    DEFAULT_COOLING_TIME_CONSTANT_S,
    DEFAULT_DOOR_TIME_CONSTANT_S,
    DEFAULT_INSULATION_TIME_CONSTANT_S,
    DEFAULT_NOISE_RH,
    ThermalModel,
)
from firmware_sims.uhf_reader import UhfReaderSimulator
from firmware_sims.xymd02 import MAX_SLAVE_ADDRESS, MEASURING_RANGE_C, ProbeSpec

DEFAULT_SPEED: Final = 60.0
"""Simulated seconds per real second: an hour of journey plays in a minute."""

DEFAULT_READ_WINDOW_S: Final = 120.0
"""A handover keeps the cases in the reader's field about two minutes: unloading, scanning, loading."""

MAX_ROAD_SPEED_KMH: Final = 150.0
"""No truck or courier carrying produce drives faster; a higher figure is a typo."""

DEFAULT_ROAD_SPEED_KMH: Final = 60.0
"""A loaded vehicle's average on rural and suburban roads."""

GPS_EPOCHS_PER_REAL_S: Final = 1.0
"""The GPS sends one fix a real second, as receivers do by default, whatever the speed; each fix is
``speed`` simulated seconds after the previous one."""

TICK_S: Final = 0.01
"""How often, in real seconds, the player applies due handovers and leg changes: 36 simulated seconds
at speed 3600, well inside the shortest read window a test uses."""

STOP_JOIN_TIMEOUT_S: Final = 2.0
"""The player thread notices stop() within one tick; this only guards against a wedged thread."""

ROLES: Final = ("probe", "rfid", "gps")
"""The devices of the gateway riding with the goods, in the order the command line prints them."""

NodeKind = Literal["packhouse", "cold_store", "reefer_truck", "courier_box"]
MOVING_KINDS: Final = frozenset({"reefer_truck", "courier_box"})
"""Only these nodes may drive a route; a packhouse or cold store stays put."""

# --- EPCs ------------------------------------------------------------------------------------------

SGTIN96_HEADER: Final = 0x30
SSCC96_HEADER: Final = 0x31
_SGTIN96_SERIAL_BITS: Final = 38
_SGTIN96_PREFIX_AND_ITEM_BITS: Final = 44
_GTIN_DIGITS_WITHOUT_CHECK: Final = 13  # company prefix + item reference (with indicator digit)
# Partition value → (company prefix bits, company prefix digits), from the GS1 EPC Tag Data Standard, SGTIN table.
_SGTIN_PARTITIONS: Final = {
    0: (40, 12),
    1: (37, 11),
    2: (34, 10),
    3: (30, 9),
    4: (27, 8),
    5: (24, 7),
    6: (20, 6),
}
_MAX_FILTER: Final = 7


def encode_sgtin96(company_prefix: str, item_reference: str, serial: int, *, filter_value: int = 1) -> str:
    """The SGTIN-96 EPC (24 lowercase hex digits) of ``urn:epc:id:sgtin:{company_prefix}.{item_reference}.{serial}``.

    ``item_reference`` includes the indicator digit; the two together have 13 digits. Filter 1 is a
    point-of-sale trade item, 3 a full case for transport (GS1 EPC TDS, table of SGTIN filter values).
    Raises ``ValueError`` for a split the partition table does not have or a serial over 38 bits.
    """
    if not (company_prefix.isdigit() and (item_reference.isdigit() or item_reference == "")):
        raise ValueError("company prefix and item reference are decimal digits")
    if len(company_prefix) + len(item_reference) != _GTIN_DIGITS_WITHOUT_CHECK:
        raise ValueError(
            f"company prefix and item reference have 13 digits together, got {company_prefix}.{item_reference}"
        )
    partitions = {digits: (partition, bits) for partition, (bits, digits) in _SGTIN_PARTITIONS.items()}
    if len(company_prefix) not in partitions:
        raise ValueError(f"a company prefix has 6..12 digits, got {len(company_prefix)}")
    if not 0 <= serial < 1 << _SGTIN96_SERIAL_BITS:
        raise ValueError(f"an SGTIN-96 serial is 0..2^38-1, got {serial}")
    if not 0 <= filter_value <= _MAX_FILTER:
        raise ValueError(f"filter is 0..7, got {filter_value}")
    partition, prefix_bits = partitions[len(company_prefix)]
    item_bits = _SGTIN96_PREFIX_AND_ITEM_BITS - prefix_bits
    value = SGTIN96_HEADER
    for field, width in ((filter_value, 3), (partition, 3), (int(company_prefix), prefix_bits)):
        value = value << width | field
    value = (value << item_bits | int(item_reference or "0")) << _SGTIN96_SERIAL_BITS | serial
    return f"{value:024x}"


# --- the file format -------------------------------------------------------------------------------

NonNegative = Annotated[float, msgspec.Meta(ge=0)]
Positive = Annotated[float, msgspec.Meta(gt=0)]
Celsius = Annotated[float, msgspec.Meta(ge=MEASURING_RANGE_C[0], le=MEASURING_RANGE_C[1])]
Percent = Annotated[float, msgspec.Meta(ge=0, le=100)]
Latitude = Annotated[float, msgspec.Meta(ge=-90, le=90)]
Longitude = Annotated[float, msgspec.Meta(ge=-180, le=180)]
Interval = tuple[NonNegative, Positive]
"""``[at_s, duration_s]`` within a leg: starts ``at_s`` after the leg starts and lasts ``duration_s``."""
EpcHex = Annotated[str, msgspec.Meta(pattern="^3[01][0-9A-Fa-f]{22}$")]
"""A 96-bit EPC in hex: SGTIN-96 (header 0x30) for a case, SSCC-96 (0x31) for a pallet."""


class Node(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A place the goods dwell in: its air (set point, ambient, humidity) and where it is."""

    id: Annotated[str, msgspec.Meta(min_length=1)]
    kind: NodeKind
    set_point_c: Celsius
    ambient_c: Celsius
    humidity_set_point: Percent = 85.0
    location: tuple[Latitude, Longitude] | None = None
    noise_c: NonNegative = 0.05
    door_rate_per_hour: NonNegative = 0.0
    cooling_time_constant_s: Positive = DEFAULT_COOLING_TIME_CONSTANT_S
    door_time_constant_s: Positive = DEFAULT_DOOR_TIME_CONSTANT_S
    insulation_time_constant_s: Positive = DEFAULT_INSULATION_TIME_CONSTANT_S


class RoutePoint(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A waypoint of a moving leg: wait ``dwell_s`` there, then drive to the next at ``speed_kmh``."""

    lat: Latitude
    lon: Longitude
    dwell_s: NonNegative = 0.0
    speed_kmh: Annotated[float, msgspec.Meta(gt=0, le=MAX_ROAD_SPEED_KMH)] = DEFAULT_ROAD_SPEED_KMH

    def waypoint(self) -> Waypoint:
        """The GPS simulator's waypoint."""
        return Waypoint(self.lat, self.lon, self.dwell_s, self.speed_kmh)


class Leg(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A stay of the goods in one node, with what happens to that node's air and who reads the tags."""

    node: str
    duration_s: Positive
    door_openings: list[Interval] = []
    cooling_failures: list[Interval] = []
    route: list[RoutePoint] = []
    pickup: list[EpcHex] = []
    delivery: list[EpcHex] = []

    def __post_init__(self) -> None:
        """Refuse events past the end of the leg and a route that cannot be driven within it."""
        for name, intervals in (("door_openings", self.door_openings), ("cooling_failures", self.cooling_failures)):
            for index, (at_s, duration_s) in enumerate(intervals):
                if at_s + duration_s > self.duration_s:
                    raise ValueError(
                        f"{name}[{index}] = [{at_s:g}, {duration_s:g}] ends after duration_s {self.duration_s:g}"
                    )
        if self.route:
            travel_s = route_duration_s([point.waypoint() for point in self.route])
            if travel_s > self.duration_s:
                raise ValueError(f"route takes {travel_s:.0f} s to drive, longer than duration_s {self.duration_s:g}")


class Scenario(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A journey: the nodes, the legs in order, and how it is played."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    description: str = ""
    speed: Positive = DEFAULT_SPEED
    seed: int = 0
    start_utc: Annotated[datetime, msgspec.Meta(tz=True)] | None = None
    probe_address: Annotated[int, msgspec.Meta(ge=1, le=MAX_SLAVE_ADDRESS)] = 1
    read_window_s: Positive = DEFAULT_READ_WINDOW_S
    nodes: Annotated[list[Node], msgspec.Meta(min_length=1)]
    legs: Annotated[list[Leg], msgspec.Meta(min_length=1)]

    def __post_init__(self) -> None:
        """Check what one struct alone cannot: node ids, references, who may move, where each leg is."""
        ids = [node.id for node in self.nodes]
        if duplicates := sorted({node_id for node_id in ids if ids.count(node_id) > 1}):
            raise ValueError(f"nodes: ids must be unique, repeated: {', '.join(duplicates)}")
        by_id = {node.id: node for node in self.nodes}
        for index, leg in enumerate(self.legs):
            node = by_id.get(leg.node)
            if node is None:
                raise ValueError(f"legs[{index}].node: unknown node {leg.node!r} (nodes: {', '.join(ids)})")
            if leg.route and node.kind not in MOVING_KINDS:
                raise ValueError(f"legs[{index}].route: {node.id} is a {node.kind}, which does not move")
            if not leg.route and node.location is None:
                raise ValueError(f"legs[{index}]: node {node.id} has no location and the leg has no route")

    def node(self, leg_index: int) -> Node:
        """The node of leg ``leg_index``."""
        node_id = self.legs[leg_index].node
        return next(node for node in self.nodes if node.id == node_id)

    @property
    def leg_starts_s(self) -> list[float]:
        """When each leg starts, in simulated seconds from the start of the journey."""
        starts = [0.0]
        for leg in self.legs[:-1]:
            starts.append(starts[-1] + leg.duration_s)
        return starts

    @property
    def total_s(self) -> float:
        """The length of the journey in simulated seconds."""
        return sum(leg.duration_s for leg in self.legs)

    def leg_at(self, t_s: float) -> int:
        """The index of the leg under way at ``t_s`` (the last one from the end of the journey on)."""
        return max(0, bisect.bisect_right(self.leg_starts_s, t_s) - 1)


class ScenarioError(ValueError):
    """A scenario file that cannot be read as a scenario; the message names the file and the field."""


def parse_scenario(source: str | bytes, *, origin: str = "<scenario>") -> Scenario:
    """Decode and validate a scenario from TOML text; raises ``ScenarioError`` naming ``origin`` and the field."""
    try:
        return msgspec.toml.decode(source, type=Scenario)
    except msgspec.ValidationError as exc:
        raise ScenarioError(f"{origin}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise ScenarioError(f"{origin}: not valid TOML: {exc}") from None


def load_scenario(path: Path) -> Scenario:
    """Read and validate the scenario file at ``path`` (``ScenarioError`` if invalid, ``OSError`` if unreadable)."""
    return parse_scenario(path.read_bytes(), origin=str(path))


# --- the journey as pure functions of simulated time ---------------------------------------------


def route_duration_s(route: list[Waypoint]) -> float:
    """How long ``route`` takes: every dwell, the last one included, and every drive at its waypoint's speed.

    Distances use the equirectangular approximation ``position_at`` drives along.
    """
    total_s = sum(point.dwell_s for point in route)
    for here, there in itertools.pairwise(route):
        dlon = (there.lon - here.lon + 180) % 360 - 180  # across the antimeridian when that is shorter
        east_m = math.radians(dlon) * math.cos(math.radians((here.lat + there.lat) / 2)) * EARTH_RADIUS_M
        north_m = math.radians(there.lat - here.lat) * EARTH_RADIUS_M
        total_s += math.hypot(east_m, north_m) / (here.speed_kmh / 3.6)
    return total_s


def leg_route(scenario: Scenario, leg_index: int) -> list[Waypoint]:
    """The GPS route covering leg ``leg_index``, in journey time: its waypoints, the first one held
    until the leg starts; a stationary leg is its node's location."""
    leg = scenario.legs[leg_index]
    if not leg.route:
        location = scenario.node(leg_index).location
        if location is None:  # refused when the scenario was validated
            raise ValueError(f"legs[{leg_index}] has neither a route nor a located node")
        return [Waypoint(*location)]
    first, *rest = (point.waypoint() for point in leg.route)
    start_s = scenario.leg_starts_s[leg_index]
    return [Waypoint(first.lat, first.lon, start_s + first.dwell_s, first.speed_kmh), *rest]


def journey_position(scenario: Scenario, t_s: float) -> tuple[float, float, float, float]:
    """Where the goods are ``t_s`` into the journey: ``(lat, lon, speed_kmh, course_deg)``, as the GPS reports."""
    return position_at(leg_route(scenario, scenario.leg_at(t_s)), t_s)


@dataclass(frozen=True)
class Handover:
    """EPCs in the reader's field from ``start_s`` to ``end_s`` (journey time): a pickup or a delivery."""

    leg: int
    kind: Literal["pickup", "delivery"]
    epcs: tuple[str, ...]
    start_s: float
    end_s: float


def handovers(scenario: Scenario) -> list[Handover]:
    """Every tag read of the journey: a pickup opens its leg, a delivery closes it, each for the read window.

    The window is cut to half the leg when the leg is shorter than two windows, so that the pickup
    and the delivery of one leg never overlap.
    """
    found = []
    for index, (leg, start_s) in enumerate(zip(scenario.legs, scenario.leg_starts_s, strict=True)):
        window_s = min(scenario.read_window_s, leg.duration_s / 2)
        end_s = start_s + leg.duration_s
        if leg.pickup:
            found.append(Handover(index, "pickup", tuple(e.lower() for e in leg.pickup), start_s, start_s + window_s))
        if leg.delivery:
            found.append(Handover(index, "delivery", tuple(e.lower() for e in leg.delivery), end_s - window_s, end_s))
    return found


class JourneyAir:
    """The air around the goods along the journey, as the probe riding with them measures it.

    Each leg has its own thermal model (the node's set point, ambient, doors and cooling failures,
    timed from the start of the leg); at a handover the next model starts from the temperature and
    humidity the goods arrive with, so the reading moves toward the new node's conditions at that
    node's pace instead of jumping. Sensor noise is added here, on top of noise-free leg models,
    so that it stays one reproducible stream across the whole journey.
    """

    def __init__(self, scenario: Scenario) -> None:
        """Start the journey at the first node's set points."""
        self._scenario = scenario
        self._starts = scenario.leg_starts_s
        self._noise = random.Random(f"{scenario.seed}:journey-noise")  # noqa: S311 - simulation, not crypto
        self._leg = 0
        self._model = self._leg_model(0, None)
        self._t = 0.0

    def sample(self, t_s: float) -> tuple[float, float]:
        """Advance to ``t_s`` (journey seconds, non-decreasing) and return ``(temperature °C, relative humidity %)``."""
        if t_s < self._t:
            raise ValueError(f"samples must be taken in time order: {t_s} after {self._t}")
        while self._leg + 1 < len(self._starts) and t_s >= self._starts[self._leg + 1]:
            arrival = self._model.sample(self._starts[self._leg + 1] - self._starts[self._leg])
            self._leg += 1
            self._model = self._leg_model(self._leg, arrival)
        temp, rh = self._model.sample(t_s - self._starts[self._leg])
        self._t = t_s
        temp += self._noise.gauss(0.0, self._scenario.node(self._leg).noise_c)
        rh += self._noise.gauss(0.0, DEFAULT_NOISE_RH)
        return temp, min(100.0, max(0.0, rh))

    def _leg_model(self, index: int, arrival: tuple[float, float] | None) -> ThermalModel:
        leg, node = self._scenario.legs[index], self._scenario.node(index)
        return ThermalModel(
            set_point_c=node.set_point_c,
            ambient_c=node.ambient_c,
            time_constant_s=node.cooling_time_constant_s,
            door_time_constant_s=node.door_time_constant_s,
            insulation_time_constant_s=node.insulation_time_constant_s,
            noise_c=0.0,
            noise_rh=0.0,
            humidity_set_point=node.humidity_set_point,
            seed=self._scenario.seed * 1000 + index,
            door_openings=leg.door_openings,
            door_rate_per_hour=node.door_rate_per_hour,
            cooling_failures=leg.cooling_failures,
            initial_c=None if arrival is None else arrival[0],
            initial_rh=None if arrival is None else arrival[1],
        )


# --- the player ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _TagEvent:
    at_s: float
    place: bool
    epcs: tuple[str, ...]


def _tag_events(scenario: Scenario) -> list[_TagEvent]:
    events = [
        event
        for handover in handovers(scenario)
        for event in (_TagEvent(handover.start_s, True, handover.epcs), _TagEvent(handover.end_s, False, handover.epcs))
    ]
    # At one instant, removals first: a case delivered at the end of a leg and picked up at the start
    # of the next stays in the field throughout.
    return sorted(events, key=lambda event: (event.at_s, event.place))


class ScenarioPlayer:
    """Plays ``scenario`` on one probe bus, one UHF reader and one GPS, on a clock ``speed`` times real time.

    ``speed`` defaults to the scenario's. With ``link_dir`` the devices appear there as ``probe``,
    ``rfid`` and ``gps`` symlinks. ``probe``, ``reader`` and ``gps`` are the simulators (for fault
    injection); ``air`` is the probe's model. Simulated time stands at 0 until every device is up,
    so all three agree on it.
    """

    def __init__(
        self,
        scenario: Scenario,
        *,
        speed: float | None = None,
        link_dir: Path | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Build the devices; nothing is served until ``start()``. Raises ValueError for a non-positive speed."""
        self.scenario = scenario
        self.speed = scenario.speed if speed is None else speed
        if not (self.speed > 0 and math.isfinite(self.speed)):
            raise ValueError(f"speed must be positive and finite, got {self.speed}")
        links = {role: None if link_dir is None else link_dir / role for role in ROLES}
        self._real = monotonic
        self._t0: float | None = None
        self.air = JourneyAir(scenario)
        address = scenario.probe_address
        self.probe = ProbeBusSimulator(
            [ProbeSpec(address=address)],
            link=links["probe"],
            monotonic=self._clock,
            models={address: self.air},
            seed=scenario.seed,
        )
        self.reader = UhfReaderSimulator(link=links["rfid"], seed=scenario.seed, monotonic=self._clock)
        self.gps = GpsSimulator(
            leg_route(scenario, 0),
            link=links["gps"],
            rate_hz=GPS_EPOCHS_PER_REAL_S / self.speed,
            start_utc=scenario.start_utc,
            monotonic=self._clock,
            wall_clock=wall_clock,
        )
        self._events = _tag_events(scenario)
        self._next_event = 0
        self._gps_leg = 0
        self._lock = threading.Lock()
        self._finished = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def elapsed_s(self) -> float:
        """Simulated seconds since the journey started (0 before ``start()``)."""
        return self._clock()

    @property
    def current_leg(self) -> int:
        """The index in ``scenario.legs`` of the leg under way (the last one once the journey is over)."""
        return self.scenario.leg_at(self.elapsed_s)

    @property
    def done(self) -> bool:
        """Whether the journey is over; the devices keep serving the last node until ``stop()``."""
        return self.elapsed_s >= self.scenario.total_s

    @property
    def paths(self) -> dict[str, Path]:
        """The serial device of each role (``probe``, ``rfid``, ``gps``), while plugged in."""
        return {"probe": self.probe.path, "rfid": self.reader.path, "gps": self.gps.path}

    def start(self) -> None:
        """Start the three devices, then the journey clock and the thread that applies handovers."""
        if self._thread is not None:
            raise RuntimeError("the player is already started")
        try:
            self.probe.start()
            self.reader.start()
            self.gps.start()
        except BaseException:
            self._stop_devices()
            raise
        self._t0 = self._real()
        self._stopping.clear()
        self._tick()  # pickups at time 0 are in the field before start() returns
        self._thread = threading.Thread(target=self._run, name="scenario-player", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the player and its devices (their links are removed). Safe to call twice."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(STOP_JOIN_TIMEOUT_S)
            self._thread = None
        self._stop_devices()

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait until the journey is over (or ``timeout_s`` real seconds); return ``done``."""
        self._finished.wait(timeout_s)
        return self.done

    def __enter__(self) -> Self:
        """Start the player."""
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Stop the player."""
        self.stop()

    def _clock(self) -> float:
        return 0.0 if self._t0 is None else (self._real() - self._t0) * self.speed

    def _stop_devices(self) -> None:
        self.gps.stop()
        self.reader.stop()
        self.probe.stop()

    def _run(self) -> None:
        while not self._stopping.wait(TICK_S):
            self._tick()

    def _tick(self) -> None:
        """Apply the handovers that are due and point the GPS at the current leg's route."""
        now = self.elapsed_s
        with self._lock:
            while self._next_event < len(self._events) and self._events[self._next_event].at_s <= now:
                event = self._events[self._next_event]
                if event.place:
                    self.reader.place_tags(event.epcs)
                else:
                    self.reader.remove_tags(event.epcs)
                self._next_event += 1
            leg = self.scenario.leg_at(now)
            if leg != self._gps_leg:
                # The GPS reads its route on every fix; swapping the reference is atomic.
                self.gps.route = tuple(leg_route(self.scenario, leg))
                self._gps_leg = leg
        if now >= self.scenario.total_s:
            self._finished.set()
