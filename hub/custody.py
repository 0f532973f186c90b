"""Where items were: custody intervals from RFID reads, and the orders an excursion touched.

A tag read at a gateway with action ``pickup`` starts the item's stay with that gateway (the truck,
the courier box); ``delivery`` at the same gateway ends it; a read at another gateway also ends it
(the item moved on without a delivery scan: a missed read is tolerated). Plain ``observe`` reads
start a stay too when the item was not already there (a fixed reader at a cold store). Orders
name their items by EPC URI or raw EPC hex.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, bindparam, text

OPEN_END_MS = 2**62
"""An interval still open (the item has not left) ends 'never'."""


@dataclass(frozen=True)
class Stay:
    """An item at a gateway from ``start_ms`` to ``end_ms`` (``OPEN_END_MS`` while it is still there)."""

    epc: str
    gateway_id: str
    start_ms: int
    end_ms: int


_STAYS_QUERY = text(
    "SELECT epc_uri, epc_hex, gateway_id, ts_ms, action FROM tag_reads"
    " WHERE epc_uri IN :epcs OR epc_hex IN :epcs ORDER BY ts_ms"
).bindparams(bindparam("epcs", expanding=True))


def stays_of(conn: Connection, epcs: list[str]) -> list[Stay]:
    """Every stay of the items ``epcs`` (URIs or hex), from the tag reads, oldest first."""
    if not epcs:
        return []
    rows = conn.execute(_STAYS_QUERY, {"epcs": epcs}).all()
    wanted = set(epcs)
    stays: list[Stay] = []
    current: dict[str, tuple[str, int]] = {}  # item -> (gateway, since)
    for uri, hexa, gateway_id, ts_ms, action in rows:
        item = uri if uri in wanted else hexa
        here = current.get(item)
        if here is not None and (here[0] != gateway_id or action == "delivery"):
            stays.append(Stay(item, here[0], here[1], ts_ms))
            del current[item]
            here = None
        if here is None and action != "delivery":
            current[item] = (gateway_id, ts_ms)
    stays += [Stay(item, gateway, since, OPEN_END_MS) for item, (gateway, since) in current.items()]
    return sorted(stays, key=lambda s: s.start_ms)


def orders_affected(conn: Connection, gateway_id: str, start_ms: int, end_ms: int) -> list[str]:
    """Active orders with an item in the custody of ``gateway_id`` at some time in ``[start_ms, end_ms]``."""
    rows = conn.execute(
        text(
            "SELECT o.order_id, i.epc FROM orders o JOIN order_items i ON i.order_id = o.order_id"
            " WHERE o.status = 'active'"
        )
    ).all()
    items_by_order: dict[str, list[str]] = {}
    for order_id, epc in rows:
        items_by_order.setdefault(order_id, []).append(epc)
    every_item = sorted({epc for epcs in items_by_order.values() for epc in epcs})
    touched = {
        stay.epc
        for stay in stays_of(conn, every_item)
        if stay.gateway_id == gateway_id and stay.start_ms <= end_ms and stay.end_ms >= start_ms
    }
    return sorted(order_id for order_id, epcs in items_by_order.items() if touched & set(epcs))
