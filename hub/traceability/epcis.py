"""A trail as a GS1 EPCIS 2.0 document (JSON-LD) of ObjectEvents, its validation and a simple query.

Each leg of a trail gives:

* an arrival event when the goods reached the node: its ``bizStep`` and ``disposition`` follow
  from the node kind and the kind of the leg before (see ``_arrival_step``, docs/traceability.md);
* a ``sensor_reporting`` event at the end of the leg (or at ``now_ms`` while the goods are still
  there) with a ``sensorElementList``: the leg's temperature band as one interval report, and one
  report per excursion flagged with a sensor ``exception``.

A delivered trail ends with an ``accepting`` event: the buyer took the goods.

Events carry only the items' EPC URIs and GS1 location identifiers, never buyer data: the buyer's
address is not an EPCIS location here, the delivery is read at the courier box.
"""

from __future__ import annotations

import functools
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Final

import jsonschema
from jsonschema import FormatChecker
from jsonschema.exceptions import best_match
from jsonschema.validators import validator_for

from hub.detectors.base import FindingKind
from hub.traceability.digital_link import DigitalLinkError, gln_uri, lot_uri, parse
from hub.traceability.model import ExcursionView, Leg, NodeInfo, NodeKind, Trail

EPCIS_CONTEXT: Final = "https://ref.gs1.org/standards/epcis/epcis-context.jsonld"
"""The JSON-LD context of EPCIS 2.0 as ratified (gs1.github.io/EPCIS/... is its development copy)."""

DEFAULT_SCHEMA_PATH: Final = Path(__file__).with_name("EPCIS-JSON-Schema.json")
"""GS1's official EPCIS 2.0 JSON Schema, shipped with the package so a hub validates without the
repository's ``../shared/standards/epcis/``; a test checks the copy is byte-identical to that file."""

CHINA_STANDARD_TIME_MIN: Final = 8 * 60
"""The shops and their cold chains are in China (UTC+08:00, no daylight saving)."""

_EVENT_ID_NAMESPACE: Final = uuid.UUID("6f0c8d2e-5c3b-5a43-9a59-2f1e7c0b4d11")
"""Fixed once: event IDs are UUIDv5 names in it, so the same trail always gives the same IDs."""

_FIXED_NODES: Final[frozenset[NodeKind]] = frozenset({"farm", "packhouse", "cold_store"})
_CONVEYANCES: Final[frozenset[NodeKind]] = frozenset({"reefer_truck", "courier_box"})
_DEVICE_FAULTS: Final = frozenset({FindingKind.STUCK_SENSOR.value, FindingKind.SILENT_SENSOR.value})
"""Findings about the sensor, not the goods: reported as ``ERROR_CONDITION``, the rest as ``ALARM_CONDITION``."""

_CBV_PREFIXES: Final = ("https://ref.gs1.org/cbv/BizStep-", "urn:epcglobal:cbv:bizstep:")


class EpcisValidationError(ValueError):
    """An EPCIS document or event that the GS1 schema rejects; ``errors`` lists each problem with its path."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__(f"EPCIS document invalid ({len(errors)} errors):\n" + "\n".join(errors))
        self.errors = errors


def trail_document(
    trail: Trail,
    *,
    gtin_of: Callable[[str], str | None] | None = None,
    now_ms: int,
    utc_offset_min: int = CHINA_STANDARD_TIME_MIN,
) -> dict[str, Any]:
    """The EPCIS 2.0 document of ``trail`` (see the module doc for the events).

    ``gtin_of`` maps a lot id to its product's GTIN: for a ``lot:<id>`` trail whose GTIN is known,
    every event also names the lot as a class (``quantityList`` with its Digital Link, quantity
    unknown), which is what ``query_events(lot=...)`` finds. ``now_ms`` is the creation date and
    the end of the interim sensor report of a leg still open; ``utc_offset_min`` the local time
    zone of the events (``eventTimeZoneOffset``).
    """
    offset = _offset(utc_offset_min)
    lot_class = _lot_class(trail.subject, gtin_of)
    events: list[dict[str, Any]] = []
    previous: NodeKind | None = None
    for index, leg in enumerate(trail.legs):
        step, disposition = _arrival_step(leg.node.kind, previous)
        name = f"{trail.subject}|{index}|{leg.node.gateway_id}|{leg.start_ms}"
        arrival = _event(f"{name}|arrival", leg.start_ms, offset, leg, lot_class=lot_class, biz_step=step)
        if disposition is not None:
            arrival["disposition"] = disposition
        events.append(arrival)
        sensors = _sensor_elements(leg, now_ms, offset)
        if sensors:
            end_ms = leg.end_ms if leg.end_ms is not None else max(now_ms, leg.start_ms)
            # An open leg's report grows until the goods leave: its ID names the time it was cut.
            report = _event(
                f"{name}|sensors|{end_ms}", end_ms, offset, leg, lot_class=lot_class, biz_step="sensor_reporting"
            )
            report["sensorElementList"] = sensors
            events.append(report)
        previous = leg.node.kind
    if trail.delivered and trail.legs:
        last = trail.legs[-1]
        at_ms = last.end_ms if last.end_ms is not None else last.start_ms
        name = f"{trail.subject}|delivery|{last.node.gateway_id}|{at_ms}"
        delivery = _event(name, at_ms, offset, last, lot_class=lot_class, biz_step="accepting", located=False)
        delivery["disposition"] = "retail_sold"
        events.append(delivery)
    return {
        "@context": [EPCIS_CONTEXT],
        "type": "EPCISDocument",
        "schemaVersion": "2.0",
        "creationDate": _time(now_ms, offset),
        "epcisBody": {"eventList": events},
    }


def validate_document(doc: Mapping[str, Any], *, schema_path: Path = DEFAULT_SCHEMA_PATH) -> None:
    """Raise ``EpcisValidationError`` unless ``doc`` (a document or a single event) is valid EPCIS 2.0 JSON.

    Validation follows the schema's own draft (draft-07) and checks the ``uri`` and ``date-time``
    formats too: without that, the schema would accept any string as an event time or identifier.
    """
    validator = _validator(str(schema_path))
    errors = []
    for error in sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.absolute_path))):
        # anyOf / if-then errors nest the real cause: report the most relevant leaf.
        leaf = best_match([error]) or error
        errors.append(f"{leaf.json_path}: {leaf.message}")
    if errors:
        raise EpcisValidationError(errors)


def query_events(
    events: Sequence[Mapping[str, Any]],
    *,
    epc: str | None = None,
    lot: str | None = None,
    since_ms: int | None = None,
    until_ms: int | None = None,
    biz_step: str | None = None,
) -> list[dict[str, Any]]:
    """The events matching every given filter, in their order.

    ``epc``: in the ``epcList``. ``lot``: a lot id, or a lot class URI, named by a ``quantityList``
    class (a Digital Link with AI 10, or an LGTIN EPC class URI). ``since_ms`` / ``until_ms``: event
    time in ``[since_ms, until_ms)``. ``biz_step``: the bare CBV name (``receiving``), CBV URIs of
    either form also match.
    """
    step = None if biz_step is None else _bare_step(biz_step)
    matched = []
    for event in events:
        if epc is not None and epc not in event.get("epcList", ()):
            continue
        if lot is not None and not any(_names_lot(q.get("epcClass"), lot) for q in event.get("quantityList", ())):
            continue
        if since_ms is not None or until_ms is not None:
            at_ms = _event_ms(event)
            if at_ms is None or (since_ms is not None and at_ms < since_ms):
                continue
            if until_ms is not None and at_ms >= until_ms:
                continue
        if step is not None and _bare_step(str(event.get("bizStep", ""))) != step:
            continue
        matched.append(dict(event))
    return matched


def _arrival_step(kind: NodeKind, previous: NodeKind | None) -> tuple[str, str | None]:
    """CBV bizStep and disposition of goods reaching a node of ``kind`` from a node of ``previous``."""
    if kind in _FIXED_NODES:
        # The first place of a trail is where the goods were put away (origin); later ones receive them.
        step = "storing" if previous is None else "receiving"
        return step, "sellable_not_accessible" if kind == "cold_store" else "in_progress"
    if kind in _CONVEYANCES:
        # Onto a vehicle from a place: the goods depart; from one vehicle into another: a transfer.
        step = "loading" if previous in _CONVEYANCES else "departing"
        return step, "in_transit"
    return "arriving", None  # an unknown node: we saw the goods there, their state is not asserted


def _event(
    name: str,
    at_ms: int,
    offset: timezone,
    leg: Leg,
    *,
    lot_class: str | None,
    biz_step: str,
    located: bool = True,
) -> dict[str, Any]:
    event: dict[str, Any] = {
        "type": "ObjectEvent",
        "eventID": f"urn:uuid:{uuid.uuid5(_EVENT_ID_NAMESPACE, name)}",
        "eventTime": _time(at_ms, offset),
        "eventTimeZoneOffset": _offset_text(offset),
        # Only pure-identity EPC URIs may go in an epcList; raw hex from unprogrammed tags is left out.
        "epcList": list(dict.fromkeys(e for e in leg.epcs if e.startswith("urn:epc:id:"))),
        "action": "OBSERVE",
        "bizStep": biz_step,
    }
    if lot_class is not None:
        event["quantityList"] = [{"epcClass": lot_class}]
    location = _location(leg.node)
    if location is not None:
        event["readPoint"] = {"id": location}
        # A vehicle is where goods are read, not where they are kept: CBV leaves bizLocation out in transit.
        if located and leg.node.kind not in _CONVEYANCES:
            event["bizLocation"] = {"id": location}
    return event


def _sensor_elements(leg: Leg, now_ms: int, offset: timezone) -> list[dict[str, Any]]:
    elements: list[dict[str, Any]] = []
    band = leg.band
    if band is not None and band.samples > 0:
        end_ms = leg.end_ms if leg.end_ms is not None else max(now_ms, leg.start_ms)
        elements.append(
            {
                "sensorMetadata": {"startTime": _time(leg.start_ms, offset), "endTime": _time(end_ms, offset)},
                "sensorReport": [
                    {
                        "type": "Temperature",
                        "uom": "CEL",
                        "minValue": band.min_c,
                        "maxValue": band.max_c,
                        "meanValue": band.mean_c,
                    }
                ],
            }
        )
    elements.extend(_excursion_element(excursion, offset) for excursion in leg.excursions)
    return elements


def _excursion_element(excursion: ExcursionView, offset: timezone) -> dict[str, Any]:
    metadata = {"startTime": _time(excursion.started_ms, offset)}
    if excursion.ended_ms is not None:
        metadata["endTime"] = _time(excursion.ended_ms, offset)
    report: dict[str, Any] = {
        "type": "Temperature",
        "exception": "ERROR_CONDITION" if excursion.kind in _DEVICE_FAULTS else "ALARM_CONDITION",
        "uom": "CEL",
    }
    if excursion.peak_c is not None:
        report["value"] = excursion.peak_c  # the worst value: warmest or coldest reading, or the MKT
    return {"sensorMetadata": metadata, "sensorReport": [report]}


def _location(node: NodeInfo) -> str | None:
    # An SGLN URN needs the GS1 company prefix length, which a bare GLN does not tell;
    # EPCIS 2.0 accepts the GLN's Digital Link (AI 414) as the location identifier instead.
    return None if node.gln is None else gln_uri(node.gln)


def _lot_class(subject: str, gtin_of: Callable[[str], str | None] | None) -> str | None:
    kind, _, lot_id = subject.partition(":")
    if kind != "lot" or gtin_of is None:
        return None
    gtin = gtin_of(lot_id)
    return None if gtin is None else lot_uri(gtin, lot_id)


def _names_lot(epc_class: object, lot: str) -> bool:
    if not isinstance(epc_class, str):
        return False
    if epc_class == lot:
        return True
    if epc_class.startswith("urn:epc:class:lgtin:"):
        return epc_class.split(".", 2)[-1] == lot
    try:
        return parse(epc_class).lot == lot
    except DigitalLinkError:
        return False


def _bare_step(step: str) -> str:
    for prefix in _CBV_PREFIXES:
        if step.startswith(prefix):
            return step.removeprefix(prefix)
    return step


def _event_ms(event: Mapping[str, Any]) -> int | None:
    try:
        at = datetime.fromisoformat(str(event["eventTime"]))
    except (KeyError, ValueError):
        return None
    if at.tzinfo is None:
        return None
    return (at - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(milliseconds=1)


def _offset(minutes: int) -> timezone:
    if not -14 * 60 <= minutes <= 14 * 60:
        raise ValueError(f"a UTC offset is within +-14:00, got {minutes} minutes")
    return timezone(timedelta(minutes=minutes))


def _offset_text(offset: timezone) -> str:
    minutes = int(offset.utcoffset(None) // timedelta(minutes=1))
    sign = "-" if minutes < 0 else "+"
    hours, mins = divmod(abs(minutes), 60)
    return f"{sign}{hours:02d}:{mins:02d}"


def _time(ms: int, offset: timezone) -> str:
    # Integer milliseconds through timedelta: a float timestamp could round 999 ms up a second.
    at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    return at.astimezone(offset).isoformat(timespec="milliseconds")


@functools.cache
def _validator(schema_path: str) -> jsonschema.protocols.Validator:
    schema = json.loads(Path(schema_path).read_text(encoding="utf-8"))
    cls = validator_for(schema)
    cls.check_schema(schema)
    return cls(schema, format_checker=_format_checker(cls.FORMAT_CHECKER))


def _format_checker(base: FormatChecker) -> FormatChecker:
    # jsonschema checks "uri" and "date-time" only when rfc3986-validator and rfc3339-validator are
    # installed, and otherwise passes every string silently: refuse to validate half-way.
    missing = {"uri", "date-time"} - base.checkers.keys()
    if missing:
        raise RuntimeError(
            f"EPCIS validation needs format checkers {sorted(missing)}: install rfc3986-validator and rfc3339-validator"
        )
    checker = FormatChecker(formats=())
    checker.checkers.update(base.checkers)

    @checker.checks("uri")
    def _uri(instance: object) -> bool:
        # JSON-LD lets "id" be a blank node identifier ("_:document1", as in GS1's own examples).
        if isinstance(instance, str) and instance.startswith("_:") and len(instance) > 2:
            return True
        return base.conforms(instance, "uri")

    return checker
