"""Configuration of the public side (lot pages, widget, buyer keys)."""

from __future__ import annotations

from typing import Final

import msgspec

RATE_PER_S: Final = 10.0
RATE_BURST: Final = 40
"""A viewer's page makes a handful of requests; a scraper hammering the hub is slowed to 10/s."""


class PublicSettings(msgspec.Struct, forbid_unknown_fields=True):
    """How the public side presents itself."""

    base_url: str = "http://127.0.0.1:8000"
    """The address viewers reach the hub at: used in QR codes and key links."""
    digital_link_base: str | None = None
    """Base of GS1 Digital Link URIs (default: this hub, so scanning opens the lot page)."""
    key_secret_file: str | None = None
    key_secret_env: str | None = None
    key_ttl_days: float = 90.0
    rate_per_s: float = RATE_PER_S
    rate_burst: int = RATE_BURST
