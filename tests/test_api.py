"""/api/jobs over HTTP: pages that join up without gaps or repeats, filters, and clear 400s."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from prometheus_client import CollectorRegistry

from tests.conftest import FakeClock, vm_job
from watcher.azure.models import VaultKind, VaultRef
from watcher.metrics import Metrics
from watcher.state import Tracker, VaultState
from watcher.store import Store
from watcher.web import create_app

SUB_A = "00000000-0000-4000-8000-0000000000a1"
SUB_B = "00000000-0000-4000-8000-0000000000b2"
VAULTS = (
    VaultRef(SUB_A, "rg-api", "vault-one"),
    VaultRef(SUB_A, "rg-api", "vault-two", VaultKind.BACKUP_VAULT),
    VaultRef(SUB_B, "rg-api", "vault-three"),
)
GONE = VaultRef(SUB_B, "rg-api", "vault-gone")
STATUSES = ("Completed", "Failed", "InProgress", "CompletedWithWarnings")


@pytest.fixture
def tracker(tmp_path: Path) -> Iterator[Tracker]:
    """250 jobs over three watched vaults (some sharing a start time, one never started) and a vault no
    longer watched."""
    clock = FakeClock(float(int(time.time())))  # whole seconds: "since=10h" meets the 10 h old jobs exactly
    tracker = Tracker(Store.open(tmp_path / "s.sqlite3"), clock=clock)
    now = clock()
    tracker.set_vaults([VaultState(ref=ref, discover=True) for ref in (*VAULTS, GONE)])
    for n in range(250):
        vault = VAULTS[n % 3]
        status = STATUSES[n % 4]
        start = now - 3600 * (n // 2)  # pairs share a start time: the cursor must still order them
        end = start + 60 if status != "InProgress" else None
        tracker.observe(vault, vm_job(vault, f"job-{n:03d}", status, start, end))
    tracker.observe(VAULTS[0], vm_job(VAULTS[0], "never-started", "InProgress", None, None))
    tracker.observe(GONE, vm_job(GONE, "gone-1", "Failed", now - 60, now - 30))
    tracker.set_vaults([VaultState(ref=ref, discover=True) for ref in VAULTS])
    yield tracker
    tracker.store.close()


@pytest.fixture
async def base(tracker: Tracker) -> AsyncIterator[str]:
    metrics = Metrics(CollectorRegistry(), "test")
    metrics.watch(tracker)
    app = create_app(
        render=metrics.body,
        healthy=lambda: True,
        ready=lambda: True,
        jobs=tracker.api_jobs,
        clock=tracker.clock,
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    await runner.cleanup()


async def _get(url: str) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status, await resp.json()


async def _all_pages(base: str, query: str) -> list[dict[str, Any]]:
    jobs: list[dict[str, Any]] = []
    url: str | None = f"{base}/api/jobs?{query}"
    pages = 0
    while url is not None:
        status, body = await _get(url)
        assert status == 200, body
        assert body["count"] == len(body["jobs"])
        jobs.extend(body["jobs"])
        url = f"{base}{body['next']}" if body["next"] else None
        pages += 1
        assert pages < 100
    return jobs


def _start(job: dict[str, Any]) -> float:
    return datetime.fromisoformat(job["start_time"]).timestamp() if job["start_time"] else -1.0


async def test_pages_join_up_newest_first_without_gaps_or_repeats(base: str) -> None:
    """Pages of 7 cover every job of the watched vaults exactly once, newest start first, the job that
    never started last; jobs of a vault no longer watched are not listed."""
    jobs = await _all_pages(base, "limit=7")
    ids = [j["job_id"] for j in jobs]
    assert len(ids) == len(set(ids)) == 251
    assert "gone-1" not in ids
    assert ids[-1] == "never-started"
    starts = [_start(j) for j in jobs]
    assert starts == sorted(starts, reverse=True)
    status, first = await _get(f"{base}/api/jobs")
    assert status == 200
    assert first["count"] == 100
    assert first["next_cursor"]


async def test_a_page_carries_each_jobs_transitions(base: str) -> None:
    status, body = await _get(f"{base}/api/jobs?vault=vault-one&status=Completed&limit=1")
    assert status == 200
    (job,) = body["jobs"]
    assert [t["to_status"] for t in job["transitions"]] == ["Completed"]
    assert job["vault"] == "vault-one"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("vault=VAULT-ONE", lambda j: j["vault"] == "vault-one"),
        ("status=failed", lambda j: j["status"] == "Failed"),
        ("vault_type=backup_vault", lambda j: j["vault_type"] == "backup_vault"),
        (f"subscription={SUB_B}", lambda j: j["subscription_id"] == SUB_B),
        (
            "vault=vault-two&status=InProgress",
            lambda j: j["vault"] == "vault-two" and j["status"] == "InProgress",
        ),
    ],
)
async def test_filters_return_exactly_the_matching_jobs(
    base: str, tracker: Tracker, query: str, expected: Any
) -> None:
    """Each filter (case-insensitive, as Azure's names are) returns all matching jobs and no others."""
    everything = await _all_pages(base, "limit=1000")
    wanted = {j["job_id"] for j in everything if expected(j)}
    assert wanted
    got = await _all_pages(base, f"{query}&limit=9")
    assert {j["job_id"] for j in got} == wanted
    assert len(got) == len(wanted)


async def test_since_takes_a_duration_an_iso_time_or_unix_seconds(base: str, tracker: Tracker) -> None:
    now = tracker.clock()
    everything = await _all_pages(base, "limit=1000")
    ten_hours = {j["job_id"] for j in everything if _start(j) >= now - 36000.5}
    assert len(ten_hours) == 22  # two jobs started at each of now, 1h ago ... 10h ago
    assert {j["job_id"] for j in await _all_pages(base, "since=10h")} == ten_hours
    iso = datetime.fromtimestamp(now - 36000.5, UTC).isoformat().replace("+00:00", "Z")
    assert {j["job_id"] for j in await _all_pages(base, f"since={iso}")} == ten_hours
    assert {j["job_id"] for j in await _all_pages(base, f"since={now - 36000.5:.3f}")} == ten_hours


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("limit=ten", "limit"),
        ("since=yesterday", "since"),
        ("since=2026-11-29T10:00:00", "zone"),
        ("vault_type=storage", "vault_type"),
        ("cursor=bm90LWEtY3Vyc29y", "cursor"),
        ("cursor=%%%", "cursor"),
        ("page=2", "page"),
    ],
)
async def test_a_bad_query_is_a_400_naming_what_is_wrong(base: str, query: str, names: str) -> None:
    status, body = await _get(f"{base}/api/jobs?{query}")
    assert status == 400
    assert names in body["error"]
