"""hub.webhooks: the X-Coldchain-Signature scheme, checked against HMACs computed here with hmac directly."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given
from hypothesis import strategies as st

from coldchain.errors import ColdchainError
from hub.webhooks import (
    BadSignature,
    MalformedSignature,
    SignatureError,
    StaleSignature,
    parse,
    sign,
    verify,
)

SECRET = b"whsec-test-0123456789abcdef"
OTHER = b"whsec-other-9876543210fedcba"
BODY = b'{"claim_id":"c-1","order_id":"o-42","amount_cents":1500}'
T = 1_717_000_000


def expected_v1(secret: bytes, body: bytes, t: int) -> str:
    return hmac.new(secret, str(t).encode() + b"." + body, hashlib.sha256).hexdigest()


def test_sign_matches_an_independently_computed_hmac() -> None:
    assert sign(SECRET, BODY, timestamp_s=T) == f"t={T},v1={expected_v1(SECRET, BODY, T)}"


def test_a_fixed_vector_stays_fixed() -> None:
    # Pinned so a change of the scheme cannot slip through with sign() and verify() changed together.
    assert sign(b"secret", b"{}", timestamp_s=1) == (
        "t=1,v1=" + hmac.new(b"secret", b"1.{}", hashlib.sha256).hexdigest()
    )


def test_the_documented_openssl_example() -> None:
    # docs/webhooks.md: printf '%s.' 1717000000 | cat - body.json | openssl dgst -sha256 -hmac whsec-demo-0123456789
    body = b'{"claim_id":"cl-1","order_id":"o-42","amount_cents":1500}'
    v1 = "8bb25a323d8eca13684cc8c31b18b7f2a70425aa1b09f47bc0c4848c96e47a7c"
    assert sign(b"whsec-demo-0123456789", body, timestamp_s=1_717_000_000) == f"t=1717000000,v1={v1}"


def test_verify_returns_the_signed_timestamp() -> None:
    header = f"t={T},v1={expected_v1(SECRET, BODY, T)}"
    assert verify(SECRET, header, BODY, now_s=T + 10) == T


def test_tampered_body_is_refused() -> None:
    header = sign(SECRET, BODY, timestamp_s=T)
    with pytest.raises(BadSignature):
        verify(SECRET, header, BODY.replace(b"1500", b"9500"), now_s=T)


def test_wrong_secret_is_refused() -> None:
    header = sign(OTHER, BODY, timestamp_s=T)
    with pytest.raises(BadSignature):
        verify(SECRET, header, BODY, now_s=T)


def test_a_changed_timestamp_breaks_the_signature() -> None:
    v1 = expected_v1(SECRET, BODY, T)
    with pytest.raises(BadSignature):
        verify(SECRET, f"t={T + 1},v1={v1}", BODY, now_s=T)


@pytest.mark.parametrize("offset", [-301, 301, -10_000, 10_000])
def test_stale_and_future_timestamps_are_refused(offset: int) -> None:
    header = sign(SECRET, BODY, timestamp_s=T)
    with pytest.raises(StaleSignature):
        verify(SECRET, header, BODY, now_s=T + offset)


@pytest.mark.parametrize("offset", [-300, 0, 300])
def test_the_tolerance_edges_are_accepted(offset: int) -> None:
    assert verify(SECRET, sign(SECRET, BODY, timestamp_s=T), BODY, now_s=T + offset) == T


def test_a_custom_tolerance_applies() -> None:
    header = sign(SECRET, BODY, timestamp_s=T)
    with pytest.raises(StaleSignature):
        verify(SECRET, header, BODY, now_s=T + 31, tolerance_s=30)


def test_a_stale_answer_needs_a_valid_signature() -> None:
    # A forger gets "bad signature", never "stale": the answer says nothing about our clock.
    header = sign(OTHER, BODY, timestamp_s=T - 100_000)
    with pytest.raises(BadSignature):
        verify(SECRET, header, BODY, now_s=T)


GOOD_V1 = "a" * 64


@pytest.mark.parametrize(
    "header",
    [
        "",
        "garbage",
        f"v1={GOOD_V1}",
        f"t={T}",
        f"t=abc,v1={GOOD_V1}",
        f"t=-5,v1={GOOD_V1}",
        f"t=1.5,v1={GOOD_V1}",
        f"t={T},v1=zz",
        f"t={T},v1={'a' * 63}",
        f"t={T},v1={'g' * 64}",
        f"t={T},t={T},v1={GOOD_V1}",
        f"t={T},v1={GOOD_V1}," + "x=" * 3000,
        f"t=١٢٣,v1={GOOD_V1}",  # Arabic-Indic digits: str.isdigit() says yes, int() would take them
    ],
)
def test_malformed_headers_are_refused(header: str) -> None:
    with pytest.raises(MalformedSignature):
        verify(SECRET, header, BODY, now_s=T)


def test_unknown_schemes_are_ignored_beside_v1() -> None:
    header = f"t={T},v0={'0' * 64},v1={expected_v1(SECRET, BODY, T)},v2=future"
    assert verify(SECRET, header, BODY, now_s=T) == T


def test_rotation_header_carries_one_v1_per_secret() -> None:
    header = sign([OTHER, SECRET], BODY, timestamp_s=T)
    assert parse(header) == (T, [expected_v1(OTHER, BODY, T), expected_v1(SECRET, BODY, T)])
    # A receiver still on the old secret and one already on the new one both accept it.
    assert verify(OTHER, header, BODY, now_s=T) == T
    assert verify(SECRET, header, BODY, now_s=T) == T


def test_receiver_with_two_secrets_accepts_either() -> None:
    for key in (SECRET, OTHER):
        assert verify([OTHER, SECRET], sign(key, BODY, timestamp_s=T), BODY, now_s=T) == T
    with pytest.raises(BadSignature):
        verify([OTHER, SECRET], sign(b"a-third-secret-entirely", BODY, timestamp_s=T), BODY, now_s=T)


def test_sign_needs_a_secret() -> None:
    with pytest.raises(ValueError, match="at least one secret"):
        sign([], BODY, timestamp_s=T)


def test_the_exception_tree() -> None:
    for error in (MalformedSignature, StaleSignature, BadSignature):
        assert issubclass(error, SignatureError)
    assert issubclass(SignatureError, ColdchainError)
    assert {MalformedSignature.reason, StaleSignature.reason, BadSignature.reason} == {
        "malformed_signature",
        "stale_signature",
        "bad_signature",
    }


@given(secret=st.binary(min_size=1, max_size=64), body=st.binary(max_size=512), t=st.integers(0, 2**40))
def test_sign_then_verify_round_trips(secret: bytes, body: bytes, t: int) -> None:
    header = sign(secret, body, timestamp_s=t)
    assert header == f"t={t},v1={expected_v1(secret, body, t)}"
    assert verify(secret, header, body, now_s=t) == t
