"""The GPS simulator's pure parts: NMEA encoders, checksum and the route model."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sims.gps import (
    EARTH_RADIUS_M,
    Waypoint,
    checksum,
    format_gga,
    format_gsa,
    format_rmc,
    position_at,
)

UTC_NOON = datetime(2026, 3, 1, 12, 34, 56, 789_000, tzinfo=UTC)


def fields(sentence: bytes) -> list[str]:
    """The comma-separated fields of one sentence, after checking its frame and checksum by hand."""
    assert sentence.startswith(b"$")
    assert sentence.endswith(b"\r\n")
    payload, received = sentence[1:-2].decode("ascii").split("*")
    computed = 0
    for char in payload:
        computed ^= ord(char)
    assert f"{computed:02X}" == received
    return payload.split(",")


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        # Published sentences: the classic GGA / RMC examples and u-blox's no-fix RMC.
        ("GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,", "47"),
        ("GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W", "6A"),
        ("GPRMC,,V,,,,,,,,,,N", "53"),
        ("", "00"),
    ],
)
def test_checksum_matches_published_sentences(payload: str, expected: str) -> None:
    assert checksum(payload) == expected


def test_rmc_with_a_fix() -> None:
    sentence = format_rmc(UTC_NOON, 48.1173, 11.516666667, speed_kmh=41.4848, course_deg=84.4)
    assert sentence.startswith(b"$GNRMC,123456.78,A,4807.03800,N,01131.00000,E,22.400,84.40,010326,,,A*")
    fields(sentence)


def test_gga_with_a_fix() -> None:
    sentence = format_gga(UTC_NOON, 48.1173, 11.516666667, satellites=8, hdop=0.9, altitude_m=545.4, talker="GP")
    assert sentence.startswith(b"$GPGGA,123456.78,4807.03800,N,01131.00000,E,1,08,0.90,545.4,M,-3.5,M,,*")
    fields(sentence)


def test_no_fix_sentences_have_empty_position_fields() -> None:
    rmc, gga, gsa = format_rmc(UTC_NOON, None, None), format_gga(UTC_NOON, None, None), format_gsa(fix=False)
    assert fields(rmc) == ["GNRMC", "123456.78", "V", "", "", "", "", "", "", "010326", "", "", "N"]
    assert fields(gga) == ["GNGGA", "123456.78", "", "", "", "", "0", "00", "99.99", "", "", "", "", "", ""]
    assert fields(gsa) == ["GNGSA", "A", "1", *[""] * 12, "99.99", "99.99", "99.99"]


def test_gsa_lists_the_satellites_of_a_3d_fix() -> None:
    assert fields(format_gsa(fix=True, satellite_ids=[1, 12, 32])) == [
        "GNGSA", "A", "3", "01", "12", "32", *[""] * 9, "1.60", "0.90", "1.30"
    ]  # fmt: skip
    with pytest.raises(ValueError, match="at most 12"):
        format_gsa(fix=True, satellite_ids=range(13))


@pytest.mark.parametrize(
    ("lat", "lon", "expected"),
    [
        (-33.8688, 151.2093, ["3352.12800", "S", "15112.55800", "E"]),
        (-22.9068, -43.1729, ["2254.40800", "S", "04310.37400", "W"]),
        (0.0, 0.0, ["0000.00000", "N", "00000.00000", "E"]),
        (-90.0, -180.0, ["9000.00000", "S", "18000.00000", "W"]),
        # 59.9999999' rounds up: the carry must reach the degrees, never print 60 minutes.
        (10.99999999, -106.99999999, ["1100.00000", "N", "10700.00000", "W"]),
    ],
)
def test_positions_in_every_hemisphere(lat: float, lon: float, expected: list[str]) -> None:
    assert fields(format_gga(UTC_NOON, lat, lon))[2:6] == expected


def test_time_is_utc_whatever_the_zone_and_naive_means_utc() -> None:
    hanoi = UTC_NOON.astimezone(timezone(timedelta(hours=7)))
    assert format_rmc(hanoi, 1.0, 2.0) == format_rmc(UTC_NOON, 1.0, 2.0)
    assert format_rmc(UTC_NOON.replace(tzinfo=None), 1.0, 2.0) == format_rmc(UTC_NOON, 1.0, 2.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: format_rmc(UTC_NOON, 1.0, None), "both lat and lon"),
        (lambda: format_gga(UTC_NOON, 1.0, 2.0, talker="G"), "two capital letters"),
        (lambda: format_gga(UTC_NOON, 1.0, 2.0, talker="gp"), "two capital letters"),
    ],
)
def test_encoders_refuse_what_nmea_cannot_say(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


@given(
    lat=st.floats(min_value=-90, max_value=90),
    lon=st.floats(min_value=-180, max_value=180),
    utc=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)),
)
def test_every_sentence_is_framed_checksummed_and_within_82_characters(lat: float, lon: float, utc: datetime) -> None:
    for sentence in (
        format_rmc(utc, lat, lon, speed_kmh=1999.0, course_deg=359.99),
        format_gga(utc, lat, lon, altitude_m=-999.9),
        format_gsa(fix=True),
    ):
        fields(sentence)
        assert len(sentence) <= 82


# --- the route model -----------------------------------------------------------------------------


def leg_length_m(a: Waypoint, b: Waypoint) -> float:
    mean_lat = math.radians((a.lat + b.lat) / 2)
    return EARTH_RADIUS_M * math.hypot(math.radians(b.lat - a.lat), math.radians(b.lon - a.lon) * math.cos(mean_lat))


ROUTE = [
    Waypoint(11.9404, 108.4583, dwell_s=60.0, speed_kmh=40.0),  # loading at the packhouse
    Waypoint(11.5, 108.9, dwell_s=30.0, speed_kmh=80.0),
    Waypoint(10.7769, 106.7009),  # the city
]


def test_dwell_then_drive_then_stay_at_the_end() -> None:
    first_leg_s = leg_length_m(ROUTE[0], ROUTE[1]) / (40 / 3.6)
    second_leg_s = leg_length_m(ROUTE[1], ROUTE[2]) / (80 / 3.6)
    lat, lon, speed, course = position_at(ROUTE, 59.9)
    assert (lat, lon, speed) == (11.9404, 108.4583, 0.0)
    assert 90 < course < 180  # already facing south-east, down the first leg
    lat, lon, speed, _ = position_at(ROUTE, 60 + first_leg_s / 2)
    assert (lat, lon, speed) == (pytest.approx((11.9404 + 11.5) / 2), pytest.approx((108.4583 + 108.9) / 2), 40.0)
    assert position_at(ROUTE, 60 + first_leg_s + 10)[:3] == (11.5, 108.9, 0.0)
    _, _, speed, course = position_at(ROUTE, 60 + first_leg_s + 30 + 1)
    assert speed == 80.0
    assert 180 < course < 270  # south-west to the city
    end = position_at(ROUTE, 60 + first_leg_s + 30 + second_leg_s + 1e6)
    assert end[:3] == (10.7769, 106.7009, 0.0)
    assert end[3] == pytest.approx(course)  # standing still, it keeps the last course


def test_speed_is_distance_over_time() -> None:
    start, one_minute = position_at(ROUTE, 100.0), position_at(ROUTE, 160.0)
    moved_m = leg_length_m(Waypoint(start[0], start[1]), Waypoint(one_minute[0], one_minute[1]))
    assert moved_m == pytest.approx(40_000 / 60, rel=1e-3)


@pytest.mark.parametrize(
    ("end", "course"),
    [((1.0, 0.0), 0.0), ((0.0, 1.0), 90.0), ((-1.0, 0.0), 180.0), ((0.0, -1.0), 270.0)],
)
def test_course_points_along_the_leg(end: tuple[float, float], course: float) -> None:
    route = [Waypoint(0.0, 0.0), Waypoint(*end)]
    assert position_at(route, 1.0)[3] == pytest.approx(course)


def test_a_leg_across_the_antimeridian_goes_the_short_way() -> None:
    route = [Waypoint(-17.0, 179.9, speed_kmh=100.0), Waypoint(-17.0, -179.9)]
    length_m = EARTH_RADIUS_M * math.radians(0.2) * math.cos(math.radians(-17.0))
    duration_s = length_m / (100 / 3.6)
    lat, lon, _, course = position_at(route, duration_s * 0.75)
    assert lat == pytest.approx(-17.0)
    assert lon == pytest.approx(-179.95)
    assert course == pytest.approx(90.0)


def test_one_waypoint_and_negative_time_stand_at_the_start() -> None:
    assert position_at([Waypoint(1.0, 2.0, dwell_s=5)], 100.0) == (1.0, 2.0, 0.0, 0.0)
    assert position_at(ROUTE, -5.0)[:3] == (11.9404, 108.4583, 0.0)


def test_repeated_waypoints_are_passed_without_a_stop() -> None:
    route = [Waypoint(0.0, 0.0, speed_kmh=10.0), Waypoint(0.0, 0.0, speed_kmh=10.0), Waypoint(0.0, 0.01)]
    assert position_at(route, 10.0)[2:] == (10.0, pytest.approx(90.0))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lat": 91.0, "lon": 0.0}, "off the globe"),
        ({"lat": 0.0, "lon": -180.5}, "off the globe"),
        ({"lat": 0.0, "lon": 0.0, "dwell_s": -1.0}, "dwell_s"),
        ({"lat": 0.0, "lon": 0.0, "speed_kmh": 0.0}, "speed_kmh"),
        ({"lat": 0.0, "lon": 0.0, "speed_kmh": math.inf}, "speed_kmh"),
    ],
)
def test_waypoint_refuses_impossible_values(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Waypoint(**kwargs)


def test_empty_route_is_refused() -> None:
    with pytest.raises(ValueError, match="at least one waypoint"):
        position_at([], 0.0)
