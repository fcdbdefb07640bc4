"""The dashboard's queries as Grafana sends them to Prometheus, for the end-to-end test to run.

Grafana fills in template variables before a query leaves it. A multi-value variable set to All
becomes its custom all value, `.*`, left unformatted whatever `${var:format}` asks; `$var`, `${var}`,
`${var:format}` and `[[var]]` are the same variable. The built-ins follow the time range: `$__interval`
is the range over the panel's data points but at least the data source's scrape interval;
`$__rate_interval` is max($__interval + scrape interval, 4 x scrape interval); `$__range` is the range
in seconds. A `label_values(selector, label)` variable is a label values request with the selector
as match[].

A query has data when it returns a sample (as an instant query, a range query, or each where
Grafana runs both). A stat that falls back to `or vector(0)` shows 0 instead of "No data": its query
has data only if the rest of it returns some, so the fallback cannot hide an empty panel.
tests/test_e2e.py sends every query to its real Prometheus; the tests here prove the interpolation,
the listing and the verdicts without one.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "deploy" / "grafana" / "backup-watcher-dashboard.json"
# Grafana asks for about one point per pixel: a panel some 1,000 pixels wide.
MAX_DATA_POINTS = 1000
ALL = ".*"

# Grafana's variable syntaxes: ${name}, ${name.field}, ${name:format}, [[name]], [[name:format]], $name.
_VARIABLE = re.compile(
    r"\$\{(\w+)(?:\.[^:}]+)?(?::[^}]+)?\}|\[\[(\w+)(?::[^\]]+)?\]\]|\$(\w+)",
)
_LABEL_VALUES = re.compile(r"\s*label_values\(\s*(?:(.*),)?\s*(\w+)\s*\)\s*", re.DOTALL)
_ZERO_FALLBACK = re.compile(r"(.*\S)\s+or\s+vector\(0\)\s*", re.DOTALL)


def load_dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def panels(dashboard: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside rows too (a collapsed row keeps its panels in its own list)."""
    found = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


@dataclass(frozen=True)
class PanelQuery:
    """One query of one panel, as the dashboard writes it."""

    panel_id: int
    title: str
    ref_id: str
    expr: str
    instant: bool
    range: bool

    @property
    def key(self) -> tuple[int, str]:
        return (self.panel_id, self.ref_id)

    def __str__(self) -> str:
        return f"panel {self.panel_id} {self.title!r} query {self.ref_id}"


@dataclass(frozen=True)
class VariableQuery:
    """A `label_values(match, label)` template variable; `match` is empty for `label_values(label)`."""

    name: str
    label: str
    match: str


@dataclass(frozen=True)
class TimeRange:
    """The dashboard's time range (epoch seconds) and the data source's scrape interval (seconds)."""

    start: float
    end: float
    scrape_interval: int

    @property
    def interval(self) -> int:
        """$__interval in seconds."""
        return max(self.scrape_interval, math.ceil((self.end - self.start) / MAX_DATA_POINTS))

    def builtins(self) -> dict[str, str]:
        seconds = round(self.end - self.start)
        rate = max(self.interval + self.scrape_interval, 4 * self.scrape_interval)
        return {
            "__interval": f"{self.interval}s",
            "__interval_ms": str(self.interval * 1000),
            "__rate_interval": f"{rate}s",
            "__range": f"{seconds}s",
            "__range_s": str(seconds),
            "__range_ms": str(round((self.end - self.start) * 1000)),
        }


def all_values(dashboard: Mapping[str, Any], time_range: TimeRange) -> dict[str, str]:
    """Every query and custom variable set to All (`.*`), and the built-ins for `time_range`."""
    values = {
        variable["name"]: ALL
        for variable in dashboard["templating"]["list"]
        if variable["type"] in ("query", "custom")
    }
    return {**values, **time_range.builtins()}


def interpolate(text: str, values: Mapping[str, str]) -> str:
    """`text` with every variable replaced as Grafana does; KeyError naming one it has no value for."""

    def replace(match: re.Match[str]) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise KeyError(f"{text!r} uses ${name}, which has no value here: give it one")
        return values[name]

    return _VARIABLE.sub(replace, text)


def without_zero_fallback(expr: str) -> str:
    """The query less a trailing `or vector(0)`: what decides whether a stat has data."""
    match = _ZERO_FALLBACK.fullmatch(expr)
    return match.group(1) if match else expr


def panel_queries(dashboard: Mapping[str, Any]) -> list[PanelQuery]:
    """Every query of every panel that Grafana runs (hidden ones are not)."""
    found = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("hide"):
                continue
            instant = bool(target.get("instant"))
            found.append(
                PanelQuery(
                    panel_id=panel["id"],
                    title=panel["title"],
                    ref_id=target["refId"],
                    expr=target["expr"],
                    instant=instant,
                    # Grafana runs a range query unless told otherwise, and both when told both.
                    range=bool(target.get("range", not instant)),
                )
            )
    return found


def variable_queries(dashboard: Mapping[str, Any]) -> list[VariableQuery]:
    """Every query variable; ValueError for a query other than label_values(), which this file cannot run."""
    found = []
    for variable in dashboard["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]
        text = query["query"] if isinstance(query, dict) else query
        match = _LABEL_VALUES.fullmatch(text)
        if match is None:
            raise ValueError(f"variable {variable['name']}: {text!r} is not label_values(): teach this file")
        found.append(VariableQuery(variable["name"], match.group(2), (match.group(1) or "").strip()))
    return found


# -- against a running Prometheus ----------------------------------------------------------------


class PrometheusError(Exception):
    """Prometheus refused a request, or answered with warnings."""


async def _answer(http: aiohttp.ClientSession, method: str, url: str, params: Any) -> Any:
    kwargs = {"data": params} if method == "POST" else {"params": params}
    async with http.request(method, url, timeout=aiohttp.ClientTimeout(total=30), **kwargs) as resp:
        body = await resp.json(content_type=None)
    if body.get("status") != "success":
        raise PrometheusError(f"HTTP {resp.status}, {body.get('errorType')}: {body.get('error')}")
    if body.get("warnings"):
        raise PrometheusError(f"warnings: {body['warnings']}")
    return body["data"]


def _samples(data: Mapping[str, Any]) -> int:
    """Series with at least one sample in a query's answer (a scalar counts as one)."""
    if data["resultType"] in ("scalar", "string"):
        return 1
    if data["resultType"] == "matrix":
        return sum(1 for series in data["result"] if series["values"])
    return len(data["result"])


@dataclass(frozen=True)
class PanelAnswer:
    """What Prometheus said to one panel query: series with samples, or the errors."""

    query: PanelQuery
    series: int
    errors: tuple[str, ...]


async def run_panel_query(
    http: aiohttp.ClientSession,
    prometheus: str,
    query: PanelQuery,
    values: Mapping[str, str],
    time_range: TimeRange,
) -> PanelAnswer:
    """Send the query as Grafana would (instant, range or both), and its zero-fallback-less form."""
    expr = interpolate(query.expr, values)
    data_expr = without_zero_fallback(expr)
    kinds: list[tuple[str, dict[str, str]]] = []
    if query.instant:
        kinds.append(("/api/v1/query", {"time": f"{time_range.end:.3f}"}))
    if query.range:
        window = {
            "start": f"{time_range.start:.3f}",
            "end": f"{time_range.end:.3f}",
            "step": str(time_range.interval),
        }
        kinds.append(("/api/v1/query_range", window))
    series, errors = [], []
    for path, params in kinds:
        try:
            # The panel's own query must be accepted even where the fallback decides nothing.
            data = await _answer(http, "POST", prometheus + path, {"query": expr, **params})
            if data_expr != expr:
                data = await _answer(http, "POST", prometheus + path, {"query": data_expr, **params})
        except PrometheusError as e:
            errors.append(f"{path}: {e} (query: {expr})")
            continue
        series.append(_samples(data))
    return PanelAnswer(query, min(series, default=0), tuple(errors))


def data_problems(
    answers: Sequence[PanelAnswer], no_data: Mapping[tuple[int, str], tuple[str, str]]
) -> list[str]:
    """What is wrong with the answers, given `no_data`: the queries, by (panel id, refId), that are to
    return nothing, each with its panel's title and the reason. A refused query, a query without data
    that is not listed, a listed one with data, and a listed one the dashboard lacks (or titles otherwise)
    are each a problem."""
    problems = [f"{a.query}: {error}" for a in answers for error in a.errors]
    titles = {a.query.key: a.query.title for a in answers}
    for key, (title, _why) in no_data.items():
        if titles.get(key) != title:
            problems.append(
                f"listed as without data: panel {key[0]} {title!r} query {key[1]}, not on the dashboard"
            )
    for answer in answers:
        if answer.errors:
            continue
        listed = answer.query.key in no_data
        if not answer.series and not listed:
            problems.append(f"{answer.query} has no data: {answer.query.expr}")
        if answer.series and listed:
            problems.append(f"{answer.query} is listed as without data but has some: take it off the list")
    return problems


async def variable_values(
    http: aiohttp.ClientSession,
    prometheus: str,
    variable: VariableQuery,
    values: Mapping[str, str],
    time_range: TimeRange,
) -> list[str]:
    """The values Grafana offers for the variable: a label values request over the time range."""
    params = [("start", f"{time_range.start:.3f}"), ("end", f"{time_range.end:.3f}")]
    if variable.match:
        params.append(("match[]", interpolate(variable.match, values)))
    data = await _answer(http, "GET", f"{prometheus}/api/v1/label/{variable.label}/values", params)
    assert isinstance(data, list)
    return [str(value) for value in data]


# -- the tests ------------------------------------------------------------------------------------


def test_every_variable_syntax_is_filled_in() -> None:
    """$var, ${var}, ${var:format}, ${var.field} and [[var]] take the variable's value; built-ins too; an unknown one is an error."""
    values = {"vault": ALL, "__rate_interval": "4s"}
    assert (
        interpolate(
            'x{a=~"$vault", b=~"${vault}", c=~"${vault:regex}", d=~"[[vault]]"}[$__rate_interval]', values
        )
        == 'x{a=~".*", b=~".*", c=~".*", d=~".*"}[4s]'
    )
    assert interpolate("${vault.text} [[vault:csv]]", values) == ".* .*"
    with pytest.raises(KeyError, match="subscription"):
        interpolate('x{s=~"$subscription"}', values)


def test_builtins_follow_the_time_range() -> None:
    """$__interval is at least the scrape interval, $__rate_interval at least four of them, $__range the range."""
    hour = TimeRange(0.0, 3600.0, scrape_interval=15).builtins()
    assert hour["__interval"] == "15s"
    assert hour["__rate_interval"] == "60s"
    assert (hour["__range"], hour["__range_s"], hour["__range_ms"]) == ("3600s", "3600", "3600000")
    week = TimeRange(0.0, 7 * 86400.0, scrape_interval=30).builtins()
    assert week["__interval"] == "605s"
    assert week["__rate_interval"] == "635s"


def test_a_zero_fallback_is_set_aside_and_nothing_else() -> None:
    """`... or vector(0)` at the end is what is removed; a fallback inside parentheses stays."""
    assert without_zero_fallback("count(x) or vector(0)") == "count(x)"
    assert without_zero_fallback("count(x or y)\n  or vector(0)") == "count(x or y)"
    assert without_zero_fallback("sum(x or vector(0))") == "sum(x or vector(0))"
    assert without_zero_fallback("x or vector(1)") == "x or vector(1)"


def test_every_panel_query_is_listed_and_fully_filled_in() -> None:
    """Each target of each panel, rows' panels included, is listed once, and no variable is left in it."""
    dashboard = load_dashboard()
    queries = panel_queries(dashboard)
    targets = [t for panel in panels(dashboard) for t in panel.get("targets", []) if not t.get("hide")]
    assert len(queries) == len(targets) > 0
    assert len({q.key for q in queries}) == len(queries)
    nested = {p["id"] for row in dashboard["panels"] for p in row.get("panels", [])}
    assert nested <= {q.panel_id for q in queries}
    values = all_values(dashboard, TimeRange(0.0, 3600.0, scrape_interval=30))
    for query in queries:
        assert query.instant or query.range, query
        filled = interpolate(query.expr, values)
        assert "$" not in filled, query
        assert "[[" not in filled, query


def test_the_no_data_list_must_be_honest() -> None:
    """A query without data fails unless listed; a listed one with data fails; so does a refused one, and a listed one the dashboard lacks."""
    stat = PanelQuery(7, "Stat", "A", "count(x) or vector(0)", instant=True, range=False)
    series = PanelQuery(8, "Series", "B", "rate(y[$__rate_interval])", instant=False, range=True)
    good = [PanelAnswer(stat, 1, ()), PanelAnswer(series, 2, ())]
    assert data_problems(good, {}) == []
    empty = [PanelAnswer(stat, 0, ()), PanelAnswer(series, 2, ())]
    assert data_problems(empty, {(7, "A"): ("Stat", "nothing counts here")}) == []
    assert ["has no data" in p for p in data_problems(empty, {})] == [True]
    (listed_with_data,) = data_problems(good, {(7, "A"): ("Stat", "nothing counts here")})
    assert "take it off the list" in listed_with_data
    (refused,) = data_problems([PanelAnswer(stat, 0, ("bad_data: parse error",))], {})
    assert "parse error" in refused
    retitled = data_problems(empty, {(7, "A"): ("Old title", "nothing counts here")})
    assert ["not on the dashboard" in p for p in retitled] == [True]


def test_collapsed_rows_keep_their_panels_in_the_list() -> None:
    """A collapsed row's panels are queried like any other."""
    dashboard = {
        "panels": [
            {"type": "row", "id": 1, "title": "r", "collapsed": True, "panels": [
                {"type": "stat", "id": 2, "title": "s", "targets": [{"refId": "A", "expr": "up", "instant": True}]},
                {"type": "stat", "id": 3, "title": "h", "targets": [{"refId": "A", "expr": "up", "hide": True}]},
            ]},
            {"type": "timeseries", "id": 4, "title": "t", "targets": [{"refId": "B", "expr": "up"}]},
        ],
    }  # fmt: skip
    assert panel_queries(dashboard) == [
        PanelQuery(2, "s", "A", "up", instant=True, range=False),
        PanelQuery(4, "t", "B", "up", instant=False, range=True),
    ]


def test_variables_are_label_values_whose_all_is_dot_star() -> None:
    """Every query variable is a label_values() query, multi-value, and its All is `.*`, as the e2e test sends it."""
    dashboard = load_dashboard()
    queries = {v.name: v for v in variable_queries(dashboard)}
    assert queries
    values = all_values(dashboard, TimeRange(0.0, 3600.0, scrape_interval=30))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            assert variable["multi"], variable["name"]
            assert variable["includeAll"], variable["name"]
            assert variable["allValue"] == ALL, variable["name"]
            assert "$" not in interpolate(queries[variable["name"]].match, values)
    assert queries["vault"].label == "vault"
    assert 'vault_type=~"$vault_type"' in queries["vault"].match
