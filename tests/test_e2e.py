"""The whole alerting path for real: simulator -> watcher -> Prometheus -> Alertmanager -> a webhook.

The watcher runs as a user runs it (`python -m watcher run --config FILE`, stopped with SIGTERM).
Prometheus loads a copy of deploy/prometheus/alerts.yml in which only a threshold and a `for:` are
shortened, and a copy of deploy/prometheus/prometheus.yml with short intervals; Alertmanager loads
deploy/alertmanager/alertmanager.yml with its webhooks pointed at a receiver in this test and short
grouping waits. Everything listens on 127.0.0.1.

While the watcher runs, the same Prometheus answers every query of the Grafana dashboard
(deploy/grafana/), filled in as Grafana fills it in with every template variable set to All (`.*`)
and the time range since Prometheus started; every variable's label_values() query too
(tests/test_dashboard_queries.py says how). The estate has both vault kinds, running, finished and
failed jobs, inventory items of every kind the dashboard counts, and one throttled request, so every
panel has data but those NO_DATA_HERE lists with the reason.

Prometheus and Alertmanager come from the Debian packages `prometheus` and `prometheus-alertmanager`.
Without them the test skips, saying so; with the environment variable CI set it fails instead.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
import yaml
from aiohttp import web

from tests.conftest import SUB, TOKEN_ENV, cli, free_port
from tests.test_dashboard_queries import (
    TimeRange,
    all_values,
    data_problems,
    load_dashboard,
    panel_queries,
    run_panel_query,
    variable_queries,
    variable_values,
)
from watcher.sim import BACKUP_VAULT, Estate, RecurringJob, SimItem, SimJob, start_simulator
from watcher.sim.estate import DATASOURCE_TYPES

ROOT = Path(__file__).resolve().parent.parent
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
ALERTMANAGER_CONFIG = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOKS = ROOT / "docs" / "runbooks.md"

RG = "rg-e2e"
VAULT = "vault-e2e"
FAILING = "vm-e2e-fail"  # its one backup fails a few seconds after it starts
STALE = "vm-e2e-stale"  # its last successful backup ended an hour ago; none since
FRESH = "vm-e2e-fresh"  # backed up every 10 seconds: must never look stale
# A vault whose inventory speaks for its items (it has no jobs at all): what a new watcher knows at once.
INVENTORY_VAULT = "vault-e2e-inventory"
ITEM_STALE = "vm-inv-stale"  # last recovery point 3 days old
ITEM_NEVER = "vm-inv-never"  # protected, never backed up
ITEM_STOPPED = "vm-inv-stopped"  # protection stopped 9 days ago: no alert on its age
ITEM_HEALTHY = "vm-inv-healthy"  # a recovery point every 10 seconds
ITEM_SHARE = "share-inv-fresh"  # an Azure Files share, a recovery point every 10 seconds, no health reported
VM_RUNNING = "vm-e2e-running"  # its backup runs for the whole test
# A Backup vault (Microsoft.DataProtection) with disk backups, as jobs and as backup instances.
DISK_VAULT = "bvault-e2e"
DISK_FRESH = "disk-e2e-fresh"  # backed up every 10 seconds
DISK_RUNNING = "disk-e2e-running"  # its backup runs for the whole test
DISK_ERROR = "disk-e2e-error"  # recovery points every 10 seconds, but its protection reports an error
# Its job listing answers 429 once: the throttling panel has something to show.
THROTTLED_PATH = f"/backupvaults/{DISK_VAULT}/backupjobs"

# Rewritten for speed; the real values are 26h, 26h and 2m.
MAX_AGE_SECONDS = 60
FIRST_BACKUP_WAIT_SECONDS = 5
DOWN_FOR = "5s"
WAIT = 90.0  # seconds, the most any one step may take
JOB = "backup-watcher"  # the scrape job name AzureBackupWatcherDown looks for
SCRAPE_SECONDS = 1  # Prometheus's scrape interval here, which is Grafana's $__rate_interval's base
DASHBOARD_WAIT = 30.0  # seconds the dashboard's panels may take to all have data

# Dashboard queries, by (panel id, refId), that return nothing in this estate: the panel's title, and
# why. Every other query must return data, and a query listed here that returns some must leave.
NO_DATA_HERE: dict[tuple[int, str], tuple[str, str]] = {}


# -- tools ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Binaries:
    prometheus: str
    alertmanager: str


@pytest.fixture
def binaries() -> Binaries:
    """Prometheus and Alertmanager, or a skip (a failure when CI is set) that names their packages."""
    prometheus = shutil.which("prometheus")
    alertmanager = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")
    missing = [
        f"{binary} is not installed: `apt-get install {package}` provides it"
        for binary, package, path in (
            ("prometheus", "prometheus", prometheus),
            ("prometheus-alertmanager", "prometheus-alertmanager", alertmanager),
        )
        if path is None
    ]
    if missing:
        reason = "; ".join(missing)
        print(reason)
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI is set, so this is a failure, not a skip)")
        pytest.skip(reason)
    assert prometheus is not None
    assert alertmanager is not None
    return Binaries(prometheus, alertmanager)


# -- configs derived from the shipped files ---------------------------------------------------------


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), path
    return data


def _rules_by_name(rules: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for group in rules["groups"] for rule in group["rules"] if "alert" in rule}


def fast_rules() -> dict[str, Any]:
    """deploy/prometheus/alerts.yml with the default max backup age and WatcherDown's `for:` shortened."""
    rules = _load(ALERTS)
    groups = {group["name"]: group for group in rules["groups"]}
    assert "azure-backup-thresholds" in groups, "the thresholds group moved: update this test"
    defaults = [
        rule
        for rule in groups["azure-backup-thresholds"]["rules"]
        if rule.get("record") == "azure_backup:backup_max_age_seconds" and not rule.get("labels")
    ]
    assert len(defaults) == 1, "expected one default azure_backup:backup_max_age_seconds: update this test"
    assert "expr" in defaults[0]
    defaults[0]["expr"] = str(MAX_AGE_SECONDS)
    waits = [
        rule
        for rule in groups["azure-backup-thresholds"]["rules"]
        if rule.get("record") == "azure_backup:first_backup_max_wait_seconds" and not rule.get("labels")
    ]
    assert len(waits) == 1, (
        "expected one default azure_backup:first_backup_max_wait_seconds: update this test"
    )
    waits[0]["expr"] = str(FIRST_BACKUP_WAIT_SECONDS)

    alerts = _rules_by_name(rules)
    assert "for" in alerts["AzureBackupWatcherDown"], (
        "AzureBackupWatcherDown lost its `for:`: update this test"
    )
    alerts["AzureBackupWatcherDown"]["for"] = DOWN_FOR
    for name in (
        "AzureBackupJobFailed",
        "AzureBackupNoRecentSuccess",
        "AzureBackupItemNoRecentRecoveryPoint",
        "AzureBackupItemNeverBackedUp",
    ):
        # These fire at once (runbooks.md, "Tuning"); a `for:` would need shortening here too.
        assert "for" not in alerts[name], f"{name} has a `for:` now: shorten it here too"
        assert "azure_backup_" in alerts[name]["expr"], name
    assert "azure_backup_item:backup_max_age_seconds" in alerts["AzureBackupNoRecentSuccess"]["expr"]
    return rules


def test_rewritten_rules_differ_from_the_shipped_ones_only_where_shortened() -> None:
    """The rules Prometheus loads in the e2e test are the shipped ones but for the two shortened fields."""
    shipped, fast = _load(ALERTS), fast_rules()
    assert fast != shipped
    threshold = next(
        rule
        for rule in fast["groups"][0]["rules"]
        if rule["record"] == "azure_backup:backup_max_age_seconds" and not rule.get("labels")
    )
    assert threshold["expr"] == str(MAX_AGE_SECONDS)
    wait = next(
        rule
        for rule in fast["groups"][0]["rules"]
        if rule["record"] == "azure_backup:first_backup_max_wait_seconds" and not rule.get("labels")
    )
    assert wait["expr"] == str(FIRST_BACKUP_WAIT_SECONDS)
    down = _rules_by_name(fast)["AzureBackupWatcherDown"]
    assert down["for"] == DOWN_FOR
    for rewritten, name in (
        (threshold, "azure_backup:backup_max_age_seconds"),
        (wait, "azure_backup:first_backup_max_wait_seconds"),
    ):
        rewritten["expr"] = next(
            rule["expr"]
            for rule in shipped["groups"][0]["rules"]
            if rule["record"] == name and not rule.get("labels")
        )
    down["for"] = _rules_by_name(shipped)["AzureBackupWatcherDown"]["for"]
    assert fast == shipped


def prometheus_config(watcher: str, alertmanager: str) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml scraping and evaluating every second, on loopback targets."""
    config = _load(PROMETHEUS_CONFIG)
    every = f"{SCRAPE_SECONDS}s"
    config["global"] = {"scrape_interval": every, "scrape_timeout": every, "evaluation_interval": every}
    assert config["rule_files"] == ["alerts.yml"]
    config["alerting"]["alertmanagers"] = [{"static_configs": [{"targets": [alertmanager]}]}]
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert JOB in jobs, f"prometheus.yml has no scrape job {JOB!r}: update this test"
    jobs[JOB]["scrape_interval"] = every
    jobs[JOB]["static_configs"] = [{"targets": [watcher]}]
    return config


def alertmanager_config(receiver: str) -> dict[str, Any]:
    """deploy/alertmanager/alertmanager.yml with short grouping waits and webhooks sent to `receiver`."""
    config = _load(ALERTMANAGER_CONFIG)
    config["route"]["group_wait"] = "1s"
    config["route"]["group_interval"] = "1s"
    webhooks = 0
    for entry in config["receivers"]:
        for hook in entry.get("webhook_configs", []):
            path = urlsplit(hook["url"]).path
            assert path, hook
            hook["url"] = urlunsplit(("http", receiver, path, "", ""))
            webhooks += 1
    assert {r["name"] for r in config["receivers"] if r.get("webhook_configs")} >= {"pager", "chat"}
    assert webhooks >= 2
    return config


def watcher_config(endpoint: str, listen: str, store: Path) -> dict[str, Any]:
    """A config as a user writes one: the simulator, a static token, discovery, short intervals."""
    return {
        "azure": {
            "management_endpoint": endpoint,
            "credential": "static_token",
            "static_token_env": TOKEN_ENV,
        },
        "poll": {
            "interval": "1s",
            "discovery_interval": "1s",
            "request_timeout": "5s",
            "backoff_initial": "0.1s",
            "backoff_max": "1s",
            "inventory_interval": "10s",
        },
        "discovery": {"enabled": True, "lookback": "3h"},
        "store": {"path": str(store)},
        "http": {"listen": listen},
        "logging": {"format": "json", "level": "info"},
        "vaults": [
            {"subscription_id": SUB, "resource_group": RG, "name": VAULT},
            {"subscription_id": SUB, "resource_group": RG, "name": INVENTORY_VAULT},
            {"subscription_id": SUB, "resource_group": RG, "name": DISK_VAULT, "type": "backup_vault"},
        ],
    }


def _write_yaml(path: Path, data: Any) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    return path


# -- the estate ---------------------------------------------------------------------------------


def scenario(now: float) -> Estate:
    """One backup fails a few seconds after it starts, one item's backups stopped, one item stays fresh;
    an inventory of stale, never backed up, stopped and healthy VMs and a share that reports no health;
    a Backup vault with a fresh disk and a disk whose protection reports an error; and in each vault
    kind a backup that runs throughout."""
    estate = Estate()  # wall-clock time, like Azure

    def vm_backup(
        entity: str, start: float, duration: float, outcome: str = "Completed", **extra: Any
    ) -> SimJob:
        return SimJob(
            subscription_id=SUB,
            resource_group=RG,
            vault=VAULT,
            job_id=str(uuid.uuid4()),
            job_type="AzureIaaSVMJob",
            operation="Backup",
            entity=entity,
            backup_management_type="AzureIaasVM",
            start=start,
            duration=duration,
            outcome=outcome,
            container_name=f"iaasvmcontainerv2;{RG};{entity}",
            **extra,
        )

    estate.add(vm_backup(FAILING, now, 4.0, "Failed", error_code=400136))
    estate.add(vm_backup(STALE, now - 3600 - 600, 600.0, size_mb=2048))
    estate.add_recurring(RecurringJob(vm_backup(FRESH, now - 30, 2.0, size_mb=512), every=10.0))
    estate.add(vm_backup(VM_RUNNING, now - 600, 7200.0))

    day = 86400.0

    def item(name: str, **extra: Any) -> SimItem:
        return SimItem(SUB, RG, INVENTORY_VAULT, "vm", name, first_protected=now - 30 * day, **extra)

    estate.add_vault(SUB, RG, INVENTORY_VAULT)
    estate.add_item(item(ITEM_STALE, recovery_points=(now - 3 * day,)))
    estate.add_item(item(ITEM_NEVER))
    estate.add_item(
        item(ITEM_STOPPED, protection_state="ProtectionStopped", recovery_points=(now - 9 * day,))
    )
    estate.add_item(item(ITEM_HEALTHY, recovery_points=(now - 5,), every=10.0))
    estate.add_item(
        SimItem(
            SUB,
            RG,
            INVENTORY_VAULT,
            "fileshare",
            ITEM_SHARE,
            parent="ste2e",
            recovery_points=(now - 5,),
            every=10.0,
            first_protected=now - 30 * day,
        )
    )

    def disk_backup(entity: str, start: float, duration: float, **extra: Any) -> SimJob:
        return SimJob(
            subscription_id=SUB,
            resource_group=RG,
            vault=DISK_VAULT,
            job_id=str(uuid.uuid4()),
            job_type=DATASOURCE_TYPES["disk"],
            operation="Backup",
            entity=entity,
            backup_management_type="",
            start=start,
            duration=duration,
            vault_kind=BACKUP_VAULT,
            policy_name="disk-daily",
            datasource_name=entity,
            **extra,
        )

    def disk(name: str, **extra: Any) -> SimItem:
        return SimItem(
            SUB, RG, DISK_VAULT, "disk", name, policy="disk-daily", first_protected=now - 30 * day, **extra
        )

    estate.add_vault(SUB, RG, DISK_VAULT, kind=BACKUP_VAULT)
    estate.add_recurring(RecurringJob(disk_backup(DISK_FRESH, now - 30, 2.0, size_mb=1024), every=10.0))
    estate.add(disk_backup(DISK_RUNNING, now - 600, 7200.0))
    estate.add_item(disk(DISK_FRESH, recovery_points=(now - 5,), every=10.0))
    estate.add_item(disk(DISK_ERROR, recovery_points=(now - 5,), every=10.0, health="ActionRequired"))
    return estate


# -- processes and the webhook receiver ----------------------------------------------------------


@dataclass
class Server:
    """A process this test started, and where its output goes."""

    name: str
    proc: subprocess.Popen[bytes]
    log: Path

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""
        return f"--- {self.name} (exit {self.proc.poll()}) ---\n" + "\n".join(text.splitlines()[-lines:])


def _spawn(name: str, argv: list[str], log: Path, *, cwd: Path, env: dict[str, str] | None = None) -> Server:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env)
    return Server(name, proc, log)


async def _stop(server: Server, grace: float = 20.0) -> int:
    """SIGTERM, then SIGKILL if it is still there after `grace` seconds; its exit status."""
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(server.proc.wait, grace)
        except subprocess.TimeoutExpired:
            server.proc.kill()
    return await asyncio.to_thread(server.proc.wait)


@asynccontextmanager
async def running(
    name: str, argv: list[str], tmp: Path, *, env: dict[str, str] | None = None
) -> AsyncIterator[Server]:
    """A subprocess that is always stopped on the way out."""
    server = _spawn(name, argv, tmp / f"{name}.log", cwd=tmp, env=env)
    try:
        yield server
    finally:
        await _stop(server)


@dataclass
class Notification:
    """One alert out of a webhook call, with the receiver path it came to."""

    path: str
    received: float
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str
    group_labels: dict[str, str]


@dataclass
class Receiver:
    """Collects the alert groups Alertmanager POSTs to it."""

    address: str = ""
    notifications: list[Notification] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.Response:
        payload = await request.json()
        now = time.time()
        for alert in payload["alerts"]:
            self.notifications.append(
                Notification(
                    path=request.path,
                    received=now,
                    status=alert["status"],
                    labels=alert["labels"],
                    annotations=alert["annotations"],
                    starts_at=alert["startsAt"],
                    group_labels=payload["groupLabels"],
                )
            )
        return web.Response(text="ok")

    def firing(self, alertname: str) -> list[Notification]:
        return [n for n in self.notifications if n.status == "firing" and n.labels["alertname"] == alertname]

    def watcher_down(self, instance: str) -> list[Notification]:
        """AzureBackupWatcherDown for that target: its `up == 0` branch, which names the instance."""
        return [n for n in self.firing("AzureBackupWatcherDown") if n.labels.get("instance") == instance]


@asynccontextmanager
async def webhook_receiver() -> AsyncIterator[Receiver]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/{name}", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        receiver.address = f"127.0.0.1:{runner.addresses[0][1]}"
        yield receiver
    finally:
        await runner.cleanup()


async def wait_until(
    what: str, check: Callable[[], Awaitable[bool] | bool], servers: list[Server], within: float = WAIT
) -> float:
    """Poll `check` until it holds; fail naming `what` with the servers' logs. Returns seconds taken."""
    started = time.monotonic()
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return time.monotonic() - started
        dead = [s for s in servers if s.proc.poll() is not None]
        if dead or time.monotonic() - started > within:
            why = f"{', '.join(s.name for s in dead)} exited" if dead else f"not within {within:.0f}s"
            logs = "\n".join(s.tail() for s in servers)
            raise AssertionError(f"{what}: {why}\n{logs}")
        await asyncio.sleep(0.25)


def http_ok(http: aiohttp.ClientSession, url: str) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    return check


@contextmanager
def timed(record_property: Callable[[str, object], None]) -> Iterator[dict[str, float]]:
    """Measure the block; print the figures and put them in the pytest report, also on failure."""
    figures: dict[str, float] = {}
    started = time.monotonic()
    try:
        yield figures
    finally:
        figures["total_seconds"] = time.monotonic() - started
        for key, value in figures.items():
            record_property(f"e2e_{key}", round(value, 1))
        shown = ", ".join(f"{key} {value:.1f}s" for key, value in figures.items())
        print(f"e2e alerting path: {shown}")


# -- the dashboard against this Prometheus --------------------------------------------------------


async def check_dashboard(
    http: aiohttp.ClientSession, prometheus: str, since: float, servers: list[Server]
) -> float:
    """Every panel query is accepted and returns data, but those NO_DATA_HERE lists, which return none;
    every variable offers this estate's values. Returns the seconds it took."""
    started = time.monotonic()
    dashboard = load_dashboard()
    queries = panel_queries(dashboard)
    # Data comes with the watcher's rounds and Prometheus's scrapes: wait for what should come.
    while True:
        window = TimeRange(since, time.time(), scrape_interval=SCRAPE_SECONDS)
        values = all_values(dashboard, window)
        answers = [await run_panel_query(http, prometheus, query, values, window) for query in queries]
        problems = data_problems(answers, NO_DATA_HERE)
        if not problems or time.monotonic() - started > DASHBOARD_WAIT:
            break
        await asyncio.sleep(1)
    assert not problems, (
        f"the dashboard against this estate, after {time.monotonic() - started:.0f}s:\n"
        + "\n".join(problems)
        + "\n"
        + "\n".join(s.tail(10) for s in servers)
    )
    offered = {
        variable.name: set(await variable_values(http, prometheus, variable, values, window))
        for variable in variable_queries(dashboard)
    }
    assert offered == {
        "subscription": {SUB},
        "vault_type": {"recovery_services", "backup_vault"},
        "vault": {VAULT, INVENTORY_VAULT, DISK_VAULT},
        "operation": {"Backup"},
    }
    return time.monotonic() - started


# -- the test -------------------------------------------------------------------------------------


def _epoch(rfc3339: str) -> float:
    """Alertmanager's timestamps (nanoseconds, `Z`) as epoch seconds."""
    trimmed = re.sub(r"(\.\d{6})\d*", r"\1", rfc3339).replace("Z", "+00:00")
    return datetime.fromisoformat(trimmed).timestamp()


def _anchors() -> set[str]:
    headings = re.findall(r"^#{2,3} (.+?)\s*$", RUNBOOKS.read_text(encoding="utf-8"), re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def assert_runbook(annotations: dict[str, str], alertname: str) -> None:
    url = annotations["runbook_url"]
    page, _, anchor = url.partition("#")
    assert page.endswith("/docs/runbooks.md"), url
    assert anchor == alertname.lower(), url
    assert anchor in _anchors(), f"docs/runbooks.md has no section #{anchor}"


def assert_item_alert(note: Notification, alertname: str, entity: str, severity: str, path: str) -> None:
    """An item alert carries the item's labels, the rule's severity and annotations naming it."""
    labels = note.labels
    assert set(labels) == {
        "alertname", "severity", "job", "instance",
        "subscription_id", "resource_group", "vault", "vault_type", "entity", "operation",
    }, labels  # fmt: skip
    assert labels["alertname"] == alertname
    assert labels["severity"] == severity
    vault = (labels["subscription_id"], labels["resource_group"], labels["vault"], labels["vault_type"])
    assert vault == (SUB, RG, VAULT, "recovery_services")
    assert labels["entity"] == entity
    assert labels["operation"] == "Backup"
    assert labels["job"] == JOB
    _assert_route_and_text(note, alertname, entity, VAULT, path)


def assert_inventory_alert(note: Notification, alertname: str, entity: str, severity: str, path: str) -> None:
    """An inventory alert names the item (its name and friendly name, type and policy) and its vault."""
    labels = note.labels
    assert set(labels) == {
        "alertname", "severity", "job", "instance", "subscription_id", "resource_group", "vault",
        "vault_type", "item", "entity", "item_type", "policy",
    }, labels  # fmt: skip
    assert labels["alertname"] == alertname
    assert labels["severity"] == severity
    vault = (labels["subscription_id"], labels["resource_group"], labels["vault"], labels["vault_type"])
    assert vault == (SUB, RG, INVENTORY_VAULT, "recovery_services")
    assert labels["entity"] == entity
    assert labels["item"].endswith(f";{entity}")
    assert labels["item_type"] == "Microsoft.Compute/virtualMachines"
    _assert_route_and_text(note, alertname, entity, INVENTORY_VAULT, path)


def _assert_route_and_text(note: Notification, alertname: str, entity: str, vault: str, path: str) -> None:
    assert note.path == path, f"{alertname} went to {note.path}, not {path}"
    assert note.group_labels == {
        "alertname": alertname,
        "subscription_id": SUB,
        "resource_group": RG,
        "vault": vault,
        "vault_type": "recovery_services",
    }
    summary, description = note.annotations["summary"], note.annotations["description"]
    assert entity in summary, summary
    assert vault in summary, summary
    for needle in (entity, vault, RG, SUB):
        assert needle in description, (needle, description)
    assert_runbook(note.annotations, alertname)


@pytest.mark.e2e
@pytest.mark.timeout(600)
# The timing goes to report.user_properties whatever the JUnit flavour; only xunit1 writes it into
# the XML, and pytest's warning about that must not fail the test under `filterwarnings = error`.
@pytest.mark.filterwarnings("ignore:record_property is incompatible with junit_family:pytest.PytestWarning")
async def test_alerts_reach_the_receiver_dashboard_panels_have_data_and_watcher_down_fires_after_sigterm(
    tmp_path: Path,
    binaries: Binaries,
    cli_env: dict[str, str],
    record_property: Callable[[str, object], None],
) -> None:
    """A failed job, a stale item by its job history, and from a new watcher's first inventory round a stale and a never-backed-up item (not the stopped or healthy ones) reach the receiver; every dashboard query that should have data has data; stopping the watcher fires WatcherDown."""
    fast = fast_rules()
    rules = _rules_by_name(fast)
    with timed(record_property) as figures:
        async with AsyncExitStack() as stack:
            http = await stack.enter_async_context(aiohttp.ClientSession())
            receiver = await stack.enter_async_context(webhook_receiver())
            sim = await start_simulator(scenario(time.time()))
            stack.push_async_callback(sim.close)
            sim.inject(429, path_contains=THROTTLED_PATH)

            watcher_at = f"127.0.0.1:{free_port()}"
            config = _write_yaml(
                tmp_path / "watcher.yaml", watcher_config(sim.url, watcher_at, tmp_path / "state.sqlite3")
            )
            watcher = await stack.enter_async_context(
                running("watcher", cli("run", "--config", str(config)), tmp_path, env=cli_env)
            )
            servers = [watcher]
            figures["watcher_ready"] = await wait_until(
                "the watcher answers /readyz", http_ok(http, f"http://{watcher_at}/readyz"), servers
            )

            am_at = f"127.0.0.1:{free_port()}"
            am_config = _write_yaml(tmp_path / "alertmanager.yml", alertmanager_config(receiver.address))
            (tmp_path / "am-data").mkdir()
            alertmanager = await stack.enter_async_context(
                running(
                    "alertmanager",
                    [
                        binaries.alertmanager,
                        f"--config.file={am_config}",
                        f"--storage.path={tmp_path / 'am-data'}",
                        f"--web.listen-address={am_at}",
                        "--cluster.listen-address=",
                    ],
                    tmp_path,
                )
            )
            servers.append(alertmanager)

            prom_at = f"127.0.0.1:{free_port()}"
            prom_dir = tmp_path / "prometheus"
            prom_dir.mkdir()
            _write_yaml(prom_dir / "alerts.yml", fast)
            prom_config = _write_yaml(prom_dir / "prometheus.yml", prometheus_config(watcher_at, am_at))
            prom_started = time.time()
            prometheus = await stack.enter_async_context(
                running(
                    "prometheus",
                    [
                        binaries.prometheus,
                        f"--config.file={prom_config}",
                        f"--storage.tsdb.path={tmp_path / 'prom-data'}",
                        f"--web.listen-address={prom_at}",
                    ],
                    tmp_path,
                )
            )
            servers.append(prometheus)
            await wait_until("Alertmanager is ready", http_ok(http, f"http://{am_at}/-/ready"), servers)
            await wait_until("Prometheus is ready", http_ok(http, f"http://{prom_at}/-/ready"), servers)

            figures["job_alerts"] = await wait_until(
                "AzureBackupJobFailed and AzureBackupNoRecentSuccess reach the receiver",
                lambda: bool(
                    receiver.firing("AzureBackupJobFailed") and receiver.firing("AzureBackupNoRecentSuccess")
                ),
                servers,
            )
            failed = receiver.firing("AzureBackupJobFailed")
            assert {n.labels["entity"] for n in failed} == {FAILING}
            assert_item_alert(
                failed[0],
                "AzureBackupJobFailed",
                FAILING,
                rules["AzureBackupJobFailed"]["labels"]["severity"],
                "/chat",
            )
            stale = receiver.firing("AzureBackupNoRecentSuccess")
            assert {n.labels["entity"] for n in stale} == {STALE}, (
                "only the item without recent backups is stale"
            )
            assert_item_alert(
                stale[0],
                "AzureBackupNoRecentSuccess",
                STALE,
                rules["AzureBackupNoRecentSuccess"]["labels"]["severity"],
                "/pager",
            )
            assert "1h" in stale[0].annotations["summary"], "the summary gives the item's age"
            figures["inventory_alerts"] = await wait_until(
                "AzureBackupItemNoRecentRecoveryPoint and AzureBackupItemNeverBackedUp reach the receiver",
                lambda: bool(
                    receiver.firing("AzureBackupItemNoRecentRecoveryPoint")
                    and receiver.firing("AzureBackupItemNeverBackedUp")
                ),
                servers,
            )
            # A few more evaluations, so an alert for the stopped or healthy item would have come too.
            await asyncio.sleep(5)
            no_point = receiver.firing("AzureBackupItemNoRecentRecoveryPoint")
            assert {n.labels["entity"] for n in no_point} == {ITEM_STALE}, (
                "only the stale item, not the stopped one"
            )
            assert_inventory_alert(
                no_point[0],
                "AzureBackupItemNoRecentRecoveryPoint",
                ITEM_STALE,
                rules["AzureBackupItemNoRecentRecoveryPoint"]["labels"]["severity"],
                "/pager",
            )
            assert "3d" in no_point[0].annotations["summary"], "the summary gives the item's age"
            never = receiver.firing("AzureBackupItemNeverBackedUp")
            assert {n.labels["entity"] for n in never} == {ITEM_NEVER}
            assert_inventory_alert(
                never[0],
                "AzureBackupItemNeverBackedUp",
                ITEM_NEVER,
                rules["AzureBackupItemNeverBackedUp"]["labels"]["severity"],
                "/pager",
            )
            # The job-history age alert stands aside for items the inventory speaks for: one alert each.
            assert {n.labels["entity"] for n in receiver.firing("AzureBackupNoRecentSuccess")} == {STALE}

            # The rule's `absent()` branch (no instance label) may fire while a fresh Prometheus has not
            # scraped yet; only a failed scrape of the running watcher would be wrong here.
            assert not receiver.watcher_down(watcher_at)

            figures["dashboard"] = await check_dashboard(http, f"http://{prom_at}", prom_started, servers)

            stopped_at = time.time()
            assert await _stop(watcher) == 0, "a SIGTERM shutdown exits 0\n" + watcher.tail()
            servers.remove(watcher)
            figures["watcher_down_after_sigterm"] = await wait_until(
                "AzureBackupWatcherDown reaches the receiver after SIGTERM",
                lambda: bool(receiver.watcher_down(watcher_at)),
                servers,
            )
            down = receiver.watcher_down(watcher_at)[0]
            assert down.labels == {
                "alertname": "AzureBackupWatcherDown",
                "severity": rules["AzureBackupWatcherDown"]["labels"]["severity"],
                "job": JOB,
                "instance": watcher_at,
            }
            assert down.path == "/pager"
            assert _epoch(down.starts_at) >= stopped_at, "WatcherDown started before the watcher stopped"
            assert watcher_at in down.annotations["description"]
            assert JOB in down.annotations["description"]
            assert down.annotations["summary"].strip()
            assert_runbook(down.annotations, "AzureBackupWatcherDown")
