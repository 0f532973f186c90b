"""The PromQL behind every panel, annotation, variable and alert rule, and its record (:class:`PanelQuery`).

Every metric name and label here is one of docs/metrics.md. The expressions are plain PromQL that
VictoriaMetrics (MetricsQL is a superset) and Prometheus both run.

Grafana variables stay in the expressions as Grafana writes them (``$gateway_id``, ``$__rate_interval``);
:meth:`PanelQuery.render` substitutes them so the same expression runs outside Grafana, e.g.::

    for query in panel_queries():
        if query.language == "promql":
            expr = query.render({"gateway_id": "gw-reefer", "sensor_id": ".*", "node_kind": ".*"})
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

VM_UID = "cc-vm"
"""Datasource uid of VictoriaMetrics (a Prometheus-type datasource): every board query but one uses it."""
VM_TYPE = "prometheus"
HUB_API_UID = "cc-hub-api"
"""Datasource uid of the hub's HTTP API, read through the Infinity plugin (alarm handling state)."""
HUB_API_TYPE = "yesoreyeram-infinity-datasource"

ALERTING = "alerting"
"""The ``board_uid`` of alert rule queries: they belong to no dashboard."""

QueryKind = Literal["panel", "annotation", "variable", "alert"]
Language = Literal["promql", "http"]

BUILTIN_DEFAULTS: Mapping[str, str] = {
    # What Grafana would put in for a one-hour range on a wide panel; any valid duration works outside Grafana.
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
}
"""Values for Grafana's built-in variables when a query runs outside Grafana."""

LATEST = "15m"
"""How far back a reading or band still counts as current: several sampling and band intervals, so one late
batch does not blank a tile, yet a node that went quiet drops out within a quarter of an hour."""

ALL = ".*"
"""What Grafana substitutes for "All" in the multi-value variables (they are matched with ``=~``)."""

# $name, ${name}, ${name:format} and the deprecated [[name]].
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
# Every metric the boards read starts with one of the two prefixes of docs/metrics.md.
_METRIC = re.compile(r"\b(?:cc|coldchain_hub)_[a-z0-9_]*[a-z0-9]\b")


@dataclass(frozen=True, slots=True)
class PanelQuery:
    """One query of a board or alert rule, as Grafana sends it to its datasource.

    ``labels`` are the labels every series the query returns must carry (empty for a plain ``sum``); ``instant``
    says whether Grafana runs it as an instant query (``/api/v1/query``) rather than over the time range.
    For ``kind == "variable"``, ``expr`` is the series selector behind Grafana's ``label_values(...)`` and
    ``labels`` the label whose values the variable lists. For ``language == "http"`` (the hub API through the
    Infinity plugin) ``expr`` is the request path and query string, relative to the datasource URL.
    """

    board_uid: str
    title: str
    kind: QueryKind
    ref_id: str
    datasource_uid: str
    expr: str
    labels: tuple[str, ...] = ()
    instant: bool = False
    language: Language = "promql"

    @property
    def variables(self) -> frozenset[str]:
        """The Grafana variables the expression uses (built-ins such as ``__rate_interval`` included)."""
        return frozenset(next(g for g in match.groups() if g) for match in _VARIABLE.finditer(self.expr))

    @property
    def metrics(self) -> frozenset[str]:
        """The metric names the expression reads."""
        return frozenset(_METRIC.findall(self.expr)) if self.language == "promql" else frozenset()

    def render(self, values: Mapping[str, str] | None = None) -> str:
        """The expression with every variable replaced: ``values`` first, then :data:`BUILTIN_DEFAULTS`.

        Raises ``KeyError`` naming the variables neither provides.
        """
        known = {**BUILTIN_DEFAULTS, **(values or {})}
        missing = sorted(self.variables - known.keys())
        if missing:
            raise KeyError(f"{self.board_uid}/{self.title}: no value for variable(s) {', '.join(missing)}")
        return _VARIABLE.sub(lambda match: known[next(g for g in match.groups() if g)], self.expr)


def selector(*matchers: str) -> str:
    """``{a="b", c=~"d"}`` from matcher strings, skipping empty ones."""
    return "{" + ", ".join(m for m in matchers if m) + "}"


def reading_now(quantity: str, *matchers: str) -> str:
    """The newest reading of each sensor measuring ``quantity``.

    Labels: ``gateway_id``, ``sensor_id``, ``quantity``, ``node_kind``.
    """
    return f"last_over_time(cc_reading_value{selector(f'quantity={_q(quantity)}', *matchers)}[{LATEST}])"


def band_now(side: Literal["low", "high"], quantity: str, *matchers: str) -> str:
    """The current product band bound of each sensor's gateway, carried onto the sensor's own labels.

    Bands are per gateway (``cc_band_low{gateway_id, quantity, profile}``); joining them onto the readings gives
    one row per sensor with the same labels as :func:`reading_now`, so panels and arithmetic line up. Should two
    profiles be bound to one gateway at once, the tightest bound wins (``max`` of lows, ``min`` of highs).
    """
    tightest = "max" if side == "low" else "min"
    bound = f"last_over_time(cc_band_{side}{selector(f'quantity={_q(quantity)}')}[{LATEST}])"
    band = f"{tightest} by (gateway_id, quantity) ({bound})"
    # Parenthesised: it is an operand of further arithmetic in outside_band().
    return f"({band} + on (gateway_id, quantity) group_right () (0 * {reading_now(quantity, *matchers)}))"


def outside_band(quantity: str, *matchers: str) -> str:
    """How far each sensor's newest reading lies outside its band (0 inside it, or when there is no bound).

    Labels as :func:`reading_now`. A profile may leave one side open (no ``cc_band_low`` series): the ``or``
    fallbacks keep those sensors at 0 instead of dropping them.
    """
    now = reading_now(quantity, *matchers)
    above = f"clamp_min({now} - {band_now('high', quantity, *matchers)}, 0)"
    below = f"clamp_min({band_now('low', quantity, *matchers)} - {now}, 0)"
    return f"({above} or 0 * {now}) + ({below} or 0 * {now})"


def _q(value: str) -> str:
    """A PromQL string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
