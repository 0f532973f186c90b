"""GS1 Digital Link URIs for products, lots, items and places, and the GS1 check digit.

A Digital Link is a web address that carries GS1 identifiers as path elements
(``https://id.gs1.org/01/{GTIN-14}/10/{lot}``): a phone scanning the QR code opens it, and a
resolver (GS1's, or this hub for its own base) redirects to the lot page. Only what the hub
needs is supported: the GTIN primary key (AI 01) with its lot (AI 10) and serial (AI 21)
qualifiers, and the GLN of a place (AI 414) for EPCIS locations. Anything else is refused
with a ``DigitalLinkError`` rather than half-understood.

RFID readers report items as SGTIN EPC URIs (``urn:epc:id:sgtin:CP.IR.SERIAL``);
``sgtin_uri_to_gtin_serial`` turns them into the GTIN and serial of the item's Digital Link.
"""

from __future__ import annotations

import re
import string
from typing import Final, NamedTuple
from urllib.parse import quote, unquote, urlsplit

GS1_RESOLVER: Final = "https://id.gs1.org"
"""GS1's global resolver: the canonical base when a Digital Link is used as an identifier."""

AI_GTIN: Final = "01"
AI_LOT: Final = "10"
AI_SERIAL: Final = "21"
AI_GLN: Final = "414"

MAX_QUALIFIER_LEN: Final = 20
"""AI 10 (lot) and AI 21 (serial) are at most 20 characters (GS1 General Specifications)."""

CSET82: Final = frozenset(string.ascii_letters + string.digits + "!\"%&'()*+,-./:;<=>?_")
"""GS1 AI encodable character set 82: what a lot or a serial may contain."""

_QUALIFIERS: Final = (AI_LOT, AI_SERIAL)
"""The GTIN key qualifiers supported, in the order the Digital Link grammar requires them."""

_GTIN_LENGTHS: Final = frozenset({8, 12, 13, 14})
_SGTIN: Final = re.compile(r"urn:epc:id:sgtin:(\d{6,12})\.(\d{1,7})\.(.+)")
_SGTIN_SERIAL_CHARS: Final = re.compile(r"(?:[A-Za-z0-9!'()*+,\-.:;=_]|%[0-9A-Fa-f]{2})+")
"""TDS pure-identity serial: the URN-safe part of CSET 82, the rest as %XX escapes."""


class DigitalLinkError(ValueError):
    """A GS1 identifier or Digital Link that is malformed, has a wrong check digit or is unsupported."""


class DigitalLink(NamedTuple):
    """What a GTIN Digital Link identifies: a product, a lot of it, or one serialised item."""

    gtin: str
    """GTIN-14, check digit verified."""
    lot: str | None = None
    serial: str | None = None


def gtin_check_digit(digits: str) -> int:
    """The GS1 mod-10 check digit of ``digits`` (a GTIN, GLN or SSCC without its last digit).

    Weights alternate 3, 1, 3, ... starting from the rightmost digit, so the same function serves
    every GS1 key length.
    """
    if not digits or not digits.isascii() or not digits.isdigit():
        raise DigitalLinkError(f"check digit needs a string of digits, got {digits!r}")
    total = sum(int(d) * (3 if i % 2 == 0 else 1) for i, d in enumerate(reversed(digits)))
    return (10 - total % 10) % 10


def gtin14(gtin: str) -> str:
    """``gtin`` (GTIN-8, -12, -13 or -14 with its check digit) verified and left-padded to 14 digits."""
    if not gtin.isascii() or not gtin.isdigit() or len(gtin) not in _GTIN_LENGTHS:
        raise DigitalLinkError(f"a GTIN is 8, 12, 13 or 14 digits, got {gtin!r}")
    _verify_check_digit(gtin, "GTIN")
    return gtin.zfill(14)


def gln13(gln: str) -> str:
    """``gln`` verified: 13 digits with a correct check digit."""
    if not gln.isascii() or not gln.isdigit() or len(gln) != 13:
        raise DigitalLinkError(f"a GLN is 13 digits, got {gln!r}")
    _verify_check_digit(gln, "GLN")
    return gln


def lot_uri(gtin: str, lot: str, *, base: str = GS1_RESOLVER) -> str:
    """The Digital Link of a lot: ``{base}/01/{gtin14}/10/{lot}``."""
    return f"{_base(base)}/{AI_GTIN}/{gtin14(gtin)}/{AI_LOT}/{_encode(lot, 'lot')}"


def item_uri(gtin: str, serial: str, *, base: str = GS1_RESOLVER) -> str:
    """The Digital Link of one serialised item: ``{base}/01/{gtin14}/21/{serial}``."""
    return f"{_base(base)}/{AI_GTIN}/{gtin14(gtin)}/{AI_SERIAL}/{_encode(serial, 'serial')}"


def gln_uri(gln: str, *, base: str = GS1_RESOLVER) -> str:
    """The Digital Link of a physical location: ``{base}/414/{gln}`` (EPCIS readPoint / bizLocation)."""
    return f"{_base(base)}/{AI_GLN}/{gln13(gln)}"


def parse(uri: str) -> DigitalLink:
    """The GTIN, lot and serial of a GTIN Digital Link.

    Any base (scheme ``http``/``https``, any host and path prefix) is accepted; the GS1 path is read
    from the end, so a prefix cannot be mistaken for an AI. The GTIN must be written with 14 digits,
    as the Digital Link grammar requires. Query string (data attributes) and fragment are ignored.
    """
    parts = urlsplit(uri)
    if parts.scheme.lower() not in {"http", "https"} or not parts.netloc:
        raise DigitalLinkError(f"a Digital Link is an http(s) URI with a host, got {uri!r}")
    segments = parts.path.split("/")
    if segments and segments[-1] == "":
        segments.pop()  # a trailing slash adds no element
    qualifiers: list[tuple[str, str]] = []
    i = len(segments) - 2
    while True:
        if i < 1:  # segments[0] is the empty string before the path's leading slash
            raise DigitalLinkError(f"no GTIN (AI 01) in {uri!r}")
        ai, value = segments[i], segments[i + 1]
        if ai == AI_GTIN:
            break
        if ai not in _QUALIFIERS:
            raise DigitalLinkError(f"unsupported or unknown AI {ai!r} in {uri!r} (supported: 01, 10, 21)")
        qualifiers.insert(0, (ai, value))
        i -= 2
    gtin = unquote(segments[i + 1])
    if len(gtin) != 14:
        raise DigitalLinkError(f"the GTIN in a Digital Link is written with 14 digits, got {gtin!r}")
    order = [ai for ai, _ in qualifiers]
    if order != [ai for ai in _QUALIFIERS if ai in order]:
        raise DigitalLinkError(f"AIs {order} in {uri!r}: each at most once, lot (10) before serial (21)")
    values = {ai: _decode(value, ai) for ai, value in qualifiers}
    return DigitalLink(gtin=gtin14(gtin), lot=values.get(AI_LOT), serial=values.get(AI_SERIAL))


def sgtin_uri_to_gtin_serial(uri: str) -> tuple[str, str]:
    """GTIN-14 and serial of an SGTIN pure-identity EPC URI (GS1 Tag Data Standard).

    ``urn:epc:id:sgtin:CP.IR.SERIAL``: the first digit of the indicator/item reference ``IR`` is
    the GTIN's indicator digit, followed by the company prefix ``CP`` and the rest of ``IR``
    (together 13 digits), then the computed check digit.
    """
    match = _SGTIN.fullmatch(uri)
    if match is None:
        raise DigitalLinkError(f"not an SGTIN pure-identity URI: {uri!r}")
    prefix, reference, serial_uri = match.groups()
    if len(prefix) + len(reference) != 13:
        raise DigitalLinkError(f"company prefix and item reference must total 13 digits in {uri!r}")
    if _SGTIN_SERIAL_CHARS.fullmatch(serial_uri) is None:
        raise DigitalLinkError(f"serial of {uri!r} has characters a URN must escape")
    body = reference[0] + prefix + reference[1:]
    return body + str(gtin_check_digit(body)), _check_value(unquote(serial_uri), "serial")


def _verify_check_digit(key: str, what: str) -> None:
    expected = gtin_check_digit(key[:-1])
    if int(key[-1]) != expected:
        raise DigitalLinkError(f"{what} {key} has check digit {key[-1]}, expected {expected}")


def _base(base: str) -> str:
    parts = urlsplit(base)
    if parts.scheme.lower() not in {"http", "https"} or not parts.netloc or parts.query or parts.fragment:
        raise DigitalLinkError(f"a Digital Link base is an http(s) URI without query or fragment, got {base!r}")
    return base.rstrip("/")


def _check_value(value: str, what: str) -> str:
    if not 1 <= len(value) <= MAX_QUALIFIER_LEN:
        raise DigitalLinkError(f"a {what} is 1 to {MAX_QUALIFIER_LEN} characters, got {len(value)}: {value!r}")
    bad = sorted(set(value) - CSET82)
    if bad:
        raise DigitalLinkError(f"a {what} may only use GS1 character set 82, {value!r} has {bad}")
    return value


def _encode(value: str, what: str) -> str:
    # The Digital Link grammar keeps only letters, digits, "-", "." and "_" literal and wants every
    # other character of set 82 percent-encoded (a "/" in a lot would otherwise split the path).
    return quote(_check_value(value, what), safe="")


def _decode(value: str, ai: str) -> str:
    return _check_value(unquote(value), "lot" if ai == AI_LOT else "serial")
