"""Orders and lots as the shop platform declares them: written inside the caller's transaction."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, text


def create_order(
    conn: Connection,
    *,
    order_id: str,
    buyer_ref: str,
    product: str | None,
    lot_id: str | None,
    items: Sequence[str],
    now_ms: int,
) -> bool:
    """Record an active order and its items; False if ``order_id`` exists (a retried request changes nothing)."""
    created = conn.execute(
        text(
            "INSERT INTO orders (order_id, buyer_ref, product, lot_id, status, created_ms)"
            " VALUES (:order_id, :buyer_ref, :product, :lot_id, 'active', :now) ON CONFLICT (order_id) DO NOTHING"
        ),
        {"order_id": order_id, "buyer_ref": buyer_ref, "product": product, "lot_id": lot_id, "now": now_ms},
    ).rowcount
    if created and items:
        conn.execute(
            text(
                "INSERT INTO order_items (order_id, epc) VALUES (:order_id, :epc)"
                " ON CONFLICT (order_id, epc) DO NOTHING"
            ),
            [{"order_id": order_id, "epc": epc} for epc in items],
        )
    return created == 1


def cancel_order(conn: Connection, order_id: str) -> bool:
    """Mark an active order cancelled; False if there is no active order of that id."""
    cancelled = conn.execute(
        text("UPDATE orders SET status = 'cancelled' WHERE order_id = :order_id AND status = 'active'"),
        {"order_id": order_id},
    ).rowcount
    return cancelled == 1


def upsert_lot(
    conn: Connection, *, lot_id: str, gtin: str, product: str | None, items: Sequence[str], now_ms: int
) -> None:
    """Create a lot or update its GTIN and product; add items it does not hold yet."""
    conn.execute(
        text(
            "INSERT INTO lots (lot_id, gtin, product, created_ms) VALUES (:lot_id, :gtin, :product, :now)"
            " ON CONFLICT (lot_id) DO UPDATE SET gtin = excluded.gtin, product = excluded.product"
        ),
        {"lot_id": lot_id, "gtin": gtin, "product": product, "now": now_ms},
    )
    if items:
        conn.execute(
            text("INSERT INTO lot_items (lot_id, epc) VALUES (:lot_id, :epc) ON CONFLICT (lot_id, epc) DO NOTHING"),
            [{"lot_id": lot_id, "epc": epc} for epc in items],
        )


def lot_items(conn: Connection, lot_id: str) -> list[str]:
    """The EPCs of a lot, in no particular order."""
    return list(conn.execute(text("SELECT epc FROM lot_items WHERE lot_id = :lot_id"), {"lot_id": lot_id}).scalars())
