"""Build trails from the system of record: custody stays, 5-minute rollups, excursions and claims.

A trail never scans raw readings: the temperature band of a leg comes from the ``rollups`` table
(5-minute min / max / sum / count per series), so an order's 30-day trail costs a few thousand rows.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Mapping, Sequence

from hub.compensation import EXCURSION_KINDS
from hub.custody import OPEN_END_MS, Stay, stays_of
from hub.traceability.model import ChainStatus, ExcursionView, Leg, NodeInfo, TemperatureBand, Trail


def build_trail(
    conn: sqlite3.Connection,
    subject: str,
    epcs: Sequence[str],
    nodes: Mapping[str, NodeInfo],
    *,
    compensated: Callable[[str], bool] | None = None,
) -> Trail:
    """The journey of ``epcs``: one leg per stay (stays of several items at one node merged)."""
    stays = stays_of(conn, list(epcs))
    legs = [_leg(conn, group, nodes, compensated) for group in _merge(stays)]
    excursions = [e for leg in legs for e in leg.excursions]
    status: ChainStatus = "intact"
    if excursions:
        status = "excursion_compensated" if all(e.compensated for e in excursions) else "excursion"
    delivered = _delivered(conn, epcs)
    return Trail(subject=subject, legs=legs, status=status, delivered=delivered)


def _merge(stays: list[Stay]) -> list[list[Stay]]:
    """Group overlapping stays at the same gateway (a pallet's cases travel together)."""
    groups: list[list[Stay]] = []
    for stay in sorted(stays, key=lambda s: s.start_ms):
        last = groups[-1] if groups else None
        if last and last[0].gateway_id == stay.gateway_id and stay.start_ms <= max(s.end_ms for s in last):
            last.append(stay)
        else:
            groups.append([stay])
    return groups


def _leg(
    conn: sqlite3.Connection,
    group: list[Stay],
    nodes: Mapping[str, NodeInfo],
    compensated: Callable[[str], bool] | None,
) -> Leg:
    gateway_id = group[0].gateway_id
    start = min(s.start_ms for s in group)
    end = max(s.end_ms for s in group)
    row = conn.execute(
        "SELECT min(min_value), max(max_value), sum(sum_value), sum(samples) FROM rollups"
        " WHERE gateway_id = ? AND quantity = 'temperature' AND bucket_ms >= ? AND bucket_ms <= ?",
        (gateway_id, start - start % 300_000, end),
    ).fetchone()
    band = None if not row[3] else TemperatureBand(row[0], round(row[2] / row[3], 2), row[1], int(row[3]))
    alarms = conn.execute(
        "SELECT alarm_id, kind, severity, started_ms, ended_ms, peak_value, duration_s FROM alarms"
        " WHERE gateway_id = ? AND started_ms <= ? AND coalesce(ended_ms, ?) >= ? ORDER BY started_ms",
        (gateway_id, end, OPEN_END_MS, start),
    ).fetchall()
    is_paid = compensated or (lambda alarm_id: _has_claim(conn, alarm_id))
    excursions = [
        ExcursionView(alarm_id, kind, severity, started, ended, peak, duration, is_paid(alarm_id))
        for alarm_id, kind, severity, started, ended, peak, duration in alarms
        if kind in {k.value for k in EXCURSION_KINDS}
    ]
    return Leg(
        node=nodes.get(gateway_id, NodeInfo(gateway_id=gateway_id)),
        start_ms=start,
        end_ms=None if end == OPEN_END_MS else end,
        band=band,
        excursions=excursions,
        epcs=sorted({s.epc for s in group}),
    )


def _has_claim(conn: sqlite3.Connection, alarm_id: str) -> bool:
    return conn.execute("SELECT 1 FROM claims WHERE alarm_id = ? LIMIT 1", (alarm_id,)).fetchone() is not None


def _delivered(conn: sqlite3.Connection, epcs: Sequence[str]) -> bool:
    """Every item's last custody read is a delivery."""
    if not epcs:
        return False
    for epc in epcs:
        last = conn.execute(
            "SELECT action FROM tag_reads WHERE epc_uri = ? OR epc_hex = ? ORDER BY ts_ms DESC LIMIT 1", (epc, epc)
        ).fetchone()
        if last is None or last[0] != "delivery":
            return False
    return True
