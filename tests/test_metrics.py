"""/metrics as a scraper sees it: the contract's metrics and labels, both formats, reloads and restarts.

`promtool` comes from the Debian package `prometheus`; its test skips, saying so, where it is not
installed, and fails instead when the environment variable CI is set (CI installs it).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.samples import Sample

from tests.conftest import SUB, SUB2, TOKEN_ENV, FakeClock, every_job, running_watcher, wait_for
from watcher.app import Watcher
from watcher.config import load_config
from watcher.sim import Estate, SimItem, SimJob, Simulator

ROOT = Path(__file__).resolve().parent.parent
METRICS_DOC = ROOT / "docs" / "metrics.md"
README = ROOT / "README.md"
OPENMETRICS = "application/openmetrics-text; version=1.0.0"

RG = "rg-metrics"
VAULT_LABELS = frozenset({"subscription_id", "resource_group", "vault", "vault_type"})
ITEM_LABELS = VAULT_LABELS | {"entity", "operation"}

# The contract's metric table (README.md and docs/metrics.md, "Metrics"): name -> (type, label names).
CONTRACT: dict[str, tuple[str, frozenset[str]]] = {
    "azure_backup_jobs_finished_total": ("counter", VAULT_LABELS | {"operation", "job_type", "status"}),
    "azure_backup_job_duration_seconds": ("histogram", frozenset({"operation", "job_type", "status"})),
    "azure_backup_job_transitions_total": (
        "counter",
        VAULT_LABELS | {"operation", "from_status", "to_status"},
    ),
    "azure_backup_jobs_watched": ("gauge", VAULT_LABELS | {"status"}),
    "azure_backup_job_running_start_timestamp_seconds": (
        "gauge",
        VAULT_LABELS | {"job_id", "operation", "job_type", "entity"},
    ),
    "azure_backup_last_success_timestamp_seconds": ("gauge", ITEM_LABELS),
    "azure_backup_last_job_status_success": ("gauge", ITEM_LABELS),
    "azure_backup_last_job_duration_seconds": ("gauge", ITEM_LABELS),
    "azure_backup_last_backup_size_bytes": ("gauge", VAULT_LABELS | {"entity"}),
    "azure_backup_item_info": (
        "gauge",
        VAULT_LABELS | {"item", "entity", "item_type", "policy", "source_resource_id"},
    ),
    "azure_backup_item_last_recovery_point_timestamp_seconds": ("gauge", VAULT_LABELS | {"item"}),
    "azure_backup_item_first_seen_timestamp_seconds": ("gauge", VAULT_LABELS | {"item"}),
    "azure_backup_item_protection_state": ("gauge", VAULT_LABELS | {"item", "state"}),
    "azure_backup_item_health": ("gauge", VAULT_LABELS | {"item", "health"}),
    "azure_backup_watcher_build_info": ("gauge", frozenset({"version"})),
    "azure_backup_watcher_api_requests_total": (
        "counter",
        frozenset({"subscription_id", "endpoint", "code"}),
    ),
    "azure_backup_watcher_api_request_duration_seconds": ("histogram", frozenset({"endpoint"})),
    "azure_backup_watcher_api_throttled_total": ("counter", frozenset({"subscription_id"})),
    "azure_backup_watcher_ratelimit_remaining_reads": ("gauge", frozenset({"subscription_id"})),
    "azure_backup_watcher_poll_errors_total": ("counter", VAULT_LABELS | {"reason"}),
    "azure_backup_watcher_last_successful_poll_timestamp_seconds": ("gauge", VAULT_LABELS),
    "azure_backup_watcher_discovery_gaps_total": ("counter", VAULT_LABELS),
    "azure_backup_watcher_config_last_reload_successful": ("gauge", frozenset()),
}

MISSING_JOB = "00000000-0000-4000-8000-00000000dead"


# -- helpers ------------------------------------------------------------------------------------


def _job(
    vault: str,
    entity: str,
    *,
    start: float,
    duration: float,
    outcome: str = "Completed",
    kind: str = "vm",
    operation: str = "Backup",
    **extra: Any,
) -> SimJob:
    job_type, management = {
        "vm": ("AzureIaaSVMJob", "AzureIaasVM"),
        "sql": ("AzureWorkloadJob", "AzureWorkload"),
        "files": ("AzureStorageJob", "AzureStorage"),
    }[kind]
    return SimJob(
        subscription_id=SUB2 if vault == "vault-b" else SUB,
        resource_group=RG,
        vault=vault,
        job_id=str(uuid.uuid4()),
        job_type=job_type,
        operation=operation,
        entity=entity,
        backup_management_type=management,
        start=start,
        duration=duration,
        outcome=outcome,
        **extra,
    )


def _vault(name: str, **extra: Any) -> dict[str, Any]:
    return {
        "subscription_id": SUB2 if name == "vault-b" else SUB,
        "resource_group": RG,
        "name": name,
        **extra,
    }


def _write_config(
    path: Path, endpoint: str, store: Path, vaults: list[dict[str, Any]], *, typo: bool = False
) -> str:
    """A config file like conftest.make_config's (fast intervals, discovery on); returns its path.

    `typo` misspells a key, which makes the file invalid.
    """
    data = {
        "azure": {
            "management_endpoint": endpoint,
            "credential": "static_token",
            "static_token_env": TOKEN_ENV,
        },
        "poll": {
            "interval": 0.2,
            "discovery_intervall" if typo else "discovery_interval": 0.5,
            "concurrency": 8,
            "request_timeout": 5,
            "backoff_initial": 0.05,
            "backoff_max": 0.5,
        },
        "discovery": {"enabled": True},
        "store": {"path": str(store)},
        "http": {"listen": "127.0.0.1:0"},
        "vaults": vaults,
    }
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return str(path)


async def _scrape(watcher: Watcher, accept: str | None = None) -> str:
    headers = {"Accept": accept} if accept else {}
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{watcher.port}/metrics", headers=headers) as resp,
    ):
        assert resp.status == 200
        if accept == OPENMETRICS:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
        else:
            assert resp.headers["Content-Type"].startswith("text/plain")
        return await resp.text()


def _samples(text: str) -> list[Sample]:
    return [sample for family in parse_text(text) for sample in family.samples]


def _values(text: str, name: str, *keys: str) -> dict[tuple[str, ...], float]:
    """Samples of one series name, keyed by the given label values."""
    return {tuple(s.labels[k] for k in keys): s.value for s in _samples(text) if s.name == name}


def _exported(text: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Each family's contract name, type and label names (`le` aside); every sample must agree."""
    out: dict[str, tuple[str, frozenset[str]]] = {}
    for family in parse_text(text):
        name = f"{family.name}_total" if family.type == "counter" else family.name
        label_sets = set()
        for sample in family.samples:
            labels = set(sample.labels)
            if sample.name.endswith("_bucket"):
                assert "le" in labels, sample
                labels.discard("le")
            label_sets.add(frozenset(labels))
        assert len(label_sets) == 1, (name, label_sets)
        out[name] = (family.type, label_sets.pop())
    return out


def _metric_table(markdown: str) -> dict[str, tuple[str, frozenset[str]]]:
    """Rows `| `metric` | type | labels | meaning |` of Markdown tables, `<vault>` expanded."""
    table = {}
    rows = re.findall(r"^\|\s*`(azure_backup_\w+)`\s*\|\s*(\w+)\s*\|([^|]*)\|", markdown, re.MULTILINE)
    for name, kind, cell in rows:
        labels: set[str] = set()
        for word in (w.strip().strip("`") for w in cell.split(",")):
            if word == "<vault>":
                labels |= VAULT_LABELS
            elif word:
                labels.add(word)
        table[name] = (kind, frozenset(labels))
    return table


@pytest.fixture
def promtool() -> str:
    """promtool, or a skip (a failure when CI is set) that names its package."""
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is not installed: `apt-get install prometheus` provides it"
        print(reason)
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this is a failure)")
        pytest.skip(reason)
    return path


# -- the scraped estate ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Exposition:
    """One scrape of a watcher that has seen every kind of fact, in both formats."""

    text: str
    openmetrics: str


def _full_estate(estate: Estate, now: float) -> SimJob:
    """Running and finished jobs of several types and outcomes, one with a size; returns the ending one."""
    ending = _job("vault-a", "vm-short", start=now - 30, duration=60, size_mb=2332)
    for job in (
        _job("vault-a", "vm-long", start=now - 120, duration=7200),
        ending,
        _job("vault-a", "vm-sized", start=now - 310, duration=300, size_mb=100),
        _job(
            "vault-a", "share-a", start=now - 100, duration=90, outcome="CompletedWithWarnings", kind="files"
        ),
        _job(
            "vault-a",
            "SalesDb [sql-vm]",
            start=now - 200,
            duration=150,
            outcome="Failed",
            kind="sql",
            operation="Backup (Full)",
            error_code=510008,
            timespan_duration=True,
        ),
        _job("vault-a", "vm-sized", start=now - 60, duration=50, outcome="Cancelled", operation="Restore"),
        _job("vault-b", "vm-b", start=now - 40, duration=30),
    ):
        estate.add(job)
    # The inventory: an item backed up an hour ago, and one never backed up.
    estate.add_item(
        SimItem(
            SUB, RG, "vault-a", "vm", "vm-long", recovery_points=(now - 3600,), first_protected=now - 86400
        )
    )
    estate.add_item(SimItem(SUB, RG, "vault-a", "vm", "vm-new", first_protected=now - 600))
    return ending


@pytest.fixture
async def exposition(tmp_path: Path, estate: Estate, clock: FakeClock, sim: Simulator) -> Exposition:
    """A watcher that saw running, finishing and finished jobs, a 404 job and a 429, scraped over HTTP."""
    ending = _full_estate(estate, clock.now)
    sim.inject(429, path_contains="/vaults/vault-a/backupjobs")
    path = _write_config(
        tmp_path / "config.yaml",
        sim.url,
        tmp_path / "state.sqlite3",
        [_vault("vault-a", jobs=[MISSING_JOB]), _vault("vault-b")],
    )
    async with running_watcher(load_config(path), config_path=path) as watcher:
        assert watcher.tracker is not None
        tracker = watcher.tracker
        registry = watcher.registry

        vault_a = next(v.ref for v in tracker.vaults.values() if v.ref.name == "vault-a")

        def seen(status: str) -> bool:
            tj = tracker.known(vault_a, ending.job_id)
            return tj is not None and tj.status == status

        await wait_for(lambda: seen("InProgress"))
        clock.advance(60)  # vm-short ends: a transition the watcher sees happen
        await wait_for(lambda: seen("Completed"))

        def settled() -> bool:
            throttled = registry.get_sample_value(
                "azure_backup_watcher_api_throttled_total", {"subscription_id": SUB}
            )
            return (
                len(every_job(tracker)) == 8
                and all(
                    tj.start_time is not None or tj.state == "not_found" for tj in every_job(tracker).values()
                )
                and all(v.last_ok_poll is not None for v in tracker.vaults.values())
                and (throttled or 0) > 0
                and sum(len(items) for items in tracker.inventory.values()) == 2
            )

        await wait_for(settled)
        return Exposition(await _scrape(watcher), await _scrape(watcher, OPENMETRICS))


# -- the exposition -----------------------------------------------------------------------------


def test_every_contract_metric_is_exported_with_help_and_exactly_its_labels(exposition: Exposition) -> None:
    """Every metric of the contract's table is on /metrics with HELP, its type and exactly its label names."""
    families = {family.name: family for family in parse_text(exposition.text)}
    exported = _exported(exposition.text)
    for name, (kind, labels) in CONTRACT.items():
        assert name in exported, f"{name} is not exported"
        assert exported[name] == (kind, labels), name
        family = families[name.removesuffix("_total") if kind == "counter" else name]
        assert family.documentation.strip(), f"{name} has no HELP text"
        assert family.samples, f"{name} has no samples in this estate"
    assert set(exported) == set(CONTRACT), "exported metrics outside the contract"


def test_exposition_reflects_what_the_estate_did(exposition: Exposition) -> None:
    """Sizes, outcomes, the 404 and the 429 the watcher met show up in the values it exports."""
    text = exposition.text
    sizes = _values(text, "azure_backup_last_backup_size_bytes", "vault", "entity")
    assert sizes == {("vault-a", "vm-short"): 2332 * 2**20, ("vault-a", "vm-sized"): 100 * 2**20}
    finished = {
        key: value
        for key, value in _values(
            text, "azure_backup_jobs_finished_total", "vault", "operation", "job_type", "status"
        ).items()
        if value
    }
    assert finished == {
        ("vault-a", "Backup", "AzureIaaSVMJob", "Completed"): 2,
        ("vault-a", "Backup", "AzureStorageJob", "CompletedWithWarnings"): 1,
        ("vault-a", "Backup", "AzureWorkloadJob", "Failed"): 1,
        ("vault-a", "Restore", "AzureIaaSVMJob", "Cancelled"): 1,
        ("vault-b", "Backup", "AzureIaaSVMJob", "Completed"): 1,
    }
    transitions = _values(text, "azure_backup_job_transitions_total", "vault", "from_status", "to_status")
    assert transitions[("vault-a", "InProgress", "Completed")] >= 1
    running = _values(text, "azure_backup_job_running_start_timestamp_seconds", "vault", "entity")
    assert set(running) == {("vault-a", "vm-long")}
    errors = _values(text, "azure_backup_watcher_poll_errors_total", "vault", "reason")
    assert errors[("vault-a", "not_found")] >= 1
    assert _values(text, "azure_backup_watcher_api_throttled_total", "subscription_id")[(SUB,)] >= 1
    assert _values(text, "azure_backup_watcher_config_last_reload_successful") == {(): 1.0}


def test_promtool_check_metrics_passes(promtool: str, exposition: Exposition) -> None:
    """`promtool check metrics` finds nothing to complain about in the text exposition."""
    result = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition.text,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (result.stdout + result.stderr).strip(), result.stdout + result.stderr


def test_no_created_series(exposition: Exposition) -> None:
    """Neither format carries `_created` series (they would double the output for nothing)."""
    assert "_created" not in exposition.text
    assert "_created" not in exposition.openmetrics
    names = {s.name for s in _samples(exposition.text)}
    names |= {s.name for f in parse_openmetrics(exposition.openmetrics) for s in f.samples}
    assert not {n for n in names if n.endswith("_created")}


def test_openmetrics_form_parses_and_ends_with_eof(exposition: Exposition) -> None:
    """Asked for OpenMetrics, /metrics answers a document the strict parser accepts, ending in `# EOF`."""
    assert exposition.openmetrics.endswith("# EOF\n")
    families = {f.name: f for f in parse_openmetrics(exposition.openmetrics)}
    for name, (kind, _labels) in CONTRACT.items():
        family = families[name.removesuffix("_total") if kind == "counter" else name]
        assert family.type == kind, name
        assert family.documentation.strip(), name
    # The same series in both forms.
    text_series = {(s.name, tuple(sorted(s.labels.items()))) for s in _samples(exposition.text)}
    om_series = {(s.name, tuple(sorted(s.labels.items()))) for f in families.values() for s in f.samples}
    assert om_series == text_series


def test_metrics_doc_matches_exported_metrics(exposition: Exposition) -> None:
    """docs/metrics.md lists exactly the metrics the watcher exports, with their types and label names."""
    documented = _metric_table(METRICS_DOC.read_text(encoding="utf-8"))
    assert documented == _exported(exposition.text)


def test_readme_metric_table_is_the_contract() -> None:
    """The README's metric table, which users read first, names every metric with its type and labels."""
    text = README.read_text(encoding="utf-8").split("\n## Metrics", 1)[1].split("\n## ", 1)[0]
    assert _metric_table(text) == CONTRACT


# -- series that come and go --------------------------------------------------------------------


async def test_running_job_series_exist_only_while_the_job_runs(
    tmp_path: Path, estate: Estate, clock: FakeClock, sim: Simulator
) -> None:
    """A running job has a start-time series with its job_id; it is gone once the job ends."""
    short = estate.add(_job("vault-a", "vm-1", start=clock.now - 10, duration=30))
    long = estate.add(_job("vault-a", "vm-2", start=clock.now - 20, duration=120))
    path = _write_config(tmp_path / "config.yaml", sim.url, tmp_path / "state.sqlite3", [_vault("vault-a")])
    async with running_watcher(load_config(path), config_path=path) as watcher:
        assert watcher.tracker is not None
        tracker = watcher.tracker

        def statuses() -> set[str]:
            return {tj.status for tj in every_job(tracker).values()}

        name = "azure_backup_job_running_start_timestamp_seconds"
        await wait_for(lambda: len(every_job(tracker)) == 2 and statuses() == {"InProgress"})
        running = _values(await _scrape(watcher), name, "job_id")
        # Azure reports times to the microsecond.
        assert running == {
            (short.job_id,): pytest.approx(short.start, abs=1e-3),
            (long.job_id,): pytest.approx(long.start, abs=1e-3),
        }

        clock.advance(25)
        await wait_for(lambda: statuses() == {"InProgress", "Completed"})
        assert set(_values(await _scrape(watcher), name, "job_id")) == {(long.job_id,)}

        clock.advance(100)
        await wait_for(lambda: statuses() == {"Completed"})
        text = await _scrape(watcher)
        assert _values(text, name, "job_id") == {}
        assert f'job_id="{long.job_id}"' not in text


async def test_reload_drops_a_removed_vaults_series_and_adds_the_new_ones(
    tmp_path: Path, estate: Estate, clock: FakeClock, sim: Simulator
) -> None:
    """After a reload that swaps vault-b for vault-c, no series names vault-b and vault-c's appear."""
    for vault in ("vault-a", "vault-b", "vault-c"):
        estate.add(_job(vault, f"vm-{vault}", start=clock.now - 60, duration=30, size_mb=10))
        estate.add(_job(vault, f"vm-run-{vault}", start=clock.now - 60, duration=3600))
    store = tmp_path / "state.sqlite3"
    path = _write_config(tmp_path / "config.yaml", sim.url, store, [_vault("vault-a"), _vault("vault-b")])
    async with running_watcher(load_config(path), config_path=path) as watcher:
        assert watcher.tracker is not None
        tracker = watcher.tracker
        await wait_for(lambda: len(tracker.items) == 2 and len(every_job(tracker)) == 4)
        before = await _scrape(watcher)
        assert any(s.labels.get("vault") == "vault-b" for s in _samples(before))
        assert any(s.labels.get("subscription_id") == SUB2 for s in _samples(before))

        new = _write_config(tmp_path / "new.yaml", sim.url, store, [_vault("vault-a"), _vault("vault-c")])
        assert await watcher.reload(new)
        await wait_for(lambda: len(tracker.items) == 3)
        await wait_for(lambda: all(v.last_ok_poll is not None for v in tracker.vaults.values()))
        after = await _scrape(watcher)

    samples = _samples(after)
    assert not [s for s in samples if s.labels.get("vault") == "vault-b"]
    for name in (
        "azure_backup_jobs_watched",
        "azure_backup_job_running_start_timestamp_seconds",
        "azure_backup_last_success_timestamp_seconds",
        "azure_backup_last_backup_size_bytes",
        "azure_backup_watcher_poll_errors_total",
        "azure_backup_watcher_last_successful_poll_timestamp_seconds",
    ):
        vaults = {s.labels["vault"] for s in samples if s.name == name}
        assert vaults == {"vault-a", "vault-c"}, name
    assert _values(after, "azure_backup_watcher_config_last_reload_successful") == {(): 1.0}


async def test_reload_drops_a_removed_subscriptions_series_even_with_a_request_in_flight(
    tmp_path: Path, estate: Estate, clock: FakeClock, sim: Simulator
) -> None:
    """Per-subscription series of a subscription no vault uses any more stay gone after a reload."""
    estate.add(_job("vault-b", "vm-b", start=clock.now - 60, duration=3600))
    estate.add(_job("vault-c", "vm-c", start=clock.now - 60, duration=30))
    store = tmp_path / "state.sqlite3"
    path = _write_config(tmp_path / "config.yaml", sim.url, store, [_vault("vault-b")])
    async with running_watcher(load_config(path), config_path=path) as watcher:
        assert watcher.tracker is not None
        assert watcher.azure is not None
        tracker, client = watcher.tracker, watcher.azure.client
        await wait_for(lambda: len(every_job(tracker)) == 1)
        sim.inject(404, path_contains="/vaults/vault-b/", delay=1.0)  # holds one request of vault-b's
        await wait_for(lambda: client.in_flight > 0)
        # No await between seeing the request in flight and the reload: it is answered after the reload.
        new = _write_config(tmp_path / "new.yaml", sim.url, store, [_vault("vault-c")])
        assert await watcher.reload(new)
        await wait_for(lambda: client.in_flight == 0 and len(tracker.items) == 1)
        text = await _scrape(watcher)

    assert not [s for s in _samples(text) if s.labels.get("subscription_id") == SUB2]


async def test_bad_reload_keeps_the_old_config_and_reports_it(
    tmp_path: Path, estate: Estate, clock: FakeClock, sim: Simulator
) -> None:
    """A rejected reload leaves config and series as they were and sets config_last_reload_successful to 0."""
    estate.add(_job("vault-a", "vm-a", start=clock.now - 60, duration=30))
    estate.add(_job("vault-b", "vm-b", start=clock.now - 60, duration=30))
    store = tmp_path / "state.sqlite3"
    path = _write_config(tmp_path / "config.yaml", sim.url, store, [_vault("vault-a"), _vault("vault-b")])
    bad = _write_config(tmp_path / "bad.yaml", sim.url, store, [_vault("vault-a")], typo=True)
    async with running_watcher(load_config(path), config_path=path) as watcher:
        assert watcher.tracker is not None
        tracker = watcher.tracker
        await wait_for(lambda: len(tracker.items) == 2)
        old_config = watcher.config
        before = await _scrape(watcher)

        assert not await watcher.reload(bad)
        assert watcher.config is old_config
        after = await _scrape(watcher)
        # Good again: the gauge goes back to 1.
        assert await watcher.reload(path)
        healed = await _scrape(watcher)

    assert _values(before, "azure_backup_watcher_config_last_reload_successful") == {(): 1.0}
    assert _values(after, "azure_backup_watcher_config_last_reload_successful") == {(): 0.0}
    assert _values(healed, "azure_backup_watcher_config_last_reload_successful") == {(): 1.0}
    for name in ("azure_backup_jobs_watched", "azure_backup_last_success_timestamp_seconds"):
        assert {s.labels["vault"] for s in _samples(after) if s.name == name} == {"vault-a", "vault-b"}


async def test_restart_restores_last_success_and_finished_counters_before_any_poll(
    tmp_path: Path, estate: Estate, clock: FakeClock, sim: Simulator
) -> None:
    """A new watcher on the same store exports the same last-success times and totals before polling."""
    estate.add(_job("vault-a", "vm-1", start=clock.now - 60, duration=50))
    estate.add(_job("vault-a", "vm-1", start=clock.now - 30, duration=20, outcome="Failed"))
    estate.add(_job("vault-a", "db", start=clock.now - 40, duration=30, kind="sql", operation="Backup (Log)"))
    estate.add(_job("vault-b", "vm-b", start=clock.now - 45, duration=40, outcome="CompletedWithWarnings"))
    path = _write_config(
        tmp_path / "config.yaml", sim.url, tmp_path / "state.sqlite3", [_vault("vault-a"), _vault("vault-b")]
    )
    config = load_config(path)
    keys = ("subscription_id", "resource_group", "vault", "entity", "operation")
    finished_keys = ("subscription_id", "resource_group", "vault", "operation", "job_type", "status")

    async with running_watcher(config, config_path=path) as first:
        assert first.tracker is not None
        tracker = first.tracker
        await wait_for(
            lambda: (
                len(every_job(tracker)) == 4
                and all(tj.state == "final" for tj in every_job(tracker).values())
            )
        )
        before = await _scrape(first)
    await sim.close()  # nothing answers now: whatever the next watcher exports comes from the store

    async with running_watcher(config, config_path=path) as second:
        after = await _scrape(second)

    last_success = _values(before, "azure_backup_last_success_timestamp_seconds", *keys)
    assert len(last_success) == 3
    assert _values(after, "azure_backup_last_success_timestamp_seconds", *keys) == last_success
    finished = _values(before, "azure_backup_jobs_finished_total", *finished_keys)
    assert sum(finished.values()) == 4
    assert _values(after, "azure_backup_jobs_finished_total", *finished_keys) == finished
    status = _values(before, "azure_backup_last_job_status_success", *keys)
    assert _values(after, "azure_backup_last_job_status_success", *keys) == status
    # Nothing was polled successfully by the second watcher.
    answered = [s for s in _samples(after) if s.name == "azure_backup_watcher_api_requests_total"]
    assert not [s for s in answered if s.labels["code"] != "error" and s.value]
