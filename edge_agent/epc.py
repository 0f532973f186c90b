"""EPC bank contents → GS1 pure-identity URNs, for the headers a cold chain meets on its cases and pallets.

The binary encodings are the GS1 EPC Tag Data Standard's; epcpy does the partition tables and the
string decoding. Only trade items (SGTIN), logistic units (SSCC) and individual assets (GIAI, the
crates and reefer boxes) are decoded: any other header, and any bank epcpy refuses, yields ``None``
and the caller keeps the raw hex, so an unexpected tag is recorded rather than dropped.
"""

from __future__ import annotations

import logging
from typing import Final

from epcpy.utils.common import ConvertException
from epcpy.utils.parsers import hex_to_tag_encodable

log = logging.getLogger(__name__)

SGTIN_96_HEADER: Final = 0x30
SSCC_96_HEADER: Final = 0x31
GIAI_96_HEADER: Final = 0x34
SGTIN_198_HEADER: Final = 0x36
GIAI_202_HEADER: Final = 0x38

DECODED_HEADERS: Final = frozenset({SGTIN_96_HEADER, SSCC_96_HEADER, GIAI_96_HEADER, SGTIN_198_HEADER, GIAI_202_HEADER})
"""The EPC binary headers (TDS table 14-1) turned into URNs; everything else stays raw hex."""

MAX_URI_LENGTH: Final = 128
"""The wire contract's limit on ``TagRead.epc_uri``; a longer URN is not sent at all."""

_HEX_DIGITS: Final = frozenset("0123456789abcdefABCDEF")


def decode_epc(epc_hex: str) -> str | None:
    """The pure-identity URN of an EPC bank given as hex, e.g. ``urn:epc:id:sgtin:0614141.812345.6789``.

    Decodes SGTIN-96/198, SSCC-96 and GIAI-96/202. Returns ``None`` for any other header, for text
    that is not hex, and for a bank too short for its header or holding values the standard forbids.
    Bits after the encoding's length (a 96-bit EPC in a larger EPC bank) are ignored.
    """
    if len(epc_hex) < 2 or not _HEX_DIGITS.issuperset(epc_hex):
        return None
    if int(epc_hex[:2], 16) not in DECODED_HEADERS:
        return None
    try:
        uri = hex_to_tag_encodable(epc_hex).epc_uri
    # epcpy signals bad partitions, sizes and strings with ConvertException, and some malformed
    # fields (e.g. an invalid character table index) with the builtin errors of its parsing.
    except (ConvertException, ValueError, KeyError, IndexError) as exc:
        log.debug("EPC %s has a known header but does not decode: %s", epc_hex, exc)
        return None
    if not isinstance(uri, str) or len(uri) > MAX_URI_LENGTH:
        return None
    return uri
