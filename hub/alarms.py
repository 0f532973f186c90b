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
import sqlite3
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import msgspec

from hub import audit, outbox
from hub.compensation import EXCURSION_KINDS, SEVERITY_ORDER, CompensationPolicy
from hub.custody import OPEN_END_MS, orders_affected, stays_of
from hub.detectors.base import Finding, FindingKind, Severity
from hub.notify import AlarmNotice

EVIDENCE_MARGIN_MS: Final = 30 * 60 * 1000
"""Readings kept as evidence before and after an excursion: enough to see it start and end."""
EVIDENCE_MAX_READINGS: Final = 5000

ALARMS_DDL: Final = """
CREATE TABLE alarms (
    alarm_id     TEXT PRIMARY KEY,
    gateway_id   TEXT NOT NULL,
    sensor_id    TEXT NOT NULL,
    quantity     TEXT NOT NULL,
    kind         TEXT NOT NULL,
    severity     TEXT NOT NULL,
    state        TEXT NOT NULL,
    started_ms   INTEGER NOT NULL,
    opened_ms    INTEGER NOT NULL,
    updated_ms   INTEGER NOT NULL,
    closed_ms    INTEGER,
    ended_ms     INTEGER,
    peak_value   REAL,
    duration_s   REAL NOT NULL DEFAULT 0,
    message      TEXT NOT NULL,
    acknowledged_by TEXT,
    acknowledged_ms INTEGER,
    ack_reason   TEXT,
    closed_by    TEXT,
    close_reason TEXT,
    escalations  INTEGER NOT NULL DEFAULT 0,
    last_escalated_ms INTEGER
);
CREATE UNIQUE INDEX alarms_one_active ON alarms (gateway_id, sensor_id, quantity, kind) WHERE state != 'closed';
CREATE INDEX alarms_state ON alarms (state, opened_ms);
CREATE TABLE orders (
    order_id   TEXT PRIMARY KEY,
    buyer_ref  TEXT NOT NULL,
    product    TEXT,
    lot_id     TEXT,
    status     TEXT NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE order_items (
    order_id TEXT NOT NULL REFERENCES orders (order_id),
    epc      TEXT NOT NULL,
    PRIMARY KEY (order_id, epc)
) WITHOUT ROWID;
CREATE INDEX order_items_epc ON order_items (epc);
CREATE TABLE claims (
    claim_id   TEXT PRIMARY KEY,
    order_id   TEXT NOT NULL REFERENCES orders (order_id),
    alarm_id   TEXT NOT NULL REFERENCES alarms (alarm_id),
    action     TEXT NOT NULL,
    refund_percent REAL,
    voucher_cny REAL,
    state      TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    delivered_ms INTEGER,
    UNIQUE (order_id, alarm_id)
);
CREATE TABLE investigations (
    investigation_id TEXT PRIMARY KEY,
    claim_id  TEXT NOT NULL UNIQUE REFERENCES claims (claim_id),
    alarm_id  TEXT NOT NULL,
    opened_ms INTEGER NOT NULL,
    evidence  BLOB NOT NULL
);
CREATE TABLE gateway_health_history (
    gateway_id TEXT NOT NULL,
    ts_ms      INTEGER NOT NULL,
    body       BLOB NOT NULL
);
CREATE INDEX gateway_health_history_at ON gateway_health_history (gateway_id, ts_ms);
"""


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

    def apply(self, conn: sqlite3.Connection, findings: Sequence[Finding], now_ms: int) -> list[AlarmChange]:
        """Open, update or close alarms for ``findings`` (in order)."""
        changes: list[AlarmChange] = []
        for finding in findings:
            key = finding.key
            row = conn.execute(
                "SELECT alarm_id, severity, peak_value FROM alarms WHERE gateway_id = ? AND sensor_id = ?"
                " AND quantity = ? AND kind = ? AND state != 'closed'",
                (key.gateway_id, key.sensor_id, key.quantity.value, finding.kind.value),
            ).fetchone()
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
                changes.extend(self._update(conn, row, finding, now_ms))
        return changes

    def _open(self, conn: sqlite3.Connection, finding: Finding, now_ms: int) -> AlarmChange:
        alarm_id = uuid.uuid4().hex
        key = finding.key
        conn.execute(
            "INSERT INTO alarms (alarm_id, gateway_id, sensor_id, quantity, kind, severity, state, started_ms,"
            " opened_ms, updated_ms, peak_value, duration_s, message)"
            " VALUES (?, ?, ?, ?, ?, ?, 'open', ?, ?, ?, ?, ?, ?)",
            (
                alarm_id,
                key.gateway_id,
                key.sensor_id,
                key.quantity.value,
                finding.kind.value,
                finding.severity.value,
                finding.started_ms,
                now_ms,
                now_ms,
                finding.value,
                finding.duration_s,
                finding.message,
            ),
        )
        self._record(conn, alarm_id, "open", actor="detector", data={"finding": _finding_json(finding)}, now_ms=now_ms)
        return AlarmChange(alarm_id, "open", finding.kind.value, finding.severity.value, key.gateway_id, key.sensor_id)

    def _update(
        self, conn: sqlite3.Connection, row: tuple[str, str, float | None], finding: Finding, now_ms: int
    ) -> list[AlarmChange]:
        alarm_id, severity, _ = row
        worse = SEVERITY_ORDER[finding.severity] > SEVERITY_ORDER[Severity(severity)]
        new_severity = finding.severity.value if worse else severity
        new_peak = finding.value  # detectors report the worst value of the condition so far
        conn.execute(
            "UPDATE alarms SET severity = ?, peak_value = ?, duration_s = ?, updated_ms = ?, message = ?"
            " WHERE alarm_id = ?",
            (new_severity, new_peak, finding.duration_s, now_ms, finding.message, alarm_id),
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

    def acknowledge(self, conn: sqlite3.Connection, alarm_id: str, actor: str, reason: str, now_ms: int) -> None:
        """Staff saw it: stop escalating (for ``ack_expires_after_s``)."""
        cursor = conn.execute(
            "UPDATE alarms SET state = 'acknowledged', acknowledged_by = ?, acknowledged_ms = ?, ack_reason = ?,"
            " updated_ms = ? WHERE alarm_id = ? AND state = 'open'",
            (actor, now_ms, reason, now_ms, alarm_id),
        )
        if cursor.rowcount != 1:
            raise AlarmError(f"alarm {alarm_id} is not open")
        self._record(conn, alarm_id, "acknowledge", actor=actor, data={"reason": reason}, now_ms=now_ms)

    def close_by_staff(
        self, conn: sqlite3.Connection, alarm_id: str, actor: str, reason: str, now_ms: int
    ) -> AlarmChange:
        """Staff closed it (the goods were handled); compensation is decided as on a detector close."""
        row = conn.execute(
            "SELECT started_ms FROM alarms WHERE alarm_id = ? AND state != 'closed'", (alarm_id,)
        ).fetchone()
        if row is None:
            raise AlarmError(f"alarm {alarm_id} is not active")
        duration_s = max(0.0, (now_ms - int(row[0])) / 1000)
        return self._close(
            conn, alarm_id, ended_ms=now_ms, duration_s=duration_s, actor=actor, reason=reason, now_ms=now_ms
        )

    def escalate_due(self, conn: sqlite3.Connection, now_ms: int) -> list[AlarmChange]:
        """Re-open expired acknowledgements and re-notify open alarms nobody acknowledged in time."""
        settings = self._settings
        expired = conn.execute(
            "SELECT alarm_id FROM alarms WHERE state = 'acknowledged' AND acknowledged_ms <= ?",
            (now_ms - int(settings.ack_expires_after_s * 1000),),
        ).fetchall()
        for (alarm_id,) in expired:
            conn.execute(
                "UPDATE alarms SET state = 'open', last_escalated_ms = NULL, updated_ms = ? WHERE alarm_id = ?",
                (now_ms, alarm_id),
            )
            self._record(conn, alarm_id, "acknowledgement_expired", actor="hub", data={}, now_ms=now_ms)
        due = conn.execute(
            "SELECT alarm_id, kind, severity, gateway_id, sensor_id FROM alarms WHERE state = 'open'"
            " AND coalesce(last_escalated_ms, opened_ms) <= ?",
            (now_ms - int(settings.escalate_after_s * 1000),),
        ).fetchall()
        changes = []
        for alarm_id, kind, severity, gateway_id, sensor_id in due:
            conn.execute(
                "UPDATE alarms SET escalations = escalations + 1, last_escalated_ms = ? WHERE alarm_id = ?",
                (now_ms, alarm_id),
            )
            self._record(conn, alarm_id, "escalate", actor="hub", data={}, now_ms=now_ms)
            changes.append(AlarmChange(alarm_id, "escalate", kind, severity, gateway_id, sensor_id))
        return changes

    # -- closing and compensation ------------------------------------------------------------

    def _close(
        self,
        conn: sqlite3.Connection,
        alarm_id: str,
        *,
        ended_ms: int,
        duration_s: float,
        actor: str,
        reason: str | None,
        now_ms: int,
    ) -> AlarmChange:
        conn.execute(
            "UPDATE alarms SET state = 'closed', closed_ms = ?, ended_ms = ?, duration_s = max(duration_s, ?),"
            " closed_by = ?, close_reason = ?, updated_ms = ? WHERE alarm_id = ?",
            (now_ms, ended_ms, duration_s, actor, reason, now_ms, alarm_id),
        )
        self._record(
            conn, alarm_id, "close", actor=actor, data={"reason": reason, "duration_s": duration_s}, now_ms=now_ms
        )
        alarm = conn.execute(
            "SELECT kind, severity, gateway_id, sensor_id, quantity, started_ms, duration_s FROM alarms"
            " WHERE alarm_id = ?",
            (alarm_id,),
        ).fetchone()
        kind, severity, gateway_id, sensor_id, quantity, started_ms, total_s = alarm
        claims = 0
        if FindingKind(kind) in EXCURSION_KINDS and self._policy is not None:
            excursion = _Excursion(
                alarm_id, gateway_id, sensor_id, quantity, Severity(severity), started_ms, ended_ms, total_s
            )
            claims = self._compensate(conn, excursion, now_ms)
        return AlarmChange(alarm_id, "close", kind, severity, gateway_id, sensor_id, claims)

    def _compensate(self, conn: sqlite3.Connection, excursion: _Excursion, now_ms: int) -> int:
        assert self._policy is not None
        created = 0
        for order_id in orders_affected(conn, excursion.gateway_id, excursion.started_ms, excursion.ended_ms):
            product, lot_id = conn.execute(
                "SELECT product, lot_id FROM orders WHERE order_id = ?", (order_id,)
            ).fetchone()
            # The order's own product, else its lot's profile, else the profile of the node it was in.
            product = (
                product or (lot_id and self._product_of_lot(lot_id)) or self._product_of_gateway(excursion.gateway_id)
            )
            rule = self._policy.decide(product, excursion.severity, excursion.duration_s)
            if rule is None:
                continue
            claim_id = uuid.uuid4().hex
            cursor = conn.execute(
                "INSERT OR IGNORE INTO claims (claim_id, order_id, alarm_id, action, refund_percent, voucher_cny,"
                " state, created_ms) VALUES (?, ?, ?, ?, ?, ?, 'pending', ?)",
                (claim_id, order_id, excursion.alarm_id, rule.action, rule.refund_percent, rule.voucher_cny, now_ms),
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
                "INSERT INTO investigations (investigation_id, claim_id, alarm_id, opened_ms, evidence)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    uuid.uuid4().hex,
                    claim_id,
                    excursion.alarm_id,
                    now_ms,
                    json.dumps(evidence, separators=(",", ":")).encode(),
                ),
            )
            audit.append(
                conn, entity="claim", entity_id=claim_id, action="create", actor="policy", data=claim, ts_ms=now_ms
            )
            created += 1
        return created

    def _evidence(self, conn: sqlite3.Connection, excursion: _Excursion, order_id: str) -> dict[str, object]:
        alarm_id, gateway_id, started_ms = excursion.alarm_id, excursion.gateway_id, excursion.started_ms
        readings = conn.execute(
            "SELECT ts_ms, value, quality FROM readings WHERE gateway_id = ? AND sensor_id = ? AND quantity = ?"
            " AND ts_ms BETWEEN ? AND ? ORDER BY ts_ms LIMIT ?",
            (
                gateway_id,
                excursion.sensor_id,
                excursion.quantity,
                started_ms - EVIDENCE_MARGIN_MS,
                excursion.ended_ms + EVIDENCE_MARGIN_MS,
                EVIDENCE_MAX_READINGS,
            ),
        ).fetchall()
        items = [epc for (epc,) in conn.execute("SELECT epc FROM order_items WHERE order_id = ?", (order_id,))]
        health = conn.execute(
            "SELECT body FROM gateway_health_history WHERE gateway_id = ? AND ts_ms <= ? ORDER BY ts_ms DESC LIMIT 1",
            (gateway_id, started_ms),
        ).fetchone()
        alarm_columns = [d[0] for d in conn.execute("SELECT * FROM alarms WHERE alarm_id = ?", (alarm_id,)).description]
        alarm_row = conn.execute("SELECT * FROM alarms WHERE alarm_id = ?", (alarm_id,)).fetchone()
        return {
            "alarm": dict(zip(alarm_columns, alarm_row, strict=True)),
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
            "gateway_health": json.loads(health[0]) if health else None,
        }

    # -- audit and notifications ---------------------------------------------------------------

    def _record(
        self, conn: sqlite3.Connection, alarm_id: str, action: str, *, actor: str, data: dict[str, object], now_ms: int
    ) -> None:
        audit.append(conn, entity="alarm", entity_id=alarm_id, action=action, actor=actor, data=data, ts_ms=now_ms)
        row = conn.execute(
            "SELECT gateway_id, sensor_id, kind, severity, state, peak_value, started_ms, message, escalations"
            " FROM alarms WHERE alarm_id = ?",
            (alarm_id,),
        ).fetchone()
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
        sequence = conn.execute("SELECT count(*) FROM audit WHERE entity_id = ?", (alarm_id,)).fetchone()[0]
        for endpoint in self._settings.notify:
            outbox.enqueue(
                conn,
                event_id=f"alarm-{alarm_id}-{sequence}-{endpoint}",
                endpoint=endpoint,
                kind="alarm",
                payload=payload,
                now_ms=now_ms,
            )


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
