"""The status page over HTTP: what it shows, its filters and paging, the job page, escaping, the off switch.

A real watcher polls the simulator; the page is fetched over loopback and read as a person would read it
(sections by their headings). The browser test (test_browser.py) loads the same kind of page in Chromium.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import SUB, SUB2, FakeClock, make_config, running_watcher, vm_job, wait_for
from watcher import ui
from watcher.app import Watcher
from watcher.azure.models import Job, VaultKind, VaultRef
from watcher.sim import Estate, SimItem, SimJob, Simulator
from watcher.state import Tracker, VaultState
from watcher.store import Store

RG = "rg-ui"
HOSTILE_VAULT = "<script>alert(1)"
HOSTILE_ENTITY = '<img src=x onerror="alert(2)">'
DAY = 86400.0


def _job(
    vault: str, entity: str, *, start: float, duration: float, outcome: str = "Completed", **kw: Any
) -> SimJob:
    kind = kw.pop("kind", "vm")
    job_type, management = {
        "vm": ("AzureIaaSVMJob", "AzureIaasVM"),
        "sql": ("AzureWorkloadJob", "AzureWorkload"),
        "disk": ("Microsoft.Compute/disks", "AzureDisk"),
    }[kind]
    return SimJob(
        subscription_id=kw.pop("subscription_id", SUB),
        resource_group=RG,
        vault=vault,
        job_id=kw.pop("job_id", str(uuid.uuid4())),
        job_type=job_type,
        operation=kw.pop("operation", "Backup"),
        entity=entity,
        backup_management_type=management,
        start=start,
        duration=duration,
        outcome=outcome,
        **kw,
    )


@dataclass
class Page:
    watcher: Watcher
    base: str
    failed_job: str
    hostile_job: str


def _estate(estate: Estate, now: float) -> tuple[str, str]:
    failed = str(uuid.uuid4())
    hostile = str(uuid.uuid4())
    for job in (
        _job("vault-ui", "vm-long", start=now - 5400, duration=7200),
        _job("vault-ui", "vm-done", start=now - 900, duration=300),
        _job(
            "vault-ui",
            "SalesDb [sql-vm]",
            start=now - 1200,
            duration=150,
            outcome="Failed",
            kind="sql",
            operation="Backup (Full)",
            error_code=510008,
            timespan_duration=True,
            job_id=failed,
        ),
        _job(HOSTILE_VAULT, HOSTILE_ENTITY, start=now - 600, duration=60, outcome="Failed", job_id=hostile),
        _job("vault-other", "vm-other", start=now - 300, duration=3600, subscription_id=SUB2),
        _job("bvault-ui", "disk-1", start=now - 700, duration=100, kind="disk", vault_kind="backup_vault"),
    ):
        estate.add(job)
    estate.add_vault(SUB, RG, "bvault-ui", kind="backup_vault")
    recent = (now - 3600,)
    estate.add_item(
        SimItem(SUB, RG, "vault-ui", "vm", "vm-fresh", recovery_points=recent, first_protected=now - DAY)
    )
    estate.add_item(
        SimItem(
            SUB,
            RG,
            "vault-ui",
            "vm",
            "vm-stale",
            recovery_points=(now - 3 * DAY,),
            first_protected=now - 9 * DAY,
        )
    )
    estate.add_item(SimItem(SUB, RG, "vault-ui", "vm", "vm-never", first_protected=now - 600))
    estate.add_item(
        SimItem(
            SUB,
            RG,
            "vault-ui",
            "vm",
            "vm-retired",
            recovery_points=(now - 30 * DAY,),
            first_protected=now - 90 * DAY,
            protection_state="ProtectionStopped",
        )
    )
    estate.add_item(
        SimItem(SUB, RG, "bvault-ui", "disk", "disk-1", recovery_points=recent, first_protected=now - DAY)
    )
    return failed, hostile


def _vault(name: str, subscription: str = SUB, kind: str = "recovery_services") -> dict[str, Any]:
    return {
        "subscription_id": subscription,
        "resource_group": RG,
        "name": name,
        "type": kind,
        "discover": True,
    }


@pytest.fixture
async def page(tmp_path: Path, estate: Estate, clock: FakeClock, sim: Simulator) -> AsyncIterator[Page]:
    failed, hostile = _estate(estate, clock.now)
    # Vaults are found by listing the subscriptions (a name the config would refuse can come from Azure).
    config = make_config(
        sim.url,
        [],
        tmp_path / "s.sqlite3",
        poll={"inventory_interval": 0.5, "vault_discovery_interval": 1},
        discovery={"enabled": True},
        subscriptions=[{"id": SUB}, {"id": SUB2}],
    )
    async with running_watcher(config) as watcher:
        tracker = watcher.tracker
        assert tracker is not None

        def settled() -> bool:
            return (
                watcher.scheduler is not None
                and watcher.scheduler.ready
                and len(tracker.store.jobs()) == 6
                and sum(len(d.inventory) for d in tracker.data.values()) == 5
            )

        await wait_for(settled)
        yield Page(watcher, f"http://127.0.0.1:{watcher.port}", failed, hostile)


async def _get(url: str) -> tuple[int, str, aiohttp.typedefs.LooseHeaders]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.text(), resp.headers


class _Sections(HTMLParser):
    """Text of each <section> by the id of its heading, and every src/href/style seen."""

    def __init__(self) -> None:
        super().__init__()
        self.sections: dict[str, str] = {}
        self.links: list[str] = []
        self.sources: list[str] = []
        self.inline_styles = 0
        self.scripts = 0
        self._current: str | None = None
        self._depth = 0
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "script":
            self.scripts += 1
        if "style" in values:
            self.inline_styles += 1
        if values.get("href"):
            self.links.append(values["href"] or "")
        if values.get("src"):
            self.sources.append(values["src"] or "")
        if tag == "section":
            self._depth += 1
        if tag in ("h1", "h2") and self._depth and values.get("id"):
            self._current = values["id"]
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "section":
            self._depth -= 1
            if self._current is not None:
                self.sections[self._current] = " ".join(" ".join(self._text).split())
                self._current = None

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._text.append(data)


def _names(text: str, name: str) -> bool:
    """Whether `name` appears in `text` as a whole name (vault-ui is not in bvault-ui)."""
    return re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text) is not None


def _read(html: str) -> _Sections:
    parsed = _Sections()
    parsed.feed(html)
    return parsed


async def test_the_page_shows_the_estate_at_a_glance(page: Page) -> None:
    """Health, both vault kinds, the running job with its age, the failure with Azure's error code and a
    runbook link, the stale and the never-backed-up item (not the fresh or the stopped one)."""
    status, html, headers = await _get(page.base + "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert '<meta http-equiv="refresh" content="30">' in html
    parsed = _read(html)
    assert "vaults polled in the last 3 intervals" in html
    assert "Recovery Services vaults" in parsed.sections["kinds"]
    assert "Backup vaults" in parsed.sections["kinds"]
    running = parsed.sections["running"]
    assert "vm-long" in running
    assert "vm-other" in running
    assert "vm-done" not in running
    assert "1h 30m" in running  # started 5400 s ago (the page reads the simulated clock's time)
    failures = parsed.sections["failures"]
    assert "SalesDb [sql-vm]" in failures
    assert (
        "510008 OperationCancelledBecauseConflictingOperationRunningUserError Operation cancelled" in failures
    )
    assert f"{ui.RUNBOOKS}#azurebackupjobfailed" in parsed.links
    items = parsed.sections["items"]
    assert "vm-stale" in items
    assert "vm-never" in items
    assert "never backed up" in items
    assert "vm-fresh" not in items
    assert "vm-retired" not in items
    for path in ("/metrics", "/api/jobs", f"/jobs/{page.failed_job}"):
        assert path in parsed.links


async def test_nothing_from_azure_reaches_the_page_as_markup(page: Page) -> None:
    """A vault called `<script>...` and an entity holding an <img onerror> are shown as text; the page
    has no script, no inline style, and loads nothing from elsewhere."""
    _status, html, _headers = await _get(page.base + "/")
    assert "&lt;script&gt;alert(1)" in html
    assert "<script" not in html
    assert "&lt;img src=x onerror=&#34;alert(2)&#34;&gt;" in html
    assert "<img" not in html
    parsed = _read(html)
    assert parsed.scripts == 0
    assert parsed.inline_styles == 0
    assert parsed.sources == []
    external = [link for link in parsed.links if re.match(r"(?i)^[a-z]+:", link)]
    assert all(link.startswith(ui.RUNBOOKS) or link == "data:," for link in external), external
    css_status, css, css_headers = await _get(page.base + "/static/watcher.css")
    assert css_status == 200
    assert css_headers["Content-Type"].startswith("text/css")
    assert "prefers-color-scheme: dark" in css
    assert "url(" not in css  # no fonts or images fetched


@pytest.mark.parametrize(
    ("query", "shown", "hidden"),
    [
        ("vault=VAULT-UI", {"vault-ui"}, {"vault-other", "bvault-ui"}),
        (f"subscription={SUB2}", {"vault-other"}, {"vault-ui", "bvault-ui"}),
        ("vault_type=backup_vault", {"bvault-ui"}, {"vault-ui", "vault-other"}),
    ],
)
async def test_filters_narrow_every_section(
    page: Page, query: str, shown: set[str], hidden: set[str]
) -> None:
    _status, html, _headers = await _get(f"{page.base}/?{query}")
    vaults = _read(html).sections["vaults"]
    for name in shown:
        assert _names(vaults, name)
    for name in hidden:
        assert not _names(vaults, name)
        assert f">{name}<" not in html


async def test_a_status_filter_lists_those_jobs_and_bad_values_are_named(page: Page) -> None:
    _status, html, _headers = await _get(f"{page.base}/?status=failed")
    listed = _read(html).sections["listed"]
    assert "SalesDb [sql-vm]" in listed
    assert "vm-done" not in listed
    assert "Jobs with status Failed" in listed
    _status, html, _headers = await _get(f"{page.base}/?status=Exploded&vault_type=storage&page=x")
    assert "Ignored: status &#39;Exploded&#39; is not one of" in html
    assert "Ignored: vault type &#39;storage&#39;" in html
    assert "listed" not in _read(html).sections


async def test_vaults_are_paged_problems_first(page: Page, monkeypatch: pytest.MonkeyPatch) -> None:
    """With more vaults than a page holds, the troubled ones come first and the rest are a link away."""
    monkeypatch.setattr(ui, "VAULT_PAGE", 2)
    _status, first, _headers = await _get(page.base + "/")
    parsed = _read(first)
    assert "4, 1\u20132 shown, problems first" in parsed.sections["vaults"]
    assert "/?page=2" in parsed.links
    assert _names(parsed.sections["vaults"], "vault-ui")  # a failure and stale items put it first
    _status, second, _headers = await _get(page.base + "/?page=2")
    names = {"vault-ui", "vault-other", "bvault-ui", "<script>alert(1)"}
    on_first = {n for n in names if _names(_read(first).sections["vaults"], n)}
    on_second = {n for n in names if _names(_read(second).sections["vaults"], n)}
    assert on_first | on_second == names
    assert not on_first & on_second


async def test_a_job_page_has_its_transitions_errors_and_the_track_command(page: Page) -> None:
    status, html, _headers = await _get(f"{page.base}/jobs/{page.failed_job}")
    assert status == 200
    parsed = _read(html)
    assert "OperationCancelledBecauseConflictingOperationRunningUserError" in html
    assert "Please try again after sometime." in html  # Azure's recommendation
    assert re.search(r"\(first seen\)\s*</td><td><span class=\"status s-Failed\">Failed", html)
    command = (
        f"backup-watcher track --config config.yaml --vault-id /subscriptions/{SUB}/resourceGroups/{RG}"
        f"/providers/Microsoft.RecoveryServices/vaults/vault-ui --job-id {page.failed_job}"
    )
    assert command in html
    assert f"{ui.RUNBOOKS}#azurebackupjobfailed" in parsed.links
    # The id matches in any case; an unknown id is a 404 page, not an error.
    assert (await _get(f"{page.base}/jobs/{page.failed_job.upper()}"))[0] == 200
    missing_status, missing, _headers = await _get(f"{page.base}/jobs/00000000-0000-0000-0000-000000000000")
    assert missing_status == 404
    assert "no job with this id on record" in missing


async def test_the_track_command_of_a_hostile_vault_is_quoted_for_the_shell(page: Page) -> None:
    _status, html, _headers = await _get(f"{page.base}/jobs/{page.hostile_job}")
    assert "--vault-id &#39;/subscriptions/" in html
    assert "/vaults/&lt;script&gt;alert(1)&#39; --job-id" in html
    assert "<script" not in html


async def test_the_page_can_be_turned_off(tmp_path: Path, sim: Simulator) -> None:
    """`http.ui: false`: / lists the endpoints as plain text, the job page and stylesheet are 404."""
    config = make_config(sim.url, [_vault("vault-ui")], tmp_path / "s.sqlite3", http={"ui": False})
    async with running_watcher(config) as watcher:
        base = f"http://127.0.0.1:{watcher.port}"
        status, text, headers = await _get(base + "/")
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        assert "/metrics" in text
        assert "<" not in text
        assert (await _get(base + "/jobs/anything"))[0] == 404
        assert (await _get(base + "/static/watcher.css"))[0] == 404


def test_human_durations() -> None:
    assert [ui.human_seconds(s) for s in (5, 75, 3600 + 300, 3 * DAY + 7200, None, -3)] == [
        "5s",
        "1m 15s",
        "1h 05m",
        "3d 2h",
        "-",
        "0s",
    ]


def test_the_last_days_failures_in_memory_match_the_store_as_jobs_end(tmp_path: Path) -> None:
    """The page counts the last day's failures and warnings per vault in memory (read from the store
    once, then told of each job that ends): at every step the counts equal the store's own."""
    clock = FakeClock(1_800_000_000.0)
    vaults = (VaultRef(SUB, RG, "vault-a"), VaultRef(SUB, RG, "vault-b", VaultKind.BACKUP_VAULT))

    def job(vault: VaultRef, job_id: str, status: str, ended_ago: float | None) -> Job:
        end = None if ended_ago is None else clock.now - ended_ago
        return vm_job(vault, job_id, status, clock.now - 7 * 86400, end)

    store = Store.open(tmp_path / "s.sqlite3")
    try:
        tracker = Tracker(store, clock=clock)
        tracker.set_vaults([VaultState(ref=ref, discover=True) for ref in vaults])
        a, b = vaults
        tracker.observe(a, job(a, "old-fail", "Failed", 2 * 86400))  # before the window
        tracker.observe(a, job(a, "fail-1", "Failed", 3600))
        tracker.observe(b, job(b, "warn-1", "CompletedWithWarnings", 600))
        tracker.observe(b, job(b, "running", "InProgress", None))
        recent = ui.RecentOutcomes(tracker, ui.RECENT_SECONDS)

        def truth() -> dict[tuple[str, str], int]:
            return store.outcome_counts(ui.OUTCOMES, clock.now - ui.RECENT_SECONDS)

        assert (
            recent.counts(clock.now - ui.RECENT_SECONDS)
            == truth()
            == {
                (a.key, "Failed"): 1,
                (b.key, "CompletedWithWarnings"): 1,
            }
        )
        clock.advance(60)
        tracker.observe(b, job(b, "running", "Failed", 1))  # a followed job ends failed
        tracker.observe(a, job(a, "late", "Failed", 3 * 86400))  # found late, ended long ago
        tracker.observe(a, job(a, "fail-1", "Failed", 3660))  # seen again: counted once
        assert (
            recent.counts(clock.now - ui.RECENT_SECONDS)
            == truth()
            == {
                (a.key, "Failed"): 1,
                (b.key, "CompletedWithWarnings"): 1,
                (b.key, "Failed"): 1,
            }
        )
        clock.advance(ui.RECENT_SECONDS - 3000)  # fail-1 (ended 3660 s before) leaves the day
        assert (
            recent.counts(clock.now - ui.RECENT_SECONDS)
            == truth()
            == {
                (b.key, "CompletedWithWarnings"): 1,
                (b.key, "Failed"): 1,
            }
        )
        recent.detach()
        assert recent.changed not in tracker.listeners
    finally:
        store.close()
