"""GS1 Digital Link URIs, check digits and SGTIN EPC URIs (GS1 Tag Data Standard)."""

from __future__ import annotations

from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hub.traceability.digital_link import (
    CSET82,
    DigitalLink,
    DigitalLinkError,
    gln_uri,
    gtin14,
    gtin_check_digit,
    item_uri,
    lot_uri,
    parse,
    sgtin_uri_to_gtin_serial,
)


@pytest.mark.parametrize(
    ("body", "digit"),
    [
        ("0950600013435", 2),  # GTIN 09506000134352, GS1 Digital Link examples
        ("629104150021", 3),  # GTIN-13 6291041500213, GS1 General Specifications
        ("9638507", 4),  # GTIN-8 96385074
        ("8061414112345", 8),  # GTIN 80614141123458, GS1 Tag Data Standard
        ("10614141123456789", 7),  # SSCC 106141411234567897: any key length
    ],
)
def test_check_digit(body: str, digit: int) -> None:
    assert gtin_check_digit(body) == digit


# Fullwidth digits pass str.isdigit() but are no GS1 digits.
@pytest.mark.parametrize("bad", ["", "12a4", "\uff11\uff12\uff13"])
def test_check_digit_needs_ascii_digits(bad: str) -> None:
    with pytest.raises(DigitalLinkError, match="digits"):
        gtin_check_digit(bad)


def test_lot_and_item_uris() -> None:
    assert lot_uri("09506000134352", "ABC123") == "https://id.gs1.org/01/09506000134352/10/ABC123"
    assert item_uri("9506000134352", "12345") == "https://id.gs1.org/01/09506000134352/21/12345"
    assert lot_uri("96385074", "L1", base="http://127.0.0.1:8000/") == "http://127.0.0.1:8000/01/00000096385074/10/L1"
    assert lot_uri("614141000005", "L1", base="https://shop.example/dl") == (
        "https://shop.example/dl/01/00614141000005/10/L1"
    )
    assert gln_uri("6901234000016") == "https://id.gs1.org/414/6901234000016"


def test_lots_are_percent_encoded_outside_letters_digits_and_minus_dot_underscore() -> None:
    uri = lot_uri("09506000134352", "A/B%1-2.3_4(x)")
    assert uri == "https://id.gs1.org/01/09506000134352/10/A%2FB%251-2.3_4%28x%29"
    assert parse(uri).lot == "A/B%1-2.3_4(x)"
    assert parse("https://id.gs1.org/01/09506000134352/10/a%2fb").lot == "a/b"  # lower-case hex is fine


@pytest.mark.parametrize(
    ("gtin", "lot", "message"),
    [
        ("09506000134353", "L1", "check digit 3, expected 2"),
        ("09506000134", "L1", "8, 12, 13 or 14 digits"),
        ("O9506000134352", "L1", "8, 12, 13 or 14 digits"),
        ("09506000134352", "", "1 to 20 characters"),
        ("09506000134352", "L" * 21, "1 to 20 characters"),
        ("09506000134352", "批次1", "character set 82"),
        ("09506000134352", "A B", "character set 82"),
        ("09506000134352", "A~B", "character set 82"),
    ],
)
def test_bad_gtins_and_lots_are_refused(gtin: str, lot: str, message: str) -> None:
    with pytest.raises(DigitalLinkError, match=message):
        lot_uri(gtin, lot)


@pytest.mark.parametrize("base", ["ftp://id.gs1.org", "id.gs1.org", "https://x.example/?a=1", "https://x.example/#f"])
def test_bad_bases_are_refused(base: str) -> None:
    with pytest.raises(DigitalLinkError, match="base"):
        lot_uri("09506000134352", "L1", base=base)


def test_bad_glns_are_refused() -> None:
    with pytest.raises(DigitalLinkError, match="check digit"):
        gln_uri("6901234000017")
    with pytest.raises(DigitalLinkError, match="13 digits"):
        gln_uri("690123400001")


def test_parse() -> None:
    assert parse("https://id.gs1.org/01/09506000134352") == DigitalLink("09506000134352")
    assert parse("https://id.gs1.org/01/09506000134352/10/ABC/21/7?17=261231#x") == DigitalLink(
        "09506000134352", "ABC", "7"
    )
    assert parse("HTTPS://id.gs1.org/01/09506000134352/21/7/") == DigitalLink("09506000134352", serial="7")
    # A base path may hold "01" segments of its own: the GS1 path is read from the end.
    assert parse("https://shop.example/01/x/01/09506000134352/10/01") == DigitalLink("09506000134352", "01")


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("https://id.gs1.org/01/09506000134353/10/A", "check digit"),
        ("https://id.gs1.org/01/9506000134352/10/A", "14 digits"),
        ("https://id.gs1.org/01/09506000134352/22/V1/10/A", "unknown AI '22'"),
        ("https://id.gs1.org/01/09506000134352/17/261231", "unknown AI '17'"),
        ("https://id.gs1.org/01/09506000134352/gtin/1", "unknown AI 'gtin'"),
        ("https://id.gs1.org/01/09506000134352/21/7/10/A", "lot \\(10\\) before serial \\(21\\)"),
        ("https://id.gs1.org/01/09506000134352/10/A/10/B", "each at most once"),
        ("https://id.gs1.org/01/09506000134352/10/" + "L" * 21, "1 to 20"),
        ("https://id.gs1.org/01/09506000134352/10/%20", "character set 82"),
        ("https://id.gs1.org/414/6901234000016", "unknown AI '414'"),
        ("https://id.gs1.org/10/A", "no GTIN"),
        ("https://id.gs1.org/", "no GTIN"),
        ("urn:epc:id:sgtin:0614141.812345.6789", "http"),
        ("https:///01/09506000134352", "http"),
    ],
)
def test_parse_refuses(uri: str, message: str) -> None:
    with pytest.raises(DigitalLinkError, match=message):
        parse(uri)


@st.composite
def gtins(draw: st.DrawFn) -> str:
    length = draw(st.sampled_from([8, 12, 13, 14]))
    body = draw(st.text("0123456789", min_size=length - 1, max_size=length - 1))
    return body + str(gtin_check_digit(body))


qualifiers = st.text(st.sampled_from(sorted(CSET82)), min_size=1, max_size=20)


@given(gtin=gtins(), lot=qualifiers, serial=qualifiers)
def test_round_trips(gtin: str, lot: str, serial: str) -> None:
    assert gtin14(gtin) == gtin.zfill(14)
    assert parse(lot_uri(gtin, lot)) == DigitalLink(gtin.zfill(14), lot=lot)
    assert parse(item_uri(gtin, serial, base="https://hub.example/x")) == DigitalLink(gtin.zfill(14), serial=serial)
    both = f"https://id.gs1.org/01/{gtin.zfill(14)}/10/{quote(lot, safe='')}/21/{quote(serial, safe='')}"
    assert parse(both) == DigitalLink(gtin.zfill(14), lot, serial)


@given(gtin=gtins(), wrong=st.integers(1, 9))
def test_any_wrong_check_digit_is_refused(gtin: str, wrong: int) -> None:
    bad = gtin[:-1] + str((int(gtin[-1]) + wrong) % 10)
    with pytest.raises(DigitalLinkError, match="check digit"):
        gtin14(bad)
    with pytest.raises(DigitalLinkError, match="check digit"):
        parse(f"https://id.gs1.org/01/{bad.zfill(14)}/10/L1")


def test_sgtin_to_gtin_and_serial() -> None:
    assert sgtin_uri_to_gtin_serial("urn:epc:id:sgtin:0614141.812345.6789") == ("80614141123458", "6789")
    assert sgtin_uri_to_gtin_serial("urn:epc:id:sgtin:6901234.000015.1001") == ("06901234000153", "1001")
    # 12-digit company prefix, 1-digit indicator-only reference; an escaped "/" in the serial.
    assert sgtin_uri_to_gtin_serial("urn:epc:id:sgtin:950600013435.0.A%2FB") == ("09506000134352", "A/B")
    gtin, serial = sgtin_uri_to_gtin_serial("urn:epc:id:sgtin:0614141.812345.6789")
    assert item_uri(gtin, serial) == "https://id.gs1.org/01/80614141123458/21/6789"


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("urn:epc:id:sscc:0614141.1234567890", "not an SGTIN"),
        ("urn:epc:id:sgtin:0614141.81234.6789", "13 digits"),
        ("urn:epc:id:sgtin:06141.81234567.6789", "not an SGTIN"),
        ("urn:epc:id:sgtin:0614141.812345.A/B", "escape"),
        ("urn:epc:id:sgtin:0614141.812345." + "1" * 21, "1 to 20"),
        ("urn:epc:id:sgtin:0614141.812345.%7E", "character set 82"),
        ("urn:epc:tag:sgtin-96:3.0614141.812345.6789", "not an SGTIN"),
    ],
)
def test_bad_sgtins_are_refused(uri: str, message: str) -> None:
    with pytest.raises(DigitalLinkError, match=message):
        sgtin_uri_to_gtin_serial(uri)
