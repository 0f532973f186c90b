"""QR codes (SVG) of Digital Links, for lot pages, printed labels and livestream (OBS) overlays."""

from __future__ import annotations

import io
from typing import Final

import segno

QUIET_ZONE: Final = 4
"""Modules of margin around the symbol: ISO/IEC 18004 asks for 4, and phone scanners need it."""


def qr_svg(data: str, *, scale: int = 4, dark: str = "#000", light: str | None = "#fff") -> bytes:
    """An SVG QR code of ``data``, ``scale`` pixels per module, with the standard quiet zone.

    Error correction is at least M (15 % of the symbol can be lost: a label creased or a stream
    compressed); segno raises it further when that fits in the same symbol version, which costs
    nothing. ``light=None`` leaves the background transparent, for a video overlay.
    """
    if scale < 1:
        raise ValueError(f"scale is at least 1 pixel per module, got {scale}")
    code = segno.make_qr(data, error="m")
    out = io.BytesIO()
    code.save(out, kind="svg", scale=scale, dark=dark, light=light, border=QUIET_ZONE)
    return out.getvalue()
