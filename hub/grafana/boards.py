"""The four Grafana boards, built with grafana-foundation-sdk, and the list of every query they run.

- ``cc-warehouse``: every cold room and truck, current temperature and humidity against the product band;
- ``cc-node``: one gateway's series with its band, excursions and door openings as annotations;
- ``cc-gateway-health``: gateways (online, buffer backlog, serial errors, clock offset, CPU, memory) and the hub's
  own metrics (ingest rate and lag, duplicates, rejects, commit and detector timings, series export);
- ``cc-excursions``: excursions, alarm handling, compensation claims and webhook deliveries.

Titles are bilingual (Simplified Chinese, then English). :func:`dashboards` gives the JSON models,
:func:`panel_queries` every query in them (see :mod:`hub.grafana.queries`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dash
from grafana_foundation_sdk.builders import prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from hub.grafana.provisioning import alert_queries
from hub.grafana.queries import (
    ALERTING,
    ALL,
    HUB_API_TYPE,
    HUB_API_UID,
    LATEST,
    VM_TYPE,
    VM_UID,
    Language,
    PanelQuery,
    QueryKind,
    band_now,
    outside_band,
    reading_now,
)

__all__ = ["ALERTING", "BOARD_UIDS", "PanelQuery", "dashboards", "panel_queries"]

WAREHOUSE_UID = "cc-warehouse"
NODE_UID = "cc-node"
GATEWAY_HEALTH_UID = "cc-gateway-health"
EXCURSIONS_UID = "cc-excursions"
BOARD_UIDS = (WAREHOUSE_UID, NODE_UID, GATEWAY_HEALTH_UID, EXCURSIONS_UID)
"""Stable uids: links, bookmarks, alert rules and ``coldchain grafana push`` all find the boards by them."""

TAG = "coldchain"
"""Every board carries it; the boards' link bar lists the others by it."""

GRID_WIDTH = 24  # Grafana's grid is 24 columns wide
DOOR_KIND = "rate_of_change"  # docs/metrics.md: door openings are cc_alarm_active{kind="rate_of_change"}

VM = model.DataSourceRef(type_val=VM_TYPE, uid=VM_UID)
HUB_API = model.DataSourceRef(type_val=HUB_API_TYPE, uid=HUB_API_UID)

GREEN, ORANGE, RED = "green", "orange", "red"

_Panel = TypeVar("_Panel", timeseries.Panel, stat.Panel, table.Panel, statetimeline.Panel)


@dataclass(frozen=True, slots=True)
class Prom:
    """A PromQL target: its expression and the labels each returned series carries (legend built from them)."""

    expr: str
    labels: tuple[str, ...] = ()
    legend: str | None = None
    instant: bool = False
    table: bool = False

    def legend_format(self) -> str:
        """The legend: explicit, else the labels joined (``__auto`` lets Grafana pick when there are none)."""
        if self.legend is not None:
            return self.legend
        return " · ".join(f"{{{{{label}}}}}" for label in self.labels) or "__auto"


@dataclass(frozen=True, slots=True)
class HubApi:
    """A JSON table read from the hub's HTTP API through the Infinity plugin."""

    path: str
    columns: tuple[tuple[str, str, str], ...]  # (JSON field, column title, Infinity type)


class _InfinityQuery(cogvariants.Dataquery):
    """An Infinity target (the SDK has no Infinity model): what the plugin's query editor would save."""

    def __init__(self, ref_id: str, spec: HubApi) -> None:
        self.ref_id = ref_id
        self.spec = spec

    def to_json(self) -> dict[str, object]:
        """The target as Grafana stores it."""
        return {
            "refId": self.ref_id,
            "datasource": HUB_API,
            "type": "json",
            "source": "url",
            "parser": "backend",  # server-side parsing: works in alerting and public dashboards too
            "format": "table",
            "url": self.spec.path,
            "url_options": {"method": "GET"},
            "root_selector": "",
            "columns": [{"selector": sel, "text": text, "type": kind} for sel, text, kind in self.spec.columns],
        }


class _InfinityBuilder(cogbuilder.Builder[cogvariants.Dataquery]):
    def __init__(self, query: _InfinityQuery) -> None:
        self._query = query

    def build(self) -> cogvariants.Dataquery:
        return self._query


class _PromAnnotation(model.AnnotationQuery):
    """A Prometheus annotation query; the SDK model lacks the Prometheus-only fields, added here."""

    def __init__(self, name: str, expr: str, color: str, *, title_format: str, tag_keys: str, text_format: str) -> None:
        super().__init__(name=name, datasource=VM, enable=True, hide=False, icon_color=color, expr=expr)
        self.title_format = title_format
        self.tag_keys = tag_keys
        self.text_format = text_format

    def to_json(self) -> dict[str, object]:
        """The annotation as Grafana stores it."""
        payload = super().to_json()
        payload.update(
            {
                "step": "1m",  # one point per minute is finer than the hub's band interval, coarse enough to be cheap
                "titleFormat": self.title_format,
                "tagKeys": self.tag_keys,
                "textFormat": self.text_format,
                "useValueForTime": False,
            }
        )
        return payload


class _AnnotationBuilder(cogbuilder.Builder[model.AnnotationQuery]):
    def __init__(self, annotation: _PromAnnotation) -> None:
        self._annotation = annotation

    def build(self) -> model.AnnotationQuery:
        return self._annotation


@dataclass
class _Board:
    """A dashboard under construction, recording every query it gets."""

    uid: str
    title: str
    description: str
    builder: dash.Dashboard = field(init=False)
    queries: list[PanelQuery] = field(default_factory=list)
    next_id: int = 1

    def __post_init__(self) -> None:
        self.builder = (
            dash.Dashboard(self.title)
            .uid(self.uid)
            .description(self.description)
            .tags([TAG])
            .time("now-6h", "now")
            .refresh("1m")
            .timezone(common.TimeZoneBrowser)
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .link(
                dash.DashboardLink("冷链看板 Cold chain boards")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags([TAG])
                .as_dropdown(True)
                .keep_time(True)
                .include_vars(False)
            )
        )

    def _id(self) -> int:
        panel_id = self.next_id
        self.next_id += 1
        return panel_id

    def row(self, title: str) -> None:
        """Start a row; the panels added next sit under it."""
        self.builder.with_row(dash.Row(title).id(self._id()))

    def add(self, panel: _Panel, title: str, targets: Sequence[Prom | HubApi], *, width: int, height: int) -> _Panel:
        """Add ``panel`` with ``targets`` (ref ids A, B, ...) and record their queries."""
        panel.id(self._id()).title(title).span(width).height(height)
        datasource = HUB_API if any(isinstance(t, HubApi) for t in targets) else VM
        panel.datasource(datasource)
        for index, target in enumerate(targets):
            ref_id = chr(ord("A") + index)
            if isinstance(target, HubApi):
                panel.with_target(_InfinityBuilder(_InfinityQuery(ref_id, target)))
                self._record(
                    title, "panel", ref_id, target.path, datasource_uid=HUB_API_UID, instant=True, language="http"
                )
                continue
            query = (
                prometheus.Dataquery()
                .ref_id(ref_id)
                .datasource(VM)
                .expr(target.expr)
                .legend_format(target.legend_format())
            )
            query = query.instant() if target.instant else query.range()
            if target.table:
                query.format(PromQueryFormat.TABLE)
            panel.with_target(query)
            self._record(title, "panel", ref_id, target.expr, labels=target.labels, instant=target.instant)
        self.builder.with_panel(panel)
        return panel

    def variable(
        self, name: str, label: str, series: str, *, multi: bool = False, refresh_on_time_change: bool = True
    ) -> None:
        """A query variable listing the values of label ``name`` on the series ``series``."""
        variable = (
            dash.QueryVariable(name)
            .id(name)  # Grafana identifies variables by name; the SDK's default id is one shared placeholder
            .label(label)
            .datasource(VM)
            .query(f"label_values({series}, {name})")
            .refresh(
                model.VariableRefresh.ON_TIME_RANGE_CHANGED
                if refresh_on_time_change
                else model.VariableRefresh.ON_DASHBOARD_LOAD
            )
            .sort(model.VariableSort.ALPHABETICAL_ASC)
        )
        if multi:
            # ".*" rather than Grafana's default (every value joined by |): stays short with hundreds of gateways.
            variable.multi(True).include_all(True).all_value(ALL)
        self.builder.with_variable(variable)
        self._record(label, "variable", name, series, labels=(name,), instant=True)

    def annotation(self, annotation: _PromAnnotation, labels: tuple[str, ...]) -> None:
        """A Prometheus annotation (one event per step where the expression returns a series)."""
        self.builder.annotation(_AnnotationBuilder(annotation))
        expr = annotation.expr or ""
        self._record(annotation.name, "annotation", annotation.name, expr, labels=labels)

    def _record(
        self,
        title: str,
        kind: QueryKind,
        ref_id: str,
        expr: str,
        *,
        datasource_uid: str = VM_UID,
        labels: tuple[str, ...] = (),
        instant: bool = False,
        language: Language = "promql",
    ) -> None:
        self.queries.append(PanelQuery(self.uid, title, kind, ref_id, datasource_uid, expr, labels, instant, language))

    def to_json(self) -> dict[str, Any]:
        """The dashboard model as plain JSON data."""
        data: dict[str, Any] = json.loads(json.dumps(self.builder.build(), cls=JSONEncoder))
        return data


# --- field options shared by several panels -------------------------------------------------------------------


def _thresholds(*steps: tuple[float | None, str]) -> dash.ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (from minus infinity)."""
    return (
        dash.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(value=value, color=color) for value, color in steps])
    )


def _state_map(zero: tuple[str, str], one: tuple[str, str]) -> list[model.ValueMapping]:
    """Text and colour for a 0/1 series."""
    return [
        model.ValueMap(
            options={
                "0": model.ValueMappingResult(text=zero[0], color=zero[1], index=0),
                "1": model.ValueMappingResult(text=one[0], color=one[1], index=1),
            }
        )
    ]


def _legend(*, table_mode: bool = False) -> common_builders.VizLegendOptions:
    legend = (
        common_builders.VizLegendOptions()
        .show_legend(True)
        .placement(common.LegendPlacement.BOTTOM)
        .display_mode(common.LegendDisplayMode.TABLE if table_mode else common.LegendDisplayMode.LIST)
    )
    if table_mode:
        legend.calcs(["lastNotNull", "min", "max"])
    return legend


def _series(unit: str, *, min_val: float | None = None, max_val: float | None = None) -> timeseries.Panel:
    """A time series panel with a table legend (last, min, max) and a shared tooltip."""
    panel = (
        timeseries.Panel()
        .unit(unit)
        .legend(_legend(table_mode=True))
        .tooltip(
            common_builders.VizTooltipOptions().mode(common.TooltipDisplayMode.MULTI).sort(common.SortOrder.DESCENDING)
        )
        .line_width(1)
        .fill_opacity(0)
        .span_nulls(False)  # a gap in the data stays a gap: a silent gateway must not look flat
    )
    if min_val is not None:
        panel.min(min_val)
    if max_val is not None:
        panel.max(max_val)
    return panel


def _stat(unit: str, *steps: tuple[float | None, str]) -> stat.Panel:
    """A single-value panel showing the last value, coloured by ``steps`` (default: no colour)."""
    return (
        stat.Panel()
        .unit(unit)
        .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(common.BigValueGraphMode.AREA)
        .color_mode(common.BigValueColorMode.VALUE)
        .text_mode(common.BigValueTextMode.AUTO)
        .thresholds(_thresholds(*(steps or ((None, GREEN),))))
    )


def _timeline(zero: tuple[str, str], one: tuple[str, str]) -> statetimeline.Panel:
    """A state timeline for 0/1 series."""
    return (
        statetimeline.Panel()
        .mappings(_state_map(zero, one))
        .show_value(common.VisibilityMode.NEVER)
        .merge_values(True)
        .legend(_legend())
        .fill_opacity(80)
        .thresholds(_thresholds((None, GREEN)))
    )


def _table(*, merge: bool = False) -> table.Panel:
    """A table of instant results, one row per series, labels as columns (``merge``: one row across queries)."""
    panel = table.Panel().show_header(True)
    if merge:
        # Instant queries A, B, ... with identical labels become one row with columns "Value #A", "Value #B", ...
        panel.with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
    return panel.with_transformation(
        model.DataTransformerConfig(id_val="organize", options={"excludeByName": {"Time": True, "__name__": True}})
    )


def _band_overrides(panel: timeseries.Panel, *ref_ids: str) -> None:
    """Draw the band bounds (targets ``ref_ids``) as dashed red lines, so readings read against them."""
    for ref_id in ref_ids:
        panel.override_by_query(
            ref_id,
            [
                model.DynamicConfigValue(id_val="color", value={"mode": "fixed", "fixedColor": RED}),
                model.DynamicConfigValue(id_val="custom.lineStyle", value={"fill": "dash", "dash": [10, 10]}),
                model.DynamicConfigValue(id_val="custom.lineWidth", value=2),
            ],
        )


def _node_link(panel: _Panel, field_name: str = "gateway_id") -> None:
    """Each row or series links to the node-detail board for its gateway, keeping the time range."""
    panel.data_links(
        [
            dash.DashboardLink("节点详情 Node detail").url(
                f"/d/{NODE_UID}/?var-gateway_id=${{__data.fields.{field_name}}}&${{__url_time_range}}"
            )
        ]
    )


def _quantity_unit(quantity: str) -> str:
    return "celsius" if quantity == "temperature" else "humidity"


# --- the boards -------------------------------------------------------------------------------------------------

_QUANTITIES = (("temperature", "温度 Temperature"), ("humidity", "湿度 Humidity"))
_SENSOR_LABELS = ("gateway_id", "sensor_id", "quantity", "node_kind")
_ALARM_LABELS = ("gateway_id", "sensor_id", "quantity", "kind", "severity")


def _warehouse() -> _Board:
    board = _Board(
        WAREHOUSE_UID,
        "仓库总览 Warehouse overview",
        "每个冷库与冷藏车的当前温湿度及其品类区间 · Every cold room and truck: current temperature and humidity "
        "against the product band.",
    )
    kind = 'node_kind=~"$node_kind"'
    board.variable("node_kind", "节点类型 Node kind", "cc_reading_value", multi=True, refresh_on_time_change=False)

    board.row("概况 At a glance")
    board.add(
        _stat("short"),
        "在线网关 Gateways online",
        [
            Prom(f"sum(last_over_time(cc_gateway_online{{{kind}}}[{LATEST}]))", legend="在线 online", instant=True),
            Prom(f"count(last_over_time(cc_gateway_online{{{kind}}}[{LATEST}]))", legend="总数 total", instant=True),
        ],
        width=6,
        height=4,
    )
    outside_any = " or ".join(f"({outside_band(q, kind)} > 0)" for q, _ in _QUANTITIES)
    board.add(
        _stat("short", (None, GREEN), (1, RED)),
        "超出区间的传感器 Sensors outside the band",
        [Prom(f"count({outside_any}) or vector(0)", legend="传感器 sensors", instant=True)],
        width=6,
        height=4,
    )
    board.add(
        _stat("short", (None, GREEN), (1, RED)),
        "活动告警 Active alarms",
        [
            Prom(
                f"count(last_over_time(cc_alarm_active[{LATEST}]) == 1) or vector(0)",
                legend="告警 alarms",
                instant=True,
            )
        ],
        width=6,
        height=4,
    )
    board.add(
        _stat("s", (None, GREEN), (600, ORANGE), (3600, RED)),
        "最久未上传数据 Oldest data not yet uploaded",
        [Prom(f"max(cc_gateway_oldest_unsent_age_s{{{kind}}})", legend="最久 oldest")],
        width=6,
        height=4,
    )

    for quantity, title in _QUANTITIES:
        unit = _quantity_unit(quantity)
        board.row(title)
        band_table = _table(merge=True).unit(unit).decimals(1)
        for ref_id, name in (("A", "当前 Now"), ("B", "下限 Low"), ("C", "上限 High"), ("D", "超出 Outside by")):
            properties = [model.DynamicConfigValue(id_val="displayName", value=name)]
            if ref_id == "D":
                properties += [
                    model.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"}),
                    model.DynamicConfigValue(
                        id_val="thresholds",
                        value={
                            "mode": "absolute",
                            "steps": [{"value": None, "color": GREEN}, {"value": 0.05, "color": RED}],
                        },
                    ),
                ]
            band_table.override_by_name(f"Value #{ref_id}", properties)
        _node_link(band_table)
        board.add(
            band_table,
            f"{title.split()[0]}与品类区间 {title.split()[1]} against the product band",
            [
                Prom(reading_now(quantity, kind), _SENSOR_LABELS, instant=True, table=True),
                Prom(band_now("low", quantity, kind), _SENSOR_LABELS, instant=True, table=True),
                Prom(band_now("high", quantity, kind), _SENSOR_LABELS, instant=True, table=True),
                Prom(outside_band(quantity, kind), _SENSOR_LABELS, instant=True, table=True),
            ],
            width=10,
            height=9,
        )
        series = _series(unit)
        _node_link(series)
        board.add(
            series,
            title,
            [
                Prom(
                    f'cc_reading_value{{quantity="{quantity}", {kind}}}',
                    _SENSOR_LABELS,
                    legend="{{gateway_id}} · {{sensor_id}}",
                )
            ],
            width=14,
            height=9,
        )
    return board


def _node() -> _Board:
    board = _Board(
        NODE_UID,
        "节点详情 Node detail",
        "一个网关节点的温湿度曲线、品类区间、偏离与开门 · One gateway's readings against its product band, with "
        "excursions and door openings as annotations.",
    )
    gw = 'gateway_id="$gateway_id"'
    sensor = 'sensor_id=~"$sensor_id"'
    board.variable("gateway_id", "网关 Gateway", "cc_reading_value")
    board.variable("sensor_id", "传感器 Sensor", f"cc_reading_value{{{gw}}}", multi=True)
    board.annotation(
        _PromAnnotation(
            "偏离 Excursions",
            f'cc_alarm_active{{{gw}, kind!="{DOOR_KIND}"}} == 1',
            RED,
            title_format="{{kind}} · {{sensor_id}} · {{severity}}",
            tag_keys="kind,severity,quantity",
            text_format="{{quantity}} {{kind}} ({{severity}}) on {{sensor_id}}",
        ),
        _ALARM_LABELS,
    )
    board.annotation(
        _PromAnnotation(
            "开门 Door openings",
            f'cc_alarm_active{{{gw}, kind="{DOOR_KIND}"}} == 1',
            ORANGE,
            title_format="开门 door open · {{sensor_id}}",
            tag_keys="kind,sensor_id",
            text_format="{{quantity}} changed fast on {{sensor_id}}",
        ),
        _ALARM_LABELS,
    )

    board.row("当前 Now")
    for quantity, title in _QUANTITIES:
        board.add(
            _stat(_quantity_unit(quantity)).decimals(1),
            f"{title} · 当前 now",
            [Prom(reading_now(quantity, gw, sensor), _SENSOR_LABELS, legend="{{sensor_id}}")],
            width=7,
            height=4,
        )
    board.add(
        _stat("celsius", (None, GREEN), (0.05, RED)).decimals(1),
        "温度超出区间 Temperature outside the band",
        [Prom(outside_band("temperature", gw, sensor), _SENSOR_LABELS, legend="{{sensor_id}}")],
        width=6,
        height=4,
    )
    board.add(
        _stat("none", (None, RED), (1, GREEN)).mappings(_state_map(("离线 offline", RED), ("在线 online", GREEN))),
        "网关在线 Gateway online",
        [Prom(f"max(last_over_time(cc_gateway_online{{{gw}}}[{LATEST}]))", legend="在线 online")],
        width=4,
        height=4,
    )

    for quantity, title in _QUANTITIES:
        board.row(title)
        series = _series(_quantity_unit(quantity))
        _band_overrides(series, "B", "C")
        board.add(
            series,
            f"{title.split()[0]}与品类区间 {title.split()[1]} and product band",
            [
                Prom(
                    f'cc_reading_value{{{gw}, {sensor}, quantity="{quantity}"}}', _SENSOR_LABELS, legend="{{sensor_id}}"
                ),
                Prom(
                    f'cc_band_low{{{gw}, quantity="{quantity}"}}',
                    ("gateway_id", "quantity", "profile"),
                    legend="下限 low · {{profile}}",
                ),
                Prom(
                    f'cc_band_high{{{gw}, quantity="{quantity}"}}',
                    ("gateway_id", "quantity", "profile"),
                    legend="上限 high · {{profile}}",
                ),
            ],
            width=GRID_WIDTH,
            height=10,
        )

    board.row("开门与告警 Doors and alarms")
    board.add(
        _timeline(("关 closed", GREEN), ("开 open", ORANGE)),
        "开门 Door openings",
        [Prom(f'max by (sensor_id) (cc_alarm_active{{{gw}, kind="{DOOR_KIND}"}})', ("sensor_id",))],
        width=12,
        height=6,
    )
    board.add(
        _table(),
        "本节点活动告警 Active alarms on this node",
        [Prom(f"last_over_time(cc_alarm_active{{{gw}}}[{LATEST}]) == 1", _ALARM_LABELS, instant=True, table=True)],
        width=12,
        height=6,
    )
    board.add(
        _series("percentunit", min_val=0, max_val=1),
        "读数质量 Reading quality (share ok)",
        [
            Prom(
                f"avg_over_time(cc_reading_quality_ok{{{gw}, {sensor}}}[$__rate_interval])",
                _SENSOR_LABELS,
                legend="{{sensor_id}} · {{quantity}}",
            )
        ],
        width=GRID_WIDTH,
        height=6,
    )
    return board


def _gateway_health() -> _Board:
    board = _Board(
        GATEWAY_HEALTH_UID,
        "网关健康 Gateway health",
        "网关在线、缓冲积压、串口错误、时钟偏差与中心自身指标 · Gateways online, buffer backlog, serial errors, "
        "clock offset, and the hub's own ingest and export metrics.",
    )
    gw = 'gateway_id=~"$gateway_id"'
    gateway = ("gateway_id", "node_kind")
    board.variable("gateway_id", "网关 Gateway", "cc_gateway_online", multi=True)

    board.row("网关 Gateways")
    board.add(
        _timeline(("离线 offline", RED), ("在线 online", GREEN)),
        "在线状态 Online",
        [Prom(f"max by (gateway_id) (cc_gateway_online{{{gw}}})", ("gateway_id",))],
        width=18,
        height=7,
    )
    board.add(
        _stat("short", (None, GREEN), (1, RED)),
        "离线网关 Gateways offline",
        [
            Prom(
                f"count(last_over_time(cc_gateway_online{{{gw}}}[{LATEST}]) == 0) or vector(0)",
                legend="离线 offline",
                instant=True,
            )
        ],
        width=6,
        height=7,
    )
    panels: list[tuple[str, str, str, tuple[str, ...]]] = [
        ("缓冲积压 Buffer backlog (bytes)", "bytes", f"cc_gateway_buffer_bytes{{{gw}}}", gateway),
        ("缓冲批次 Buffered batches", "short", f"cc_gateway_buffer_batches{{{gw}}}", gateway),
        ("缓冲读数 Buffered items", "short", f"cc_gateway_buffer_items{{{gw}}}", gateway),
        ("最久未发送 Oldest unsent batch", "s", f"cc_gateway_oldest_unsent_age_s{{{gw}}}", gateway),
        (
            "串口错误 Serial errors (per minute)",
            "short",
            f"60 * sum by (gateway_id, sensor_id, error) (rate(cc_driver_errors_count{{{gw}}}[$__rate_interval]))",
            ("gateway_id", "sensor_id", "error"),
        ),
        ("时钟偏差 Clock offset", "s", f"cc_gateway_clock_offset_ms{{{gw}}} / 1000", gateway),
        ("处理器占用 CPU", "percent", f"cc_gateway_cpu_percent{{{gw}}}", gateway),
        ("内存 Memory (RSS)", "bytes", f"cc_gateway_rss_bytes{{{gw}}}", gateway),
        ("运行时长 Uptime", "s", f"cc_gateway_uptime_s{{{gw}}}", gateway),
        ("网关本地告警 Alarms active on the gateway", "short", f"cc_gateway_alarms_active{{{gw}}}", gateway),
    ]
    for title, unit, expr, labels in panels:
        legend = "{{gateway_id}} · {{sensor_id}} · {{error}}" if "error" in labels else "{{gateway_id}}"
        board.add(_series(unit), title, [Prom(expr, labels, legend=legend)], width=12, height=7)

    board.row("中心 Hub")
    rate = "[$__rate_interval]"
    hub_panels: list[tuple[str, str, list[Prom]]] = [
        (
            "接入速率 Ingest rate",
            "cps",
            [
                Prom(f"sum(rate(coldchain_hub_messages_total{rate}))", legend="消息 messages"),
                Prom(f"sum(rate(coldchain_hub_readings_stored_total{rate}))", legend="读数 readings stored"),
                Prom(f"sum(rate(coldchain_hub_batches_stored_total{rate}))", legend="批次 batches stored"),
            ],
        ),
        (
            "接入滞后 Ingest lag",
            "s",
            [Prom("max(coldchain_hub_ingest_lag_seconds)", legend="最久未提交 oldest uncommitted")],
        ),
        (
            "接入队列 Ingest queue",
            "short",
            [Prom("sum(coldchain_hub_ingest_queue_messages)", legend="未提交消息 messages not committed")],
        ),
        (
            "重复、拒收与缺口 Duplicates, rejects and gaps",
            "cps",
            [
                Prom(f"sum(rate(coldchain_hub_duplicates_total{rate}))", legend="重复 duplicates"),
                Prom(
                    f"sum by (reason) (rate(coldchain_hub_rejected_total{rate}))",
                    ("reason",),
                    legend="拒收 rejected · {{reason}}",
                ),
                Prom(f"sum(rate(coldchain_hub_gaps_total{rate}))", legend="缺口 gaps"),
                Prom(f"sum(rate(coldchain_hub_commit_failures_total{rate}))", legend="提交失败 commit failures"),
            ],
        ),
        ("提交耗时 Commit time", "s", _quantiles("coldchain_hub_commit_seconds")),
        ("检测器耗时 Detector time", "s", _quantiles("coldchain_hub_detector_seconds")),
        (
            "序列导出滞后 Series export lag",
            "short",
            [Prom("max(coldchain_hub_series_export_lag_readings)", legend="未导出读数 readings not exported")],
        ),
        (
            "序列写入 Series points written and failed",
            "cps",
            [
                Prom(f"sum(rate(coldchain_hub_series_points_written_total{rate}))", legend="写入 written"),
                Prom(
                    f"sum by (reason) (rate(coldchain_hub_series_points_failed_total{rate}))",
                    ("reason",),
                    legend="失败 failed · {{reason}}",
                ),
            ],
        ),
        (
            "指标来源故障 Metrics sources failing",
            "short",
            [
                Prom(
                    f"sum by (provider) (increase(coldchain_hub_metrics_collect_errors_total{rate}))",
                    ("provider",),
                    legend="{{provider}}",
                )
            ],
        ),
    ]
    for index, (title, unit, targets) in enumerate(hub_panels):
        last_alone = index == len(hub_panels) - 1 and len(hub_panels) % 2 == 1
        board.add(_series(unit, min_val=0), title, targets, width=GRID_WIDTH if last_alone else 12, height=7)
    return board


def _quantiles(histogram: str) -> list[Prom]:
    """Median and 99th percentile of a histogram over all hub processes."""
    return [
        Prom(
            f"histogram_quantile({q}, sum by (le) (rate({histogram}_bucket[$__rate_interval])))",
            legend=f"p{round(q * 100)}",
        )
        for q in (0.5, 0.99)
    ]


_ALARM_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("gateway_id", "网关 Gateway", "string"),
    ("sensor_id", "传感器 Sensor", "string"),
    ("quantity", "量 Quantity", "string"),
    ("kind", "类型 Kind", "string"),
    ("severity", "级别 Severity", "string"),
    ("state", "状态 State", "string"),
    ("started", "开始 Started", "timestamp"),
    ("duration_s", "持续 Duration (s)", "number"),
    ("peak_value", "峰值 Peak", "number"),
    ("acknowledged_by", "确认人 Acknowledged by", "string"),
    ("escalations", "升级次数 Escalations", "number"),
    ("message", "说明 Message", "string"),
)


def _excursions() -> _Board:
    board = _Board(
        EXCURSIONS_UID,
        "偏离与赔付 Excursions and compensation claims",
        "温湿度偏离、告警处理、赔付单与回调投递 · Excursions, alarm handling, compensation claims and webhook "
        "deliveries.",
    )
    excursion = f'kind!="{DOOR_KIND}"'

    board.row("概况 At a glance")
    board.add(
        _stat("short", (None, GREEN), (1, RED)),
        "活动告警 Active alarms",
        [Prom("sum by (severity) (coldchain_hub_alarms_active)", ("severity",), instant=True)],
        width=6,
        height=4,
    )
    board.add(
        _stat("short", (None, GREEN), (1, RED)),
        "偏离中的传感器 Sensors in excursion",
        [
            Prom(
                f"count(last_over_time(cc_alarm_active{{{excursion}}}[{LATEST}]) == 1) or vector(0)",
                legend="传感器 sensors",
                instant=True,
            )
        ],
        width=6,
        height=4,
    )
    board.add(
        _stat("short", (None, GREEN), (1, ORANGE)),
        "本时段新赔付单 Claims created in range",
        [Prom("sum(increase(coldchain_hub_claims_created_total[$__range]))", legend="赔付单 claims", instant=True)],
        width=6,
        height=4,
    )
    board.add(
        _stat("short", (None, GREEN), (1, ORANGE), (20, RED)),
        "待投递回调 Webhook deliveries pending",
        [Prom("sum(coldchain_hub_outbox_pending)", legend="待投递 pending", instant=True)],
        width=6,
        height=4,
    )

    board.row("偏离 Excursions")
    timeline = _timeline(("正常 normal", GREEN), ("偏离 excursion", RED))
    board.add(
        timeline,
        "偏离时间线 Excursion timeline",
        [
            Prom(
                f"max by (gateway_id, sensor_id, kind) (cc_alarm_active{{{excursion}}})",
                ("gateway_id", "sensor_id", "kind"),
            )
        ],
        width=GRID_WIDTH,
        height=8,
    )
    active = _table()
    _node_link(active)
    board.add(
        active,
        "活动偏离 Active excursions",
        [
            Prom(
                f"last_over_time(cc_alarm_active{{{excursion}}}[{LATEST}]) == 1",
                _ALARM_LABELS,
                instant=True,
                table=True,
            )
        ],
        width=10,
        height=8,
    )
    board.add(
        table.Panel().show_header(True),
        "告警处理 Alarm handling (hub API)",
        [HubApi("/api/v1/alarms?state=active", _ALARM_COLUMNS)],
        width=14,
        height=8,
    )
    board.add(
        _series("short", min_val=0),
        "告警变化 Alarm changes",
        [Prom("sum by (action) (increase(coldchain_hub_alarms_total[$__rate_interval]))", ("action",))],
        width=GRID_WIDTH,
        height=7,
    )

    board.row("赔付 Claims")
    claims = _series("short", min_val=0).draw_style(common.GraphDrawStyle.BARS).fill_opacity(60)
    board.add(
        claims,
        "新赔付单 Claims created",
        [Prom("sum(increase(coldchain_hub_claims_created_total[$__rate_interval]))", legend="赔付单 claims")],
        width=12,
        height=7,
    )
    board.add(
        _series("short", min_val=0),
        "待投递回调 Webhook deliveries pending",
        [Prom("sum by (endpoint) (coldchain_hub_outbox_pending)", ("endpoint",))],
        width=12,
        height=7,
    )
    return board


_BUILDERS: tuple[Callable[[], _Board], ...] = (_warehouse, _node, _gateway_health, _excursions)


def dashboards() -> dict[str, dict[str, Any]]:
    """Every board's JSON model, by uid, in a fixed order."""
    return {board.uid: board.to_json() for board in (build() for build in _BUILDERS)}


def panel_queries() -> list[PanelQuery]:
    """Every query Grafana runs for coldchain: each board's panels, annotations and template variables in board
    order, then the alert rules' (``board_uid == ALERTING``)."""
    return [query for build in _BUILDERS for query in build().queries] + alert_queries()
