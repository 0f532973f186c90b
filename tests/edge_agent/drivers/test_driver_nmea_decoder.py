"""NmeaDecoder and FixAssembler: real-world sentence vectors, stream splitting, noise, and round trips."""

from __future__ import annotations

import datetime as dt
from functools import reduce

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.drivers.nmea_gps import (
    MAX_LINE_LENGTH,
    FixAssembler,
    Gga,
    NmeaDecoder,
    OtherSentence,
    Rmc,
    Sentence,
    gps_time_ms,
)
from firmware_sims.gps import format_gga, format_gsa, format_rmc

approx = pytest.approx
TS_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z, the gateway clock in these tests


def hms_ms(h: int, m: int, s: int, ms: int = 0) -> int:
    return ((h * 60 + m) * 60 + s) * 1000 + ms


def with_checksum(payload: str) -> bytes:
    """A sentence from its text between ``$`` and ``*``; for the malformed cases only (the vectors carry theirs)."""
    return f"${payload}*{reduce(lambda acc, c: acc ^ ord(c), payload, 0):02X}\r\n".encode()


# Real-world sentences with the checksums they were published with. Sources: the classic NMEA
# reference examples (gpsinformation.org, 1, 2), Glenn Baddeley's RMC notes quoted by gpsd (3),
# receiver logs (4, 5, 9-14), the u-blox protocol specification (6, 7), the pynmea2 docs (8) and
# the no-fix output of u-blox receivers (15, 16).
VECTORS: list[tuple[str, Sentence]] = [
    (
        "$GPGGA,123519,4807.038,N,01131.000,E,1,08,0.9,545.4,M,46.9,M,,*47",
        Gga("GP", hms_ms(12, 35, 19), approx(48.1173), approx(11.516667), 1, 8, 0.9, 545.4),
    ),
    (
        "$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6A",
        Rmc("GP", hms_ms(12, 35, 19), dt.date(1994, 3, 23), True, approx(48.1173), approx(11.516667), 22.4, 84.4, ""),
    ),
    (
        "$GPRMC,225446,A,4916.45,N,12311.12,W,000.5,054.7,191194,020.3,E*68",
        Rmc(
            "GP", hms_ms(22, 54, 46), dt.date(1994, 11, 19), True, approx(49.274167), approx(-123.185333), 0.5, 54.7, ""
        ),
    ),
    (
        "$GPGGA,092750.000,5321.6802,N,00630.3372,W,1,8,1.03,61.7,M,55.2,M,,*76",
        Gga("GP", hms_ms(9, 27, 50), approx(53.361337), approx(-6.50562), 1, 8, 1.03, 61.7),
    ),
    (
        "$GPRMC,092750.000,A,5321.6802,N,00630.3372,W,0.02,31.66,280511,,,A*43",
        Rmc("GP", hms_ms(9, 27, 50), dt.date(2011, 5, 28), True, approx(53.361337), approx(-6.50562), 0.02, 31.66, "A"),
    ),
    (
        "$GPRMC,083559.00,A,4717.11437,N,00833.91522,E,0.004,77.52,091202,,,A*57",
        Rmc(
            "GP", hms_ms(8, 35, 59), dt.date(2002, 12, 9), True, approx(47.285240), approx(8.565254), 0.004, 77.52, "A"
        ),
    ),
    (
        "$GPGGA,092725.00,4717.11399,N,00833.91590,E,1,08,1.01,499.6,M,48.0,M,,*5B",
        Gga("GP", hms_ms(9, 27, 25), approx(47.285233), approx(8.565265), 1, 8, 1.01, 499.6),
    ),
    (
        "$GPGGA,184353.07,1929.045,S,02410.506,E,1,04,2.6,100.00,M,-33.9,M,,0000*6D",
        Gga("GP", hms_ms(18, 43, 53, 70), approx(-19.48408333), approx(24.17510), 1, 4, 2.6, 100.0),
    ),
    (
        "$GNRMC,001031.00,A,4404.13993,N,12118.86023,W,0.146,,100117,,,A*7B",
        Rmc(
            "GN",
            hms_ms(0, 10, 31),
            dt.date(2017, 1, 10),
            True,
            approx(44.068999),
            approx(-121.314337),
            0.146,
            None,
            "A",
        ),
    ),
    (
        "$GNGGA,001043.00,4404.14036,N,12118.85961,W,1,12,0.98,1113.0,M,-21.3,M,,*47",
        Gga("GN", hms_ms(0, 10, 43), approx(44.069006), approx(-121.314327), 1, 12, 0.98, 1113.0),
    ),
    (
        "$BDGGA,023656.00,2240.61563,N,11359.86512,E,1,23,0.7,96.53,M,-3.52,M,,*5B",
        Gga("BD", hms_ms(2, 36, 56), approx(22.676927), approx(113.997752), 1, 23, 0.7, 96.53),
    ),
    (
        "$GNRMC,052848.40,A,4958.43074,N,00909.25157,E,0.371,0.451,240516,,,D*43",
        Rmc(
            "GN",
            hms_ms(5, 28, 48, 400),
            dt.date(2016, 5, 24),
            True,
            approx(49.973846),
            approx(9.154193),
            0.371,
            0.451,
            "D",
        ),
    ),
    (
        "$GLRMC,052848.40,V,4958.43074,S,00909.25157,W,,,240516,,,E*5D",
        Rmc(
            "GL",
            hms_ms(5, 28, 48, 400),
            dt.date(2016, 5, 24),
            False,
            approx(-49.973846),
            approx(-9.154193),
            None,
            None,
            "E",
        ),
    ),
    (
        # Status A but mode N (data not valid): not a fix.
        "$GARMC,052848.40,A,4958.43074,N,00909.25157,E,,0.451,240516,0.332,E,N*04",
        Rmc(
            "GA",
            hms_ms(5, 28, 48, 400),
            dt.date(2016, 5, 24),
            False,
            approx(49.973846),
            approx(9.154193),
            None,
            0.451,
            "N",
        ),
    ),
    ("$GPRMC,,V,,,,,,,,,,N*53", Rmc("GP", None, None, False, None, None, None, None, "N")),
    ("$GPGGA,,,,,,0,00,99.99,,,,,,*48", Gga("GP", None, None, None, 0, 0, 99.99, None)),
    ("$GPGSA,A,3,04,05,,09,12,,,24,,,,,2.5,1.3,2.1*39", OtherSentence("GPGSA")),
    ("$GPVTG,054.7,T,034.4,M,005.5,N,010.2,K*48", OtherSentence("GPVTG")),
    ("$GNTXT,01,01,01,ANTENNA OK*2B", OtherSentence("GNTXT")),
]
VECTOR_IDS = [text.split(",", 1)[0][1:] + "-" + str(i) for i, (text, _) in enumerate(VECTORS)]


def line(text: str) -> bytes:
    return text.encode() + b"\r\n"


def feed_chunks(chunks: list[bytes]) -> tuple[list[Sentence], dict[str, int], int]:
    decoder = NmeaDecoder()
    sentences = [sentence for chunk in chunks for sentence in decoder.feed(chunk)]
    return sentences, dict(decoder.counters), decoder.pending


def byte_by_byte(data: bytes) -> list[bytes]:
    return [data[i : i + 1] for i in range(len(data))]


NO_ERRORS = {"checksum": 0, "garbage_bytes": 0, "oversize": 0, "parse_error": 0}


# --- the vector table ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "expected"), VECTORS, ids=VECTOR_IDS)
def test_vector_checksums_are_the_published_ones(text: str, expected: Sentence) -> None:
    payload, received = text[1:].split("*")
    assert f"{reduce(lambda acc, c: acc ^ ord(c), payload, 0):02X}" == received


@pytest.mark.parametrize(("text", "expected"), VECTORS, ids=VECTOR_IDS)
def test_vector_decodes_whole_split_anywhere_and_byte_by_byte(text: str, expected: Sentence) -> None:
    data = line(text)
    assert feed_chunks([data]) == ([expected], NO_ERRORS, 0)
    for split in range(1, len(data)):
        assert feed_chunks([data[:split], data[split:]]) == ([expected], NO_ERRORS, 0), split
    assert feed_chunks(byte_by_byte(data)) == ([expected], NO_ERRORS, 0)


def test_all_vectors_in_one_stream_decode_in_order_however_they_are_cut() -> None:
    stream = b"".join(line(text) for text, _ in VECTORS)
    expected = [sentence for _, sentence in VECTORS]
    assert feed_chunks([stream]) == (expected, NO_ERRORS, 0)
    assert feed_chunks(byte_by_byte(stream)) == (expected, NO_ERRORS, 0)
    assert feed_chunks([stream[i : i + 7] for i in range(0, len(stream), 7)]) == (expected, NO_ERRORS, 0)


# --- noise ---------------------------------------------------------------------------------------

RMC = line(VECTORS[1][0])
GGA = line(VECTORS[0][0])


@pytest.mark.parametrize("chunked", [False, True], ids=["whole", "byte-by-byte"])
def test_garbage_before_after_and_between_is_counted_and_skipped(chunked: bool) -> None:
    before, between, after = b"\x00\xff\r\nnoise", b"\n\n*12\r", b"tail bytes"
    stream = before + RMC + between + GGA + after
    sentences, counters, pending = feed_chunks(byte_by_byte(stream) if chunked else [stream])
    assert sentences == [VECTORS[1][1], VECTORS[0][1]]
    assert counters == {**NO_ERRORS, "garbage_bytes": len(before + between + after)}
    assert pending == 0


def test_a_partial_sentence_is_held_until_its_end_arrives() -> None:
    decoder = NmeaDecoder()
    assert decoder.feed(RMC[:30]) == []
    assert decoder.pending == 30
    assert decoder.feed(RMC[30:]) == [VECTORS[1][1]]
    assert decoder.pending == 0


@pytest.mark.parametrize("index", [1, 10, 40, len(RMC) - 4])
def test_bad_checksum_is_counted_and_the_next_sentence_decoded(index: int) -> None:
    corrupted = bytearray(RMC)
    corrupted[index] ^= 0x01
    stream = bytes(corrupted) + GGA
    for chunks in ([stream], byte_by_byte(stream)):
        sentences, counters, _ = feed_chunks(chunks)
        assert sentences == [VECTORS[0][1]]
        assert counters == {**NO_ERRORS, "checksum": 1, "garbage_bytes": len(RMC)}


@pytest.mark.parametrize(
    "bad",
    [
        b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W\r\n",  # no checksum at all
        b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6\r\n",  # one digit
        b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*6AA\r\n",  # three
        b"$GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W*+A\r\n",  # not hex
    ],
)
def test_missing_or_malformed_checksum_counts_as_checksum(bad: bytes) -> None:
    sentences, counters, _ = feed_chunks([bad + GGA])
    assert sentences == [VECTORS[0][1]]
    assert counters["checksum"] == 1


def test_lowercase_checksum_and_bare_lf_are_accepted() -> None:
    text = VECTORS[1][0]
    assert feed_chunks([text[:-2].encode() + text[-2:].lower().encode() + b"\n"]) == ([VECTORS[1][1]], NO_ERRORS, 0)


def test_sentence_cut_short_by_the_next_one_is_garbage_not_a_checksum_error() -> None:
    stream = RMC[:25] + GGA
    for chunks in ([stream], byte_by_byte(stream)):
        assert feed_chunks(chunks) == ([VECTORS[0][1]], {**NO_ERRORS, "garbage_bytes": 25}, 0)


@pytest.mark.parametrize("terminated", [True, False])
def test_oversize_line_is_dropped_and_counted_once_however_it_arrives(terminated: bool) -> None:
    long_line = b"$GPTXT," + b"A" * 150 + (b"*00\r\n" if terminated else b"")
    stream = long_line + GGA
    results = [feed_chunks(chunks) for chunks in ([stream], byte_by_byte(stream), [stream[:100], stream[100:]])]
    for result in results:
        assert result == ([VECTORS[0][1]], {**NO_ERRORS, "oversize": 1, "garbage_bytes": len(long_line)}, 0)


def test_a_line_of_exactly_the_maximum_length_is_accepted() -> None:
    payload = "GPTXT,01,01,02," + "X" * (MAX_LINE_LENGTH - 21)
    data = with_checksum(payload)
    assert len(data) == MAX_LINE_LENGTH
    assert feed_chunks([data]) == ([OtherSentence("GPTXT")], NO_ERRORS, 0)
    longer = with_checksum(payload + "X")
    assert feed_chunks([longer])[1]["oversize"] == 1


def test_a_line_that_never_ends_is_dropped_once_it_is_too_long() -> None:
    decoder = NmeaDecoder()
    decoder.feed(b"$")
    for _ in range(100):
        decoder.feed(b"9" * 50)
        assert decoder.pending < MAX_LINE_LENGTH
    assert decoder.counters["oversize"] == 1
    assert decoder.counters["garbage_bytes"] == 5001


@pytest.mark.parametrize(
    "payload",
    [
        "GPRMC,12x519,A,4807.038,N,01131.000,E,022.4,084.4,230394,003.1,W",  # time
        "GPRMC,123519,A,4807.038,N,01131.000,E,022.4,084.4,320394,003.1,W",  # date 32 March
        "GPRMC,123519,A,4807.038,X,01131.000,E,022.4,084.4,230394,003.1,W",  # hemisphere
        "GPRMC,123519,A,9107.038,N,01131.000,E,022.4,084.4,230394,003.1,W",  # latitude beyond the pole
        "GPRMC,123519,A,48O7.038,N,01131.000,E,022.4,084.4,230394,003.1,W",  # letter O for zero
        "GPRMC,123519,A,4807.038,N,01131.000,E,fast,084.4,230394,003.1,W",  # speed
        "GPGGA,123519,4807.038,N,01131.000,E,one,08,0.9,545.4,M,46.9,M,,",  # quality
        "GPGGA,123519,4807.038,N,01131.000,E,1,08,nan,545.4,M,46.9,M,,",  # hdop
        "GPGGA,123519,4807.038,N,01131.000,E,1,8.5,0.9,545.4,M,46.9,M,,",  # satellites
        "GP\u00e9GA,1",  # not ASCII, yet checksummed
        "G,1,2",  # no sentence address
    ],
)
def test_checksummed_but_unparsable_sentence_counts_parse_error(payload: str) -> None:
    bad = f"${payload}*{reduce(lambda acc, b: acc ^ b, payload.encode(), 0):02X}\r\n".encode()
    sentences, counters, _ = feed_chunks([bad + GGA])
    assert sentences == [VECTORS[0][1]]
    assert counters == {**NO_ERRORS, "parse_error": 1, "garbage_bytes": len(bad)}


def test_unknown_and_proprietary_sentences_are_passed_on_not_counted() -> None:
    stream = with_checksum("GPZZZ,1,2") + with_checksum("PUBX,00,081350.00,4717.113210,N") + GGA
    assert feed_chunks([stream]) == ([OtherSentence("GPZZZ"), OtherSentence("PUBX"), VECTORS[0][1]], NO_ERRORS, 0)


def test_reset_drops_a_partial_sentence_as_garbage() -> None:
    decoder = NmeaDecoder()
    decoder.feed(RMC[:20])
    decoder.reset()
    assert decoder.pending == 0
    assert decoder.counters["garbage_bytes"] == 20
    assert decoder.feed(RMC[20:] + GGA) == [VECTORS[0][1]]


VECTOR_BY_LINE = {line(text): sentence for text, sentence in VECTORS}


@settings(max_examples=200)
@given(
    parts=st.lists(st.tuples(st.binary(max_size=30), st.sampled_from(list(VECTOR_BY_LINE))), max_size=8),
    trailing=st.binary(max_size=30),
    cuts=st.lists(st.integers(min_value=1, max_value=40), max_size=30),
)
def test_any_noise_between_sentences_and_any_cutting_gives_the_same_result(
    parts: list[tuple[bytes, bytes]], trailing: bytes, cuts: list[int]
) -> None:
    # Noise without "$" can never pass for a sentence; every byte of it must be counted.
    noises = [noise.replace(b"$", b"") for noise, _ in parts] + [trailing.replace(b"$", b"")]
    stream = b"".join(noise + sentence for noise, (_, sentence) in zip(noises, parts, strict=False)) + noises[-1]
    chunks, position = [], 0
    for cut in cuts:
        chunks.append(stream[position : position + cut])
        position += cut
    chunks.append(stream[position:])
    garbage = sum(len(noise) for noise in noises)
    expected = ([VECTOR_BY_LINE[sentence] for _, sentence in parts], {**NO_ERRORS, "garbage_bytes": garbage}, 0)
    assert feed_chunks([stream]) == expected
    assert feed_chunks(chunks) == expected


# --- the assembler -------------------------------------------------------------------------------

# One epoch from one receiver log (vectors 4 and 5): 2011-05-28 09:27:50 UTC, west of Greenwich.
EPOCH_GGA = line(VECTORS[3][0])
EPOCH_RMC = line(VECTORS[4][0])
EPOCH_UTC_MS = 1_306_574_870_000


def assemble(stream: bytes, ts_ms: int = TS_MS) -> tuple[list, FixAssembler]:
    assembler = FixAssembler("gps-1")
    results = [assembler.add(sentence, ts_ms) for sentence in NmeaDecoder().feed(stream)]
    return [fix for fix in results if fix is not None], assembler


@pytest.mark.parametrize("order", ["rmc-first", "gga-first"])
def test_rmc_and_gga_of_one_epoch_make_one_fix(order: str) -> None:
    stream = EPOCH_RMC + EPOCH_GGA if order == "rmc-first" else EPOCH_GGA + EPOCH_RMC
    fixes, assembler = assemble(with_checksum("GPGSA,A,3,,,,,,,,,,,,,1.5,1.0,1.1") + stream)
    assert len(fixes) == 1
    fix = fixes[0]
    assert fix.receiver_id == "gps-1"
    assert fix.ts_ms == TS_MS
    assert fix.gps_time_ms == EPOCH_UTC_MS
    assert (fix.lat, fix.lon) == (approx(53.361337), approx(-6.50562))
    assert (fix.fix_quality, fix.satellites, fix.hdop, fix.altitude_m) == (1, 8, 1.03, 61.7)
    assert fix.speed_kmh == approx(0.02 * 1.852)
    assert fix.course_deg == 31.66
    assert assembler.counters == {"no_fix": 0}


def test_gps_time_is_utc_milliseconds_of_date_and_time() -> None:
    assert gps_time_ms(dt.date(2011, 5, 28), hms_ms(9, 27, 50)) == EPOCH_UTC_MS
    assert gps_time_ms(dt.date(1970, 1, 2), 1) == 86_400_001
    assert int(dt.datetime(2011, 5, 28, 9, 27, 50, tzinfo=dt.UTC).timestamp() * 1000) == EPOCH_UTC_MS


def test_fix_time_keeps_the_fraction_of_a_second() -> None:
    payload = "GNRMC,052848.40,A,4958.43074,N,00909.25157,E,0.371,0.451,240516,,,D"
    gga = "GNGGA,052848.40,4958.43074,N,00909.25157,E,2,10,0.8,180.0,M,47.0,M,,"
    fixes, _ = assemble(with_checksum(payload) + with_checksum(gga))
    assert fixes[0].gps_time_ms % 1000 == 400
    assert fixes[0].fix_quality == 2


@pytest.mark.parametrize(
    "stream",
    [
        line(VECTORS[14][0]) + line(VECTORS[15][0]),  # before the first fix: empty fields
        with_checksum("GPRMC,092750.000,V,5321.6802,N,00630.3372,W,0.02,31.66,280511,,,N") + EPOCH_GGA,
        EPOCH_RMC + with_checksum("GPGGA,092750.000,5321.6802,N,00630.3372,W,0,8,1.03,61.7,M,55.2,M,,"),
    ],
    ids=["empty", "rmc-void", "gga-invalid"],
)
def test_an_epoch_without_a_valid_fix_counts_no_fix_once(stream: bytes) -> None:
    fixes, assembler = assemble(stream)
    assert fixes == []
    assert assembler.counters == {"no_fix": 1}


def test_rmc_alone_is_closed_by_the_next_epoch_with_the_quality_from_its_mode() -> None:
    first = with_checksum("GNRMC,101500.00,A,1046.20000,N,10642.00000,E,10.0,90.0,010326,,,D")
    second = with_checksum("GNRMC,101501.00,A,1046.20000,N,10642.01000,E,10.0,90.0,010326,,,D")
    fixes, assembler = assemble(first + second)
    assert len(fixes) == 1
    assert fixes[0].fix_quality == 2
    assert fixes[0].satellites is None
    assert fixes[0].gps_time_ms == int(dt.datetime(2026, 3, 1, 10, 15, tzinfo=dt.UTC).timestamp() * 1000)
    assert assembler.counters == {"no_fix": 0}


def test_gga_alone_gives_a_fix_without_gps_time() -> None:
    fixes, _ = assemble(GGA + EPOCH_GGA)
    assert len(fixes) == 1
    assert fixes[0].gps_time_ms is None
    assert fixes[0].speed_kmh is None
    assert fixes[0].lat == approx(48.1173)


def test_a_repeated_sentence_type_starts_a_new_epoch_even_without_time() -> None:
    no_fix = line(VECTORS[14][0])
    _, assembler = assemble(no_fix * 3)
    assert assembler.counters == {"no_fix": 2}  # the third is still open


def test_the_epoch_is_stamped_when_its_first_sentence_arrived() -> None:
    assembler = FixAssembler("gps-1")
    decoder = NmeaDecoder()
    assert assembler.add(decoder.feed(EPOCH_RMC)[0], TS_MS) is None
    fix = assembler.add(decoder.feed(EPOCH_GGA)[0], TS_MS + 900)
    assert fix is not None
    assert fix.ts_ms == TS_MS


def test_values_the_contract_refuses_are_left_out() -> None:
    rmc = with_checksum("GNRMC,101500.00,A,1046.20000,N,10642.00000,E,9999.0,400.0,010369,,,A")
    gga = with_checksum("GNGGA,101500.00,1046.20000,N,10642.00000,E,1,120,150.0,25000.0,M,0.0,M,,")
    fixes, _ = assemble(rmc + gga)
    fix = fixes[0]
    assert (fix.speed_kmh, fix.course_deg, fix.satellites, fix.hdop, fix.altitude_m) == (None,) * 5
    assert fix.gps_time_ms is None  # 1969 by the two-digit year rule: before the contract's range


# --- round trip from the simulator's encoders ----------------------------------------------------


@settings(max_examples=300)
@given(
    utc=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2068, 12, 31, 23, 59, 59)),
    lat=st.floats(min_value=-90, max_value=90),
    lon=st.floats(min_value=-180, max_value=180),
    speed_kmh=st.floats(min_value=0, max_value=300),
    course_deg=st.floats(min_value=0, max_value=359.99),
    talker=st.sampled_from(["GP", "GN", "GL", "BD", "GA"]),
)
def test_simulator_sentences_round_trip_through_decoder_and_assembler(
    utc: dt.datetime, lat: float, lon: float, speed_kmh: float, course_deg: float, talker: str
) -> None:
    stream = (
        format_rmc(utc, lat, lon, speed_kmh=speed_kmh, course_deg=course_deg, talker=talker)
        + format_gsa(fix=True, talker=talker)
        + format_gga(utc, lat, lon, satellites=11, hdop=1.2, altitude_m=-12.5, talker=talker)
    )
    decoder = NmeaDecoder()
    fixes, assembler = assemble(stream)
    assert decoder.feed(stream)
    assert decoder.counters == NO_ERRORS
    assert assembler.counters == {"no_fix": 0}
    (fix,) = fixes
    assert fix.lat == approx(lat, abs=1e-5)
    assert fix.lon == approx(lon, abs=1e-5)
    assert fix.gps_time_ms is not None
    assert fix.gps_time_ms // 1000 == int(utc.replace(tzinfo=dt.UTC).timestamp())
    assert fix.speed_kmh == approx(speed_kmh, abs=0.002)
    assert fix.course_deg == approx(course_deg, abs=0.005)
    assert (fix.fix_quality, fix.satellites, fix.hdop, fix.altitude_m) == (1, 11, 1.2, -12.5)


@given(
    utc=st.datetimes(min_value=dt.datetime(2000, 1, 1), max_value=dt.datetime(2068, 12, 31)),
    talker=st.sampled_from(["GP", "GN", "BD"]),
)
def test_simulator_no_fix_sentences_count_no_fix(utc: dt.datetime, talker: str) -> None:
    stream = format_rmc(utc, None, None, talker=talker) + format_gga(utc, None, None, talker=talker)
    fixes, assembler = assemble(stream)
    assert fixes == []
    assert assembler.counters == {"no_fix": 1}


@pytest.mark.parametrize(
    ("lat", "lon"),
    [(-33.8688, 151.2093), (-22.9068, -43.1729), (40.7128, -74.006), (-0.000001, -0.000001), (89.9999999, 179.9999999)],
    ids=["south-east", "south-west", "north-west", "just-south-west-of-null-island", "pole-and-antimeridian"],
)
def test_every_hemisphere_round_trips(lat: float, lon: float) -> None:
    utc = dt.datetime(2026, 3, 1, 6, 0, 0, tzinfo=dt.UTC)
    fixes, _ = assemble(format_rmc(utc, lat, lon) + format_gga(utc, lat, lon))
    assert (fixes[0].lat, fixes[0].lon) == (approx(lat, abs=1e-5), approx(lon, abs=1e-5))
