"""QR codes as SVG: well-formed, sized for the chosen version, and holding exactly segno's module matrix."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest
import segno

from hub.traceability.qr import QUIET_ZONE, qr_svg

SVG = "{http://www.w3.org/2000/svg}"
LINK = "https://id.gs1.org/01/09506000134352/10/ABC123"


def dark_modules(path_data: str) -> set[tuple[int, int]]:
    """The (column, row) modules drawn by segno's path: ``M``/``m`` moves and ``h`` horizontal runs."""
    x = y = 0.0
    dark: set[tuple[int, int]] = set()
    for command, first, second in re.findall(r"([Mmh])(-?[\d.]+)(?: (-?[\d.]+))?", path_data):
        if command == "M":
            x, y = float(first), float(second)
        elif command == "m":
            x, y = x + float(first), y + float(second)
        else:
            run = int(first)
            dark.update((int(x) + i, int(y)) for i in range(run))
            x += run
    return dark


@pytest.mark.parametrize("scale", [1, 4, 7])
def test_svg_is_sized_for_the_version_and_holds_the_matrix(scale: int) -> None:
    svg = qr_svg(LINK, scale=scale)
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG}svg"
    code = segno.make_qr(LINK, error="m")
    assert code.error in {"M", "Q", "H"}  # at least M
    modules = 17 + 4 * int(code.version) + 2 * QUIET_ZONE
    assert (root.get("width"), root.get("height")) == (str(modules * scale), str(modules * scale))
    (line,) = [p for p in root.iter(f"{SVG}path") if p.get("class") == "qrline"]
    expected = {
        (column + QUIET_ZONE, row + QUIET_ZONE)
        for row, cells in enumerate(code.matrix)
        for column, cell in enumerate(cells)
        if cell
    }
    assert dark_modules(line.get("d", "")) == expected  # nothing drawn in the quiet zone either


def test_colours_and_transparent_background() -> None:
    opaque = ET.fromstring(qr_svg(LINK, dark="#0a3d62", light="#fffbe6"))
    fills = [p.get("fill") for p in opaque.iter(f"{SVG}path") if p.get("fill")]
    assert fills == ["#fffbe6"]
    assert [p.get("stroke") for p in opaque.iter(f"{SVG}path") if p.get("stroke")] == ["#0a3d62"]
    transparent = ET.fromstring(qr_svg(LINK, light=None))
    assert [p.get("fill") for p in transparent.iter(f"{SVG}path") if p.get("fill")] == []


def test_longer_data_gets_a_larger_symbol() -> None:
    short = ET.fromstring(qr_svg("https://id.gs1.org/01/09506000134352"))
    long = ET.fromstring(qr_svg("https://hub.example/01/09506000134352/10/" + "A" * 20 + "?17=261231&x=" + "b" * 80))
    assert int(long.get("width", "0")) > int(short.get("width", "0"))


def test_scale_must_be_positive() -> None:
    with pytest.raises(ValueError, match="scale"):
        qr_svg(LINK, scale=0)
