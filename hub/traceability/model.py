"""What traceability publishes: an item's or lot's journey as legs with their temperature bands.

These structs are the contract between the hub's trail builder, the EPCIS exporter, the public API
(buyer keys, lot pages) and the livestream widget. None of them holds buyer personal data.
"""

from __future__ import annotations

from typing import Literal

import msgspec

NodeKind = Literal["packhouse", "farm", "cold_store", "reefer_truck", "courier_box", "unknown"]
ChainStatus = Literal["intact", "excursion", "excursion_compensated"]


class NodeInfo(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A place goods dwell, known to the hub by the gateway attached to it."""

    gateway_id: str
    kind: NodeKind = "unknown"
    label_zh: str = ""
    label_en: str = ""
    gln: str | None = None
    """GS1 Global Location Number (13 digits) of the place, for EPCIS readPoint / bizLocation."""
    city_zh: str = ""
    city_en: str = ""
    """Where positions are shown as long as the goods are not delivered (coarsened courier position)."""


class TemperatureBand(msgspec.Struct, frozen=True):
    """Min / mean / max of the air around the goods during a leg (from 5-minute rollups)."""

    min_c: float
    mean_c: float
    max_c: float
    samples: int


class ExcursionView(msgspec.Struct, frozen=True):
    """An excursion as the public sees it: when, how warm, how long, whether the buyer was compensated."""

    alarm_id: str
    kind: str
    severity: str
    started_ms: int
    ended_ms: int | None
    peak_c: float | None
    duration_s: float
    compensated: bool


class Leg(msgspec.Struct, frozen=True):
    """One stay of the goods at one node."""

    node: NodeInfo
    start_ms: int
    end_ms: int | None
    """``None`` while the goods are still there."""
    band: TemperatureBand | None
    excursions: list[ExcursionView]
    epcs: list[str]
    """The items (EPC URIs, or raw hex) that made this stay."""


class Trail(msgspec.Struct, frozen=True):
    """The journey of a set of items (an item, an order or a lot), legs in time order."""

    subject: str
    """``item:<epc>``, ``order:<order_id>`` or ``lot:<lot_id>``."""
    legs: list[Leg]
    status: ChainStatus
    delivered: bool


class LotView(msgspec.Struct, frozen=True):
    """What the livestream widget and the lot page show for the lot on sale (public, cacheable)."""

    lot_id: str
    gtin: str
    product_zh: str
    product_en: str
    status: ChainStatus
    current_temperature_c: float | None
    current_ts_ms: int | None
    current_node_kind: NodeKind
    legs: list[Leg]
    digital_link: str
    """The lot's GS1 Digital Link URI (the QR code encodes it)."""
    qr_svg_url: str
    updated_ms: int
