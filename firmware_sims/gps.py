"""A GNSS receiver driving along a route, sending NMEA 0183 (RMC, GGA, GSA) on a pseudo-terminal.

Sentences are formatted and checksummed here by hand, from the NMEA 0183 layout, never with
pynmea2 or the agent's decoder, so a codec bug cannot hide on both sides of the wire. Layout per
sentence (``talker`` is GN by default, as multi-constellation receivers send)::

    $GNRMC,hhmmss.ss,A,ddmm.mmmmm,N,dddmm.mmmmm,E,knots,course,ddmmyy,,,A*hh
    $GNGGA,hhmmss.ss,ddmm.mmmmm,N,dddmm.mmmmm,E,quality,sats,hdop,alt,M,geoid,M,,*hh
    $GNGSA,A,fix type,12 satellite ids,pdop,hdop,vdop*hh

Before a fix a receiver sends status V, quality 0 and empty position fields, which
``GpsSimulator.no_fix`` reproduces. The route model is ``position_at``: a pure function, so
scenarios can tell where the truck is without running the simulator.
"""

from __future__ import annotations

import itertools
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import ClassVar, Final

from firmware_sims.faults import FaultState
from firmware_sims.pty_device import POLL_INTERVAL_S, PtyDevice

EARTH_RADIUS_M: Final = 6_371_008.8
"""Mean Earth radius (IUGG); the equirectangular route model needs no better over a delivery leg."""

KMH_PER_KNOT: Final = 1.852
"""One knot is one nautical mile (exactly 1852 m) per hour."""

DEFAULT_TALKER: Final = "GN"
"""Multi-constellation receivers (GPS + GLONASS / BeiDou) report combined solutions as GN."""

SATELLITE_IDS: Final = (3, 6, 9, 14, 17, 19, 22, 28)
"""Satellites reported as used in the fix: eight, a typical open-sky count."""

HDOP: Final = 0.9
PDOP: Final = 1.6
VDOP: Final = 1.3
"""Dilutions of precision of a good open-sky fix."""

NO_FIX_DOP: Final = 99.99
"""What receivers report for every DOP before they have a fix."""

ALTITUDE_M: Final = 12.0
"""The route model is flat: a lowland road."""

GEOID_SEPARATION_M: Final = -3.5
"""Receivers always fill the geoid separation; the simulator does not model the geoid, so it is a constant."""

MAX_SATELLITE_SLOTS: Final = 12
"""GSA always carries twelve satellite id fields, empty ones included."""

_CENTISECONDS_PER_MICROSECOND: Final = 10_000  # microseconds in one hundredth of a second
_MINUTE_DECIMALS: Final = 5  # ddmm.mmmmm: 1e-5 minute is 2 cm, finer than any receiver reports
_TALKER_LENGTH: Final = 2


@dataclass(frozen=True)
class Waypoint:
    """A point of the route: wait ``dwell_s`` there, then drive to the next one at ``speed_kmh``."""

    lat: float
    lon: float
    dwell_s: float = 0.0
    speed_kmh: float = 60.0

    def __post_init__(self) -> None:
        """Reject a point off the globe, a negative dwell or a speed that never arrives."""
        if not (-90 <= self.lat <= 90 and -180 <= self.lon <= 180):
            raise ValueError(f"waypoint {self.lat}, {self.lon} is off the globe")
        if not self.dwell_s >= 0:
            raise ValueError(f"dwell_s must be 0 or more, got {self.dwell_s}")
        if not self.speed_kmh > 0 or math.isinf(self.speed_kmh):
            raise ValueError(f"speed_kmh must be positive and finite, got {self.speed_kmh}")


def _leg(start: Waypoint, end: Waypoint) -> tuple[float, float, float]:
    """Length in metres, course in degrees and the longitude step (across the antimeridian if shorter)."""
    dlon = (end.lon - start.lon + 180) % 360 - 180
    mean_lat = math.radians((start.lat + end.lat) / 2)
    east_m = math.radians(dlon) * math.cos(mean_lat) * EARTH_RADIUS_M
    north_m = math.radians(end.lat - start.lat) * EARTH_RADIUS_M
    course = math.degrees(math.atan2(east_m, north_m)) % 360
    # A tiny negative angle modulo 360 rounds to 360.0, which is the same heading as 0.
    return math.hypot(east_m, north_m), 0.0 if course >= 360 else course, dlon


def _first_course(route: Sequence[Waypoint]) -> float:
    """The course of the first leg that goes anywhere; 0 (north) for a route that never moves."""
    for start, end in itertools.pairwise(route):
        length_m, course, _ = _leg(start, end)
        if length_m > 0:
            return course
    return 0.0


def position_at(route: Sequence[Waypoint], elapsed_s: float) -> tuple[float, float, float, float]:
    """Where the vehicle is ``elapsed_s`` after leaving: ``(lat, lon, speed_kmh, course_deg)``.

    The vehicle dwells at each waypoint, then drives straight (equirectangular) to the next at the
    waypoint's ``speed_kmh``; after the last one it stays there. While standing it reports speed 0
    and the course it last drove (the first leg's before it has moved).
    Raises ``ValueError`` for an empty route.
    """
    if not route:
        raise ValueError("a route needs at least one waypoint")
    remaining_s = max(0.0, elapsed_s)
    course = _first_course(route)
    for here, there in itertools.pairwise(route):
        if remaining_s < here.dwell_s:
            return here.lat, here.lon, 0.0, course
        remaining_s -= here.dwell_s
        length_m, leg_course, dlon = _leg(here, there)
        duration_s = length_m / (here.speed_kmh / 3.6)
        if remaining_s < duration_s:
            fraction = remaining_s / duration_s
            lat = here.lat + fraction * (there.lat - here.lat)
            lon = here.lon + fraction * dlon
            if abs(lon) > 180:  # the leg crosses the antimeridian
                lon -= math.copysign(360, lon)
            return lat, lon, here.speed_kmh, leg_course
        remaining_s -= duration_s
        if length_m > 0:
            course = leg_course
    # Past the last leg (or a single waypoint): standing at the end of the route for good.
    return route[-1].lat, route[-1].lon, 0.0, course


def checksum(payload: str) -> str:
    """The NMEA checksum of the text between ``$`` and ``*``: XOR of its bytes, two uppercase hex digits."""
    value = 0
    for byte in payload.encode("ascii"):
        value ^= byte
    return f"{value:02X}"


def _sentence(talker: str, kind: str, fields: Sequence[str]) -> bytes:
    if len(talker) != _TALKER_LENGTH or not talker.isalpha() or not talker.isupper():
        raise ValueError(f"a talker id is two capital letters, got {talker!r}")
    payload = ",".join([talker + kind, *fields])
    return f"${payload}*{checksum(payload)}\r\n".encode("ascii")


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is taken to be UTC already."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _time_field(moment: datetime) -> str:
    return f"{moment:%H%M%S}.{moment.microsecond // _CENTISECONDS_PER_MICROSECOND:02d}"


def _angle_fields(value: float | None, degree_digits: int, hemispheres: str) -> tuple[str, str]:
    """``(d..dmm.mmmmm, hemisphere letter)``, or two empty fields without a position."""
    if value is None:
        return "", ""
    scale = 10**_MINUTE_DECIMALS
    # Round once, in whole units of the last digit, so 59.999999' carries into the degrees.
    degrees, units = divmod(round(abs(value) * 60 * scale), 60 * scale)
    minutes, decimals = divmod(units, scale)
    text = f"{degrees:0{degree_digits}d}{minutes:02d}.{decimals:0{_MINUTE_DECIMALS}d}"
    return text, hemispheres[0] if value >= 0 else hemispheres[1]


def _position_fields(lat: float | None, lon: float | None) -> list[str]:
    if (lat is None) != (lon is None):
        raise ValueError("give both lat and lon, or neither for no fix")
    return [*_angle_fields(lat, 2, "NS"), *_angle_fields(lon, 3, "EW")]


def format_rmc(
    utc: datetime,
    lat: float | None,
    lon: float | None,
    *,
    speed_kmh: float = 0.0,
    course_deg: float = 0.0,
    talker: str = DEFAULT_TALKER,
) -> bytes:
    """An RMC sentence with CRLF; ``lat``/``lon`` None is a receiver without a fix (status V, mode N).

    The date has a two-digit year, as NMEA 0183 defines it.
    """
    moment = _utc(utc)
    valid = lat is not None
    motion = [f"{speed_kmh / KMH_PER_KNOT:.3f}", f"{course_deg:.2f}"] if valid else ["", ""]
    fields = [
        _time_field(moment),
        "A" if valid else "V",
        *_position_fields(lat, lon),
        *motion,
        f"{moment:%d%m%y}",
        "",  # magnetic variation and its direction: receivers without a declination model leave them empty
        "",
        "A" if valid else "N",  # mode indicator (NMEA 2.3): autonomous, or data not valid
    ]
    return _sentence(talker, "RMC", fields)


def format_gga(
    utc: datetime,
    lat: float | None,
    lon: float | None,
    *,
    quality: int = 1,
    satellites: int = len(SATELLITE_IDS),
    hdop: float = HDOP,
    altitude_m: float = ALTITUDE_M,
    talker: str = DEFAULT_TALKER,
) -> bytes:
    """A GGA sentence with CRLF; ``lat``/``lon`` None is a receiver without a fix (quality 0, no satellites)."""
    valid = lat is not None
    fix = [str(quality), f"{satellites:02d}", f"{hdop:.2f}", f"{altitude_m:.1f}", "M", f"{GEOID_SEPARATION_M:.1f}", "M"]
    no_fix = ["0", "00", f"{NO_FIX_DOP:.2f}", "", "", "", ""]
    fields = [
        _time_field(_utc(utc)),
        *_position_fields(lat, lon),
        *(fix if valid else no_fix),
        "",  # age of differential corrections and the station id: no DGPS
        "",
    ]
    return _sentence(talker, "GGA", fields)


def format_gsa(fix: bool, *, satellite_ids: Sequence[int] = SATELLITE_IDS, talker: str = DEFAULT_TALKER) -> bytes:
    """A GSA sentence with CRLF: automatic mode, a 3D fix over ``satellite_ids``, or no fix at all."""
    if len(satellite_ids) > MAX_SATELLITE_SLOTS:
        raise ValueError(f"GSA lists at most {MAX_SATELLITE_SLOTS} satellites, got {len(satellite_ids)}")
    ids = [f"{sat:02d}" for sat in satellite_ids] if fix else []
    ids += [""] * (MAX_SATELLITE_SLOTS - len(ids))
    dops = (PDOP, HDOP, VDOP) if fix else (NO_FIX_DOP,) * 3
    return _sentence(talker, "GSA", ["A", "3" if fix else "1", *ids, *(f"{dop:.2f}" for dop in dops)])


class GpsSimulator(PtyDevice):
    """Serves a receiver driving ``route`` on one pty, ``rate_hz`` epochs a second, from a daemon thread.

    Epoch ``k`` is due ``k / rate_hz`` seconds of ``monotonic()`` after ``start()`` and reports the
    UTC ``start_utc`` (default: ``wall_clock()`` at start) plus that much, plus
    ``faults.clock_offset_s``. Epochs missed while unplugged or stalled are skipped, never sent late.
    ``faults`` is read on every sentence: ``corrupt_probability`` flips a bit of a sentence,
    ``silent`` sends nothing, ``stuck`` freezes the reported position and motion. ``no_fix`` sends
    what a receiver without a fix sends. ``sentences_sent`` and ``bytes_dropped`` (the client did not
    read and the pty filled up) are exposed for inspection.
    """

    thread_name: ClassVar[str] = "gps"
    label: ClassVar[str] = "GPS simulator"

    def __init__(
        self,
        route: Sequence[Waypoint],
        *,
        link: Path | None = None,
        rate_hz: float = 1.0,
        start_utc: datetime | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        """Check the route and rate; raises ValueError for an empty route or a non-positive rate."""
        if not route:
            raise ValueError("a route needs at least one waypoint")
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be positive, got {rate_hz}")
        self.route = tuple(route)
        self.rate_hz = rate_hz
        self.faults = FaultState()
        self.no_fix = False
        self.sentences_sent = 0
        self.bytes_dropped = 0
        self._start_utc = start_utc
        self._monotonic = monotonic
        self._wall_clock = wall_clock
        self._t0 = 0.0
        self._utc0 = datetime.fromtimestamp(0, UTC)
        self._next_epoch = 0
        self._last_navigation: tuple[float, float, float, float] | None = None
        super().__init__(link)

    @property
    def start_utc(self) -> datetime:
        """The UTC of epoch 0 (before any clock offset fault); valid once started."""
        if not self._started:
            raise RuntimeError("the simulator is not started")
        return self._utc0

    def _on_start(self) -> None:
        """Start the route clock: epoch 0 is now, at ``start_utc`` (or the wall clock's UTC)."""
        self._t0 = self._monotonic()
        self._utc0 = _utc(self._start_utc) if self._start_utc else datetime.fromtimestamp(self._wall_clock(), UTC)
        self._next_epoch = 0

    def _serve(self, fd: int, stopping: threading.Event) -> None:
        while not stopping.is_set():
            elapsed_s = self._monotonic() - self._t0
            due = math.floor(elapsed_s * self.rate_hz)
            if due < self._next_epoch:
                stopping.wait(min(POLL_INTERVAL_S, self._next_epoch / self.rate_hz - elapsed_s))
                continue
            self._next_epoch = due + 1
            self._send(fd, [self.faults.maybe_corrupt(sentence) for sentence in self._epoch(due / self.rate_hz)])

    def _epoch(self, elapsed_s: float) -> list[bytes]:
        """The sentences of the epoch ``elapsed_s`` into the route, with the current faults applied."""
        faults = self.faults
        if faults.silent:
            return []
        if not faults.stuck or self._last_navigation is None:
            self._last_navigation = position_at(self.route, elapsed_s)
        lat, lon, speed_kmh, course_deg = self._last_navigation
        utc = self._utc0 + timedelta(seconds=elapsed_s + faults.clock_offset_s)
        if self.no_fix:
            return [format_rmc(utc, None, None), format_gga(utc, None, None), format_gsa(fix=False)]
        return [
            format_rmc(utc, lat, lon, speed_kmh=speed_kmh, course_deg=course_deg),
            format_gga(utc, lat, lon),
            format_gsa(fix=True),
        ]

    def _send(self, fd: int, sentences: list[bytes]) -> None:
        """Write an epoch's burst at once, never blocking: a receiver's UART sends whether anyone listens or not."""
        burst = b"".join(sentences)
        try:
            written = os.write(fd, burst) if burst else 0
        except BlockingIOError:
            written = 0
        if written == len(burst):
            self.sentences_sent += len(sentences)
        self.bytes_dropped += len(burst) - written
