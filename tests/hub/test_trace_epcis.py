"""EPCIS 2.0 documents of trails, checked against GS1's own JSON Schema (../shared/standards/epcis/)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hub.traceability.digital_link import DigitalLinkError, gtin_check_digit
from hub.traceability.epcis import (
    DEFAULT_SCHEMA_PATH,
    EpcisValidationError,
    query_events,
    trail_document,
    validate_document,
)
from hub.traceability.model import ExcursionView, Leg, NodeInfo, NodeKind, TemperatureBand, Trail
from tests.support.servers import unavailable

STANDARD = Path(__file__).resolve().parents[3] / "shared/standards/epcis"  # ../shared beside the repository
HOUR = 3_600_000
T0 = 1_717_200_000_000  # 2024-06-01T00:00:00Z
GTIN = "06901234000153"  # the GTIN of EPC_A and EPC_B
EPC_A = "urn:epc:id:sgtin:6901234.000015.1001"
EPC_B = "urn:epc:id:sgtin:6901234.000015.1002"
RAW_HEX = "3034257BF400B7800004CB2F"


def gln(body: str) -> str:
    return body + str(gtin_check_digit(body))


FARM = NodeInfo("gw-farm", "packhouse", "茶园包装间", "Tea garden packhouse", gln("690123400001"))
COLD = NodeInfo("gw-cold", "cold_store", "冷库", "Cold store", gln("690123400002"))
TRUCK = NodeInfo("gw-reefer", "reefer_truck", "冷藏车", "Reefer truck", gln("690123400003"))
BOX = NodeInfo("gw-box", "courier_box", "快递箱", "Courier box", gln("690123400004"))


def band(low: float, mean: float, high: float) -> TemperatureBand:
    return TemperatureBand(min_c=low, mean_c=mean, max_c=high, samples=12)


EXCURSION = ExcursionView(
    alarm_id="al-1",
    kind="out_of_range",
    severity="critical",
    started_ms=T0 + 7 * HOUR,
    ended_ms=T0 + 7 * HOUR + 40 * 60_000,
    peak_c=9.4,
    duration_s=2400.0,
    compensated=False,
)


def legs(*, last_end_ms: int | None) -> list[Leg]:
    return [
        Leg(FARM, T0, T0 + 2 * HOUR, band(2.0, 3.1, 4.0), [], [EPC_A, EPC_B, RAW_HEX]),
        Leg(COLD, T0 + 2 * HOUR, T0 + 6 * HOUR, band(1.5, 2.4, 3.5), [], [EPC_A, EPC_B]),
        Leg(TRUCK, T0 + 6 * HOUR, T0 + 9 * HOUR, band(2.0, 5.2, 9.4), [EXCURSION], [EPC_A, EPC_B]),
        Leg(BOX, T0 + 9 * HOUR, last_end_ms, band(3.0, 3.8, 4.6), [], [EPC_A]),
    ]


DELIVERED = Trail("lot:L240601", legs(last_end_ms=T0 + 20 * HOUR), "excursion", delivered=True)
UNDER_WAY = Trail("order:o-77", legs(last_end_ms=None), "excursion", delivered=False)


def gtin_of(lot_id: str) -> str | None:
    return GTIN if lot_id == "L240601" else None


def events_of(doc: dict[str, Any]) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = doc["epcisBody"]["eventList"]
    return events


@pytest.mark.parametrize("trail", [DELIVERED, UNDER_WAY], ids=["delivered", "under-way"])
def test_trail_documents_validate_against_the_gs1_schema(trail: Trail) -> None:
    doc = trail_document(trail, gtin_of=gtin_of, now_ms=T0 + 30 * HOUR)
    validate_document(doc)
    # Through JSON and back, as the API serves it.
    validate_document(json.loads(json.dumps(doc)))
    assert doc["type"] == "EPCISDocument"
    assert doc["schemaVersion"] == "2.0"
    assert doc["creationDate"] == "2024-06-02T14:00:00.000+08:00"


@pytest.mark.parametrize("name", ["SensorDataExample1", "SensorDataExample2", "SensorDataExample8"])
def test_the_official_examples_validate(name: str) -> None:
    validate_document(json.loads((STANDARD / f"{name}.jsonld").read_text(encoding="utf-8")))


def _break_event_time(doc: dict[str, Any]) -> None:
    events_of(doc)[0]["eventTime"] = "yesterday"


def _break_biz_step(doc: dict[str, Any]) -> None:
    events_of(doc)[0]["bizStep"] = "teleporting"


def _drop_event_time(doc: dict[str, Any]) -> None:
    del events_of(doc)[1]["eventTime"]


def _break_epc(doc: dict[str, Any]) -> None:
    events_of(doc)[0]["epcList"] = ["not a uri"]


def _untyped_report(doc: dict[str, Any]) -> None:
    del events_of(doc)[1]["sensorElementList"][0]["sensorReport"][0]["type"]


def _bad_exception(doc: dict[str, Any]) -> None:
    events_of(doc)[5]["sensorElementList"][1]["sensorReport"][0]["exception"] = "https://gs1.org/voc/Hot"


def _unknown_field(doc: dict[str, Any]) -> None:
    events_of(doc)[0]["temperature"] = 3.0


def _no_context(doc: dict[str, Any]) -> None:
    del doc["@context"]


@pytest.mark.parametrize(
    ("breakage", "where"),
    [
        (_break_event_time, "$.epcisBody.eventList[0].eventTime"),
        (_break_biz_step, "$.epcisBody.eventList[0].bizStep"),
        (_drop_event_time, "$.epcisBody.eventList[1]"),
        (_break_epc, "$.epcisBody.eventList[0].epcList[0]"),
        (_untyped_report, "$.epcisBody.eventList[1].sensorElementList[0].sensorReport[0]"),
        (_bad_exception, "$.epcisBody.eventList[5].sensorElementList[1].sensorReport[0].exception"),
        (_unknown_field, "$.epcisBody.eventList[0]"),
        (_no_context, "$"),
    ],
)
def test_broken_documents_fail_with_the_path_of_the_problem(breakage: Any, where: str) -> None:
    doc = trail_document(DELIVERED, gtin_of=gtin_of, now_ms=T0 + 30 * HOUR)
    broken = copy.deepcopy(doc)
    breakage(broken)
    with pytest.raises(EpcisValidationError) as caught:
        validate_document(broken)
    assert any(error.startswith(f"{where}:") for error in caught.value.errors), caught.value.errors


def test_event_ids_are_stable_and_unique() -> None:
    first = trail_document(DELIVERED, now_ms=T0 + 30 * HOUR)
    again = trail_document(DELIVERED, now_ms=T0 + 99 * HOUR)
    ids = [e["eventID"] for e in events_of(first)]
    assert ids == [e["eventID"] for e in events_of(again)]
    assert len(set(ids)) == len(ids)
    assert all(i.startswith("urn:uuid:") for i in ids)
    assert events_of(first) == events_of(again)  # only creationDate differs
    other = trail_document(with_subject(DELIVERED, "lot:L240602"), now_ms=T0 + 30 * HOUR)
    assert not set(ids) & {e["eventID"] for e in events_of(other)}


def with_subject(trail: Trail, subject: str) -> Trail:
    return Trail(subject, trail.legs, trail.status, trail.delivered)


def test_an_open_leg_reports_up_to_now_and_keeps_its_arrival_id() -> None:
    early = events_of(trail_document(UNDER_WAY, now_ms=T0 + 10 * HOUR))
    later = events_of(trail_document(UNDER_WAY, now_ms=T0 + 11 * HOUR))
    assert early[6]["eventID"] == later[6]["eventID"]  # arrival into the courier box
    assert early[7]["eventID"] != later[7]["eventID"]  # the interim report is a new observation
    assert early[7]["eventTime"] == "2024-06-01T18:00:00.000+08:00"
    assert early[7]["sensorElementList"][0]["sensorMetadata"] == {
        "startTime": "2024-06-01T17:00:00.000+08:00",
        "endTime": "2024-06-01T18:00:00.000+08:00",
    }


def test_biz_steps_and_dispositions_follow_the_legs() -> None:
    events = events_of(trail_document(DELIVERED, now_ms=T0 + 30 * HOUR))
    assert [(e["bizStep"], e.get("disposition")) for e in events] == [
        ("storing", "in_progress"),
        ("sensor_reporting", None),
        ("receiving", "sellable_not_accessible"),
        ("sensor_reporting", None),
        ("departing", "in_transit"),
        ("sensor_reporting", None),
        ("loading", "in_transit"),
        ("sensor_reporting", None),
        ("accepting", "retail_sold"),
    ]
    under_way = events_of(trail_document(UNDER_WAY, now_ms=T0 + 30 * HOUR))
    assert [e["bizStep"] for e in under_way][-1] == "sensor_reporting"
    assert all(e["action"] == "OBSERVE" for e in events)


@pytest.mark.parametrize(
    ("previous", "kind", "expected"),
    [
        (None, "farm", ("storing", "in_progress")),
        ("reefer_truck", "packhouse", ("receiving", "in_progress")),
        (None, "cold_store", ("storing", "sellable_not_accessible")),
        ("cold_store", "courier_box", ("departing", "in_transit")),
        ("courier_box", "reefer_truck", ("loading", "in_transit")),
        ("reefer_truck", "unknown", ("arriving", None)),
    ],
)
def test_each_node_kind_maps_to_a_cbv_step(previous: NodeKind | None, kind: NodeKind, expected: Any) -> None:
    node = NodeInfo("gw-x", kind)
    trail_legs = [Leg(NodeInfo("gw-p", previous), T0, T0 + HOUR, None, [], [EPC_A])] if previous else []
    trail_legs.append(Leg(node, T0 + HOUR, None, None, [], [EPC_A]))
    doc = trail_document(Trail("item:x", trail_legs, "intact", delivered=False), now_ms=T0 + 2 * HOUR)
    validate_document(doc)
    last = events_of(doc)[-1]
    assert (last["bizStep"], last.get("disposition")) == expected


def test_sensor_reports_carry_the_band_and_the_excursion() -> None:
    truck_report = events_of(trail_document(DELIVERED, now_ms=T0 + 30 * HOUR))[5]
    band_element, excursion_element = truck_report["sensorElementList"]
    assert band_element == {
        "sensorMetadata": {"startTime": "2024-06-01T14:00:00.000+08:00", "endTime": "2024-06-01T17:00:00.000+08:00"},
        "sensorReport": [{"type": "Temperature", "uom": "CEL", "minValue": 2.0, "maxValue": 9.4, "meanValue": 5.2}],
    }
    assert excursion_element == {
        "sensorMetadata": {"startTime": "2024-06-01T15:00:00.000+08:00", "endTime": "2024-06-01T15:40:00.000+08:00"},
        "sensorReport": [{"type": "Temperature", "exception": "ALARM_CONDITION", "uom": "CEL", "value": 9.4}],
    }
    assert truck_report["eventTime"] == "2024-06-01T17:00:00.000+08:00"


def test_device_faults_are_error_conditions_and_open_excursions_have_no_end() -> None:
    stuck = ExcursionView("al-2", "stuck_sensor", "warning", T0 + 10, None, None, 60.0, compensated=False)
    leg = Leg(TRUCK, T0, None, None, [stuck], [EPC_A])
    doc = trail_document(Trail("item:x", [leg], "intact", delivered=False), now_ms=T0 + HOUR)
    validate_document(doc)
    (element,) = events_of(doc)[1]["sensorElementList"]
    assert element == {
        "sensorMetadata": {"startTime": "2024-06-01T08:00:00.010+08:00"},
        "sensorReport": [{"type": "Temperature", "exception": "ERROR_CONDITION", "uom": "CEL"}],
    }


def test_a_leg_without_readings_has_no_sensor_event() -> None:
    leg = Leg(COLD, T0, T0 + HOUR, TemperatureBand(0.0, 0.0, 0.0, samples=0), [], [EPC_A])
    events = events_of(trail_document(Trail("item:x", [leg], "intact", delivered=False), now_ms=T0))
    assert [e["bizStep"] for e in events] == ["storing"]


def test_locations_epcs_and_lot_class() -> None:
    events = events_of(trail_document(DELIVERED, gtin_of=gtin_of, now_ms=T0 + 30 * HOUR))
    farm, cold, truck, delivery = events[0], events[2], events[4], events[8]
    assert farm["epcList"] == [EPC_A, EPC_B]  # the raw-hex EPC cannot be named in EPCIS
    assert farm["readPoint"] == farm["bizLocation"] == {"id": f"https://id.gs1.org/414/{FARM.gln}"}
    assert cold["bizLocation"] == {"id": f"https://id.gs1.org/414/{COLD.gln}"}
    assert truck["readPoint"] == {"id": f"https://id.gs1.org/414/{TRUCK.gln}"}
    assert "bizLocation" not in truck  # goods in transit have no business location
    assert delivery["readPoint"] == {"id": f"https://id.gs1.org/414/{BOX.gln}"}
    assert "bizLocation" not in delivery  # the buyer's address is never published
    assert delivery["eventTime"] == "2024-06-02T04:00:00.000+08:00"
    assert all(e["quantityList"] == [{"epcClass": f"https://id.gs1.org/01/{GTIN}/10/L240601"}] for e in events)
    assert all("quantityList" not in e for e in events_of(trail_document(UNDER_WAY, gtin_of=gtin_of, now_ms=T0)))


def test_a_node_without_gln_has_no_location_and_a_bad_gln_is_refused() -> None:
    leg = Leg(NodeInfo("gw-x", "cold_store"), T0, T0 + HOUR, None, [], [EPC_A])
    doc = trail_document(Trail("item:x", [leg], "intact", delivered=True), now_ms=T0)
    validate_document(doc)
    assert all("readPoint" not in e and "bizLocation" not in e for e in events_of(doc))
    bad = Leg(NodeInfo("gw-x", "cold_store", gln="6901234000010"), T0, None, None, [], [])
    with pytest.raises(DigitalLinkError, match="check digit"):
        trail_document(Trail("item:x", [bad], "intact", delivered=False), now_ms=T0)


def test_time_zone_offset() -> None:
    doc = trail_document(DELIVERED, now_ms=T0, utc_offset_min=-(3 * 60 + 30))
    validate_document(doc)
    first = events_of(doc)[0]
    assert (first["eventTime"], first["eventTimeZoneOffset"]) == ("2024-05-31T20:30:00.000-03:30", "-03:30")
    with pytest.raises(ValueError, match="14:00"):
        trail_document(DELIVERED, now_ms=T0, utc_offset_min=15 * 60)


def test_query_filters() -> None:
    events = events_of(trail_document(DELIVERED, gtin_of=gtin_of, now_ms=T0 + 30 * HOUR))
    steps = [e["bizStep"] for e in query_events(events, epc=EPC_B)]
    assert steps == ["storing", "sensor_reporting", "receiving", "sensor_reporting", "departing", "sensor_reporting"]
    assert len(query_events(events, lot="L240601")) == len(events)
    assert len(query_events(events, lot=f"https://id.gs1.org/01/{GTIN}/10/L240601")) == len(events)
    assert query_events(events, lot="L999") == []
    window = query_events(events, since_ms=T0 + 6 * HOUR, until_ms=T0 + 9 * HOUR)
    assert [e["bizStep"] for e in window] == ["sensor_reporting", "departing"]  # [since, until)
    assert [e["bizStep"] for e in query_events(events, biz_step="receiving")] == ["receiving"]
    assert len(query_events(events, biz_step="https://ref.gs1.org/cbv/BizStep-sensor_reporting")) == 4
    assert len(query_events(events, biz_step="urn:epcglobal:cbv:bizstep:accepting", epc=EPC_A)) == 1
    assert query_events(events, biz_step="accepting", epc=EPC_B) == []
    assert query_events(events) == events
    lgtin = [{"type": "ObjectEvent", "quantityList": [{"epcClass": "urn:epc:class:lgtin:6901234.000015.L-7"}]}]
    assert query_events(lgtin, lot="L-7") == lgtin
    assert query_events(lgtin, since_ms=0) == []  # no event time: cannot be in a window


_KINDS: list[NodeKind] = ["packhouse", "farm", "cold_store", "reefer_truck", "courier_box", "unknown"]
_EPCS = st.one_of(
    st.builds(lambda n: f"urn:epc:id:sgtin:6901234.000015.{n}", st.integers(0, 10**9)),
    st.builds(lambda n: f"urn:epc:id:sscc:6901234.{n:010d}", st.integers(0, 10**9)),
    st.text("0123456789ABCDEF", min_size=24, max_size=24),
)


@st.composite
def trails(draw: st.DrawFn) -> Trail:
    start = draw(st.integers(0, 4_000_000_000_000))
    trail_legs = []
    count = draw(st.integers(0, 5))
    for index in range(count):
        duration = draw(st.integers(0, 10 * HOUR))
        is_last = index == count - 1
        end = None if is_last and draw(st.booleans()) else start + duration
        low = draw(st.floats(-30, 30))
        node = NodeInfo(
            f"gw-{index}",
            draw(st.sampled_from(_KINDS)),
            gln=draw(st.none() | st.just(gln(f"6901234{index:05d}"))),
        )
        excursions = [
            ExcursionView(
                f"al-{index}",
                draw(st.sampled_from(["out_of_range", "mkt_over_limit", "silent_sensor"])),
                "critical",
                start,
                draw(st.none() | st.just(start + duration)),
                draw(st.none() | st.floats(-40, 60)),
                duration / 1000,
                compensated=False,
            )
            for _ in range(draw(st.integers(0, 2)))
        ]
        samples = draw(st.integers(0, 100))
        trail_legs.append(
            Leg(
                node,
                start,
                end,
                draw(st.none() | st.just(TemperatureBand(low, low + 1, low + 2, samples))),
                excursions,
                draw(st.lists(_EPCS, max_size=4)),
            )
        )
        start += duration
    return Trail(draw(st.sampled_from(["lot:L1", "order:o-1", "item:x"])), trail_legs, "intact", draw(st.booleans()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(trail=trails(), now_ms=st.integers(0, 4_100_000_000_000), offset=st.integers(-14 * 60, 14 * 60))
def test_any_trail_gives_a_valid_document(trail: Trail, now_ms: int, offset: int) -> None:
    doc = trail_document(trail, gtin_of=lambda _: GTIN, now_ms=now_ms, utc_offset_min=offset)
    validate_document(doc)
    assert len(query_events(events_of(doc), lot="L1")) == (len(events_of(doc)) if trail.subject == "lot:L1" else 0)


def test_validator_reads_another_schema_path(tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"$schema": "http://json-schema.org/draft-07/schema#", "required": ["x"]}))
    with pytest.raises(EpcisValidationError, match="'x' is a required property"):
        validate_document({}, schema_path=schema)


def test_the_packaged_schema_is_gs1s_own() -> None:
    """The copy the hub ships must be byte-identical to ../shared/standards (present in CI)."""
    official = STANDARD / "EPCIS-JSON-Schema.json"
    if not official.exists():
        unavailable(f"{official} is missing: ../shared/standards is not beside this checkout")
    assert DEFAULT_SCHEMA_PATH.read_bytes() == official.read_bytes()
