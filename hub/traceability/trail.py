"""Build trails from the system of record: custody stays, 5-minute rollups, excursions and claims.

A trail never scans raw readings: the temperature band of a leg comes from the ``rollups`` table
(5-minute min / max / sum / count per series), so an order's 30-day trail costs a few thousand rows.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sqlalchemy import Connection, text

from hub.compensation import EXCURSION_KINDS
from hub.custody import OPEN_END_MS, Stay, stays_of
from hub.schema import ROLLUP_BUCKET_MS
from hub.traceability.model import ChainStatus, ExcursionView, Leg, NodeInfo, TemperatureBand, Trail


def build_trail(
    conn: Connection,
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
    conn: Connection,
    group: list[Stay],
    nodes: Mapping[str, NodeInfo],
    compensated: Callable[[str], bool] | None,
) -> Leg:
    gateway_id = group[0].gateway_id
    start = min(s.start_ms for s in group)
    end = max(s.end_ms for s in group)
    low, high, total, samples = conn.execute(
        text(
            "SELECT min(min_value), max(max_value), sum(sum_value), sum(samples) FROM rollups"
            " WHERE gateway_id = :gateway_id AND quantity = 'temperature' AND bucket_ms >= :start"
            " AND bucket_ms <= :end"
        ),
        {"gateway_id": gateway_id, "start": start - start % ROLLUP_BUCKET_MS, "end": end},
    ).one()
    # PostgreSQL sums a BIGINT column as NUMERIC: bring it back to int before dividing a float by it.
    band = None if not samples else TemperatureBand(low, round(float(total) / int(samples), 2), high, int(samples))
    alarms = conn.execute(
        text(
            "SELECT alarm_id, kind, severity, started_ms, ended_ms, peak_value, duration_s FROM alarms"
            " WHERE gateway_id = :gateway_id AND started_ms <= :end AND coalesce(ended_ms, :open_end) >= :start"
            " ORDER BY started_ms"
        ),
        {"gateway_id": gateway_id, "end": end, "open_end": OPEN_END_MS, "start": start},
    ).all()
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


def _has_claim(conn: Connection, alarm_id: str) -> bool:
    return (
        conn.execute(text("SELECT 1 FROM claims WHERE alarm_id = :alarm_id LIMIT 1"), {"alarm_id": alarm_id}).first()
        is not None
    )


def _delivered(conn: Connection, epcs: Sequence[str]) -> bool:
    """Every item's last custody read is a delivery."""
    if not epcs:
        return False
    for epc in epcs:
        last = conn.execute(
            text("SELECT action FROM tag_reads WHERE epc_uri = :epc OR epc_hex = :epc ORDER BY ts_ms DESC LIMIT 1"),
            {"epc": epc},
        ).first()
        if last is None or last[0] != "delivery":
            return False
    return True
