"""The Prometheus rules, Alertmanager and Grafana examples, and the metric docs against the contract.

promtool and amtool come from the Debian packages `prometheus` and `prometheus-alertmanager`;
tests that need them skip, saying so, where they are not installed.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "backup-watcher-dashboard.json"
RULE_TESTS = sorted((ROOT / "tests" / "rules").glob("*.yml"))
RULE_FIXTURES = sorted((ROOT / "tests" / "rules" / "fixtures").glob("*.yml"))
METRICS_DOC = ROOT / "docs" / "metrics.md"
RUNBOOKS = ROOT / "docs" / "runbooks.md"
README = ROOT / "README.md"

RUNBOOK_BASE = "https://github.com/backup-watcher/backup-watcher/blob/main/docs/runbooks.md#"
SEVERITIES = {"critical", "warning", "info"}

# The metrics table of the contract (README.md and docs/metrics.md, "Metrics"): name -> type.
CONTRACT_METRICS = {
    "azure_backup_jobs_finished_total": "counter",
    "azure_backup_job_duration_seconds": "histogram",
    "azure_backup_job_transitions_total": "counter",
    "azure_backup_jobs_watched": "gauge",
    "azure_backup_job_running_start_timestamp_seconds": "gauge",
    "azure_backup_last_success_timestamp_seconds": "gauge",
    "azure_backup_last_job_status_success": "gauge",
    "azure_backup_last_job_duration_seconds": "gauge",
    "azure_backup_last_backup_size_bytes": "gauge",
    "azure_backup_watcher_build_info": "gauge",
    "azure_backup_watcher_api_requests_total": "counter",
    "azure_backup_watcher_api_request_duration_seconds": "histogram",
    "azure_backup_watcher_api_throttled_total": "counter",
    "azure_backup_watcher_ratelimit_remaining_reads": "gauge",
    "azure_backup_watcher_poll_errors_total": "counter",
    "azure_backup_watcher_last_successful_poll_timestamp_seconds": "gauge",
    "azure_backup_watcher_discovery_gaps_total": "counter",
    "azure_backup_watcher_config_last_reload_successful": "gauge",
    "azure_backup_item_info": "gauge",
    "azure_backup_item_last_recovery_point_timestamp_seconds": "gauge",
    "azure_backup_item_first_seen_timestamp_seconds": "gauge",
    "azure_backup_item_protection_state": "gauge",
    "azure_backup_item_health": "gauge",
}
# Metrics labelled with a vault: <vault> is subscription_id, resource_group, vault and vault_type.
VAULT_METRICS = set(CONTRACT_METRICS) - {
    "azure_backup_job_duration_seconds",
    "azure_backup_watcher_build_info",
    "azure_backup_watcher_api_requests_total",
    "azure_backup_watcher_api_request_duration_seconds",
    "azure_backup_watcher_api_throttled_total",
    "azure_backup_watcher_ratelimit_remaining_reads",
    "azure_backup_watcher_config_last_reload_successful",
}
# Series Prometheus makes itself.
PROMETHEUS_SERIES = {"up"}

REQUIRED_ALERTS = {
    "AzureBackupJobFailed",
    "AzureBackupJobCompletedWithWarnings",
    "AzureBackupJobRunningTooLong",
    "AzureBackupNoRecentSuccess",
    "AzureBackupWatcherDown",
    "AzureBackupWatcherPollFailing",
    "AzureBackupWatcherThrottled",
    "AzureBackupWatcherAuthFailing",
    "AzureBackupItemNoRecentRecoveryPoint",
    "AzureBackupItemNeverBackedUp",
    "AzureBackupItemHealthActionRequired",
}
# The thresholds a user tunes, recorded in the first rule group.
TUNABLES = {
    "azure_backup:backup_max_age_seconds",
    "azure_backup:job_max_running_seconds",
    "azure_backup:first_backup_max_wait_seconds",
}
# Grafana's variables, replaced by values of the same shape to check panel queries with promtool.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$__range": "7d", "$__interval": "1m"}

_PROMQL_WORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "atan2", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """Names of the series a PromQL expression (or a Grafana label_values query) selects."""
    label_values = re.fullmatch(r"\s*label_values\((?:(.*),)?\s*\w+\s*\)\s*", expr, re.DOTALL)
    if label_values:
        return metric_names(label_values.group(1) or "")
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"#[^\n]*", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in re.finditer(r"(?<![\w.:$])([A-Za-z_:][\w:]*)(\s*\()?", text):
        word, is_call = match.group(1), match.group(2)
        if not is_call and word.lower() not in _PROMQL_WORDS:
            names.add(word)
    return names


def _load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _rules() -> list[dict[str, Any]]:
    return [rule for group in _load_yaml(ALERTS)["groups"] for rule in group["rules"]]


def _alert_rules() -> list[dict[str, Any]]:
    return [rule for rule in _rules() if "alert" in rule]


def _recorded_names() -> set[str]:
    return {rule["record"] for rule in _rules() if "record" in rule}


def _allowed_series() -> set[str]:
    allowed = set(PROMETHEUS_SERIES) | _recorded_names()
    for name, kind in CONTRACT_METRICS.items():
        if kind == "histogram":
            allowed |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            allowed.add(name)
    return allowed


def _metric_table(markdown: str) -> dict[str, str]:
    """Rows `| `metric` | type | ...` of the Markdown tables that list metrics (not rules)."""
    rows = re.findall(r"^\|\s*`(azure_backup_\w+)`\s*\|\s*(\w+)\s*\|", markdown, re.MULTILINE)
    return dict(rows)


def _github_anchor(heading: str) -> str:
    slug = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return slug.replace(" ", "-")


def _dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text(encoding="utf-8"))


def _dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in _dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def _vault_labelled_series() -> set[str]:
    """Contract metrics with vault labels, and the recorded series that keep them."""
    recorded = {
        name
        for name in _recorded_names()
        if name.startswith(("azure_backup_item:", "azure_backup_job:", "azure_backup_inventory_item:"))
        or name == "azure_backup:jobs_finished:increase1h"
    }
    return VAULT_METRICS | recorded


def _clauses(expr: str) -> list[set[str]]:
    """Label lists of the by/on/ignoring/without/group_left/group_right clauses of an expression."""
    found = re.findall(r"\b(?:by|on|ignoring|without|group_left|group_right)\s*\(([^)]*)\)", expr)
    return [{label.strip() for label in labels.split(",") if label.strip()} for labels in found]


def _variable_query(variable: dict[str, Any]) -> str:
    query = variable["query"]
    return query["query"] if isinstance(query, dict) else query


def _dashboard_queries() -> list[str]:
    queries = [target["expr"] for panel in _dashboard_panels() for target in panel.get("targets", [])]
    for variable in _dashboard()["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(_variable_query(variable))
    return queries


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not installed: `apt-get install {package}` provides it"
        print(reason)
        pytest.skip(reason)
    return path


@pytest.fixture
def promtool() -> str:
    return _tool("promtool", "prometheus")


@pytest.fixture
def amtool() -> str:
    return _tool("amtool", "prometheus-alertmanager")


def _run(*argv: str) -> str:
    """Run a tool from the repository root; fail with its output unless it exits 0; its stdout."""
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=90, check=False)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(argv)} exited {result.returncode}:\n{output}"
    return result.stdout


def test_metric_name_extraction() -> None:
    """The PromQL scanner finds series names and skips functions, labels, ranges and variables."""
    expr = (
        'sum by (vault, le) (increase(a_bucket{status="Failed", x=~"a|b"}[$__rate_interval]))'
        " / on (vault) group_left () rec:name:ratio offset 1h > bool 1e-09"
        ' or absent(up{job="w"}) unless time() - b_seconds{c="{d}"} > 26 * 3600'
    )
    assert metric_names(expr) == {"a_bucket", "rec:name:ratio", "up", "b_seconds"}
    assert metric_names('label_values(m_total{s=~"$subscription"}, vault)') == {"m_total"}
    assert metric_names("label_values(vault)") == set()


def test_yaml_files_parse() -> None:
    """Every YAML file shipped for Prometheus, Alertmanager and the rule tests is valid YAML."""
    paths = [ALERTS, PROMETHEUS_CONFIG, ALERTMANAGER_CONFIG, *RULE_TESTS, *RULE_FIXTURES]
    for path in paths:
        assert isinstance(_load_yaml(path), dict), path


def test_promtool_check_rules(promtool: str) -> None:
    """`promtool check rules` accepts the rule file and the test fixture rules without findings."""
    for path in [ALERTS, *RULE_FIXTURES]:
        output = _run(promtool, "check", "rules", str(path.relative_to(ROOT)))
        assert "SUCCESS" in output
        assert "WARNING" not in output.upper()


def test_promtool_rule_unit_tests(promtool: str) -> None:
    """Every promtool unit test in tests/rules/*.yml passes."""
    assert RULE_TESTS
    _run(promtool, "test", "rules", *(str(path.relative_to(ROOT)) for path in RULE_TESTS))


def test_promtool_check_config(promtool: str) -> None:
    """`promtool check config` accepts the example prometheus.yml and the rule file it loads."""
    output = _run(promtool, "check", "config", str(PROMETHEUS_CONFIG.relative_to(ROOT)))
    assert "1 rule files found" in output


def test_prometheus_config_scrapes_the_watcher_and_loads_alerts() -> None:
    """The example config scrapes job backup-watcher on port 9464 and loads alerts.yml."""
    config = _load_yaml(PROMETHEUS_CONFIG)
    assert config["rule_files"] == ["alerts.yml"]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = jobs["backup-watcher"]["static_configs"][0]["targets"]
    assert targets == ["backup-watcher:9464"]


def test_amtool_check_config(amtool: str) -> None:
    """`amtool check-config` accepts the example Alertmanager configuration."""
    output = _run(amtool, "check-config", str(ALERTMANAGER_CONFIG.relative_to(ROOT)))
    assert "SUCCESS" in output


@pytest.mark.parametrize(
    ("severity", "receiver"), [("critical", "pager"), ("warning", "chat"), ("info", "null")]
)
def test_alertmanager_routes_by_severity(amtool: str, severity: str, receiver: str) -> None:
    """Alertmanager sends critical alerts to the pager, warnings to chat and info nowhere."""
    output = _run(
        amtool,
        "config",
        "routes",
        "test",
        f"--config.file={ALERTMANAGER_CONFIG.relative_to(ROOT)}",
        "alertname=AzureBackupJobFailed",
        f"severity={severity}",
        "vault=vault-prod",
    )
    assert output.strip() == receiver


def test_alertmanager_groups_by_vault_and_inhibits_when_watcher_down() -> None:
    """Notifications group by alert name and vault; WatcherDown holds back every other alert."""
    config = _load_yaml(ALERTMANAGER_CONFIG)
    assert config["route"]["group_by"] == [
        "alertname",
        "subscription_id",
        "resource_group",
        "vault",
        "vault_type",
    ]
    down_rules = [
        rule
        for rule in config["inhibit_rules"]
        if rule["source_matchers"] == ['alertname="AzureBackupWatcherDown"']
    ]
    assert len(down_rules) == 1
    rule = down_rules[0]
    assert rule["equal"] == ["job"]
    for name in {alert["alert"] for alert in _alert_rules()}:
        inhibited = all(_matcher_matches(matcher, name) for matcher in rule["target_matchers"])
        assert inhibited == (name != "AzureBackupWatcherDown"), name


def _matcher_matches(matcher: str, alertname: str) -> bool:
    parsed = re.fullmatch(r'(\w+)(=~|!~|!=|=)"(.*)"', matcher)
    assert parsed, matcher
    label, op, value = parsed.groups()
    assert label == "alertname", matcher
    matches = re.fullmatch(value, alertname) is not None if "~" in op else value == alertname
    return matches != op.startswith("!")


def test_required_alerts_exist() -> None:
    """Every alert the contract asks for exists, and every alert name starts with AzureBackup."""
    names = {rule["alert"] for rule in _alert_rules()}
    assert names >= REQUIRED_ALERTS
    assert all(name.startswith("AzureBackup") for name in names)


@pytest.mark.parametrize("rule", _alert_rules(), ids=lambda rule: rule["alert"])
def test_alert_labels_and_annotations(rule: dict[str, Any]) -> None:
    """Each alert has a known severity, a summary, a description and its own runbook URL."""
    assert rule["labels"]["severity"] in SEVERITIES
    annotations = rule["annotations"]
    assert annotations["summary"].strip()
    assert annotations["description"].strip()
    assert annotations["runbook_url"] == RUNBOOK_BASE + rule["alert"].lower()


def test_runbook_anchors_exist() -> None:
    """Each runbook_url anchor is a heading of docs/runbooks.md named exactly like the alert."""
    headings = re.findall(r"^#{2,3} (.+?)\s*$", RUNBOOKS.read_text(encoding="utf-8"), re.MULTILINE)
    anchors = {_github_anchor(heading) for heading in headings}
    for rule in _alert_rules():
        assert rule["alert"] in headings, rule["alert"]
        assert rule["annotations"]["runbook_url"].split("#", 1)[1] in anchors


def test_tuning_is_documented() -> None:
    """The tunable thresholds are introduced at the top of alerts.yml and in the Tuning section."""
    alerts_text = ALERTS.read_text(encoding="utf-8")
    header = alerts_text.split("groups:", 1)[0]
    runbooks = RUNBOOKS.read_text(encoding="utf-8")
    tuning = runbooks.split("\n## Tuning\n", 1)[1].split("\n## ", 1)[0]
    first_group = _load_yaml(ALERTS)["groups"][0]
    assert {rule["record"] for rule in first_group["rules"]} == TUNABLES
    for name in TUNABLES:
        assert name in header
        assert name in tuning


def test_every_alert_has_firing_and_quiet_unit_tests() -> None:
    """tests/rules holds, for every alert, a case where it fires and one where it stays quiet."""
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in RULE_TESTS:
        for case in _load_yaml(path)["tests"]:
            for check in case.get("alert_rule_test", []):
                (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {rule["alert"] for rule in _alert_rules()}
    assert names <= firing
    assert names <= quiet


def test_rules_use_only_contract_metrics() -> None:
    """Rule expressions select only contract metrics, recorded series and Prometheus' `up`."""
    allowed = _allowed_series()
    for rule in _rules():
        unknown = metric_names(str(rule["expr"])) - allowed
        assert not unknown, (rule.get("alert") or rule.get("record"), unknown)


def test_dashboard_uses_only_contract_metrics() -> None:
    """Dashboard queries and variables select only contract metrics, recorded series and `up`."""
    allowed = _allowed_series()
    queries = _dashboard_queries()
    assert queries
    for query in queries:
        unknown = metric_names(query) - allowed
        assert not unknown, (query, unknown)


def test_dashboard_structure() -> None:
    """The dashboard has a Prometheus datasource variable used by every panel and the filters."""
    dashboard = _dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    variables = {variable["name"]: variable for variable in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    assert {"subscription", "vault", "vault_type"} <= set(variables)
    panels = _dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_covers_outcomes_durations_running_items_and_health() -> None:
    """The dashboard shows outcomes, the duration histogram, running jobs, items and health."""
    queries = "\n".join(_dashboard_queries())
    for needle in [
        "azure_backup_jobs_finished_total",
        "azure_backup_job_duration_seconds_bucket",
        "time() - azure_backup_job_running_start_timestamp_seconds",
        "time() - azure_backup_last_success_timestamp_seconds",
        "azure_backup_watcher_api_requests_total",
        "azure_backup_watcher_api_throttled_total",
        "azure_backup_watcher_poll_errors_total",
        "azure_backup_watcher_ratelimit_remaining_reads",
    ]:
        assert needle in queries, needle
    assert any(panel["type"] == "heatmap" for panel in _dashboard_panels())


def test_metrics_doc_covers_the_contract() -> None:
    """docs/metrics.md lists every contract metric with its type and a PromQL example."""
    text = METRICS_DOC.read_text(encoding="utf-8")
    assert _metric_table(text) == CONTRACT_METRICS
    for name in CONTRACT_METRICS:
        section = text.split(f"\n### `{name}`\n", 1)
        assert len(section) == 2, name
        body = section[1].split("\n### ", 1)[0]
        assert "```promql" in body, name


def test_contract_metric_list_matches_the_readme() -> None:
    """The metric list in this test is the README's metric table, name for name and type."""
    text = README.read_text(encoding="utf-8").split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    assert _metric_table(text) == CONTRACT_METRICS


def test_rules_carry_vault_type_wherever_they_carry_a_vault() -> None:
    """Every by/on clause that names a vault (subscription_id and vault) names vault_type too.

    The threshold overrides match on the vault's name alone, by design (docs/runbooks.md#tuning),
    and name no subscription_id.
    """
    for rule in _rules():
        for labels in _clauses(str(rule["expr"])):
            if {"subscription_id", "vault"} <= labels:
                assert "vault_type" in labels, (rule.get("alert") or rule.get("record"), labels)
            if "vault" in labels and "subscription_id" not in labels:
                assert labels <= {"vault", "entity"}, (rule.get("alert") or rule.get("record"), labels)


def test_job_history_age_alert_stands_aside_for_inventory_items() -> None:
    """AzureBackupNoRecentSuccess leaves every item the inventory lists to the inventory's alert."""
    alerts = {rule["alert"]: rule for rule in _alert_rules()}
    expr = re.sub(r"\s+", " ", alerts["AzureBackupNoRecentSuccess"]["expr"])
    assert (
        "unless on (subscription_id, resource_group, vault, vault_type, entity) azure_backup_item_info"
        in expr
    )
    inventory_expr = alerts["AzureBackupItemNoRecentRecoveryPoint"]["expr"]
    assert "azure_backup_item_last_recovery_point_timestamp_seconds" in inventory_expr


def test_dashboard_filters_vault_series_by_vault_type() -> None:
    """Every selector of a vault-labelled series filters by $vault_type, every by() or on() with
    vault keeps vault_type, and the vault_type variable is a regex that defaults to all."""
    variables = {variable["name"]: variable for variable in _dashboard()["templating"]["list"]}
    assert variables["vault_type"]["includeAll"]
    assert variables["vault_type"]["allValue"] == ".*"
    assert 'vault_type=~"$vault_type"' in _variable_query(variables["vault"])
    vault_series = _vault_labelled_series()
    selector = re.compile(r'(?<![\w:$"])([A-Za-z_:][\w:]*)(?![\w:])(\s*\{[^}]*\})?')
    for panel in _dashboard_panels():
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, matchers in selector.findall(expr):
                if name in vault_series:
                    assert 'vault_type=~"$vault_type"' in matchers, (panel["title"], name)
            for labels in _clauses(expr):
                if "vault" in labels:
                    assert "vault_type" in labels, (panel["title"], labels)
            if "{{vault}}" in target.get("legendFormat", ""):
                assert "{{vault_type}}" in target["legendFormat"], panel["title"]


def test_dashboard_covers_the_inventory() -> None:
    """A row shows the inventory: stale items, never backed up, protection states and health."""
    titles = {panel["title"] for panel in _dashboard_panels()}
    assert "Protected item inventory" in titles
    queries = "\n".join(_dashboard_queries())
    for needle in [
        "time() - (azure_backup_item_last_recovery_point_timestamp_seconds",
        "azure_backup_inventory_item:backup_max_age_seconds",
        "time() - azure_backup_item_first_seen_timestamp_seconds",
        "azure_backup_inventory_item:first_backup_max_wait_seconds",
        "sum by (state) (azure_backup_item_protection_state",
        "sum by (health) (azure_backup_item_health",
        "azure_backup_item_info",
    ]:
        assert needle in queries, needle


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Every panel query, and the selector of every label_values() variable, parses as PromQL.

    promtool has no parse-only command for a query; a rule file of them is the next best thing.
    """
    exprs = []
    for query in _dashboard_queries():
        label_values = re.fullmatch(r"\s*label_values\((?:(.*),)?\s*\w+\s*\)\s*", query, re.DOTALL)
        if label_values:
            query = label_values.group(1) or ""
            if not query:
                continue
        for variable, value in GRAFANA_VARIABLES.items():
            query = query.replace(variable, value)
        query = re.sub(r"\$\{?\w+\}?", ".*", query)
        exprs.append(query)
    rules = {
        "groups": [
            {
                "name": "dashboard-queries",
                "rules": [{"record": f"dashboard:query_{i}", "expr": expr} for i, expr in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "dashboard-queries.yml"
    path.write_text(yaml.safe_dump(rules), encoding="utf-8")
    output = _run(promtool, "check", "rules", str(path))
    assert f"SUCCESS: {len(exprs)} rules found" in output
