"""Boards as code: no drift, bilingual titles, only documented metrics and labels, valid provisioning files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from coldchain.cli import main
from hub.grafana import provisioning
from hub.grafana.boards import ALERTING, BOARD_UIDS, dashboards, panel_queries
from hub.grafana.files import (
    ALERTING_FILE,
    DASHBOARD_PROVIDER_FILE,
    DATASOURCES_FILE,
    SCRAPE_FILE,
    drift,
    rendered,
    write,
)
from hub.grafana.queries import ALL, HUB_API_UID, VM_UID, PanelQuery

REPO = Path(__file__).resolve().parents[2]
COMMITTED = REPO / "grafana"
CJK = re.compile(r"[\u4e00-\u9fff]")
LATIN = re.compile(r"[A-Za-z]")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def documented_metrics() -> dict[str, set[str]]:
    """Every metric of docs/metrics.md with its labels, parsed from the two tables."""
    metrics: dict[str, set[str]] = {}
    for line in (REPO / "docs" / "metrics.md").read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if not line.startswith("| `"):
            continue
        # Parenthesised asides hold example values (`temperature` / `humidity`), not names.
        names = [re.findall(r"`([a-z_][a-z0-9_]*)`", re.sub(r"\([^)]*\)", "", cell)) for cell in cells]
        if names[0][0].startswith("coldchain_hub_"):  # | metric | type | labels | meaning |
            metric, kind, labels = names[0][0], cells[1], set(names[2])
            if kind == "histogram":
                metrics.update({metric + suffix: labels | {"le"} for suffix in HISTOGRAM_SUFFIXES})
            else:
                metrics[metric] = labels
        else:  # | measurement | tags | fields | metrics | when |: VictoriaMetrics names them measurement_field
            measurement, tags, fields = names[0][0], set(names[1]), names[2]
            metrics.update({f"{measurement}_{f}": tags for f in fields})
    return metrics


DOCUMENTED = documented_metrics()
ALL_LABELS = set().union(*DOCUMENTED.values())


def annotations(board: dict[str, Any]) -> list[dict[str, Any]]:
    return board.get("annotations", {}).get("list", [])


def variables(board: dict[str, Any]) -> list[dict[str, Any]]:
    return board.get("templating", {}).get("list", [])


def walk_titles(board: dict[str, Any]) -> list[str]:
    titles = [board["title"]]
    titles += [panel["title"] for panel in board["panels"]]
    titles += [annotation["name"] for annotation in annotations(board)]
    titles += [variable["label"] for variable in variables(board)]
    titles += [link["title"] for link in board.get("links", [])]
    for panel in board["panels"]:
        titles += [link["title"] for link in panel.get("fieldConfig", {}).get("defaults", {}).get("links", [])]
        for override in panel.get("fieldConfig", {}).get("overrides", []):
            titles += [p["value"] for p in override["properties"] if p["id"] == "displayName"]
    return titles


def test_the_docs_table_parses_into_the_metrics_the_boards_need() -> None:
    assert DOCUMENTED["cc_reading_value"] == {"gateway_id", "sensor_id", "quantity", "node_kind"}
    assert DOCUMENTED["cc_gateway_clock_offset_ms"] == {"gateway_id", "node_kind"}
    assert DOCUMENTED["cc_alarm_active"] == {"gateway_id", "sensor_id", "quantity", "kind", "severity"}
    assert DOCUMENTED["coldchain_hub_rejected_total"] == {"reason"}
    assert "coldchain_hub_commit_seconds_bucket" in DOCUMENTED


def test_committed_files_equal_the_generated_ones(tmp_path: Path) -> None:
    assert drift(COMMITTED) == []
    write(tmp_path)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert generated == sorted(Path(name) for name in rendered())
    for relative in generated:
        assert (tmp_path / relative).read_bytes() == (COMMITTED / relative).read_bytes(), relative


def test_output_is_deterministic_json_with_sorted_keys() -> None:
    first, second = rendered(), rendered()
    assert first == second
    for name, text in first.items():
        assert text.endswith("\n"), name
        assert not text.endswith("\n\n"), name
        if name.endswith(".json"):
            assert text == json.dumps(json.loads(text), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def test_boards_have_stable_uids_and_files() -> None:
    assert BOARD_UIDS == ("cc-warehouse", "cc-node", "cc-gateway-health", "cc-excursions")
    boards = dashboards()
    assert list(boards) == list(BOARD_UIDS)
    for uid, board in boards.items():
        assert board["uid"] == uid
        assert "id" not in board  # Grafana assigns it; a fixed one would clash between instances
        assert json.loads((COMMITTED / "dashboards" / f"{uid}.json").read_text(encoding="utf-8"))["uid"] == uid


def test_every_title_is_in_chinese_and_english() -> None:
    titles = [title for board in dashboards().values() for title in walk_titles(board)]
    titles += [rule["title"] for rule in provisioning.alerting_file()["groups"][0]["rules"]]
    titles += [source["name"] for source in provisioning.datasources_file()["datasources"]]
    titles.append(provisioning.FOLDER_TITLE)
    not_bilingual = [t for t in titles if not (CJK.search(t) and LATIN.search(t))]
    assert not_bilingual == []
    assert len(titles) > 60


def test_panel_ids_are_unique_within_each_board() -> None:
    for board in dashboards().values():
        ids = [panel["id"] for panel in board["panels"]]
        assert len(ids) == len(set(ids)), board["uid"]


def test_every_panel_queries_a_known_datasource() -> None:
    for board in dashboards().values():
        for panel in board["panels"]:
            if panel["type"] == "row":
                continue
            assert panel["targets"], (board["uid"], panel["title"])
            assert panel["datasource"]["uid"] in (VM_UID, HUB_API_UID)
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == panel["datasource"]["uid"]
                assert target["refId"]
                assert target.get("expr") or target.get("url"), (board["uid"], panel["title"])


def test_panel_queries_list_every_query_of_the_json() -> None:
    listed = {(q.board_uid, q.expr) for q in panel_queries()}
    in_json = set()
    for uid, board in dashboards().items():
        for panel in board["panels"]:
            in_json |= {(uid, t.get("expr") or t["url"]) for t in panel.get("targets", [])}
        in_json |= {(uid, a["expr"]) for a in annotations(board)}
        for variable in variables(board):
            series, label = re.fullmatch(r"label_values\((.*), (\w+)\)", variable["query"]).groups()
            assert label == variable["name"]
            in_json.add((uid, series))
    for group in provisioning.alerting_file()["groups"]:
        in_json |= {(ALERTING, rule["data"][0]["model"]["expr"]) for rule in group["rules"]}
    assert listed == in_json


def test_queries_use_only_documented_metrics_and_labels() -> None:
    for query in panel_queries():
        if query.language == "http":
            continue
        where = f"{query.board_uid} / {query.title} / {query.ref_id}"
        assert query.metrics, f"{where}: reads no metric"
        assert query.metrics <= DOCUMENTED.keys(), f"{where}: {sorted(query.metrics - DOCUMENTED.keys())}"
        metric_labels = set().union(*(DOCUMENTED[m] for m in query.metrics))
        for metric, matchers in re.findall(r"\b([a-z_][a-z0-9_]*)\{([^}]*)\}", query.expr):
            names = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", matchers))
            assert names <= DOCUMENTED[metric], f"{where}: {metric} has no label {sorted(names - DOCUMENTED[metric])}"
        for grouping in re.findall(r"\b(?:by|on|ignoring|without)\s*\(([^)]*)\)", query.expr):
            names = {name.strip() for name in grouping.split(",") if name.strip()}
            assert names <= metric_labels, f"{where}: grouping by {sorted(names - metric_labels)}"
        assert set(query.labels) <= metric_labels, (
            f"{where}: expects labels {sorted(set(query.labels) - metric_labels)}"
        )


def test_hub_api_panels_read_routes_the_hub_serves() -> None:
    api_source = (REPO / "hub" / "api.py").read_text(encoding="utf-8")
    http = [q for q in panel_queries() if q.language == "http"]
    assert http
    for query in http:
        assert query.datasource_uid == HUB_API_UID
        assert f'"{query.expr.split("?")[0]}"' in api_source


def test_node_detail_has_the_gateway_variable_and_alarm_annotations() -> None:
    board = dashboards()["cc-node"]
    by_name = {v["name"]: v for v in variables(board)}
    assert by_name["gateway_id"]["query"] == "label_values(cc_reading_value, gateway_id)"
    exprs = [a["expr"] for a in annotations(board)]
    assert any("cc_alarm_active" in e and 'kind!="rate_of_change"' in e for e in exprs)
    assert any("cc_alarm_active" in e and 'kind="rate_of_change"' in e for e in exprs)


def test_gateway_health_shows_the_hub_metrics_the_issue_names() -> None:
    metrics = set().union(*(q.metrics for q in panel_queries() if q.board_uid == "cc-gateway-health"))
    for needed in (
        "coldchain_hub_messages_total",
        "coldchain_hub_ingest_lag_seconds",
        "coldchain_hub_duplicates_total",
        "coldchain_hub_rejected_total",
        "coldchain_hub_commit_seconds_bucket",
        "coldchain_hub_detector_seconds_bucket",
        "coldchain_hub_series_export_lag_readings",
        "coldchain_hub_series_points_failed_total",
        "cc_gateway_online",
        "cc_gateway_buffer_bytes",
        "cc_driver_errors_count",
        "cc_gateway_clock_offset_ms",
    ):
        assert needed in metrics


def test_units_follow_the_quantities() -> None:
    units = {}
    for board in dashboards().values():
        for panel in board["panels"]:
            if panel["type"] != "row":
                units[panel["title"]] = panel["fieldConfig"]["defaults"].get("unit")
    assert units["温度 Temperature"] == "celsius"
    assert units["湿度 Humidity"] == "humidity"
    assert units["缓冲积压 Buffer backlog (bytes)"] == "bytes"
    assert units["时钟偏差 Clock offset"] == "s"
    assert units["接入滞后 Ingest lag"] == "s"


def test_render_substitutes_grafana_variables() -> None:
    query = PanelQuery("b", "t", "panel", "A", VM_UID, 'rate(x{g="$gateway_id", s=~"${sensor_id}"}[$__rate_interval])')
    assert query.variables == {"gateway_id", "sensor_id", "__rate_interval"}
    assert query.render({"gateway_id": "gw-1", "sensor_id": ALL}) == 'rate(x{g="gw-1", s=~".*"}[5m])'
    assert query.render({"gateway_id": "g", "sensor_id": "s", "__rate_interval": "2m"}).endswith("[2m])")
    with pytest.raises(KeyError, match="sensor_id"):
        query.render({"gateway_id": "gw-1"})
    assert PanelQuery("b", "t", "panel", "A", VM_UID, "[[gateway_id]]").render({"gateway_id": "x"}) == "x"


def test_every_board_query_renders_with_the_board_variables() -> None:
    values = {"gateway_id": "gw-reefer", "sensor_id": ALL, "node_kind": ALL}
    for query in panel_queries():
        rendered_expr = query.render(values)
        assert "$" not in rendered_expr, query
        assert "[[" not in rendered_expr, query


def test_provisioning_files_parse_back_to_their_data() -> None:
    files = rendered()
    assert yaml.safe_load(files[DATASOURCES_FILE]) == provisioning.datasources_file()
    assert yaml.safe_load(files[DASHBOARD_PROVIDER_FILE]) == provisioning.dashboards_file()
    assert yaml.safe_load(files[ALERTING_FILE]) == provisioning.alerting_file()
    assert yaml.safe_load(files[SCRAPE_FILE]) == provisioning.scrape_file()
    for name in (DATASOURCES_FILE, DASHBOARD_PROVIDER_FILE, ALERTING_FILE, SCRAPE_FILE):
        assert yaml.safe_load((COMMITTED / name).read_text(encoding="utf-8")) == yaml.safe_load(files[name])


def test_the_dashboard_provider_reads_the_boards_into_the_folder() -> None:
    provider = provisioning.dashboards_file()["providers"][0]
    assert provider["type"] == "file"
    assert provider["folder"] == provisioning.FOLDER_TITLE
    assert provider["folderUid"] == provisioning.FOLDER_UID
    assert provider["options"]["path"] == provisioning.DASHBOARDS_PATH
    assert provider["options"]["path"].endswith("/dashboards/coldchain")
    # The docs tell where to copy grafana/dashboards/*.json for that path.
    assert provisioning.DASHBOARDS_PATH in (REPO / "docs" / "grafana.md").read_text(encoding="utf-8")


def test_datasources_hold_no_secret_and_point_at_victoriametrics() -> None:
    sources = {s["uid"]: s for s in provisioning.datasources_file()["datasources"]}
    assert sources[VM_UID]["type"] == "prometheus"
    assert sources[VM_UID]["url"] == "http://127.0.0.1:8428"
    assert not any(s["isDefault"] for s in sources.values())
    hub_api = sources[HUB_API_UID]
    assert hub_api["type"] == "yesoreyeram-infinity-datasource"
    assert hub_api["jsonData"]["allowedHosts"] == [hub_api["url"]]
    for value in hub_api["secureJsonData"].values():
        assert re.fullmatch(r"\$\{[A-Z_]+\}", value)


def test_alert_rules_are_well_formed() -> None:
    group = provisioning.alerting_file()["groups"][0]
    assert group["folder"] == provisioning.FOLDER_TITLE
    uids = [rule["uid"] for rule in group["rules"]]
    assert len(uids) == len(set(uids)) == 4
    assert "cc-gateway-offline" in uids
    for rule in group["rules"]:
        ref_ids = [d["refId"] for d in rule["data"]]
        assert rule["condition"] in ref_ids
        assert rule["data"][0]["datasourceUid"] == VM_UID
        threshold = rule["data"][-1]["model"]
        assert threshold["type"] == "threshold"
        assert threshold["expression"] in ref_ids
        assert rule["dashboardUid"] in BOARD_UIDS
        # Grafana expands $VAR in provisioning files, annotations excepted: a $ anywhere else would be eaten.
        without_annotations = {k: v for k, v in rule.items() if k != "annotations"}
        assert "$" not in json.dumps(without_annotations), rule["uid"]


@pytest.mark.parametrize(
    "value",
    [
        "yes",
        "no",
        "on",
        "null",
        "~",
        "1",
        "1.5",
        "",
        "a: b",
        "#x",
        "- x",
        "冷链 Cold chain",
        'q"uote',
        "back\\slash",
        "\n",
    ],
)
def test_the_yaml_writer_keeps_every_string_a_string(value: str) -> None:
    data = {"key": value, "list": [value, {"inner": value}], "needs quotes": [[value]], "n": 3, "f": False, "e": {}}
    assert yaml.safe_load(provisioning.to_yaml(data)) == data


def test_check_reports_edited_missing_and_stale_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "grafana"
    assert main(["grafana", "build", "--out", str(out)]) == 0
    assert main(["grafana", "check", "--dir", str(out)]) == 0
    board = out / "dashboards" / "cc-node.json"
    board.write_text(board.read_text(encoding="utf-8").replace("节点详情", "节点"), encoding="utf-8")
    (out / DATASOURCES_FILE).unlink()
    (out / "dashboards" / "cc-removed.json").write_text("{}\n", encoding="utf-8")
    capsys.readouterr()
    assert main(["grafana", "check", "--dir", str(out)]) == 1
    errors = capsys.readouterr().err
    assert "cc-node.json: differs" in errors
    assert "coldchain.yaml: missing" in errors
    assert "cc-removed.json: not generated" in errors
    assert main(["grafana", "build", "--out", str(out)]) == 0
    assert not (out / "dashboards" / "cc-removed.json").exists()
    assert drift(out) == []
