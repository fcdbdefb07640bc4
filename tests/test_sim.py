"""The Azure Backup simulator answers like ARM and the Backup services do, over real HTTP on loopback.

Time is an injected clock, so job life cycles are walked through without sleeping.
"""

from __future__ import annotations

import base64
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlencode

import aiohttp
import pytest

from watcher.sim import (
    BACKUP_VAULT,
    DATAPROTECTION_API_VERSIONS,
    RECOVERY_SERVICES,
    SIM_TOKEN,
    Estate,
    RecurringJob,
    SimItem,
    SimJob,
    Simulator,
    demo_estate,
    demo_subscriptions,
    demo_vaults,
    start_simulator,
)
from watcher.sim.bodies import job_body, operation_body
from watcher.sim.filters import FilterError, parse_time
from watcher.sim.formats import format_bag_time, format_duration, format_time
from watcher.sim.inventory import protected_item_body
from watcher.sim.scenarios import DEMO_DR_SUBSCRIPTION, DEMO_SUBSCRIPTION

pytestmark = pytest.mark.timeout(20)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
SUB = "00000000-0000-0000-0000-000000000001"
OTHER_SUB = "00000000-0000-0000-0000-000000000002"
RG = "rg-backup"
VAULT = "vault-a"
API = "api-version=2025-02-01"
DP_API = "api-version=2025-09-01"
VAULTS_API = "api-version=2025-08-01"
AUTH = {"Authorization": f"Bearer {SIM_TOKEN}"}
DAY = 86400.0


class Clock:
    """A settable clock for the estate."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def job(job_id: str, start: float, duration: float, **kw: Any) -> SimJob:
    """An IaaS VM backup in the test vault unless `kw` says otherwise."""
    fields: dict[str, Any] = {
        "subscription_id": SUB,
        "resource_group": RG,
        "vault": VAULT,
        "job_type": "AzureIaaSVMJob",
        "operation": "Backup",
        "entity": "vm-1",
        "backup_management_type": "AzureIaasVM",
    }
    fields.update(kw)
    return SimJob(job_id=job_id, start=start, duration=duration, **fields)


def vault_url(sim: Simulator, sub: str = SUB, rg: str = RG, vault: str = VAULT) -> str:
    """The vault's ARM URL on the simulator."""
    return (
        f"{sim.url}/subscriptions/{sub}/resourceGroups/{rg}"
        f"/providers/Microsoft.RecoveryServices/vaults/{vault}"
    )


def bv_url(sim: Simulator, sub: str = SUB, rg: str = RG, vault: str = VAULT) -> str:
    """The Backup vault's ARM URL on the simulator."""
    return f"{sim.url}/subscriptions/{sub}/resourceGroups/{rg}/providers/Microsoft.DataProtection/backupVaults/{vault}"


def bv_job(job_id: str, start: float, duration: float, **kw: Any) -> SimJob:
    """A disk backup in the test Backup vault unless `kw` says otherwise."""
    fields: dict[str, Any] = {
        "subscription_id": SUB,
        "resource_group": RG,
        "vault": VAULT,
        "job_type": "Microsoft.Compute/disks",
        "operation": "Backup",
        "entity": "disk-1",
        "backup_management_type": "",
        "vault_kind": BACKUP_VAULT,
        "policy_name": "disk-daily",
    }
    fields.update(kw)
    return SimJob(job_id=job_id, start=start, duration=duration, **fields)


Serve = Callable[..., Awaitable[Simulator]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start simulators on 127.0.0.1, any free port; all are closed after the test."""
    started: list[Simulator] = []

    async def start(estate: Estate, **kw: Any) -> Simulator:
        sim = await start_simulator(estate, **kw)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        await sim.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    """A client session that sends the simulator's bearer token."""
    async with aiohttp.ClientSession(headers=AUTH) as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str, **kw: Any) -> tuple[int, dict[str, Any], Any]:
    """GET `url`: (status, headers, parsed JSON body)."""
    async with http.get(url, **kw) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def all_pages(http: aiohttp.ClientSession, url: str) -> list[dict[str, Any]]:
    """Every item of a paged listing, following nextLink to its end."""
    found: list[dict[str, Any]] = []
    next_url: str | None = url
    while next_url:
        status, _, body = await get_json(http, next_url)
        assert status == 200, body
        found += body["value"]
        next_url = body.get("nextLink")
    return found


# -- bodies and the clock ------------------------------------------------------------------


async def test_job_get_follows_the_clock(serve: Serve, http: aiohttp.ClientSession) -> None:
    """A GET shows a running IaaS VM backup, then the same job Completed with endTime and size."""
    clock = Clock()
    estate = Estate(clock)
    estate.add(job("41F3E94B-AE6B-4A20-B422-65ABFCAF03E5", T0 - 10, 40.5, size_mb=2332))
    sim = await serve(estate)
    url = f"{vault_url(sim)}/backupJobs/41f3e94b-ae6b-4a20-b422-65abfcaf03e5?{API}"

    status, headers, body = await get_json(http, url)
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert headers["x-ms-request-id"]
    assert body["id"] == (
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.RecoveryServices"
        f"/vaults/{VAULT}/backupJobs/41F3E94B-AE6B-4A20-B422-65ABFCAF03E5"
    )
    assert body["type"] == "Microsoft.RecoveryServices/vaults/backupJobs"
    props = body["properties"]
    assert props["status"] == "InProgress"
    assert props["duration"] == "PT10S"
    assert props["actionsInfo"] == [1]
    assert props["startTime"] == "2023-11-14T22:13:10Z"
    assert "endTime" not in props
    tasks = props["extendedInfo"]["tasksList"]
    assert [t["taskId"] for t in tasks] == ["Take Snapshot", "Transfer data to vault"]
    assert [t["status"] for t in tasks] == ["InProgress", "NotStarted"]
    assert props["extendedInfo"]["propertyBag"] == {
        "VM Name": "vm-1",
        "Recovery Point Expiry Time in UTC": "12/15/2023 12:00:00 AM",
    }
    assert props["extendedInfo"]["progressPercentage"] == 24.0

    clock.now = T0 + 31
    _, _, body = await get_json(http, url)
    props = body["properties"]
    assert props["status"] == "Completed"
    assert props["duration"] == "PT40.5S"
    assert props["endTime"] == "2023-11-14T22:13:50.5Z"
    assert [t["status"] for t in props["extendedInfo"]["tasksList"]] == ["Completed", "Completed"]
    assert props["extendedInfo"]["propertyBag"]["Backup Size"] == "2332 MB"
    assert "progressPercentage" not in props["extendedInfo"]
    assert "errorDetails" not in props


async def test_failures_carry_numeric_error_details(serve: Serve, http: aiohttp.ClientSession) -> None:
    """Failed and CompletedWithWarnings jobs carry errorDetails with numeric codes, as recorded."""
    estate = Estate(Clock())
    estate.add(job("vm-failed", T0 - 100, 50, outcome="Failed"))
    estate.add(
        job(
            "sql-failed",
            T0 - 300,
            193.6439467,
            outcome="Failed",
            job_type="AzureWorkloadJob",
            operation="Backup (Full)",
            entity="msdb [sql-vm]",
            backup_management_type="AzureWorkload",
            timespan_duration=True,
        )
    )
    estate.add(job("vm-warn", T0 - 100, 50, outcome="CompletedWithWarnings", error_code=400999))
    sim = await serve(estate)

    _, _, vm = await get_json(http, f"{vault_url(sim)}/backupJobs/vm-failed?{API}")
    (detail,) = vm["properties"]["errorDetails"]
    assert detail["errorCode"] == 400136
    assert detail["errorString"] == "Virtual machine doesn't exist."
    assert detail["recommendations"]
    assert vm["properties"]["extendedInfo"]["tasksList"][1]["status"] == "Failed"

    _, _, sql = await get_json(http, f"{vault_url(sim)}/backupJobs/sql-failed?{API}")
    props = sql["properties"]
    assert props["duration"] == "00:03:13.6439467"
    assert props["workloadType"] == "SQLDataBase"
    assert props["errorDetails"][0]["errorCode"] == 510008
    assert props["errorDetails"][0]["errorTitle"] == (
        "OperationCancelledBecauseConflictingOperationRunningUserError"
    )
    assert props["extendedInfo"]["tasksList"] == [{"taskId": "Transfer data to vault", "status": "Failed"}]
    assert props["extendedInfo"]["propertyBag"] == {"Data Transferred (in MB)": "0"}

    _, _, warn = await get_json(http, f"{vault_url(sim)}/backupJobs/vm-warn?{API}")
    assert warn["properties"]["status"] == "CompletedWithWarnings"
    assert warn["properties"]["errorDetails"][0]["errorCode"] == 400999


async def test_unknown_or_future_jobs_and_vaults_are_404(serve: Serve, http: aiohttp.ClientSession) -> None:
    """A job before its start, an unknown job and an unknown vault answer 404 in ARM's envelope."""
    estate = Estate(Clock())
    estate.add(job("later", T0 + 60, 10))
    sim = await serve(estate)

    for job_id in ("later", "nope"):
        status, _, body = await get_json(http, f"{vault_url(sim)}/backupJobs/{job_id}?{API}")
        assert status == 404
        assert set(body["error"]) == {"code", "message"}

    status, headers, body = await get_json(http, f"{vault_url(sim, vault='vault-x')}/backupJobs/nope?{API}")
    assert status == 404
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert body["error"]["code"] == "ResourceNotFound"
    assert body["error"]["message"].startswith(
        f"The Resource 'Microsoft.RecoveryServices/vaults/vault-x' under resource group '{RG}' was not found."
    )

    status, _, body = await get_json(http, f"{sim.url}/nothing/here?{API}")
    assert status == 404
    assert body["error"]["code"]


async def test_paths_are_case_insensitive(serve: Serve, http: aiohttp.ClientSession) -> None:
    """ARM paths match in any case, and the id echoes the request's `Subscriptions` spelling."""
    estate = Estate(Clock())
    estate.add(job("abc-def", T0 - 5, 60))
    sim = await serve(estate)
    url = (
        f"{sim.url}/Subscriptions/{SUB}/RESOURCEGROUPS/{RG.upper()}/providers"
        f"/microsoft.recoveryservices/Vaults/{VAULT.upper()}/BACKUPJOBS/ABC-DEF?{API}"
    )
    status, _, body = await get_json(http, url)
    assert status == 200
    assert body["id"].startswith(f"/Subscriptions/{SUB}/resourceGroups/{RG}/")
    assert body["name"] == "abc-def"


# -- authentication, api-version -----------------------------------------------------------


@pytest.mark.parametrize(
    ("authorization", "code"),
    [
        (None, "AuthenticationFailed"),
        ("Basic dXNlcjpwYXNz", "AuthenticationFailed"),
        ("Bearer not-the-token", "InvalidAuthenticationToken"),
    ],
)
async def test_bad_credentials_are_401(serve: Serve, authorization: str | None, code: str) -> None:
    """A missing, malformed or wrong bearer token answers 401 with a WWW-Authenticate challenge."""
    sim = await serve(Estate(Clock()))
    headers = {"Authorization": authorization} if authorization else {}
    async with aiohttp.ClientSession(headers=headers) as http:
        status, resp_headers, body = await get_json(http, f"{vault_url(sim)}/backupJobs?{API}")
    assert status == 401
    assert body["error"]["code"] == code
    assert resp_headers["WWW-Authenticate"].startswith("Bearer authorization_uri=")
    assert "x-ms-ratelimit-remaining-subscription-resource-requests" in resp_headers
    assert sim.requests[-1].status == 401


async def test_api_version_is_required_and_checked(serve: Serve, http: aiohttp.ClientSession) -> None:
    """No api-version is 400 MissingApiVersionParameter; an unknown one lists the supported ones."""
    estate = Estate(Clock())
    estate.add_vault(SUB, RG, VAULT)
    sim = await serve(estate)

    status, _, body = await get_json(http, f"{vault_url(sim)}/backupJobs")
    assert status == 400
    assert body["error"]["code"] == "MissingApiVersionParameter"

    status, _, body = await get_json(http, f"{vault_url(sim)}/backupJobs?api-version=2099-01-01")
    assert status == 400
    assert body["error"]["code"] == "InvalidApiVersionParameter"
    message = body["error"]["message"]
    assert message.startswith("The api-version '2099-01-01' is invalid. The supported versions are '")
    assert message.endswith("'. Please see https://aka.ms/api-version for more information.")
    supported = message.split("'")[3].split(",")
    for version in ("2016-06-01", "2017-07-01", "2019-05-13", "2025-02-01", "2026-02-01"):
        assert version in supported
        status, _, _ = await get_json(http, f"{vault_url(sim)}/backupJobs?api-version={version}")
        assert status == 200


# -- listing -------------------------------------------------------------------------------


async def test_listing_pages_newest_first(serve: Serve, http: aiohttp.ClientSession) -> None:
    """450 jobs come as pages of 200, 200 and 50; nextLink is absolute and absent on the last page."""
    estate = Estate(Clock())
    for i in range(450):
        estate.add(job(f"job-{i:04d}", T0 - 1000 + i, 5))
    sim = await serve(estate, page_size=200)

    url: str | None = f"{vault_url(sim)}/backupJobs?{API}"
    pages: list[dict[str, Any]] = []
    while url:
        status, _, body = await get_json(http, url)
        assert status == 200
        pages.append(body)
        url = body.get("nextLink")
        if url:
            assert url.startswith(f"{vault_url(sim)}/backupJobs?api-version=2017-07-01&")
            assert "%24skiptoken=%3C%3Fxml" in url
    assert [len(p["value"]) for p in pages] == [200, 200, 50]
    assert "nextLink" not in pages[-1]
    names = [item["name"] for page in pages for item in page["value"]]
    assert names == [f"job-{i:04d}" for i in reversed(range(450))]
    assert all("extendedInfo" not in item["properties"] for page in pages for item in page["value"])


async def test_paging_does_not_repeat_jobs_that_arrive_meanwhile(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    """Jobs that start between two pages do not shift the next page (the token is a position)."""
    clock = Clock()
    estate = Estate(clock)
    for i in range(5):
        estate.add(job(f"old-{i}", T0 - 100 + i, 1))
    sim = await serve(estate, page_size=2)

    _, _, first = await get_json(http, f"{vault_url(sim)}/backupJobs?{API}")
    estate.add(job("new", T0 + 1, 1))
    clock.now = T0 + 2
    seen = [item["name"] for item in first["value"]]
    url = first["nextLink"]
    while url:
        _, _, page = await get_json(http, url)
        seen += [item["name"] for item in page["value"]]
        url = page.get("nextLink")
    assert seen == ["old-4", "old-3", "old-2", "old-1", "old-0"]


async def test_filters(serve: Serve, http: aiohttp.ClientSession) -> None:
    """status, operation (normalised), backupManagementType, jobId and time-window filters."""
    estate = Estate(Clock())
    estate.add(job("running", T0 - 60, 600))
    estate.add(job("done", T0 - 7200, 600))
    estate.add(job("failed", T0 - 3600, 60, outcome="Failed"))
    estate.add(
        job(
            "log",
            T0 - 30,
            10,
            job_type="AzureWorkloadJob",
            operation="Backup (Log)",
            backup_management_type="AzureWorkload",
        )
    )
    estate.add(job("restore", T0 - 10, 600, operation="Restore"))
    sim = await serve(estate)

    async def names(filter_text: str) -> list[str]:
        status, _, body = await get_json(
            http, f"{vault_url(sim)}/backupJobs?{API}", params={"$filter": filter_text}
        )
        assert status == 200, body
        return [item["name"] for item in body["value"]]

    assert await names("status eq 'InProgress'") == ["restore", "running"]
    assert await names("status eq 'Completed'") == ["log", "done"]
    assert await names("status eq 'Failed'") == ["failed"]
    assert await names("operation eq 'Backup'") == ["log", "running", "failed", "done"]
    assert await names("backupManagementType eq 'AzureWorkload'") == ["log"]
    assert await names("jobId eq 'FAILED'") == ["failed"]
    assert await names("operation eq 'Restore' and status eq 'InProgress'") == ["restore"]
    window = "startTime eq '2023-11-14 08:00:00 PM' and endTime eq '2023-11-14 09:30:00 PM'"
    assert await names(window) == ["failed", "done"]
    assert await names("startTime eq '2023-11-14T22:12:00Z' and operation eq ''") == [
        "restore",
        "log",
        "running",
    ]


@pytest.mark.parametrize(
    "filter_text",
    [
        "status = 'InProgress'",
        "color eq 'blue'",
        "status eq 'Running'",
        "startTime eq 'yesterday'",
        "status eq 'Failed' or status eq 'Completed'",
    ],
)
async def test_bad_filters_are_400(serve: Serve, http: aiohttp.ClientSession, filter_text: str) -> None:
    """Anything outside the documented `field eq 'value' and ...` form is a 400."""
    estate = Estate(Clock())
    estate.add_vault(SUB, RG, VAULT)
    sim = await serve(estate)
    status, _, body = await get_json(
        http, f"{vault_url(sim)}/backupJobs?{API}", params={"$filter": filter_text}
    )
    assert status == 400
    assert body["error"]["code"] == "BMSUserErrorInvalidFilter"


# -- operations ----------------------------------------------------------------------------

ITEM_PATH = (
    "/backupFabrics/Azure/protectionContainers/IaasVMContainer%3Biaasvmcontainerv2%3Brg-vm%3Bvm-7"
    "/protectedItems/VM%3Biaasvmcontainerv2%3Brg-vm%3Bvm-7"
)


async def test_triggered_backup_leads_to_a_job(serve: Serve, http: aiohttp.ClientSession) -> None:
    """POST backup is 202 with async headers; the operation succeeds with a jobId that GETs."""
    clock = Clock()
    estate = Estate(clock)
    estate.add_vault(SUB, RG, VAULT)
    sim = await serve(estate, operation_seconds=3.0, retry_after=7)

    async with http.post(f"{vault_url(sim)}{ITEM_PATH}/backup?{API}", json={}) as resp:
        assert resp.status == 202
        assert await resp.read() == b""
        status_url = resp.headers["Azure-AsyncOperation"]
        result_url = resp.headers["Location"]
        assert resp.headers["Retry-After"] == "7"
    item = "/protectedItems/VM;iaasvmcontainerv2;rg-vm;vm-7/"
    assert status_url.startswith(vault_url(sim))
    assert item in status_url
    assert "/operationsStatus/" in status_url
    assert status_url.endswith("?api-version=2019-05-13")
    assert "/operationResults/" in result_url
    assert result_url.endswith(f"?{API}")
    op_id = status_url.rsplit("/", 1)[1].split("?")[0]

    _, _, running = await get_json(http, status_url)
    assert running == {
        "id": op_id,
        "name": op_id,
        "status": "InProgress",
        "startTime": format_time(T0),
        "endTime": "0001-01-01T00:00:00",
    }
    async with http.get(result_url) as resp:
        assert resp.status == 202
        assert resp.headers["Location"] == result_url
        assert resp.headers["Retry-After"] == "7"

    clock.now = T0 + 3
    _, _, done = await get_json(http, status_url)
    assert done["status"] == "Succeeded"
    assert done["properties"]["objectType"] == "OperationStatusJobExtendedInfo"
    job_id = done["properties"]["jobId"]
    _, _, same = await get_json(http, f"{vault_url(sim)}/backupOperations/{op_id}?{API}")
    assert same == done
    async with http.get(result_url) as resp:
        assert resp.status == 204

    status, _, body = await get_json(http, f"{vault_url(sim)}/backupJobs/{job_id}?{API}")
    assert status == 200
    props = body["properties"]
    assert (props["jobType"], props["operation"], props["status"]) == (
        "AzureIaaSVMJob",
        "Backup",
        "InProgress",
    )
    assert props["entityFriendlyName"] == "vm-7"
    assert props["containerName"] == "iaasvmcontainerv2;rg-vm;vm-7"


@pytest.mark.parametrize(
    ("container", "item", "job_type", "operation"),
    [
        (
            "VMAppContainer;compute;rg;sqlvm",
            "SQLDataBase;mssqlserver;msdb",
            "AzureWorkloadJob",
            "Backup (Full)",
        ),
        ("StorageContainer;Storage;rg;stacct", "AzureFileShare;finance", "AzureStorageJob", "Backup"),
    ],
)
async def test_triggered_job_type_follows_the_container(
    container: str, item: str, job_type: str, operation: str
) -> None:
    """SQL containers make workload jobs, storage containers Azure Files jobs."""
    clock = Clock()
    estate = Estate(clock)
    estate.add_vault(SUB, RG, VAULT)
    op = estate.trigger_backup(SUB, RG, VAULT, container, item, operation_seconds=1)
    clock.now = T0 + 1
    assert op.job_id is not None
    created = estate.get(SUB, RG, VAULT, op.job_id)
    assert created is not None
    assert (created.job_type, created.operation, created.entity) == (
        job_type,
        operation,
        item.rsplit(";", 1)[1],
    )


async def test_scripted_failures(serve: Serve, http: aiohttp.ClientSession) -> None:
    """Items named with "fail" get a Failed operation; script_item sets the job's outcome."""
    clock = Clock()
    estate = Estate(clock)
    estate.add_vault(SUB, RG, VAULT)
    estate.script_item("vm-7", outcome="Failed", duration=5)
    sim = await serve(estate, operation_seconds=1)

    failing = ITEM_PATH.replace("vm-7", "vm-fail")
    async with http.post(f"{vault_url(sim)}{failing}/backup?{API}") as resp:
        failed_url = resp.headers["Azure-AsyncOperation"]
        failed_result = resp.headers["Location"]
    async with http.post(f"{vault_url(sim)}{ITEM_PATH}/backup?{API}") as resp:
        ok_url = resp.headers["Azure-AsyncOperation"]
    clock.now = T0 + 1

    _, _, failed = await get_json(http, failed_url)
    assert failed["status"] == "Failed"
    assert failed["error"]["code"] == "BMSUserErrorObjectLocked"
    assert "properties" not in failed
    status, _, body = await get_json(http, failed_result)
    assert status == 400
    assert body["error"]["code"] == "BMSUserErrorObjectLocked"

    _, _, succeeded = await get_json(http, ok_url)
    clock.now = T0 + 6
    _, _, ended = await get_json(
        http, f"{vault_url(sim)}/backupJobs/{succeeded['properties']['jobId']}?{API}"
    )
    assert ended["properties"]["status"] == "Failed"


async def test_cancel_goes_through_cancelling(serve: Serve, http: aiohttp.ClientSession) -> None:
    """POST cancel is 202; the job is Cancelling at once, Cancelled shortly after; then 400."""
    clock = Clock()
    estate = Estate(clock)
    estate.add(job("long", T0 - 60, 3600, size_mb=100))
    sim = await serve(estate)
    cancel_url = f"{vault_url(sim)}/backupJobs/long/cancel?{API}"

    async with http.post(cancel_url) as resp:
        assert resp.status == 202
        status_url = resp.headers["Azure-AsyncOperation"]
        assert "/backupJobs/long/operationsStatus/" in status_url
        assert status_url.endswith("?api-version=2019-05-13-preview")
        result_url = resp.headers["Location"]
        assert "/backupJobs/long/operationResults/" in result_url
    _, _, body = await get_json(http, f"{vault_url(sim)}/backupJobs/long?{API}")
    assert body["properties"]["status"] == "Cancelling"
    assert [t["status"] for t in body["properties"]["extendedInfo"]["tasksList"]] == [
        "Cancelling",
        "Cancelling",
    ]
    async with http.get(result_url) as resp:
        assert resp.status == 202

    clock.now = T0 + 3
    _, _, body = await get_json(http, f"{vault_url(sim)}/backupJobs/long?{API}")
    assert body["properties"]["status"] == "Cancelled"
    assert body["properties"]["endTime"] == format_time(T0 + 2)
    assert "Backup Size" not in body["properties"]["extendedInfo"]["propertyBag"]
    _, _, op = await get_json(http, status_url)
    assert op["status"] == "Succeeded"
    async with http.get(result_url) as resp:
        assert resp.status == 204
    async with http.post(cancel_url) as resp:
        assert resp.status == 400


# -- faults and throttling -----------------------------------------------------------------


async def test_injected_faults(serve: Serve, http: aiohttp.ClientSession) -> None:
    """inject() scripts status, body or a dropped connection; every request is recorded (boundably)."""
    estate = Estate(Clock())
    estate.add(job("j1", T0 - 5, 60))
    sim = await serve(estate, retry_after=4)
    url = f"{vault_url(sim)}/backupJobs/j1?{API}"

    sim.inject(500, path_contains="/BACKUPJOBS/j1", times=2)
    sim.inject(429, path_contains="backupjobs")
    sim.inject(200, body="{not json", path_contains="backupjobs")
    sim.inject(0, path_contains="backupjobs", times=2)  # aiohttp retries a dropped GET once
    statuses = []
    for _ in range(2):
        status, _, body = await get_json(http, url)
        statuses.append(status)
        assert body["error"]["code"] == "RestApiInternalError"
    async with http.get(url) as resp:
        statuses.append(resp.status)
        assert resp.headers["Retry-After"] == "4"
        assert (await resp.json())["error"]["code"] == "SubscriptionRequestsThrottled"
    async with http.get(url) as resp:
        statuses.append(resp.status)
        assert await resp.text() == "{not json"
    with pytest.raises(aiohttp.ServerDisconnectedError):
        await get_json(http, url)
    status, _, _ = await get_json(http, url)
    statuses.append(status)
    assert statuses == [500, 500, 429, 200, 200]
    assert [r.status for r in sim.requests] == [500, 500, 429, 200, 0, 0, 200]
    assert sim.requests[0].path.endswith("/backupJobs/j1")
    assert sim.requests[0].query == {"api-version": "2025-02-01"}
    assert sim.requests[0].time <= sim.requests[-1].time <= time.time()

    sim.max_recorded = 2
    for _ in range(3):
        await get_json(http, url)
    assert 2 <= len(sim.requests) <= 4
    assert sim.requests[-1].status == 200


async def test_rate_limit_throttles_per_subscription(serve: Serve, http: aiohttp.ClientSession) -> None:
    """An empty bucket answers 429 SubscriptionRequestsThrottled with an integer Retry-After."""
    estate = Estate(Clock())
    estate.add_vault(SUB, RG, VAULT)
    estate.add_vault(OTHER_SUB, RG, VAULT)
    sim = await serve(estate)
    sim.set_rate_limit(2, 0.5)
    url = f"{vault_url(sim)}/backupJobs?{API}"
    header = "x-ms-ratelimit-remaining-subscription-resource-requests"

    remaining = []
    for _ in range(2):
        status, headers, _ = await get_json(http, url)
        assert status == 200
        remaining.append(headers[header])
    assert remaining == ["1", "0"]
    status, headers, body = await get_json(http, url)
    assert status == 429
    assert headers["Retry-After"] == "2"
    assert body["error"]["code"] == "SubscriptionRequestsThrottled"
    assert f"subscription '{SUB}'" in body["error"]["message"]

    status, _, _ = await get_json(http, f"{vault_url(sim, sub=OTHER_SUB)}/backupJobs?{API}")
    assert status == 200
    sim.set_rate_limit(0, 0)
    status, _, _ = await get_json(http, url)
    assert status == 200


async def test_remaining_requests_falls_without_a_limit(serve: Serve, http: aiohttp.ClientSession) -> None:
    """Without a limit the remaining-requests header still falls by one per call."""
    estate = Estate(Clock())
    estate.add_vault(SUB, RG, VAULT)
    sim = await serve(estate)
    seen = []
    for _ in range(3):
        _, headers, _ = await get_json(http, f"{vault_url(sim)}/backupJobs?{API}")
        seen.append(int(headers["x-ms-ratelimit-remaining-subscription-resource-requests"]))
    assert seen == [299, 298, 297]


async def test_tls_with_the_ca_file(serve: Serve) -> None:
    """With tls=True the simulator serves HTTPS that a client trusting ca_file accepts."""
    estate = Estate(Clock())
    estate.add(job("j1", T0 - 5, 60))
    sim = await serve(estate, tls=True)
    assert sim.url.startswith("https://127.0.0.1:")
    assert sim.ca_file is not None
    context = ssl.create_default_context(cafile=sim.ca_file)
    connector = aiohttp.TCPConnector(ssl=context)
    async with aiohttp.ClientSession(headers=AUTH, connector=connector) as http:
        status, _, body = await get_json(http, f"{vault_url(sim)}/backupJobs/j1?{API}")
    assert status == 200
    assert body["name"] == "j1"


# -- Backup vaults -------------------------------------------------------------------------

BV_FIELDS = {
    "activityID",
    "backupInstanceId",
    "backupInstanceFriendlyName",
    "dataSourceId",
    "dataSourceName",
    "dataSourceType",
    "dataSourceLocation",
    "policyId",
    "policyName",
    "sourceResourceGroup",
    "sourceSubscriptionID",
    "vaultName",
    "startTime",
    "endTime",
    "duration",
    "status",
    "operation",
    "operationCategory",
    "isUserTriggered",
    "progressEnabled",
    "supportedActions",
    "errorDetails",
    "extendedInfo",
}


async def test_backup_vault_job_get_follows_the_clock(serve: Serve, http: aiohttp.ClientSession) -> None:
    """A Backup vault job GET is shaped like the recorded one: PT0S and a null endTime while running, then an ISO duration and a `0001-01-01` target point."""
    clock = Clock()
    estate = Estate(clock)
    estate.add_vault(SUB, RG, VAULT, kind=BACKUP_VAULT, location="centraluseuap")
    job_id = "2167a022-ba9c-4caf-9523-76e00a806349"
    estate.add(bv_job(job_id, T0 - 10, 214.6372013, size_mb=65536, user_triggered=True))
    sim = await serve(estate)
    url = f"{bv_url(sim)}/backupJobs/{job_id.upper()}?api-version=2026-03-01"
    vault_id = (
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.DataProtection/backupVaults/{VAULT}"
    )

    status, headers, body = await get_json(http, url)
    assert status == 200
    assert headers["Content-Type"] == "application/json; charset=utf-8"
    assert (body["id"], body["name"]) == (f"{vault_id}/backupJobs/{job_id}", job_id)
    assert body["type"] == "Microsoft.DataProtection/backupVaults/backupJobs"
    props = body["properties"]
    assert set(props) >= BV_FIELDS
    assert props["backupInstanceId"].startswith(f"{vault_id}/backupInstances/disk-1-disk-1-")
    assert (
        props["dataSourceId"]
        == f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/disks/disk-1"
    )
    assert props["policyId"] == f"{vault_id}/backupPolicies/disk-daily"
    assert (props["status"], props["duration"], props["endTime"], props["errorDetails"]) == (
        "InProgress",
        "PT0S",
        None,
        None,
    )
    assert props["startTime"] == "2023-11-14T22:13:10Z"
    assert props["operationCategory"] == props["operation"] == "Backup"
    assert (props["isUserTriggered"], props["supportedActions"]) == (True, [""])
    assert (props["dataSourceLocation"], props["vaultName"]) == ("centraluseuap", VAULT)
    info = props["extendedInfo"]
    assert info["targetRecoverPoint"] is None
    assert info["subTasks"] == [
        {
            "taskId": 1,
            "taskName": "Trigger Backup",
            "taskStatus": "InProgress",
            "taskProgress": None,
            "additionalDetails": None,
        }
    ]

    clock.now = T0 + 205
    _, _, body = await get_json(http, url)
    props = body["properties"]
    assert (props["status"], props["duration"]) == ("Completed", "PT3M34.6372013S")
    assert props["endTime"] == format_time(T0 - 10 + 214.6372013)
    assert props["destinationDataStoreName"] == "OperationalTierStore"
    info = props["extendedInfo"]
    assert info["targetRecoverPoint"]["recoveryPointTime"] == "0001-01-01T00:00:00Z"
    (task,) = info["subTasks"]
    assert task["taskStatus"] == "Completed"
    assert task["additionalDetails"]["OriginalDatasourceSizeInBytes"] == "68719476736"


async def test_backup_vault_failures_carry_error_details(serve: Serve, http: aiohttp.ClientSession) -> None:
    """Failed Backup vault jobs list errors as the service does: a disk permission error for disks, a nested InternalServerError otherwise, or the scripted one."""
    estate = Estate(Clock())
    estate.add(bv_job("disk-failed", T0 - 100, 50, outcome="Failed"))
    pg = {
        "job_type": "Microsoft.DBforPostgreSQL/servers/databases",
        "entity": "pg-1\\orders",
        "datasource_name": "orders",
        "datasource_set": "pg-1",
    }
    estate.add(bv_job("pg-failed", T0 - 100, 50, outcome="Failed", **pg))
    estate.add(
        bv_job("scripted", T0 - 100, 50, outcome="Failed", error_code="UserErrorX", error_message="It broke.")
    )
    sim = await serve(estate)

    _, _, disk = await get_json(http, f"{bv_url(sim)}/backupJobs/disk-failed?{DP_API}")
    (detail,) = disk["properties"]["errorDetails"]
    assert detail["code"] == "UserErrorDiskBackupDiskOrMSIPermissionsNotPresent"
    assert detail["message"]
    assert detail["recommendedAction"]
    assert (detail["isRetryable"], detail["isUserError"]) == (False, True)
    assert disk["properties"]["extendedInfo"]["subTasks"][0]["taskStatus"] == "Failed"
    assert disk["properties"]["extendedInfo"]["targetRecoverPoint"] is None

    _, _, postgres = await get_json(http, f"{bv_url(sim)}/backupJobs/pg-failed?{DP_API}")
    props = postgres["properties"]
    (detail,) = props["errorDetails"]
    assert (detail["code"], detail["message"], detail["isRetryable"]) == (
        "InternalServerError",
        "Internal Server Error",
        True,
    )
    assert detail["details"][0]["code"] == "InternalServerError"
    assert props["dataSourceId"].endswith(
        "/providers/Microsoft.DBforPostgreSQL/servers/pg-1/databases/orders"
    )
    assert (props["dataSourceSetName"], props["dataSourceName"]) == ("pg-1", "orders")
    assert props["backupInstanceFriendlyName"] == "pg-1\\orders"

    _, _, scripted = await get_json(http, f"{bv_url(sim)}/backupJobs/scripted?{DP_API}")
    (detail,) = scripted["properties"]["errorDetails"]
    assert (detail["code"], detail["message"]) == ("UserErrorX", "It broke.")


async def test_backup_vault_listing_pages_oldest_first(serve: Serve, http: aiohttp.ClientSession) -> None:
    """The Backup vault job list runs oldest first over the last 14 days, in pages ending with `"nextLink": null`, with TimeSpan durations and null extendedInfo; older jobs still GET."""
    clock = Clock()
    estate = Estate(clock)
    estate.add(bv_job("ancient", T0 - 15 * DAY, 60))
    for i in range(6):
        estate.add(bv_job(f"job-{i}", T0 - 600 + 60 * i, 219.7214322))
    estate.add(bv_job("running", T0 - 5, 100))
    sim = await serve(estate, page_size=3)

    url: str | None = f"{bv_url(sim)}/backupJobs?api-version=2024-04-01"
    pages: list[dict[str, Any]] = []
    while url:
        status, _, body = await get_json(http, url)
        assert status == 200
        pages.append(body)
        url = body["nextLink"]
        if url:
            assert url.startswith(f"{bv_url(sim)}/backupJobs?api-version=2024-04-01&%24skipToken=")
        if len(pages) == 1:
            # A job that starts between two pages comes at the end, nothing repeats.
            estate.add(bv_job("new", T0 + 1, 5))
            clock.now = T0 + 2
    assert [len(p["value"]) for p in pages] == [3, 3, 2]
    items = [item for p in pages for item in p["value"]]
    assert [item["name"] for item in items] == [*(f"job-{i}" for i in range(6)), "running", "new"]
    assert all(item["properties"]["extendedInfo"] is None for item in items)
    assert items[0]["properties"]["duration"] == "00:03:39.7214322"
    assert (items[6]["properties"]["duration"], items[6]["properties"]["endTime"]) == ("00:00:00", None)

    status, _, old = await get_json(http, f"{bv_url(sim)}/backupJobs/ancient?{DP_API}")
    assert status == 200
    assert old["properties"]["duration"] == "PT1M"


@pytest.mark.parametrize("filter_text", ["status eq 'Failed'", "startTime eq '2023-11-14T00:00:00Z'", ""])
async def test_backup_vault_listing_refuses_filter(
    serve: Serve, http: aiohttp.ClientSession, filter_text: str
) -> None:
    """A Backup vault job list with any `$filter` is a 400 in ARM's envelope: the product must filter itself."""
    estate = Estate(Clock())
    estate.add(bv_job("j1", T0 - 5, 60))
    sim = await serve(estate)
    status, _, body = await get_json(
        http, f"{bv_url(sim)}/backupJobs?{DP_API}", params={"$filter": filter_text}
    )
    assert status == 400
    assert body["error"]["code"] == "BadRequest"
    assert "$filter" in body["error"]["message"]


async def test_backup_vault_status_spellings(serve: Serve, http: aiohttp.ClientSession) -> None:
    """A vault declared with the spec's spelling says Started and Succeeded where a live one says InProgress and Completed."""
    estate = Estate(Clock())
    estate.add_vault(SUB, RG, "live-vault", kind=BACKUP_VAULT)
    estate.add_vault(SUB, RG, "spec-vault", kind=BACKUP_VAULT, status_spelling="spec")
    for vault in ("live-vault", "spec-vault"):
        estate.add(bv_job(f"{vault}-failed", T0 - 300, 60, vault=vault, outcome="Failed"))
        estate.add(bv_job(f"{vault}-done", T0 - 200, 60, vault=vault))
        estate.add(bv_job(f"{vault}-running", T0 - 10, 60, vault=vault))
    sim = await serve(estate)

    seen: dict[str, list[str]] = {}
    for vault in ("live-vault", "spec-vault"):
        _, _, listing = await get_json(http, f"{bv_url(sim, vault=vault)}/backupJobs?{DP_API}")
        seen[vault] = [item["properties"]["status"] for item in listing["value"]]
        _, _, running = await get_json(
            http, f"{bv_url(sim, vault=vault)}/backupJobs/{vault}-running?{DP_API}"
        )
        (task,) = running["properties"]["extendedInfo"]["subTasks"]
        seen[vault].append(task["taskStatus"])
    assert seen == {
        "live-vault": ["Failed", "Completed", "InProgress", "InProgress"],
        "spec-vault": ["Failed", "Succeeded", "Started", "Started"],
    }


async def test_each_resource_type_takes_its_own_api_versions(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    """Backup vaults take the Data Protection api-versions and vault listings the Recovery Services ones; any other answers InvalidApiVersionParameter naming the supported ones."""
    estate = Estate(Clock())
    estate.add_vault(SUB, RG, VAULT, kind=BACKUP_VAULT)
    sim = await serve(estate)
    stable = (
        "2021-01-01",
        "2021-07-01",
        "2022-04-01",
        "2022-12-01",
        "2023-01-01",
        "2023-05-01",
        "2023-11-01",
        "2024-03-01",
        "2024-04-01",
        "2025-01-01",
        "2025-07-01",
        "2025-09-01",
        "2026-03-01",
    )
    for version in stable:
        status, _, _ = await get_json(http, f"{bv_url(sim)}/backupJobs?api-version={version}")
        assert status == 200, version
    for version in ("2099-01-01", "2019-05-13"):  # the latter is a Recovery Services Backup version
        status, _, body = await get_json(http, f"{bv_url(sim)}/backupJobs?api-version={version}")
        assert status == 400
        assert body["error"]["code"] == "InvalidApiVersionParameter"
        assert body["error"]["message"].split("'")[3].split(",") == list(DATAPROTECTION_API_VERSIONS)

    listing = f"{sim.url}/subscriptions/{SUB}/providers/Microsoft.RecoveryServices/vaults"
    status, _, _ = await get_json(http, f"{listing}?{VAULTS_API}")
    assert status == 200
    status, _, body = await get_json(http, f"{listing}?api-version=2019-05-13")
    assert status == 400
    assert "2025-08-01" in body["error"]["message"]


async def test_backup_vault_triggered_backup_leads_to_a_job(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    """POST backup answers 202 with the recorded headers; the operation ends Succeeded with the job's full ARM id, which GETs, and operationResults answers 202 then 200."""
    clock = Clock()
    estate = Estate(clock)
    estate.add_vault(SUB, RG, VAULT, kind=BACKUP_VAULT, location="westeurope")
    item = estate.add_item(SimItem(SUB, RG, VAULT, kind="disk", name="disk-7", policy="disk-daily"))
    failing = estate.add_item(SimItem(SUB, RG, VAULT, kind="disk", name="disk-fail"))
    sim = await serve(estate, operation_seconds=2.0, retry_after=30)
    vault_id = (
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.DataProtection/backupVaults/{VAULT}"
    )
    region_id = f"/subscriptions/{SUB}/providers/Microsoft.DataProtection/locations/westeurope"
    region = f"{sim.url}{region_id}"
    rule = {
        "backupRuleOptions": {
            "ruleName": "BackupHourly",
            "triggerOption": {"retentionTagOverride": "Default"},
        }
    }

    async with http.post(
        f"{bv_url(sim)}/backupInstances/{item.arm_name}/backup?api-version=2026-03-01", json=rule
    ) as resp:
        assert resp.status == 202
        assert await resp.read() == b""
        status_url = resp.headers["Azure-AsyncOperation"]
        result_url = resp.headers["Location"]
        assert resp.headers["Retry-After"] == "30"
    op_id = status_url.split("/operationStatus/")[1].split("?")[0]
    assert status_url == f"{bv_url(sim)}/operationStatus/{op_id}?api-version=2026-03-01"
    assert result_url == f"{region}/operationResults/{op_id}?api-version=2026-03-01"
    first, _, second = base64.b64decode(op_id).decode().partition(";")
    assert [uuid.UUID(first).version, uuid.UUID(second).version] == [4, 4]

    _, _, running = await get_json(http, status_url)
    assert (running["status"], running["startTime"]) == ("InProgress", format_time(T0))
    assert "properties" not in running
    async with http.get(result_url) as resp:
        assert resp.status == 202
        assert resp.headers["Location"] == result_url
        assert resp.headers["Retry-After"] == "30"

    clock.now = T0 + 2
    _, _, done = await get_json(http, status_url)
    job_id = done["properties"]["jobId"]
    assert done == {
        "id": f"{vault_id}/operationStatus/{op_id}",
        "name": op_id,
        "status": "Succeeded",
        "startTime": format_time(T0),
        "endTime": format_time(T0 + 2),
        "properties": {"jobId": job_id, "objectType": "OperationJobExtendedInfo"},
    }
    assert job_id.startswith(f"{vault_id}/backupJobs/")
    _, _, regional = await get_json(http, f"{region}/operationStatus/{op_id}?api-version=2026-03-01")
    assert regional == {**done, "id": f"{region_id}/operationStatus/{op_id}"}
    status, headers, result = await get_json(http, result_url)
    assert status == 200
    assert result == {"jobId": job_id, "objectType": "OperationJobExtendedInfo"}
    assert headers["Azure-AsyncOperation"] == f"{region}/operationStatus/{op_id}?api-version=2026-03-01"

    status, _, body = await get_json(http, f"{sim.url}{job_id}?api-version=2026-03-01")
    assert status == 200
    props = body["properties"]
    assert (props["status"], props["isUserTriggered"], props["backupInstanceFriendlyName"]) == (
        "InProgress",
        True,
        "disk-7",
    )
    assert props["backupInstanceId"] == f"{vault_id}/backupInstances/{item.arm_name}"

    async with http.post(f"{bv_url(sim)}/backupInstances/{failing.arm_name}/backup?{DP_API}") as resp:
        failed_status, failed_result = resp.headers["Azure-AsyncOperation"], resp.headers["Location"]
    clock.now = T0 + 4
    _, _, failed = await get_json(http, failed_status)
    assert (failed["status"], failed["error"]["code"]) == ("Failed", "BMSUserErrorObjectLocked")
    status, _, _ = await get_json(http, failed_result)
    assert status == 400

    for url in (
        f"{region}/operationStatus/{op_id.lower()}x?{DP_API}",
        f"{sim.url}/subscriptions/{SUB}/providers/Microsoft.DataProtection/locations/northeurope/operationStatus/{op_id}?{DP_API}",
    ):
        status, _, _ = await get_json(http, url)
        assert status == 404
    async with http.post(f"{bv_url(sim)}/backupInstances/nope/backup?{DP_API}") as resp:
        assert resp.status == 404


# -- vault listings ------------------------------------------------------------------------

EMPTY_SUB = "00000000-0000-0000-0000-000000000003"


async def test_vault_listings_by_subscription_and_resource_group(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    """Both vault kinds list per subscription and per resource group, paged and shaped like the spec examples; an empty subscription lists nothing, an unknown one is SubscriptionNotFound."""
    estate = Estate(Clock())
    estate.add_vault(SUB, "rg-a", "rsv-1", tags={"env": "prod"})
    estate.add_vault(SUB, "rg-b", "rsv-2", location="northeurope")
    estate.add_vault(SUB, "rg-a", "bv-1", kind=BACKUP_VAULT, tags={"env": "prod"})
    estate.add_vault(OTHER_SUB, "rg-a", "rsv-3")
    estate.add_subscription(EMPTY_SUB)
    sim = await serve(estate, page_size=1)
    rs = await all_pages(
        http, f"{sim.url}/subscriptions/{SUB}/providers/Microsoft.RecoveryServices/vaults?{VAULTS_API}"
    )
    assert [v["name"] for v in rs] == ["rsv-1", "rsv-2"]
    assert (
        rs[0]["id"]
        == f"/subscriptions/{SUB}/resourceGroups/rg-a/providers/Microsoft.RecoveryServices/vaults/rsv-1"
    )
    assert (rs[0]["type"], rs[0]["location"], rs[0]["sku"]) == (
        "Microsoft.RecoveryServices/vaults",
        "westeurope",
        {"name": "Standard"},
    )
    assert rs[0]["tags"] == {"env": "prod"}
    assert rs[0]["properties"]["provisioningState"] == "Succeeded"
    assert (
        rs[0]["properties"]["monitoringSettings"]["azureMonitorAlertSettings"]["alertsForAllJobFailures"]
        == "Enabled"
    )
    assert rs[1]["location"] == "northeurope"
    assert "tags" not in rs[1]

    bvs = await all_pages(
        http, f"{sim.url}/subscriptions/{SUB}/providers/Microsoft.DataProtection/backupVaults?{DP_API}"
    )
    assert [v["name"] for v in bvs] == ["bv-1"]
    # Listings spell the type BackupVaults, in the id too.
    assert bvs[0]["type"] == "Microsoft.DataProtection/BackupVaults"
    assert (
        bvs[0]["id"]
        == f"/subscriptions/{SUB}/resourceGroups/rg-a/providers/Microsoft.DataProtection/BackupVaults/bv-1"
    )
    assert bvs[0]["properties"]["monitoringSettings"] == {
        "azureMonitorAlertSettings": {"alertsForAllJobFailures": "Enabled"}
    }
    assert "sku" not in bvs[0]

    scoped = f"{sim.url}/subscriptions/{SUB}/resourceGroups/RG-B/providers"
    in_group = await all_pages(http, f"{scoped}/Microsoft.RecoveryServices/vaults?{VAULTS_API}")
    assert [v["name"] for v in in_group] == ["rsv-2"]
    assert await all_pages(http, f"{scoped}/Microsoft.DataProtection/backupVaults?{DP_API}") == []
    _, _, one = await get_json(http, f"{bv_url(sim, rg='rg-a', vault='bv-1')}?{DP_API}")
    assert (one["name"], one["type"]) == ("bv-1", "Microsoft.DataProtection/backupVaults")

    status, _, body = await get_json(
        http, f"{sim.url}/subscriptions/{EMPTY_SUB}/providers/Microsoft.RecoveryServices/vaults?{VAULTS_API}"
    )
    assert (status, body) == (200, {"value": []})
    unknown = "00000000-0000-0000-0000-0000000000ff"
    status, _, body = await get_json(
        http, f"{sim.url}/subscriptions/{unknown}/providers/Microsoft.DataProtection/backupVaults?{DP_API}"
    )
    assert (status, body["error"]["code"]) == (404, "SubscriptionNotFound")
    assert unknown in body["error"]["message"]
    status, _, body = await get_json(
        http,
        f"{sim.url}/subscriptions/{SUB}/resourceGroups/rg-z/providers/Microsoft.RecoveryServices/vaults?{VAULTS_API}",
    )
    assert (status, body["error"]["code"]) == (404, "ResourceGroupNotFound")


async def test_removed_vaults_answer_404_and_added_ones_appear(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    """A vault removed while the simulator runs answers 404 ResourceNotFound everywhere and leaves the listing; a vault added appears in the next listing."""
    estate = Estate(Clock())
    estate.add(job("rs-job", T0 - 10, 60))
    estate.add(bv_job("bv-job", T0 - 10, 60))
    item = estate.add_item(SimItem(SUB, RG, VAULT, kind="disk", name="disk-1"))
    sim = await serve(estate, operation_seconds=5)
    async with http.post(f"{bv_url(sim)}/backupInstances/{item.arm_name}/backup?{DP_API}") as resp:
        result_url = resp.headers["Location"]
    listing_url = f"{sim.url}/subscriptions/{SUB}/providers/Microsoft.DataProtection/backupVaults?{DP_API}"
    _, _, before = await get_json(http, listing_url)
    assert [v["name"] for v in before["value"]] == [VAULT]

    estate.remove_vault(SUB, RG, VAULT, kind=BACKUP_VAULT)
    for url in (
        f"{bv_url(sim)}?{DP_API}",
        f"{bv_url(sim)}/backupJobs?{DP_API}",
        f"{bv_url(sim)}/backupJobs/bv-job?{DP_API}",
        f"{bv_url(sim)}/backupInstances?{DP_API}",
    ):
        status, _, body = await get_json(http, url)
        assert (status, body["error"]["code"]) == (404, "ResourceNotFound")
        assert f"Microsoft.DataProtection/backupVaults/{VAULT}" in body["error"]["message"]
    status, _, _ = await get_json(http, result_url)
    assert status == 404
    _, _, after = await get_json(http, listing_url)
    assert after == {"value": []}
    status, _, _ = await get_json(http, f"{vault_url(sim)}/backupJobs/rs-job?{API}")
    assert status == 200  # the Recovery Services vault of the same name is another vault

    estate.add_vault(SUB, RG, "vault-new", kind=BACKUP_VAULT)
    _, _, added = await get_json(http, listing_url)
    assert [v["name"] for v in added["value"]] == ["vault-new"]

    estate.remove_vault(SUB, RG, VAULT)
    status, _, body = await get_json(http, f"{vault_url(sim)}/backupJobs?{API}")
    assert (status, body["error"]["code"]) == (404, "ResourceNotFound")
    with pytest.raises(KeyError):
        estate.remove_vault(SUB, RG, VAULT)


def test_a_vaults_kind_is_part_of_its_identity() -> None:
    """A Recovery Services vault and a Backup vault of one name in one resource group are two vaults, each with its own jobs."""
    estate = Estate(Clock())
    estate.add(job("rs", T0 - 10, 5))
    estate.add(bv_job("bv", T0 - 10, 5))
    estate.add_recurring(RecurringJob(bv_job("nightly", T0 - 250, 30), 100, ("Completed", "Failed")))
    assert estate.vaults() == [(SUB, RG, VAULT)]
    assert estate.vaults(BACKUP_VAULT) == [(SUB, RG, VAULT)]
    assert [v.kind for v in estate.all_vaults()] == [RECOVERY_SERVICES, BACKUP_VAULT]
    assert [j.job_id for j in estate.jobs_in(SUB, RG, VAULT)] == ["rs"]
    backup_vault_jobs = estate.jobs_in(SUB, RG.upper(), VAULT.upper(), kind=BACKUP_VAULT)
    assert [j.outcome for j in backup_vault_jobs] == ["Completed", "Completed", "Failed", "Completed"]
    assert estate.get(SUB, RG, VAULT, "bv") is None
    assert estate.get(SUB, RG, VAULT, "BV", kind=BACKUP_VAULT) is not None
    with pytest.raises(ValueError, match="vault kind"):
        estate.add_vault(SUB, RG, "x", kind="classic")
    with pytest.raises(ValueError, match="status_spelling"):
        estate.add_vault(SUB, RG, "x", kind=BACKUP_VAULT, status_spelling="shouting")


# -- protected items -----------------------------------------------------------------------


async def test_protected_items_carry_the_services_quirks(serve: Serve, http: aiohttp.ClientSession) -> None:
    """backupProtectedItems lists every item type with the recorded name shapes and the never-backed-up, stale, stopped and unhealthy forms; `$filter` narrows by type."""
    clock = Clock()
    estate = Estate(clock)
    three_days_ago = T0 - 3 * DAY + 0.6678121
    app = {"source_resource_group": "rg-app"}

    def add(kind: str, name: str, **kw: Any) -> None:
        estate.add_item(SimItem(SUB, RG, VAULT, kind=kind, name=name, **kw))

    add("vm", "vm-new", **app)
    add("vm", "vm-stale", recovery_points=(three_days_ago - DAY, three_days_ago), **app)
    add("vm", "vm-stopped", protection_state="ProtectionStopped", **app)
    add(
        "vm",
        "vm-sick",
        health="ActionRequired",
        recovery_points=(T0 - 3600,),
        last_backup=T0 - 600,
        last_backup_status="Failed",
        **app,
    )
    add("vm", "vm-later", first_protected=T0 + 60, **app)
    add("sql", "SalesDb", parent="sql-vm-01", recovery_points=(T0 - 1800,))
    add("sql", "NewDb", parent="sql-vm-01")
    add("sql", "BrokenDb", parent="sql-vm-01", last_backup=T0 - 900, last_backup_status="Failed")
    add("fileshare", "finance", parent="stfinance01", recovery_points=(T0 - 7200,))
    add("fileshare", "empty", parent="stfinance01")
    sim = await serve(estate, page_size=4)

    async def items(filter_text: str | None = None) -> dict[str, dict[str, Any]]:
        query = f"&{urlencode({'$filter': filter_text})}" if filter_text else ""
        listed = await all_pages(http, f"{vault_url(sim)}/backupProtectedItems?{API}{query}")
        return {item["properties"]["friendlyName"]: item for item in listed}

    found = await items()
    assert sorted(found) == sorted(
        ["vm-new", "vm-stale", "vm-stopped", "vm-sick", "SalesDb", "NewDb", "BrokenDb", "finance", "empty"]
    )
    new = found["vm-new"]
    assert new["name"] == "VM;iaasvmcontainerv2;rg-app;vm-new"
    assert new["id"] == (
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.RecoveryServices/vaults/{VAULT}"
        "/backupFabrics/Azure/protectionContainers/IaasVMContainer;iaasvmcontainerv2;rg-app;vm-new"
        "/protectedItems/VM;iaasvmcontainerv2;rg-app;vm-new"
    )
    assert (
        new["type"] == "Microsoft.RecoveryServices/vaults/backupFabrics/protectionContainers/protectedItems"
    )
    props = new["properties"]
    assert (props["protectionState"], props["lastBackupStatus"], props["lastBackupTime"]) == (
        "IRPending",
        "",
        "2001-01-01T00:00:00Z",
    )
    assert "lastRecoveryPoint" not in props
    assert props["containerName"] == "iaasvmcontainerv2;rg-app;vm-new"
    assert (props["protectedItemType"], props["workloadType"], props["backupManagementType"]) == (
        "Microsoft.Compute/virtualMachines",
        "VM",
        "AzureIaasVM",
    )
    assert (
        props["sourceResourceId"]
        == f"/subscriptions/{SUB}/resourceGroups/rg-app/providers/Microsoft.Compute/virtualMachines/vm-new"
    )
    assert (props["healthStatus"], props["policyName"]) == ("Passed", "DefaultPolicy")
    assert props["vaultId"].startswith(f"https://management.azure.com/subscriptions/{SUB}/")

    stale = found["vm-stale"]["properties"]
    assert (stale["protectionState"], stale["lastBackupStatus"]) == ("Protected", "Completed")
    assert stale["lastRecoveryPoint"] == format_time(three_days_ago)
    assert stale["lastBackupTime"] == format_time(three_days_ago - 1207.0952653)
    assert stale["healthDetails"][0]["title"] == "IaasVmHealthGreenDefault"

    stopped = found["vm-stopped"]["properties"]
    assert (stopped["protectionState"], stopped["policyId"], stopped["lastRecoveryPoint"]) == (
        "ProtectionStopped",
        "",
        None,
    )
    assert "policyName" not in stopped

    sick = found["vm-sick"]["properties"]
    assert (sick["healthStatus"], sick["protectionStatus"], sick["lastBackupStatus"]) == (
        "ActionRequired",
        "Unhealthy",
        "Failed",
    )
    assert sick["lastBackupTime"] == format_time(T0 - 600)
    assert sick["healthDetails"][0]["title"] == "IaasVmHealthRedDefault"

    sales = found["SalesDb"]
    assert sales["name"] == "SQLDataBase;mssqlserver;salesdb"
    assert sales["properties"]["containerName"] == f"VMAppContainer;Compute;{RG};sql-vm-01"
    assert (sales["properties"]["protectedItemHealthStatus"], sales["properties"]["lastBackupStatus"]) == (
        "Healthy",
        "Healthy",
    )
    new_db = found["NewDb"]["properties"]
    assert "lastBackupTime" not in new_db
    assert (new_db["protectionState"], new_db["protectedItemHealthStatus"], new_db["lastBackupStatus"]) == (
        "IRPending",
        "IRPending",
        "IRPending",
    )
    broken = found["BrokenDb"]["properties"]
    assert (broken["protectionState"], broken["lastBackupTime"]) == ("IRPending", format_time(T0 - 900))
    assert broken["lastBackupErrorDetail"]["code"] == "CloudInternalError"
    assert "policyName" not in broken

    finance = found["finance"]
    assert finance["name"].startswith("AzureFileShare;")
    assert "finance" not in finance["name"]
    assert finance["properties"]["containerName"] == f"StorageContainer;Storage;{RG};stfinance01"
    assert finance["properties"]["sourceResourceId"].endswith(
        "/providers/Microsoft.Storage/storageAccounts/stfinance01"
    )
    assert "lastBackupTime" in finance["properties"]
    assert "lastBackupTime" not in found["empty"]["properties"]

    vms = await items("backupManagementType eq 'AzureIaasVM' and itemType eq 'VM'")
    assert sorted(vms) == ["vm-new", "vm-sick", "vm-stale", "vm-stopped"]
    assert sorted(await items("backupManagementType eq 'AzureStorage'")) == ["empty", "finance"]
    status, _, body = await get_json(
        http, f"{vault_url(sim)}/backupProtectedItems?{API}", params={"$filter": "policyName eq 'x'"}
    )
    assert (status, body["error"]["code"]) == (400, "BMSUserErrorInvalidFilter")
    clock.now = T0 + 61
    assert "vm-later" in await items()


def test_protected_items_read_with_the_official_sdk() -> None:
    """Microsoft's SDK reads the demo's protected items into the models their protectedItemType names."""
    models = pytest.importorskip("azure.mgmt.recoveryservicesbackup.models")
    # What the SDK's client deserializes responses with; a model's constructor stops at one
    # discriminator level, so a VM item (two levels down) would stay a plain ProtectedItem.
    model_base = pytest.importorskip("azure.mgmt.recoveryservicesbackup._utils.model_base")
    estate = demo_estate(T0)
    families = {
        "vm": (models.AzureIaaSVMProtectedItem, "AzureIaaSComputeVMProtectedItem"),
        "sql": (models.AzureVmWorkloadProtectedItem, "AzureVmWorkloadSQLDatabaseProtectedItem"),
        "fileshare": (models.ProtectedItem, "AzureFileshareProtectedItem"),
    }
    for vault in estate.all_vaults(kind=RECOVERY_SERVICES):
        for item in estate.items_in(vault.subscription_id, vault.resource_group, vault.name, now=T0):
            props = protected_item_body(item, vault, T0)["properties"]
            family, name = families[item.kind]
            read = model_base._deserialize(family, props)
            assert type(read).__name__ == name
            assert (read.friendly_name, read.protection_state) == (item.name, props["protectionState"])
            assert (read.last_backup_time is None) == ("lastBackupTime" not in props)


async def test_backup_instances_and_recovery_points_in_a_window(
    serve: Serve, http: aiohttp.ClientSession
) -> None:
    """backupInstances lists instances shaped like the recorded ones; recoveryPoints answers the points within a startDate/endDate window, newest first."""
    estate = Estate(Clock())
    estate.add_vault(SUB, RG, VAULT, kind=BACKUP_VAULT, location="centraluseuap")
    points = tuple(T0 - k * DAY + 0.505598 for k in range(1, 6))
    disk = estate.add_item(
        SimItem(SUB, RG, VAULT, kind="disk", name="disk-1", policy="diskpolicy", recovery_points=points)
    )
    estate.add_item(
        SimItem(SUB, RG, VAULT, kind="postgresql", name="orders", parent="pg-1", health="ActionRequired")
    )
    estate.add_item(
        SimItem(SUB, RG, VAULT, kind="disk", name="disk-old", protection_state="ProtectionStopped")
    )
    aks = estate.add_item(
        SimItem(SUB, RG, VAULT, kind="aks", name="aks-1", every=3600.0, first_protected=T0 - 5 * 3600 - 1)
    )
    sim = await serve(estate, page_size=2)
    vault_id = (
        f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.DataProtection/backupVaults/{VAULT}"
    )

    listed = await all_pages(http, f"{bv_url(sim)}/backupInstances?{DP_API}")
    instances = {i["properties"]["friendlyName"]: i for i in listed}
    assert sorted(instances) == ["aks-1", "disk-1", "disk-old", "pg-1\\orders"]
    first = instances["disk-1"]
    assert (first["name"], first["id"]) == (disk.arm_name, f"{vault_id}/backupInstances/{disk.arm_name}")
    assert disk.arm_name.startswith("disk-1-disk-1-")
    assert first["type"] == "Microsoft.DataProtection/backupVaults/backupInstances"
    props = first["properties"]
    assert (
        props["dataSourceInfo"]["resourceID"]
        == f"/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.Compute/disks/disk-1"
    )
    assert (props["dataSourceInfo"]["datasourceType"], props["dataSourceInfo"]["resourceLocation"]) == (
        "Microsoft.Compute/disks",
        "centraluseuap",
    )
    assert props["policyInfo"]["policyId"] == f"{vault_id}/backupPolicies/diskpolicy"
    assert (props["protectionStatus"], props["currentProtectionState"]) == (
        {"status": "ProtectionConfigured"},
        "ProtectionConfigured",
    )
    orders = instances["pg-1\\orders"]["properties"]
    assert orders["protectionStatus"]["status"] == "ProtectionError"
    assert orders["protectionStatus"]["errorDetails"]["code"] == "InternalServerError"
    assert orders["dataSourceSetInfo"]["resourceID"].endswith(
        "/providers/Microsoft.DBforPostgreSQL/servers/pg-1"
    )
    assert instances["disk-old"]["properties"]["protectionStatus"] == {"status": "ProtectionStopped"}
    _, _, single = await get_json(http, f"{bv_url(sim)}/backupInstances/{disk.arm_name.upper()}?{DP_API}")
    assert single == first

    points_url = f"{bv_url(sim)}/backupInstances/{disk.arm_name}/recoveryPoints?api-version=2023-01-01"
    window = "startDate eq '2023-11-12T10:13:20.0000000Z' and endDate eq '2023-11-14T10:13:20.0000000Z'"
    status, _, body = await get_json(http, points_url, params={"$filter": window})
    assert status == 200
    assert [p["properties"]["recoveryPointTime"] for p in body["value"]] == [
        "2023-11-13T22:13:20.5055980Z",
        "2023-11-12T22:13:20.5055980Z",
    ]
    point = body["value"][0]
    assert point["id"] == f"{vault_id}/backupInstances/{disk.arm_name}/recoveryPoints/{point['name']}"
    assert point["type"] == "Microsoft.DataProtection/backupVaults/backupInstances/recoveryPoints"
    assert (point["properties"]["objectType"], point["properties"]["recoveryPointType"]) == (
        "AzureBackupDiscreteRecoveryPoint",
        "Incremental",
    )
    assert point["properties"]["recoveryPointDataStoresDetails"][0]["type"] == "OperationalStore"

    every = [p["properties"]["recoveryPointTime"] for p in await all_pages(http, points_url)]
    assert every == sorted(every, reverse=True)
    assert len(every) == 5
    hourly = await all_pages(http, f"{bv_url(sim)}/backupInstances/{aks.arm_name}/recoveryPoints?{DP_API}")
    assert len(hourly) == 5  # one an hour since protection began

    status, _, _ = await get_json(http, points_url, params={"$filter": "status eq 'x'"})
    assert status == 400
    status, _, _ = await get_json(http, f"{bv_url(sim)}/backupInstances/nope/recoveryPoints?{DP_API}")
    assert status == 404


# -- the estate and its scenarios ----------------------------------------------------------


def test_recurring_jobs_are_deterministic_and_cycle_outcomes() -> None:
    """Instances appear as the clock passes their start, with stable ids and cycling outcomes."""
    clock = Clock()
    estate = Estate(clock)
    template = job("nightly", T0 - 250, 30)
    estate.add_recurring(RecurringJob(template, 100, ("Completed", "Failed")))
    first = estate.jobs_in(SUB, RG, VAULT)
    assert [j.start for j in first] == [T0 - 50, T0 - 150, T0 - 250]
    assert [j.outcome for j in first] == ["Completed", "Failed", "Completed"]
    clock.now = T0 + 60
    assert len(estate.jobs_in(SUB, RG, VAULT)) == 4

    again = Estate(Clock())
    again.add_recurring(RecurringJob(template, 100, ("Completed", "Failed")))
    assert [j.job_id for j in again.jobs_in(SUB, RG, VAULT)] == [j.job_id for j in first]


def test_demo_estate_moves_from_the_start() -> None:
    """The demo's first jobs end 10-40 s in, outcomes are mixed and recurring jobs keep coming."""
    clock = Clock()
    estate = demo_estate(T0)
    estate.clock = clock
    vaults = demo_vaults(estate)
    assert [v["name"] for v in vaults] == ["vault-prod-weu", "vault-sql", "vault-files", "vault-dr"]
    assert len({v["subscription_id"] for v in vaults}) == 2
    running = [
        j
        for s, rg, v in estate.vaults()
        for j in estate.jobs_in(s, rg, v)
        if estate.status_of(j) == "InProgress"
    ]
    first_end = min(j.end for j in running) - T0
    assert 10 <= first_end <= 40
    outcomes = {j.outcome for j in running}
    assert outcomes == {"Completed", "CompletedWithWarnings", "Failed", "Cancelled"}
    assert {j.job_type for j in running} >= {"AzureIaaSVMJob", "AzureWorkloadJob", "AzureStorageJob"}
    before = sum(len(v["jobs"]) for v in vaults)
    clock.now = T0 + 600
    after = sum(len(v["jobs"]) for v in demo_vaults(estate))
    assert after >= before + 10


def test_demo_estate_has_a_backup_vault_and_items_in_every_vault() -> None:
    """The demo adds a Backup vault whose disk and PostgreSQL jobs end within a minute (one failing) and recur, and items in every vault: stale, never backed up, stopped and healthy."""
    clock = Clock()
    estate = demo_estate(T0)
    estate.clock = clock
    assert demo_subscriptions(estate) == [DEMO_SUBSCRIPTION, DEMO_DR_SUBSCRIPTION]
    assert {v["type"] for v in demo_vaults(estate)} == {"recovery_services"}
    (backup_vault,) = estate.vaults(BACKUP_VAULT)
    assert backup_vault[0] == DEMO_SUBSCRIPTION
    jobs = estate.jobs_in(*backup_vault, kind=BACKUP_VAULT)
    running = [j for j in jobs if estate.status_of(j) == "InProgress"]
    assert {j.job_type for j in running} == {
        "Microsoft.Compute/disks",
        "Microsoft.DBforPostgreSQL/servers/databases",
    }
    assert all(0 < j.end - T0 <= 60 for j in running)
    assert "Failed" in {j.outcome for j in running}
    clock.now = T0 + 600
    assert len(estate.jobs_in(*backup_vault, kind=BACKUP_VAULT)) >= len(jobs) + 4

    never, stopped, stale, healthy = [], [], [], []
    for vault in estate.all_vaults():
        items = estate.items_in(
            vault.subscription_id, vault.resource_group, vault.name, kind=vault.kind, now=T0
        )
        assert items, vault.name
        for item in items:
            last = item.last_point(T0)
            if item.protection_state == "ProtectionStopped":
                stopped.append(item.name)
            elif last is None:
                never.append(item.name)
            elif T0 - last > 2.9 * DAY:
                stale.append(item.name)
            else:
                assert T0 - last < DAY, item.name
                healthy.append(item.name)
    assert {"vm-app-01", "hr-share", "disk-app-01-data"} <= set(stale)
    assert {"vm-batch-01", "ArchiveDb", "aks-prod-weu"} <= set(never)
    assert {"vm-legacy-01", "disk-legacy-01-os"} <= set(stopped)
    assert len(healthy) >= 10
    # Scheduled items keep backing up while the demo runs.
    web = next(
        i
        for i in estate.items_in(DEMO_SUBSCRIPTION, "rg-backup-prod", "vault-prod-weu")
        if i.name == "vm-web-01"
    )
    later = web.last_point(T0 + 10 * DAY)
    assert later is not None
    assert later > T0 + 9 * DAY


def test_bodies_read_with_the_official_sdk() -> None:
    """Microsoft's SDK reads demo job and operation bodies into the models their types name."""
    models = pytest.importorskip("azure.mgmt.recoveryservicesbackup.models")
    clock = Clock()
    estate = demo_estate(T0)
    estate.clock = clock
    for moment in (T0, T0 + 45):
        clock.now = moment
        for vault in estate.vaults():
            for sim_job in estate.jobs_in(*vault):
                status = estate.status_of(sim_job)
                props = models.JobResource(job_body(sim_job, status, moment, extended=True)).properties
                assert type(props).__name__ == sim_job.job_type
                assert props.status == status
                assert abs(props.start_time.timestamp() - sim_job.start) < 1e-5
                if status in ("InProgress", "Cancelling"):
                    assert props.end_time is None
                else:
                    assert abs(props.end_time.timestamp() - sim_job.end) < 1e-5

    op = estate.trigger_backup(
        *estate.vaults()[0],
        "IaasVMContainer;iaasvmcontainerv2;rg;vm",
        "VM;iaasvmcontainerv2;rg;vm",
        operation_seconds=1,
    )
    read = models.OperationStatus(operation_body(op, clock.now + 1))
    assert read.status == "Succeeded"
    assert read.properties.job_id == op.job_id


# -- text formats --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "iso", "timespan"),
    [
        (0, "PT0S", "00:00:00"),
        (9.8782791, "PT9.8782791S", "00:00:09.8782791"),
        (1223.0896697, "PT20M23.0896697S", "00:20:23.0896697"),
        (3600, "PT1H", "01:00:00"),
        (14673.765065, "PT4H4M33.765065S", "04:04:33.7650650"),
        (90061.5, "P1DT1H1M1.5S", "1.01:01:01.5000000"),
    ],
)
def test_durations_read_like_the_service(seconds: float, iso: str, timespan: str) -> None:
    """Durations come out as XmlConvert ISO 8601 or as .NET TimeSpan text."""
    assert format_duration(seconds) == iso
    assert format_duration(seconds, timespan=True) == timespan


def test_times_and_filter_dates() -> None:
    """Times drop trailing fraction zeros; filter dates accept the AM/PM form and ISO 8601."""
    assert format_time(1501738267.014604) == "2017-08-03T05:31:07.014604Z"
    assert format_time(T0) == "2023-11-14T22:13:20Z"
    assert format_bag_time(1508397088.0) == "10/19/2017 7:11:28 AM"
    assert format_bag_time(T0) == "11/14/2023 10:13:20 PM"
    assert parse_time("2016-01-01 00:00:00 AM") == parse_time("2016-01-01T00:00:00Z")
    assert parse_time("2016-03-21 12:30:00 AM") == parse_time("2016-03-21T00:30:00+00:00")
    assert parse_time("2016-03-21 06:30:00 PM") == parse_time("2016-03-21 18:30:00")
    with pytest.raises(FilterError):
        parse_time("2016-13-01 00:00:00 AM")
