"""Buyer virtual keys: a link per order that shows that order's trail and nothing else.

A key is ``<id>.<tag>``: ``id`` is 128 random bits, ``tag`` an HMAC-SHA256 of ``id`` under the hub's
key secret (truncated to 96 bits). A tampered or invented key fails the tag check before any
lookup; a genuine one is looked up by its SHA-256 (the database never holds a usable key), and is
refused once expired or revoked. Keys are scoped to one order by construction.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from typing import Final

from sqlalchemy import Connection, text

from coldchain.errors import ColdchainError

KEY_ID_BYTES: Final = 16
"""128 bits: guessing a live key is out of reach even for a busy live room's audience."""
TAG_BYTES: Final = 12


class BuyerKeyError(ColdchainError):
    """Base of key refusals."""


class UnknownKeyError(BuyerKeyError):
    """Malformed, tampered, or never issued (answered 404)."""


class GoneKeyError(BuyerKeyError):
    """Issued, but expired or revoked (answered 410)."""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _tag(secret: bytes, key_id: bytes) -> bytes:
    return hmac.new(secret, b"coldchain-buyer-key\n" + key_id, hashlib.sha256).digest()[:TAG_BYTES]


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def issue(conn: Connection, secret: bytes, order_id: str, *, ttl_s: float, now_ms: int) -> str:
    """Create a key for ``order_id`` valid for ``ttl_s`` (inside the caller's transaction); return it."""
    key_id = secrets.token_bytes(KEY_ID_BYTES)
    key = f"{_b64(key_id)}.{_b64(_tag(secret, key_id))}"
    conn.execute(
        text(
            "INSERT INTO buyer_keys (key_hash, order_id, created_ms, expires_ms)"
            " VALUES (:key_hash, :order_id, :now, :expires)"
        ),
        {"key_hash": _hash(key), "order_id": order_id, "now": now_ms, "expires": now_ms + int(ttl_s * 1000)},
    )
    return key


def resolve(conn: Connection, secret: bytes, key: str, *, now_ms: int) -> str:
    """The order a key opens; ``UnknownKeyError`` if it is not genuine, ``GoneKeyError`` if expired or revoked."""
    key_id_text, _, tag_text = key.partition(".")
    try:
        key_id = base64.urlsafe_b64decode(key_id_text + "==")
        tag = base64.urlsafe_b64decode(tag_text + "==")
    except ValueError:
        raise UnknownKeyError("malformed key") from None
    if len(key_id) != KEY_ID_BYTES or not hmac.compare_digest(tag, _tag(secret, key_id)):
        raise UnknownKeyError("not a key this hub issued")
    row = conn.execute(
        text("SELECT order_id, expires_ms, revoked_ms FROM buyer_keys WHERE key_hash = :key_hash"),
        {"key_hash": _hash(key)},
    ).first()
    if row is None:
        raise UnknownKeyError("no such key")
    order_id, expires_ms, revoked_ms = row
    if revoked_ms is not None or expires_ms <= now_ms:
        raise GoneKeyError("this link has expired or was revoked")
    return str(order_id)


def revoke_all(conn: Connection, order_id: str, *, now_ms: int) -> int:
    """Revoke every live key of an order (inside the caller's transaction); return how many."""
    return conn.execute(
        text("UPDATE buyer_keys SET revoked_ms = :now WHERE order_id = :order_id AND revoked_ms IS NULL"),
        {"now": now_ms, "order_id": order_id},
    ).rowcount
