"""decode_epc: GS1 Tag Data Standard examples to pure-identity URNs, and None for what it does not decode."""

from __future__ import annotations

import pytest

from edge_agent.epc import decode_epc

# SGTIN-96, SSCC-96 and GIAI-96 are the worked examples of the GS1 EPC Tag Data Standard
# (urn:epc:tag:sgtin-96:3.0614141.812345.6789, urn:epc:tag:sscc-96:3.0614141.1234567890,
# urn:epc:tag:giai-96:3.0614141.5678). The 198/202-bit vectors were encoded with epcpy itself
# (filter 3) from the URNs shown, so they pin the string-serial schemes rather than prove them.
DECODED = [
    pytest.param("3074257BF7194E4000001A85", "urn:epc:id:sgtin:0614141.812345.6789", id="sgtin-96 TDS"),
    pytest.param("3074257bf7194e4000001a85", "urn:epc:id:sgtin:0614141.812345.6789", id="sgtin-96 lowercase"),
    pytest.param("3174257BF4499602D2000000", "urn:epc:id:sscc:0614141.1234567890", id="sscc-96 TDS"),
    pytest.param("3474257BF40000000000162E", "urn:epc:id:giai:0614141.5678", id="giai-96 TDS"),
    pytest.param(
        "3674257BF7194E60C286BD880000000000000000000000000000",
        "urn:epc:id:sgtin:0614141.812345.ABC%2F1",
        id="sgtin-198 with an escaped character",
    ),
    pytest.param(
        "3874257BF58B266D1AC1850C0000000000000000000000000000",
        "urn:epc:id:giai:0614141.12345ABC",
        id="giai-202 alphanumeric",
    ),
    pytest.param(
        "3074257BF7194E4000001A850000", "urn:epc:id:sgtin:0614141.812345.6789", id="96 bits in a larger EPC bank"
    ),
]


@pytest.mark.parametrize(("epc_hex", "uri"), DECODED)
def test_known_headers_decode_to_the_pure_identity_urn(epc_hex: str, uri: str) -> None:
    assert decode_epc(epc_hex) == uri


UNDECODED = [
    pytest.param("E2000017270202671280EE17", id="unknown header (a TID-like factory EPC)"),
    pytest.param("3274257BF46072000000162E", id="sgln-96: valid but not decoded here"),
    pytest.param("3074257BF7194E40", id="sgtin-96 header on 64 bits"),
    pytest.param("3078257BF7194E4000001A85", id="sgtin-96 with an invalid partition"),
    pytest.param("", id="empty"),
    pytest.param("3", id="half a byte"),
    pytest.param("30zz257BF7194E4000001A85", id="not hex"),
    pytest.param(" 3074257BF7194E4000001A85", id="leading space"),
]


@pytest.mark.parametrize("epc_hex", UNDECODED)
def test_unknown_or_undecodable_banks_return_none(epc_hex: str) -> None:
    assert decode_epc(epc_hex) is None
