"""Backup vaults (Microsoft.DataProtection): every real job body parses as Microsoft's SDK reads it, every
status spelling maps, and the provider lists, refreshes and follows jobs the way the service allows."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from tests import estate_corpus
from tests.conftest import SUB, TOKEN_ENV, FakeClock, cli, make_config, running_watcher, wait_for
from watcher.app import AzureSide, build_azure
from watcher.azure import dataprotection, recoveryservices
from watcher.azure.models import FINAL_STATUSES, SUCCESS_STATUSES, RunningJob, VaultKind, VaultRef
from watcher.azure.ratelimit import SubscriptionLimiter
from watcher.sim import BACKUP_VAULT, Estate, SimItem, SimJob, Simulator

RG = "rg-bv"
BV = VaultRef(SUB, RG, "bvault-a", VaultKind.BACKUP_VAULT)
DISKS = "Microsoft.Compute/disks"

sdk_models = pytest.importorskip(
    "azure.mgmt.dataprotection.models",
    reason="the official SDK azure-mgmt-dataprotection (a test extra) is not installed",
)

DP_JOBS = estate_corpus.bodies(estate_corpus.is_backup_vault_job)
RS_JOBS = estate_corpus.bodies(estate_corpus.is_recovery_services_job)

# What the service and its specs call a status, and what the product calls it.
SPELLINGS = {
    "InProgress": "InProgress",
    "Started": "InProgress",
    "Cancelling": "Cancelling",
    "Paused": "Paused",
    "Completed": "Completed",
    "Succeeded": "Completed",
    "Success": "Completed",
    "CompletedWithWarnings": "CompletedWithWarnings",
    "SuccessWithWarning": "CompletedWithWarnings",
    "Failed": "Failed",
    "Cancelled": "Cancelled",
    "Canceled": "Cancelled",
}


def test_every_job_in_the_estate_corpus_is_found() -> None:
    """Each `"operationCategory":` in the corpus is a Backup vault job the loader finds; each `"jobType":` a Recovery Services one."""
    assert len(DP_JOBS) == estate_corpus.key_occurrences("operationCategory") >= 8
    assert len(RS_JOBS) == estate_corpus.key_occurrences("jobType") >= 3


@pytest.mark.parametrize(("ident", "body"), estate_corpus.params(DP_JOBS))
def test_backup_vault_job_agrees_with_the_official_sdk(ident: str, body: dict[str, Any]) -> None:
    """Status, operation, job type, entity, item, start and end read as azure-mgmt-dataprotection reads them."""
    ours = dataprotection.parse_job(body)
    theirs = sdk_models.AzureBackupJobResource(body).properties
    assert ours.status == SPELLINGS[theirs.status]
    assert ours.operation == theirs.operation_category
    assert ours.job_type == theirs.data_source_type
    assert ours.entity == theirs.backup_instance_friendly_name
    assert ours.item == theirs.backup_instance_id.rsplit("/", 1)[-1]
    assert ours.start_time == theirs.start_time
    end = theirs.end_time
    assert ours.end_time == (end if end is not None and end.year >= 2002 else None)
    assert ours.vault is not None
    assert ours.vault.kind is VaultKind.BACKUP_VAULT
    assert ours.vault.name.lower() == theirs.vault_name.lower()
    assert ours.is_final == (ours.status in FINAL_STATUSES)


@pytest.mark.parametrize(("ident", "body"), estate_corpus.params(RS_JOBS))
def test_recovery_services_jobs_of_the_estate_corpus_parse(ident: str, body: dict[str, Any]) -> None:
    """The Recovery Services jobs recorded beside protected items parse, a VM job with its container."""
    job = recoveryservices.parse_job(body)
    assert job.status in FINAL_STATUSES | {"InProgress"}
    assert job.start_time is not None
    if job.job_type == "AzureIaaSVMJob":
        assert job.container.lower().startswith("iaasvmcontainerv2;")


@pytest.mark.parametrize(("raw", "want"), sorted(SPELLINGS.items()))
def test_every_known_status_spelling_maps(raw: str, want: str) -> None:
    """Live, spec and older spellings map onto the product's statuses, in any letter case."""
    for text in (raw, raw.lower(), raw.upper()):
        assert _status_of(text) == want


def test_an_unknown_status_is_its_own_state_never_a_success_and_logged_once() -> None:
    """`Frobnicating` stays as sent, is neither final nor a success, and is logged once however often it comes."""
    with capture_logs() as logs:
        statuses = {_status_of("Frobnicating") for _ in range(3)}
    assert statuses == {"Frobnicating"}
    assert not statuses & (FINAL_STATUSES | SUCCESS_STATUSES)
    unknown = [e for e in logs if e["event"] == "unknown_job_status"]
    assert [(e["provider"], e["status"]) for e in unknown] == [("backup_vault", "Frobnicating")]


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [("PT3M34.6372013S", 214.6372013), ("00:03:39.7214322", 219.7214322), ("PT0S", 0.0), ("00:00:00", 0.0)],
)
def test_durations_in_both_encodings(duration: str, seconds: float) -> None:
    """ISO 8601 and .NET TimeSpan durations both read; a running job's PT0S is zero."""
    job = dataprotection.parse_job(_body(status="InProgress", duration=duration))
    assert job.duration_seconds == pytest.approx(seconds)


def test_a_failed_job_keeps_its_error_code_message_and_recommendation() -> None:
    """errorDetails' code, message and recommendedAction (a list, or a plain text) become the job's errors."""
    errors = [
        {
            "code": "UserErrorDiskBackupDiskOrMSIPermissionsNotPresent",
            "message": "no access",
            "recommendedAction": ["Grant"],
        },
        {"code": "X", "message": "y", "recommendedAction": "Retry"},
    ]
    job = dataprotection.parse_job(_body(status="Failed", errorDetails=errors))
    assert [(e.code, e.message, e.recommendations) for e in job.errors] == [
        ("UserErrorDiskBackupDiskOrMSIPermissionsNotPresent", "no access", ("Grant",)),
        ("X", "y", ("Retry",)),
    ]


# -- the provider against the simulator ----------------------------------------------------------


def _status_of(raw: str) -> str:
    return dataprotection.parse_job(_body(status=raw)).status


def _body(**props: Any) -> dict[str, Any]:
    base = {
        "operationCategory": "Backup",
        "operation": "Backup",
        "dataSourceType": DISKS,
        "backupInstanceFriendlyName": "disk-1",
        "backupInstanceId": f"{BV.arm_id}/backupInstances/disk-1-instance",
        "startTime": "2026-05-17T20:46:16.1764818Z",
        "status": "InProgress",
    }
    return {"id": f"{BV.arm_id}/backupJobs/job-1", "name": "job-1", "properties": base | props}


def _dp_job(clock: FakeClock, n: int, *, ago: float, duration: float, outcome: str = "Completed") -> SimJob:
    return SimJob(
        subscription_id=SUB,
        resource_group=RG,
        vault=BV.name,
        job_id=f"00000000-0000-4000-b000-{n:012d}",
        job_type=DISKS,
        operation="Backup",
        entity=f"disk-{n}",
        backup_management_type="",
        start=clock.now - ago,
        duration=duration,
        outcome=outcome,
        vault_kind=BACKUP_VAULT,
    )


@pytest.fixture
async def side(sim: Simulator, estate: Estate, tmp_path: Path) -> Any:
    estate.add_vault(SUB, RG, BV.name, kind=BACKUP_VAULT)
    config = make_config(
        sim.url,
        [
            {
                "subscription_id": SUB,
                "resource_group": RG,
                "name": BV.name,
                "type": "backup_vault",
                "discover": True,
            }
        ],
        tmp_path / "s.sqlite3",
    )
    azure: AzureSide = build_azure(config, None, SubscriptionLimiter())
    try:
        yield azure
    finally:
        await azure.close()


async def test_discovery_reads_the_whole_listing_without_a_filter_and_keeps_its_window(
    side: AzureSide, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """450 jobs over three pages (oldest first): all pages are read, no $filter is sent, only the window's jobs come back."""
    sim.page_size = 200
    for n in range(450):
        estate.add(_dp_job(clock, n, ago=86400 - n * 100, duration=60))
    since, until = clock.now - 86400 + 300 * 100 - 1, clock.now
    found = [job async for page in side.api.jobs_since(BV, since, until) for job in page.jobs]
    listings = [r for r in sim.requests if r.path.lower().endswith("/backupjobs")]
    assert len(listings) == 3
    assert not any("$filter" in r.query for r in listings)
    assert sorted(int(j.job_id[-12:]) for j in found) == list(range(300, 450))
    assert {j.vault for j in found} == {BV}


async def test_running_jobs_are_listed_only_where_that_saves_requests(
    side: AzureSide, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """Two running jobs and a one-page listing: a listing beats two GETs; one running job: no listing."""
    jobs = [estate.add(_dp_job(clock, n, ago=60, duration=3600)) for n in range(2)]
    running = [RunningJob(j.job_id, j.start) for j in jobs]
    assert await side.api.still_running(BV, running, 3600, clock.now) is None  # no listing seen yet
    [p async for p in side.api.jobs_since(BV, clock.now - 86400, clock.now)]
    assert await side.api.still_running(BV, running[:1], 3600, clock.now) is None
    listed = await side.api.still_running(BV, running, 3600, clock.now)
    assert listed is not None
    still, rejected = listed
    assert sorted(still) == sorted(j.job_id.lower() for j in jobs)
    assert rejected == []


async def test_the_watcher_follows_a_backup_vault_job_to_its_end(
    sim: Simulator, estate: Estate, clock: FakeClock, tmp_path: Path
) -> None:
    """A named Backup vault discovers its jobs; one ends and is counted once under vault_type="backup_vault"."""
    estate.add_vault(SUB, RG, BV.name, kind=BACKUP_VAULT)
    job = estate.add(_dp_job(clock, 1, ago=60, duration=90, outcome="Failed"))
    config = make_config(
        sim.url,
        [
            {
                "subscription_id": SUB,
                "resource_group": RG,
                "name": BV.name,
                "type": "backup_vault",
                "discover": True,
            }
        ],
        tmp_path / "s.sqlite3",
    )
    async with running_watcher(config) as watcher:
        assert watcher.tracker is not None
        tracker = watcher.tracker

        def status() -> str | None:
            tj = tracker.known(BV, job.job_id)
            return tj.status if tj is not None else None

        await wait_for(lambda: status() == "InProgress")
        clock.advance(60)
        await wait_for(lambda: status() == "Failed")
        labels = {
            "subscription_id": SUB,
            "resource_group": RG,
            "vault": BV.name,
            "vault_type": "backup_vault",
            "operation": "Backup",
            "job_type": DISKS,
            "status": "Failed",
        }
        assert watcher.registry.get_sample_value("azure_backup_jobs_finished_total", labels) == 1.0
        tj = tracker.known(BV, job.job_id)
        assert tj is not None
        assert tj.detail["errors"][0]["code"]


# -- track ---------------------------------------------------------------------------------------


def _track_config(sim: Simulator, tmp_path: Path) -> str:
    path = tmp_path / "track.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "azure": {
                    "management_endpoint": sim.url,
                    "credential": "static_token",
                    "static_token_env": TOKEN_ENV,
                },
                "poll": {"request_timeout": "5s", "backoff_initial": "0.05s", "backoff_max": "0.5s"},
                "store": {"path": str(tmp_path / "unused.db")},
            }
        )
    )
    return str(path)


async def _run(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        *cli(*args), env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_track_follows_a_backup_vault_job_by_vault_id_and_job_id(
    sim: Simulator, estate: Estate, clock: FakeClock, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """`track --vault-id <Backup vault id> --job-id` follows the job to Failed and exits 4."""
    estate.add_vault(SUB, RG, BV.name, kind=BACKUP_VAULT)
    job = estate.add(_dp_job(clock, 7, ago=30, duration=20, outcome="Failed"))
    code, out, err = await _run(
        "track",
        "--config",
        _track_config(sim, tmp_path),
        "--vault-id",
        BV.arm_id,
        "--job-id",
        job.job_id,
        "--interval",
        "0.2s",
        env=cli_env,
    )
    assert code == 4, (out, err)
    assert "Failed" in out


async def test_track_follows_the_job_a_backup_vault_operation_names_by_its_arm_id(
    sim: Simulator, estate: Estate, clock: FakeClock, tmp_path: Path, cli_env: dict[str, str]
) -> None:
    """POST .../backupInstances/{bi}/backup: its Azure-AsyncOperation, and its location-scoped Location, both lead to the job."""
    import aiohttp

    estate.add_vault(SUB, RG, BV.name, kind=BACKUP_VAULT)
    item = SimItem(SUB, RG, BV.name, "disk", "disk-9", first_protected=clock.now - 86400)
    estate.add_item(item)
    url = f"{sim.url}{BV.arm_id}/backupInstances/{item.arm_name}/backup?api-version=2025-09-01"
    headers = {"Authorization": f"Bearer {cli_env[TOKEN_ENV]}"}
    config = _track_config(sim, tmp_path)
    for header in ("Azure-AsyncOperation", "Location"):
        async with aiohttp.ClientSession() as http, http.post(url, headers=headers, json={}) as resp:
            assert resp.status == 202
            operation = resp.headers[header]
        clock.advance(3600)  # the operation, then its job, have ended
        code, out, err = await _run(
            "track", "--config", config, "--operation-url", operation, "--json", env=cli_env
        )
        assert code == 0, (header, out, err)
        done = [line for line in out.splitlines() if '"event":"done"' in line]
        assert done
        assert re.search(r'"status":"Completed"', done[-1])
