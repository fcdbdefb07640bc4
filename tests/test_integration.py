"""The simulator and the watcher together on loopback: what a user sees on /metrics, /api/jobs and in the logs."""

from __future__ import annotations

import time
from pathlib import Path

import aiohttp
import structlog
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import SUB, SUB2, every_job, make_config, running_watcher, wait_for
from watcher.sim import Estate, SimJob, start_simulator

RG = "rg-int"


def _job(n: int, vault: str, outcome: str, *, total: float, ends_in: float, **kw: object) -> SimJob:
    now = time.time()
    sub = SUB2 if vault == "vault-b" else SUB
    defaults: dict[str, object] = {
        "job_type": "AzureIaaSVMJob",
        "operation": "Backup",
        "entity": f"vm-{n:02d}",
        "backup_management_type": "AzureIaasVM",
        "size_mb": 100 * n,
    }
    defaults.update(kw)
    return SimJob(
        subscription_id=sub,
        resource_group=RG,
        vault=vault,
        job_id=f"00000000-0000-4000-8000-{n:012d}",
        start=now + ends_in - total,
        duration=total,
        outcome=outcome,
        **defaults,  # type: ignore[arg-type]
    )


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out.setdefault(sample.name, []).append((sample.labels, sample.value))
    return out


async def test_jobs_end_to_end(tmp_path: Path) -> None:
    """After the scripted jobs end, /metrics has exact counts, right buckets, no running series, one event per change."""
    estate = Estate()
    jobs = [
        _job(1, "vault-a", "Completed", total=30, ends_in=0.6),  # bucket le=60
        _job(2, "vault-a", "Completed", total=200, ends_in=0.9),  # le=300
        _job(3, "vault-a", "CompletedWithWarnings", total=1000, ends_in=1.2),  # le=1800
        _job(4, "vault-a", "Failed", total=4000, ends_in=0.8, error_code=400136),  # le=7200
        _job(
            5,
            "vault-a",
            "Completed",
            total=50,
            ends_in=1.0,
            job_type="AzureWorkloadJob",
            operation="Backup (Full)",
            entity="SalesDb [sql-vm-01]",
            backup_management_type="AzureWorkload",
            timespan_duration=True,
        ),
        _job(6, "vault-b", "Failed", total=100, ends_in=0.7),  # le=300
        _job(7, "vault-b", "Cancelled", total=500, ends_in=1.1),  # le=900
    ]
    for job in jobs:
        estate.add(job)
    sim = await start_simulator(estate)
    config = make_config(
        sim.url,
        [
            {
                "subscription_id": SUB,
                "resource_group": RG,
                "name": "vault-a",
                "jobs": [j.job_id for j in jobs if j.vault == "vault-a"],
            },
            # vault-b names no jobs: discovery finds them.
            {"subscription_id": SUB2, "resource_group": RG, "name": "vault-b", "discover": True},
        ],
        tmp_path / "state.sqlite3",
    )
    try:
        with structlog.testing.capture_logs() as logs:
            async with running_watcher(config) as watcher:
                assert watcher.tracker is not None
                tracker = watcher.tracker
                await wait_for(
                    lambda: (
                        len(every_job(tracker)) == 7
                        and all(tj.state == "final" for tj in every_job(tracker).values())
                    )
                )
                async with aiohttp.ClientSession() as http:
                    base = f"http://127.0.0.1:{watcher.port}"
                    async with http.get(f"{base}/metrics") as resp:
                        assert resp.status == 200
                        text = await resp.text()
                    async with http.get(f"{base}/api/jobs") as resp:
                        api = await resp.json()
                    async with http.get(f"{base}/healthz") as resp:
                        assert resp.status == 200
                    async with http.get(f"{base}/readyz") as resp:
                        assert resp.status == 200
    finally:
        await sim.close()

    samples = _samples(text)
    finished = {
        (labels["vault"], labels["operation"], labels["job_type"], labels["status"]): value
        for labels, value in samples["azure_backup_jobs_finished_total"]
        if value
    }
    assert finished == {
        ("vault-a", "Backup", "AzureIaaSVMJob", "Completed"): 2,
        ("vault-a", "Backup", "AzureIaaSVMJob", "CompletedWithWarnings"): 1,
        ("vault-a", "Backup", "AzureIaaSVMJob", "Failed"): 1,
        ("vault-a", "Backup", "AzureWorkloadJob", "Completed"): 1,
        ("vault-b", "Backup", "AzureIaaSVMJob", "Failed"): 1,
        ("vault-b", "Backup", "AzureIaaSVMJob", "Cancelled"): 1,
    }

    # Each job lands in the first bucket at or above its start-to-end duration.
    buckets = {
        (labels["job_type"], labels["status"], labels["le"]): value
        for labels, value in samples["azure_backup_job_duration_seconds_bucket"]
    }
    assert buckets[("AzureIaaSVMJob", "Completed", "60.0")] == 1
    assert buckets[("AzureIaaSVMJob", "Completed", "300.0")] == 2
    assert buckets[("AzureIaaSVMJob", "CompletedWithWarnings", "900.0")] == 0
    assert buckets[("AzureIaaSVMJob", "CompletedWithWarnings", "1800.0")] == 1
    assert buckets[("AzureIaaSVMJob", "Failed", "60.0")] == 0
    assert buckets[("AzureIaaSVMJob", "Failed", "300.0")] == 1  # vault-b's 100 s failure
    assert buckets[("AzureIaaSVMJob", "Failed", "3600.0")] == 1
    assert buckets[("AzureIaaSVMJob", "Failed", "7200.0")] == 2
    assert buckets[("AzureWorkloadJob", "Completed", "60.0")] == 1
    assert buckets[("AzureIaaSVMJob", "Cancelled", "900.0")] == 1
    counts = {
        (labels["job_type"], labels["status"]): value
        for labels, value in samples["azure_backup_job_duration_seconds_count"]
    }
    assert sum(counts.values()) == 7

    assert "azure_backup_job_running_start_timestamp_seconds" not in samples
    watched = {
        (labels["vault"], labels["status"]): value for labels, value in samples["azure_backup_jobs_watched"]
    }
    assert watched[("vault-a", "InProgress")] == 0
    assert watched[("vault-a", "Completed")] == 3
    assert watched[("vault-b", "Failed")] == 1

    # Per-item gauges: the SQL item's operation is normalised, its size came from the propertyBag.
    success = {
        (labels["entity"], labels["operation"]): value
        for labels, value in samples["azure_backup_last_job_status_success"]
    }
    assert success[("SalesDb [sql-vm-01]", "Backup")] == 1
    assert success[("vm-04", "Backup")] == 0
    sizes = {labels["entity"]: value for labels, value in samples["azure_backup_last_backup_size_bytes"]}
    assert sizes["vm-01"] == 100 * 2**20

    # One job_status_changed event per transition, and the transitions counter agrees.
    changes = [e for e in logs if e["event"] == "job_status_changed"]
    final_changes = {(e["job_id"], e["to_status"]) for e in changes if e["to_status"] != "Cancelling"}
    assert final_changes == {(j.job_id, j.outcome) for j in jobs}
    for event in changes:
        # A cancelled job may be seen Cancelling first (the service reports it for a moment).
        assert (event["from_status"], event["to_status"]) in {
            ("InProgress", "Completed"),
            ("InProgress", "CompletedWithWarnings"),
            ("InProgress", "Failed"),
            ("InProgress", "Cancelling"),
            ("Cancelling", "Cancelled"),
            ("InProgress", "Cancelled"),
        }
        assert event["start_time"]
        assert event["vault"] in ("vault-a", "vault-b")
        if event["to_status"] != "Cancelling":
            assert event["end_time"]
    transitions = sum(v for _, v in samples["azure_backup_job_transitions_total"])
    assert transitions == len(changes)

    by_id = {j["job_id"]: j for j in api["jobs"]}
    failed = by_id[jobs[3].job_id]
    assert failed["status"] == "Failed"
    assert failed["errors"]
    assert failed["errors"][0]["code"] == "400136"
    assert [t["to_status"] for t in failed["transitions"]] == ["InProgress", "Failed"]
    assert by_id[jobs[4].job_id]["operation_detail"] == "Full"


async def test_running_jobs_have_series_until_they_end(tmp_path: Path) -> None:
    """A running job has its start-timestamp series with its job_id; it disappears once the job ends."""
    estate = Estate()
    job = _job(9, "vault-a", "Completed", total=60, ends_in=1.5)
    estate.add(job)
    sim = await start_simulator(estate)
    config = make_config(
        sim.url,
        [{"subscription_id": SUB, "resource_group": RG, "name": "vault-a", "jobs": [job.job_id]}],
        tmp_path / "s.sqlite3",
    )
    try:
        async with running_watcher(config) as watcher, aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{watcher.port}/metrics"
            assert watcher.tracker is not None
            tracker = watcher.tracker
            await wait_for(lambda: any(tj.status == "InProgress" for tj in every_job(tracker).values()))
            async with http.get(url) as resp:
                running = _samples(await resp.text()).get("azure_backup_job_running_start_timestamp_seconds")
            assert running is not None
            assert running[0][0]["job_id"] == job.job_id
            assert abs(running[0][1] - job.start) < 0.01
            await wait_for(lambda: all(tj.state == "final" for tj in every_job(tracker).values()))
            async with http.get(url) as resp:
                assert "azure_backup_job_running_start_timestamp_seconds{" not in await resp.text()
    finally:
        await sim.close()
