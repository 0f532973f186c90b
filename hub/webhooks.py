"""Signatures on the hub's own webhooks (claims to the shop platform, generic alarm hooks).

The scheme follows Stripe's, so a receiver can reuse code it already has::

    X-Coldchain-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, f"{t}." + body)>
    X-Coldchain-Event-Id: <event id>

Signing the timestamp with the body lets the receiver refuse a replay outside a short window
without keeping every event id forever. During a secret rotation the sender puts one ``v1=`` per
secret in the header; a receiver accepts the request if any of them matches any secret it knows.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Final

from coldchain.errors import ColdchainError

SIGNATURE_HEADER: Final = "X-Coldchain-Signature"
EVENT_ID_HEADER: Final = "X-Coldchain-Event-Id"
SCHEME: Final = "v1"
"""The only scheme so far; a new hash would get ``v2`` and both would ride side by side."""

DEFAULT_TOLERANCE_S: Final = 300
"""Five minutes: wide enough for clock drift between NTP-synced hosts, short enough to bound replays."""

MAX_HEADER_LENGTH: Final = 4096
"""A header longer than this is garbage or an attack; refusing it early bounds the parsing work."""

_HEX_DIGEST_LENGTH: Final = 64  # SHA-256 in hex


class SignatureError(ColdchainError):
    """A webhook signature did not verify; ``reason`` is a stable label for counters and answers."""

    reason = "signature"


class MalformedSignature(SignatureError):  # noqa: N818 - the names the API promises
    """The header is not ``t=<int>,v1=<hex>[,v1=<hex>...]``."""

    reason = "malformed_signature"


class StaleSignature(SignatureError):  # noqa: N818 - the names the API promises
    """The signed timestamp is further from the receiver's clock than the tolerance (past or future)."""

    reason = "stale_signature"


class BadSignature(SignatureError):  # noqa: N818 - the names the API promises
    """No ``v1`` value matches the body under any known secret."""

    reason = "bad_signature"


def compute(secret: bytes, body: bytes, timestamp_s: int) -> str:
    """The hex HMAC-SHA256 of ``f"{timestamp_s}." + body`` keyed with ``secret``."""
    return hmac.new(secret, f"{timestamp_s}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: bytes | Sequence[bytes], body: bytes, *, timestamp_s: int) -> str:
    """The ``X-Coldchain-Signature`` value for ``body`` sent at ``timestamp_s``.

    Given several secrets (a rotation in progress), the header carries one ``v1=`` per secret.
    """
    secrets = [secret] if isinstance(secret, bytes) else list(secret)
    if not secrets:
        raise ValueError("sign() needs at least one secret")
    return ",".join([f"t={timestamp_s}", *(f"{SCHEME}={compute(s, body, timestamp_s)}" for s in secrets)])


def parse(header: str) -> tuple[int, list[str]]:
    """Split a signature header into its timestamp and its ``v1`` values; unknown schemes are skipped."""
    if len(header) > MAX_HEADER_LENGTH:
        raise MalformedSignature(f"signature header longer than {MAX_HEADER_LENGTH} characters")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if not sep:
            raise MalformedSignature(f"signature element {part.strip()[:32]!r} has no '='")
        if key == "t":
            if timestamp is not None:
                raise MalformedSignature("signature header has more than one t=")
            if not value.isascii() or not value.isdigit():
                raise MalformedSignature("t= is not a whole number of seconds")
            timestamp = int(value)
        elif key == SCHEME:
            if len(value) != _HEX_DIGEST_LENGTH or not _is_hex(value):
                raise MalformedSignature("v1= is not 64 hex digits")
            signatures.append(value.lower())
        # Other keys (a future v2, Stripe's v0 test scheme) are ignored so a sender can add them.
    if timestamp is None:
        raise MalformedSignature("signature header has no t=")
    if not signatures:
        raise MalformedSignature("signature header has no v1=")
    return timestamp, signatures


def verify(
    secret: bytes | Sequence[bytes],
    header: str,
    body: bytes,
    *,
    now_s: int,
    tolerance_s: int = DEFAULT_TOLERANCE_S,
) -> int:
    """Check ``header`` against ``body`` and return the signed timestamp.

    Raises :class:`MalformedSignature`, :class:`StaleSignature` or :class:`BadSignature`.
    The signature is checked before the timestamp, so a stale answer is only given to someone
    who holds the secret (a forger learns nothing about our clock).
    """
    timestamp, signatures = parse(header)
    secrets = [secret] if isinstance(secret, bytes) else list(secret)
    # Every comparison runs (no short cut) so the time taken does not say which secret or value matched.
    matched = False
    for key in secrets:
        expected = compute(key, body, timestamp).encode()
        for candidate in signatures:
            matched |= hmac.compare_digest(expected, candidate.encode())
    if not matched:
        raise BadSignature("no v1 signature matches the body")
    if abs(now_s - timestamp) > tolerance_s:
        raise StaleSignature(f"signed at {timestamp}, {now_s - timestamp:+d} s from now, tolerance {tolerance_s} s")
    return timestamp


def _is_hex(value: str) -> bool:
    return all(c in "0123456789abcdefABCDEF" for c in value)
