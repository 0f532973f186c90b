"""Alarm lifecycle, compensation claims and investigations, applied inside the ingest transaction.

A detector's finding opens, updates or closes the one active alarm of its (series, kind): the
database enforces "one active alarm per series and type" with a partial unique index, so a repeated
finding updates instead of duplicating. Every change is written to the hash-chained audit log and
queued for the configured notification endpoints in the transactional outbox, in the same
transaction as the readings that caused it: a crash either keeps all of it or none.

When an excursion alarm closes (by the detector or by staff), the compensation policy decides; each
order with an item in the gateway's custody during the excursion gets exactly one claim (unique per
(order, alarm)), queued in the outbox for the shop platform, with an investigation holding the
evidence.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec
from sqlalchemy import Connection, text

from hub import audit, outbox
from hub.compensation import EXCURSION_KINDS, SEVERITY_ORDER, CompensationPolicy
from hub.custody import OPEN_END_MS, orders_affected, stays_of
from hub.detectors.base import Finding, FindingKind, Severity
from hub.notify import AlarmNotice

EVIDENCE_MARGIN_MS: Final = 30 * 60 * 1000
"""Readings kept as evidence before and after an excursion: enough to see it start and end."""
EVIDENCE_MAX_READINGS: Final = 5000


class AlarmSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Who hears about alarms and when an unacknowledged one escalates."""

    notify: list[str] = msgspec.field(default_factory=list)
    """Endpoint names (``[[endpoints]]``) told about every alarm change."""
    notify_min_severity: Severity = Severity.WARNING
    escalate_after_s: float = 15 * 60.0
    """An open alarm nobody acknowledged is sent again, marked escalated, every this often."""
    ack_expires_after_s: float = 4 * 3600.0
    """An acknowledged alarm still active this long later is open again: no alarm is silenced forever."""


@dataclass(frozen=True)
class _Excursion:
    """A closed excursion alarm, as compensation and evidence need it."""

    alarm_id: str
    gateway_id: str
    sensor_id: str
    quantity: str
    severity: Severity
    started_ms: int
    ended_ms: int
    duration_s: float


@dataclass(frozen=True)
class AlarmChange:
    """What happened to an alarm in a transaction (for logs, the demo and metrics)."""

    alarm_id: str
    action: str
    kind: str
    severity: str
    gateway_id: str
    sensor_id: str
    claims: int = 0


class AlarmError(Exception):
    """A staff action refers to no alarm or to one in the wrong state."""


class AlarmService:
    """Applies findings and staff actions to alarms, inside a transaction the caller owns."""

    def __init__(
        self,
        settings: AlarmSettings,
        policy: CompensationPolicy | None,
        product_of_gateway: Callable[[str], str | None],
        product_of_lot: Callable[[str], str | None] = lambda _lot: None,
    ) -> None:
        self._settings = settings
        self._policy = policy
        self._product_of_gateway = product_of_gateway
        self._product_of_lot = product_of_lot

    # -- detector findings ---------------------------------------------------------------

    def apply(self, conn: Connection, findings: Sequence[Finding], now_ms: int) -> list[AlarmChange]:
        """Open, update or close alarms for ``findings`` (in order)."""
        changes: list[AlarmChange] = []
        for finding in findings:
            key = finding.key
            row = conn.execute(
                text(
                    "SELECT alarm_id, severity, peak_value FROM alarms WHERE gateway_id = :gateway_id"
                    " AND sensor_id = :sensor_id AND quantity = :quantity AND kind = :kind AND state != 'closed'"
                ),
                {
                    "gateway_id": key.gateway_id,
                    "sensor_id": key.sensor_id,
                    "quantity": key.quantity.value,
                    "kind": finding.kind.value,
                },
            ).first()
            if row is None and finding.action == "close":
                continue  # closed by staff already; the condition ended too
            if row is None:
                changes.append(self._open(conn, finding, now_ms))
            elif finding.action == "close":
                changes.append(
                    self._close(
                        conn,
                        row[0],
                        ended_ms=finding.ts_ms,
                        duration_s=finding.duration_s,
                        actor="detector",
                        reason=None,
                        now_ms=now_ms,
                    )
                )
            else:
                changes.extend(self._update(conn, (row[0], row[1], row[2]), finding, now_ms))
        return changes

    def _open(self, conn: Connection, finding: Finding, now_ms: int) -> AlarmChange:
        alarm_id = uuid.uuid4().hex
        key = finding.key
        conn.execute(
            text(
                "INSERT INTO alarms (alarm_id, gateway_id, sensor_id, quantity, kind, severity, state, started_ms,"
                " opened_ms, updated_ms, peak_value, duration_s, message) VALUES (:alarm_id, :gateway_id,"
                " :sensor_id, :quantity, :kind, :severity, 'open', :started_ms, :now, :now, :peak, :duration_s,"
                " :message)"
            ),
            {
                "alarm_id": alarm_id,
                "gateway_id": key.gateway_id,
                "sensor_id": key.sensor_id,
                "quantity": key.quantity.value,
                "kind": finding.kind.value,
                "severity": finding.severity.value,
                "started_ms": finding.started_ms,
                "now": now_ms,
                "peak": finding.value,
                "duration_s": finding.duration_s,
                "message": finding.message,
            },
        )
        self._record(conn, alarm_id, "open", actor="detector", data={"finding": _finding_json(finding)}, now_ms=now_ms)
        return AlarmChange(alarm_id, "open", finding.kind.value, finding.severity.value, key.gateway_id, key.sensor_id)

    def _update(
        self, conn: Connection, row: tuple[str, str, float | None], finding: Finding, now_ms: int
    ) -> list[AlarmChange]:
        alarm_id, severity, _ = row
        worse = SEVERITY_ORDER[finding.severity] > SEVERITY_ORDER[Severity(severity)]
        new_severity = finding.severity.value if worse else severity
        new_peak = finding.value  # detectors report the worst value of the condition so far
        conn.execute(
            text(
                "UPDATE alarms SET severity = :severity, peak_value = :peak, duration_s = :duration_s,"
                " updated_ms = :now, message = :message WHERE alarm_id = :alarm_id"
            ),
            {
                "severity": new_severity,
                "peak": new_peak,
                "duration_s": finding.duration_s,
                "now": now_ms,
                "message": finding.message,
                "alarm_id": alarm_id,
            },
        )
        if not worse:
            return []  # a repeated finding refreshes the alarm silently
        self._record(
            conn,
            alarm_id,
            "escalate_severity",
            actor="detector",
            data={"finding": _finding_json(finding)},
            now_ms=now_ms,
        )
        return [
            AlarmChange(
                alarm_id, "update", finding.kind.value, new_severity, finding.key.gateway_id, finding.key.sensor_id
            )
        ]

    # -- staff actions -------------------------------------------------------------------

    def acknowledge(self, conn: Connection, alarm_id: str, actor: str, reason: str, now_ms: int) -> None:
        """Staff saw it: stop escalating (for ``ack_expires_after_s``)."""
        cursor = conn.execute(
            text(
                "UPDATE alarms SET state = 'acknowledged', acknowledged_by = :actor, acknowledged_ms = :now,"
                " ack_reason = :reason, updated_ms = :now WHERE alarm_id = :alarm_id AND state = 'open'"
            ),
            {"actor": actor, "now": now_ms, "reason": reason, "alarm_id": alarm_id},
        )
        if cursor.rowcount != 1:
            raise AlarmError(f"alarm {alarm_id} is not open")
        self._record(conn, alarm_id, "acknowledge", actor=actor, data={"reason": reason}, now_ms=now_ms)

    def close_by_staff(self, conn: Connection, alarm_id: str, actor: str, reason: str, now_ms: int) -> AlarmChange:
        """Staff closed it (the goods were handled); compensation is decided as on a detector close."""
        row = conn.execute(
            text("SELECT started_ms FROM alarms WHERE alarm_id = :alarm_id AND state != 'closed'"),
            {"alarm_id": alarm_id},
        ).first()
        if row is None:
            raise AlarmError(f"alarm {alarm_id} is not active")
        duration_s = max(0.0, (now_ms - int(row[0])) / 1000)
        return self._close(
            conn, alarm_id, ended_ms=now_ms, duration_s=duration_s, actor=actor, reason=reason, now_ms=now_ms
        )

    def escalate_due(self, conn: Connection, now_ms: int) -> list[AlarmChange]:
        """Re-open expired acknowledgements and re-notify open alarms nobody acknowledged in time."""
        settings = self._settings
        expired = conn.execute(
            text("SELECT alarm_id FROM alarms WHERE state = 'acknowledged' AND acknowledged_ms <= :before"),
            {"before": now_ms - int(settings.ack_expires_after_s * 1000)},
        ).all()
        for (alarm_id,) in expired:
            conn.execute(
                text(
                    "UPDATE alarms SET state = 'open', last_escalated_ms = NULL, updated_ms = :now"
                    " WHERE alarm_id = :alarm_id"
                ),
                {"now": now_ms, "alarm_id": alarm_id},
            )
            self._record(conn, alarm_id, "acknowledgement_expired", actor="hub", data={}, now_ms=now_ms)
        due = conn.execute(
            text(
                "SELECT alarm_id, kind, severity, gateway_id, sensor_id FROM alarms WHERE state = 'open'"
                " AND coalesce(last_escalated_ms, opened_ms) <= :before"
            ),
            {"before": now_ms - int(settings.escalate_after_s * 1000)},
        ).all()
        changes = []
        for alarm_id, kind, severity, gateway_id, sensor_id in due:
            conn.execute(
                text(
                    "UPDATE alarms SET escalations = escalations + 1, last_escalated_ms = :now"
                    " WHERE alarm_id = :alarm_id"
                ),
                {"now": now_ms, "alarm_id": alarm_id},
            )
            self._record(conn, alarm_id, "escalate", actor="hub", data={}, now_ms=now_ms)
            changes.append(AlarmChange(alarm_id, "escalate", kind, severity, gateway_id, sensor_id))
        return changes

    # -- closing and compensation ------------------------------------------------------------

    def _close(
        self,
        conn: Connection,
        alarm_id: str,
        *,
        ended_ms: int,
        duration_s: float,
        actor: str,
        reason: str | None,
        now_ms: int,
    ) -> AlarmChange:
        conn.execute(
            text(
                "UPDATE alarms SET state = 'closed', closed_ms = :now, ended_ms = :ended_ms,"
                " duration_s = CASE WHEN duration_s > :duration_s THEN duration_s ELSE :duration_s END,"
                " closed_by = :actor, close_reason = :reason, updated_ms = :now WHERE alarm_id = :alarm_id"
            ),
            {
                "now": now_ms,
                "ended_ms": ended_ms,
                "duration_s": duration_s,
                "actor": actor,
                "reason": reason,
                "alarm_id": alarm_id,
            },
        )
        self._record(
            conn, alarm_id, "close", actor=actor, data={"reason": reason, "duration_s": duration_s}, now_ms=now_ms
        )
        alarm = conn.execute(
            text(
                "SELECT kind, severity, gateway_id, sensor_id, quantity, started_ms, duration_s FROM alarms"
                " WHERE alarm_id = :alarm_id"
            ),
            {"alarm_id": alarm_id},
        ).one()
        kind, severity, gateway_id, sensor_id, quantity, started_ms, total_s = alarm
        claims = 0
        if FindingKind(kind) in EXCURSION_KINDS and self._policy is not None:
            excursion = _Excursion(
                alarm_id, gateway_id, sensor_id, quantity, Severity(severity), started_ms, ended_ms, total_s
            )
            claims = self._compensate(conn, excursion, now_ms)
        return AlarmChange(alarm_id, "close", kind, severity, gateway_id, sensor_id, claims)

    def _compensate(self, conn: Connection, excursion: _Excursion, now_ms: int) -> int:
        assert self._policy is not None
        created = 0
        for order_id in orders_affected(conn, excursion.gateway_id, excursion.started_ms, excursion.ended_ms):
            product, lot_id = conn.execute(
                text("SELECT product, lot_id FROM orders WHERE order_id = :order_id"), {"order_id": order_id}
            ).one()
            # The order's own product, else its lot's profile, else the profile of the node it was in.
            product = (
                product or (lot_id and self._product_of_lot(lot_id)) or self._product_of_gateway(excursion.gateway_id)
            )
            rule = self._policy.decide(product, excursion.severity, excursion.duration_s)
            if rule is None:
                continue
            claim_id = uuid.uuid4().hex
            cursor = conn.execute(
                text(
                    "INSERT INTO claims (claim_id, order_id, alarm_id, action, refund_percent, voucher_cny, state,"
                    " created_ms) VALUES (:claim_id, :order_id, :alarm_id, :action, :refund_percent, :voucher_cny,"
                    " 'pending', :now) ON CONFLICT (order_id, alarm_id) DO NOTHING"
                ),
                {
                    "claim_id": claim_id,
                    "order_id": order_id,
                    "alarm_id": excursion.alarm_id,
                    "action": rule.action,
                    "refund_percent": rule.refund_percent,
                    "voucher_cny": rule.voucher_cny,
                    "now": now_ms,
                },
            )
            if cursor.rowcount != 1:
                continue  # this order already has its claim for this excursion
            claim = {
                "claim_id": claim_id,
                "order_id": order_id,
                "excursion": {
                    "alarm_id": excursion.alarm_id,
                    "gateway_id": excursion.gateway_id,
                    "sensor_id": excursion.sensor_id,
                    "severity": excursion.severity.value,
                    "started_ms": excursion.started_ms,
                    "ended_ms": excursion.ended_ms,
                    "duration_s": round(excursion.duration_s, 1),
                },
                "action": rule.action,
                "refund_percent": rule.refund_percent,
                "voucher_cny": rule.voucher_cny,
                "created_ms": now_ms,
            }
            outbox.enqueue(
                conn,
                event_id=f"claim-{claim_id}",
                endpoint=self._policy.endpoint,
                kind=outbox.CLAIM_KIND,
                payload=json.dumps(claim, separators=(",", ":")).encode(),
                now_ms=now_ms,
            )
            evidence = self._evidence(conn, excursion, order_id)
            conn.execute(
                text(
                    "INSERT INTO investigations (investigation_id, claim_id, alarm_id, opened_ms, evidence)"
                    " VALUES (:investigation_id, :claim_id, :alarm_id, :now, :evidence)"
                ),
                {
                    "investigation_id": uuid.uuid4().hex,
                    "claim_id": claim_id,
                    "alarm_id": excursion.alarm_id,
                    "now": now_ms,
                    "evidence": json.dumps(evidence, separators=(",", ":")).encode(),
                },
            )
            audit.append(
                conn, entity="claim", entity_id=claim_id, action="create", actor="policy", data=claim, ts_ms=now_ms
            )
            created += 1
        return created

    def _evidence(self, conn: Connection, excursion: _Excursion, order_id: str) -> dict[str, object]:
        alarm_id, gateway_id, started_ms = excursion.alarm_id, excursion.gateway_id, excursion.started_ms
        readings = conn.execute(
            text(
                "SELECT ts_ms, value, quality FROM series_readings WHERE gateway_id = :gateway_id"
                " AND sensor_id = :sensor_id AND quantity = :quantity AND ts_ms BETWEEN :start AND :end"
                " ORDER BY ts_ms LIMIT :limit"
            ),
            {
                "gateway_id": gateway_id,
                "sensor_id": excursion.sensor_id,
                "quantity": excursion.quantity,
                "start": started_ms - EVIDENCE_MARGIN_MS,
                "end": excursion.ended_ms + EVIDENCE_MARGIN_MS,
                "limit": EVIDENCE_MAX_READINGS,
            },
        ).all()
        items = list(
            conn.execute(
                text("SELECT epc FROM order_items WHERE order_id = :order_id"), {"order_id": order_id}
            ).scalars()
        )
        health = conn.execute(
            text(
                "SELECT body FROM gateway_health_history WHERE gateway_id = :gateway_id AND ts_ms <= :start"
                " ORDER BY ts_ms DESC LIMIT 1"
            ),
            {"gateway_id": gateway_id, "start": started_ms},
        ).first()
        alarm_row = conn.execute(text("SELECT * FROM alarms WHERE alarm_id = :alarm_id"), {"alarm_id": alarm_id})
        return {
            "alarm": dict(alarm_row.mappings().one()),
            "readings": [{"ts_ms": ts, "value": value, "quality": quality} for ts, value, quality in readings],
            "items": [
                {
                    "epc": stay.epc,
                    "gateway_id": stay.gateway_id,
                    "from_ms": stay.start_ms,
                    "to_ms": None if stay.end_ms == OPEN_END_MS else stay.end_ms,
                }
                for stay in stays_of(conn, items)
            ],
            "gateway_health": json.loads(bytes(health[0])) if health else None,
        }

    # -- audit and notifications ---------------------------------------------------------------

    def _record(
        self, conn: Connection, alarm_id: str, action: str, *, actor: str, data: dict[str, object], now_ms: int
    ) -> None:
        audit.append(conn, entity="alarm", entity_id=alarm_id, action=action, actor=actor, data=data, ts_ms=now_ms)
        row = conn.execute(
            text(
                "SELECT gateway_id, sensor_id, kind, severity, state, peak_value, started_ms, message, escalations"
                " FROM alarms WHERE alarm_id = :alarm_id"
            ),
            {"alarm_id": alarm_id},
        ).one()
        gateway_id, sensor_id, kind, severity, state, peak, started_ms, message, escalations = row
        if SEVERITY_ORDER[Severity(severity)] < SEVERITY_ORDER[self._settings.notify_min_severity]:
            return
        notice = AlarmNotice(
            alarm_id=alarm_id,
            gateway_id=gateway_id,
            sensor_id=sensor_id,
            kind=kind,
            severity=severity,
            state=state,
            value=peak,
            started_ms=started_ms,
            message=message,
            escalation=escalations,
        )
        payload = msgspec.json.encode(notice)
        sequence = conn.execute(
            text("SELECT count(*) FROM audit WHERE entity_id = :alarm_id"), {"alarm_id": alarm_id}
        ).scalar_one()
        for endpoint in self._settings.notify:
            outbox.enqueue(
                conn,
                event_id=f"alarm-{alarm_id}-{sequence}-{endpoint}",
                endpoint=endpoint,
                kind="alarm",
                payload=payload,
                now_ms=now_ms,
            )


def claim_delivered(conn: Connection, claim_id: str, *, endpoint: str, event_id: str, now_ms: int) -> bool:
    """The shop platform acknowledged a claim: mark it delivered and audit that, once; False if it was already."""
    updated = conn.execute(
        text(
            "UPDATE claims SET state = 'delivered', delivered_ms = :now WHERE claim_id = :claim_id"
            " AND state = 'pending'"
        ),
        {"now": now_ms, "claim_id": claim_id},
    ).rowcount
    if updated:
        audit.append(
            conn,
            entity="claim",
            entity_id=claim_id,
            action="delivered",
            actor=endpoint,
            data={"event_id": event_id},
            ts_ms=now_ms,
        )
    return bool(updated)


def _finding_json(finding: Finding) -> dict[str, object]:
    return {
        "kind": finding.kind.value,
        "action": finding.action,
        "severity": finding.severity.value,
        "started_ms": finding.started_ms,
        "ts_ms": finding.ts_ms,
        "value": finding.value,
        "duration_s": finding.duration_s,
        "message": finding.message,
    }
