"""The Azure Backup simulator answers like ARM and the Backup service do, over real HTTP on loopback.

Time is an injected clock, so job life cycles are walked through without sleeping.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from watcher.sim import (
    SIM_TOKEN,
    Estate,
    RecurringJob,
    SimJob,
    Simulator,
    bench_estate,
    demo_estate,
    demo_vaults,
    start_simulator,
)
from watcher.sim.bodies import job_body, operation_body
from watcher.sim.filters import FilterError, parse_filter, parse_time
from watcher.sim.formats import format_bag_time, format_duration, format_time

pytestmark = pytest.mark.timeout(20)

T0 = 1_700_000_000.0  # 2023-11-14T22:13:20Z
SUB = "00000000-0000-0000-0000-000000000001"
OTHER_SUB = "00000000-0000-0000-0000-000000000002"
RG = "rg-backup"
VAULT = "vault-a"
API = "api-version=2025-02-01"
AUTH = {"Authorization": f"Bearer {SIM_TOKEN}"}


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


def test_bench_estate_is_quick_to_build_and_to_list_by_status() -> None:
    """10,000 jobs build in well under two seconds; status listings stay cheap as jobs end."""
    clock = Clock()
    started = time.process_time()  # CPU time: a busy test machine does not inflate it
    estate = bench_estate(200, 50, now=T0, spread=600, clock=clock)
    assert time.process_time() - started < 2.0
    vaults = estate.vaults()
    assert len(vaults) == 200
    assert len({s for s, _, _ in vaults}) > 1
    in_progress = parse_filter("status eq 'InProgress'")
    cancelling = parse_filter("status eq 'Cancelling'")
    total = sum(len(estate.query(*v, q, limit=1000)[0]) for v in vaults for q in (in_progress, cancelling))
    assert total == 10_000

    clock.now = T0 + 300
    started = time.process_time()
    running = sum(len(estate.query(*v, in_progress, limit=1000)[0]) for v in vaults)
    assert time.process_time() - started < 1.0
    assert 3_000 < running < 7_000
    clock.now = T0 + 601
    assert sum(len(estate.query(*v, in_progress, limit=1000)[0]) for v in vaults) == 0
    finished = [
        estate.query(*v, parse_filter(f"status eq '{s}'"), limit=1000)[0]
        for v in vaults
        for s in ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
    ]
    assert sum(len(jobs) for jobs in finished) == 10_000


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
