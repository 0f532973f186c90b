"""Driver for NMEA 0183 GPS receivers: sentences in, ``GpsFix`` out, one serial port per receiver.

Three layers, the first two sans-io:

* ``NmeaDecoder`` finds sentences in the byte stream (``$`` to CRLF, bounded length, ``*hh``
  checksum), has pynmea2 parse them and returns typed ``Rmc`` / ``Gga`` records (any talker: GP,
  GN, GL, GA, BD...) or ``OtherSentence`` for the types the fix does not use. Decisions depend only
  on the bytes, never on how they were split into ``feed`` calls, and every byte fed ends up in
  exactly one of: a returned sentence, ``garbage_bytes``, or the pending buffer.
* ``FixAssembler`` joins the RMC (date, status, speed, course) and GGA (fix quality, satellites,
  HDOP, altitude) of one epoch into a ``GpsFix``; an epoch without a valid fix counts ``no_fix``.
* ``NmeaGps`` reads the port without blocking for long, survives the receiver being unplugged,
  rate-limits the fixes it returns and keeps the gateway-minus-GPS clock offset for the health report.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, TypeVar

import pynmea2
import serial

from coldchain.messages import MAX_TS_MS, MIN_TS_MS, GpsFix
from edge_agent.drivers.serial_port import DEFAULT_OPEN_BACKOFF_S, ReopeningSerial, SerialFactory

MAX_LINE_LENGTH: Final = 120
"""NMEA 0183 caps a sentence at 82 characters with CRLF; receivers exceed it with extra decimals
and proprietary sentences (u-blox PUBX,00 runs to about 110), so allow slack but bound the buffer."""

KNOTS_TO_KMH: Final = 1.852
"""One knot is one nautical mile (exactly 1852 m) per hour."""

DEFAULT_READ_TIMEOUT_S: Final = 0.1
"""How long a poll waits for the first byte: short, because the sampling loop calls poll about every second."""

MAX_BYTES_PER_POLL: Final = 16384
"""More than a tty buffers (4 KiB), so one poll drains it; bounds a poll against an endless stream."""

DEFAULT_SILENT_AFTER_S: Final = 3.0
"""Receivers send at least once a second; three quiet seconds mean no power, a bad cable or a wrong baud rate."""

CLOCK_OFFSET_MAX_AGE_S: Final = 60.0
"""An offset measured longer ago than this no longer describes the gateway clock, which may have been reset."""

_N = TypeVar("_N", int, float)

_LF: Final = ord("\n")
_LINE_STOP: Final = re.compile(rb"[$\n]")  # the end of a line, or the start of the next one cutting it short
_CHECKSUM: Final = re.compile(rb"[0-9A-Fa-f]{2}")
_GGA_QUALITY_INVALID: Final = 0
# RMC mode indicator (NMEA 2.3+) → GGA fix quality, for an epoch whose GGA was lost.
_RMC_MODE_QUALITY: Final = {"A": 1, "D": 2, "R": 4, "F": 5, "E": 6}
_RMC_MODE_NOT_VALID: Final = "N"
_MS_PER_DAY: Final = 86_400_000
_UNIX_EPOCH: Final = dt.date(1970, 1, 1)

# What the wire contract accepts in the optional fields; values outside are dropped, not sent.
_SATELLITES_RANGE: Final = (0, 99)
_HDOP_RANGE: Final = (0.0, 100.0)
_ALTITUDE_RANGE_M: Final = (-1000.0, 20000.0)
_SPEED_RANGE_KMH: Final = (0.0, 2000.0)
_COURSE_RANGE_DEG: Final = (0.0, 360.0)


class ErrorKind(enum.StrEnum):
    """Counter names of the GPS driver and its decoder, assembler and port."""

    CHECKSUM = "checksum"  # a complete line whose *hh was missing or did not match
    GARBAGE_BYTES = "garbage_bytes"  # bytes dropped without being part of a returned sentence
    OVERSIZE = "oversize"  # a line longer than MAX_LINE_LENGTH, dropped
    PARSE_ERROR = "parse_error"  # a checksummed line pynmea2 or the field checks refused
    NO_FIX = "no_fix"  # an epoch without a valid position (RMC status V, GGA quality 0)
    SERIAL_ERROR = "serial_error"  # the port failed to open or read
    REOPEN = "reopen"  # the port was opened again after a failure
    SILENT = "silent"  # no byte for silent_after_s while the port was open (once per quiet spell)


@dataclass(frozen=True)
class Rmc:
    """An RMC (recommended minimum) sentence; times are UTC, ``time_ms`` counts from midnight."""

    talker: str
    time_ms: int | None
    date: dt.date | None
    active: bool  # status A (and a mode indicator other than N): the receiver has a fix
    lat: float | None
    lon: float | None
    speed_knots: float | None
    course_deg: float | None
    mode: str  # FAA mode indicator, "" before NMEA 2.3


@dataclass(frozen=True)
class Gga:
    """A GGA (fix data) sentence; ``time_ms`` counts UTC milliseconds from midnight."""

    talker: str
    time_ms: int | None
    lat: float | None
    lon: float | None
    quality: int
    satellites: int | None
    hdop: float | None
    altitude_m: float | None


@dataclass(frozen=True)
class OtherSentence:
    """A well-formed sentence of a type the fix does not use (GSA, GSV, VTG, TXT, proprietary...)."""

    address: str  # e.g. "GNGSA", "PUBX"


Sentence = Rmc | Gga | OtherSentence
"""What the decoder returns."""


class _BadFieldError(ValueError):
    """A field pynmea2 could not convert (it then hands back the raw text) or one out of range."""


class NmeaDecoder:
    """Turns bytes from the receiver into sentences, resynchronising after noise.

    ``counters`` holds ``checksum``, ``garbage_bytes``, ``oversize`` and ``parse_error``.
    """

    def __init__(self) -> None:
        """Start with an empty buffer and zeroed counters."""
        self._buffer = bytearray()
        self._counts: Counter[str] = Counter()

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts by error kind since creation."""
        kinds = (ErrorKind.CHECKSUM, ErrorKind.GARBAGE_BYTES, ErrorKind.OVERSIZE, ErrorKind.PARSE_ERROR)
        return {kind.value: self._counts[kind] for kind in kinds}

    @property
    def pending(self) -> int:
        """Bytes held that may still be the start of a sentence."""
        return len(self._buffer)

    def feed(self, data: bytes) -> list[Sentence]:
        """Add ``data`` and return every sentence it completes, in stream order."""
        self._buffer += data
        sentences: list[Sentence] = []
        while line := self._next_line():
            sentence = self._decode_line(line)
            if sentence is None:
                self._counts[ErrorKind.GARBAGE_BYTES] += len(line)
            else:
                sentences.append(sentence)
        return sentences

    def reset(self) -> None:
        """Drop a partial sentence (the port was reopened, so its rest will never come)."""
        self._drop(len(self._buffer))

    def _drop(self, count: int) -> None:
        self._counts[ErrorKind.GARBAGE_BYTES] += count
        del self._buffer[:count]

    def _next_line(self) -> bytes | None:
        """Cut the next ``$``...LF line off the buffer; None when none is complete yet."""
        buffer = self._buffer
        while True:
            start = buffer.find(b"$")
            if start < 0:
                self._drop(len(buffer))
                return None
            self._drop(start)
            stop = _LINE_STOP.search(buffer, 1)
            stop_at = len(buffer) if stop is None else stop.start()
            ends_line = stop is not None and buffer[stop_at] == _LF
            # Judged on the bytes before the stop, so a long line counts once, the same whether
            # its end is already buffered or still to come.
            if stop_at >= MAX_LINE_LENGTH:
                self._counts[ErrorKind.OVERSIZE] += 1
                self._drop(stop_at + 1 if ends_line else stop_at)
                continue
            if stop is None:
                return None
            if not ends_line:
                # A new sentence began before this one ended: bytes were lost on the line.
                self._drop(stop_at)
                continue
            line = bytes(buffer[: stop.end()])
            del buffer[: stop.end()]
            return line

    def _decode_line(self, line: bytes) -> Sentence | None:
        """Check and parse one ``$``...LF line; None (counted) when it is refused."""
        body = line.removesuffix(b"\n").removesuffix(b"\r")
        star = body.rfind(b"*")
        received = body[star + 1 :] if star > 0 else b""
        if not _CHECKSUM.fullmatch(received) or not _checksum_matches(body[1:star], received):
            self._counts[ErrorKind.CHECKSUM] += 1
            return None
        try:
            return _to_sentence(pynmea2.parse(body.decode("ascii")))
        except pynmea2.SentenceTypeError:
            # Well formed and checksummed, just a type pynmea2 does not know: not an error.
            return OtherSentence(body[1:star].split(b",", 1)[0].decode("ascii"))
        except (ValueError, _BadFieldError):  # UnicodeDecodeError and pynmea2.ParseError are ValueErrors
            self._counts[ErrorKind.PARSE_ERROR] += 1
            return None


def _checksum_matches(payload: bytes, received: bytes) -> bool:
    """Whether ``received`` (two hex digits) is the XOR of every byte between ``$`` and ``*``."""
    computed = 0
    for byte in payload:
        computed ^= byte
    return computed == int(received, 16)


def _to_sentence(message: pynmea2.NMEASentence) -> Sentence:
    if isinstance(message, pynmea2.RMC):
        lat, lon = _position(message)
        mode = message.mode_indicator or ""
        return Rmc(
            talker=message.talker,
            time_ms=_time_of_day_ms(message.timestamp),
            date=_date(message.datestamp),
            active=message.status == "A" and mode != _RMC_MODE_NOT_VALID,
            lat=lat,
            lon=lon,
            speed_knots=_optional_float(message.spd_over_grnd),
            course_deg=_optional_float(message.true_course),
            mode=mode,
        )
    if isinstance(message, pynmea2.GGA):
        lat, lon = _position(message)
        quality = _optional_int(message.gps_qual)
        return Gga(
            talker=message.talker,
            time_ms=_time_of_day_ms(message.timestamp),
            lat=lat,
            lon=lon,
            quality=_GGA_QUALITY_INVALID if quality is None else quality,
            satellites=_optional_int(message.num_sats),
            hdop=_optional_float(message.horizontal_dil),
            altitude_m=_optional_float(message.altitude),
        )
    return OtherSentence(message.identifier().rstrip(","))


def _position(message: pynmea2.NMEASentence) -> tuple[float | None, float | None]:
    """Signed decimal degrees, or (None, None) for the empty fields a receiver sends without a fix."""
    if not message.lat and not message.lon:
        return None, None
    # pynmea2 reads an unknown hemisphere letter as 0 degrees; refuse it instead.
    if message.lat_dir not in ("N", "S") or message.lon_dir not in ("E", "W"):
        raise _BadFieldError(f"hemisphere {message.lat_dir!r}/{message.lon_dir!r}")
    lat, lon = float(message.latitude), float(message.longitude)
    if not (abs(lat) <= 90 and abs(lon) <= 180):
        raise _BadFieldError(f"position {lat}, {lon} is off the globe")
    return lat, lon


def _time_of_day_ms(value: object) -> int | None:
    if value is None:
        return None
    if not isinstance(value, dt.time):
        raise _BadFieldError(f"time {value!r}")
    # pynmea2 builds microseconds as int(float * 1e6), which can land one below the sent value.
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1000 + round(value.microsecond / 1000)


def _date(value: object) -> dt.date | None:
    if value is None or isinstance(value, dt.date):
        return value
    raise _BadFieldError(f"date {value!r}")


def _optional_float(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        number = float(str(value))
    except ValueError as exc:
        raise _BadFieldError(f"number {value!r}") from exc
    if not math.isfinite(number):
        raise _BadFieldError(f"number {value!r}")
    return number


def _optional_int(value: object) -> int | None:
    if value is None or value == "":
        return None
    try:
        return int(str(value))
    except ValueError as exc:
        raise _BadFieldError(f"integer {value!r}") from exc


def _within(value: _N | None, bounds: tuple[_N, _N]) -> _N | None:
    return value if value is not None and bounds[0] <= value <= bounds[1] else None


def gps_time_ms(date: dt.date, time_ms: int) -> int:
    """UTC milliseconds since 1970 of an NMEA date and time of day."""
    return (date - _UNIX_EPOCH).days * _MS_PER_DAY + time_ms


@dataclass
class _Epoch:
    time_ms: int | None
    ts_ms: int
    rmc: Rmc | None = None
    gga: Gga | None = None


class FixAssembler:
    """Joins the RMC and GGA of each epoch (same UTC time) into one ``GpsFix``.

    An epoch is complete as soon as both sentences are in; an epoch that lost one of them is
    closed by the first sentence of the next and assembled from what it has (an RMC alone gives
    the fix quality from its mode indicator; a GGA alone has no date, so no ``gps_time_ms``).
    ``counters`` holds ``no_fix``: epochs whose receiver had no valid position.
    """

    def __init__(self, receiver_id: str) -> None:
        """Assemble fixes that carry ``receiver_id``."""
        self._receiver_id = receiver_id
        self._epoch: _Epoch | None = None
        self._no_fix = 0

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts by error kind since creation."""
        return {ErrorKind.NO_FIX.value: self._no_fix}

    def add(self, sentence: Sentence, ts_ms: int) -> GpsFix | None:
        """Take one sentence read at gateway time ``ts_ms``; return the fix of an epoch it closes, if valid."""
        if isinstance(sentence, OtherSentence):
            return None
        epoch = self._epoch
        slot_taken = epoch is not None and (epoch.rmc if isinstance(sentence, Rmc) else epoch.gga) is not None
        closed: GpsFix | None = None
        if epoch is None or epoch.time_ms != sentence.time_ms or slot_taken:
            if epoch is not None:
                closed = self._assemble(epoch)
            # The gateway time of an epoch is when its first sentence arrived.
            epoch = self._epoch = _Epoch(sentence.time_ms, ts_ms)
        if isinstance(sentence, Rmc):
            epoch.rmc = sentence
        else:
            epoch.gga = sentence
        if epoch.rmc is not None and epoch.gga is not None:
            self._epoch = None
            return self._assemble(epoch)
        return closed

    def _assemble(self, epoch: _Epoch) -> GpsFix | None:
        rmc, gga = epoch.rmc, epoch.gga
        source = gga or rmc
        valid = (rmc is None or rmc.active) and (gga is None or gga.quality != _GGA_QUALITY_INVALID)
        if source is None or not valid or source.lat is None or source.lon is None:
            self._no_fix += 1
            return None
        fix_time_ms = None
        if rmc is not None and rmc.date is not None and rmc.time_ms is not None:
            fix_time_ms = _within(gps_time_ms(rmc.date, rmc.time_ms), (MIN_TS_MS, MAX_TS_MS))
        speed_kmh = None if rmc is None or rmc.speed_knots is None else rmc.speed_knots * KNOTS_TO_KMH
        return GpsFix(
            receiver_id=self._receiver_id,
            ts_ms=epoch.ts_ms,
            gps_time_ms=fix_time_ms,
            lat=source.lat,
            lon=source.lon,
            fix_quality=gga.quality if gga is not None else _RMC_MODE_QUALITY.get(rmc.mode if rmc else "", 1),
            satellites=_within(gga.satellites, _SATELLITES_RANGE) if gga else None,
            hdop=_within(gga.hdop, _HDOP_RANGE) if gga else None,
            altitude_m=_within(gga.altitude_m, _ALTITUDE_RANGE_M) if gga else None,
            speed_kmh=_within(speed_kmh, _SPEED_RANGE_KMH),
            course_deg=_within(rmc.course_deg, _COURSE_RANGE_DEG) if rmc else None,
        )


class NmeaGps:
    """Reads one NMEA receiver and returns its newest valid fix at most every ``min_fix_interval_s``.

    ``counters`` sums every error kind of the decoder, the assembler and the port, zeros included;
    ``last_fix`` is the newest valid fix assembled (returned or not) and ``clock_offset_ms`` the
    gateway clock minus GPS UTC at that fix.
    """

    def __init__(
        self,
        port: str,
        receiver_id: str,
        *,
        baudrate: int = 9600,
        min_fix_interval_s: float = 5.0,
        wall_clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
        serial_factory: SerialFactory = serial.Serial,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        silent_after_s: float = DEFAULT_SILENT_AFTER_S,
        open_backoff_s: float = DEFAULT_OPEN_BACKOFF_S,
    ) -> None:
        """Check the settings; the port is opened by the first ``poll``.

        Raises ``ValueError`` for a negative fix interval or a non-positive silence threshold.
        """
        if min_fix_interval_s < 0:
            raise ValueError(f"min_fix_interval_s must be 0 or more, got {min_fix_interval_s}")
        if not silent_after_s > 0:
            raise ValueError(f"silent_after_s must be positive, got {silent_after_s}")
        self._min_fix_interval_s = min_fix_interval_s
        self._wall_clock = wall_clock
        self._monotonic = monotonic
        self._read_timeout_s = read_timeout_s
        self._silent_after_s = silent_after_s
        self._serial = ReopeningSerial(
            port, baudrate, open_backoff_s=open_backoff_s, serial_factory=serial_factory, monotonic=monotonic
        )
        self._decoder = NmeaDecoder()
        self._assembler = FixAssembler(receiver_id)
        self._silent = 0
        self._last_data_at = monotonic()
        self._quiet_counted = False
        self._last_fix: GpsFix | None = None
        self._last_fix_at = float("-inf")
        self._unreturned: GpsFix | None = None
        self._last_returned_at = float("-inf")

    @property
    def counters(self) -> Mapping[str, int]:
        """Counts of every error kind since creation, zeros included."""
        merged: Counter[str] = Counter({ErrorKind.SILENT.value: self._silent})
        merged.update(self._decoder.counters)
        merged.update(self._assembler.counters)
        merged.update(self._serial.counters)
        return {kind.value: merged[kind] for kind in ErrorKind}

    @property
    def last_fix(self) -> GpsFix | None:
        """The newest valid fix assembled, whether ``poll`` returned it or not."""
        return self._last_fix

    @property
    def clock_offset_ms(self) -> int | None:
        """Gateway wall clock minus GPS UTC at the last valid fix; None without one from the last minute.

        The gateway time of a fix is when ``poll`` read it, so the figure also holds the receiver's
        output delay and up to one poll interval: good for finding clocks off by seconds, not by milliseconds.
        """
        fix = self._last_fix
        if fix is None or fix.gps_time_ms is None:
            return None
        if self._monotonic() - self._last_fix_at > CLOCK_OFFSET_MAX_AGE_S:
            return None
        return fix.ts_ms - fix.gps_time_ms

    def poll(self) -> list[GpsFix]:
        """Read what the receiver sent since the last call; the newest fix once ``min_fix_interval_s`` has passed."""
        self._open_if_closed()
        data = self._read_available()
        now = self._monotonic()
        if data:
            self._last_data_at = now
            self._quiet_counted = False
        elif self._serial.is_open and now - self._last_data_at >= self._silent_after_s and not self._quiet_counted:
            self._silent += 1
            self._quiet_counted = True
        ts_ms = math.floor(self._wall_clock() * 1000)
        for sentence in self._decoder.feed(data):
            fix = self._assembler.add(sentence, ts_ms)
            if fix is not None:
                self._last_fix = self._unreturned = fix
                self._last_fix_at = now
        if self._unreturned is None or now - self._last_returned_at < self._min_fix_interval_s:
            return []
        fix, self._unreturned = self._unreturned, None
        self._last_returned_at = now
        return [fix]

    def close(self) -> None:
        """Close the serial port."""
        self._serial.close()

    def _open_if_closed(self) -> None:
        if self._serial.is_open:
            return
        # ReopeningSerial opens on send; sending nothing opens the port and discards what the tty
        # buffered while nobody read it, which is stale by now.
        if self._serial.send(b""):
            self._decoder.reset()
            self._last_data_at = self._monotonic()
            self._quiet_counted = False

    def _read_available(self) -> bytes:
        """Wait up to the read timeout for the first byte, then take whatever else is already buffered."""
        data = self._serial.read(self._read_timeout_s)
        while data and len(data) < MAX_BYTES_PER_POLL and (more := self._serial.read(0.0)):
            data += more
        return data
