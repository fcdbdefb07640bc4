"""The ARM client against the simulator and tiny loopback servers that answer like the corpus.

Listing with `$filter` and `nextLink`, operations to jobs, api-version rejections, TLS with a private
CA, and the rule that a token only ever goes to the configured management host.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import structlog
from aiohttp import web
from structlog.testing import capture_logs

from tests import corpus
from tests.conftest import SUB, FakeClock, make_config, running_watcher, wait_for
from watcher.app import AzureSide, build_azure
from watcher.azure.auth import StaticTokenCredential, TokenProvider
from watcher.azure.client import ArmClient, TlsVerificationError
from watcher.azure.models import VaultKind, VaultRef
from watcher.azure.ratelimit import Backoff, SubscriptionLimiter
from watcher.azure.recoveryservices import JobFilter, RecoveryServices
from watcher.config import Config
from watcher.errors import ApiVersionError, BadResponseError, ConfigError, ForeignHostError, ServerError
from watcher.sim import SIM_TOKEN, SUPPORTED_API_VERSIONS, Estate, SimJob, Simulator, start_simulator

pytestmark = pytest.mark.timeout(20)

RG = "rg-backup"
VAULT = "vault-a"
REF = VaultRef(SUB, RG, VAULT)
JOB = "41f3e94b-ae6b-4a20-b422-65abfcaf03e5"
AUTH = {"Authorization": f"Bearer {SIM_TOKEN}"}
# The signed query 2024-era Azure-AsyncOperation URLs carry (ps-TestAzureFSGetJob-2024__01, shortened).
SIGNED = {
    "t": "638493653993754561",
    "c": "MIIHADCCBeigAwIBAgITHgPr-Oynpc11nukqPw",
    "s": "bnVx8sYq0Q-PZk",
    "h": "qL3r9Xw",
}


def sim_job(clock: FakeClock, job_id: str = JOB, *, ago: float = 60.0, duration: float = 600.0) -> SimJob:
    """An IaaS VM backup in the test vault that started `ago` seconds before the clock."""
    return SimJob(
        subscription_id=SUB,
        resource_group=RG,
        vault=VAULT,
        job_id=job_id,
        job_type="AzureIaaSVMJob",
        operation="Backup",
        entity="vm-web-01",
        backup_management_type="AzureIaasVM",
        start=clock() - ago,
        duration=duration,
    )


def rs(side: AzureSide) -> RecoveryServices:
    """The Recovery Services provider of an Azure side, for what only that provider offers."""
    provider = side.api.provider(VaultKind.RECOVERY_SERVICES)
    assert isinstance(provider, RecoveryServices)
    return provider


def config_for(endpoint: str, tmp_path: Path, **azure: Any) -> Config:
    """A config watching the test job at `endpoint`."""
    return make_config(
        endpoint,
        [{"subscription_id": SUB, "resource_group": RG, "name": VAULT, "jobs": [JOB]}],
        tmp_path / "state.db",
        azure=azure,
        # Retry-After values up to 30 s are honoured as sent (the tests' sleeps are fake).
        poll={"backoff_max": 30},
    )


@pytest.fixture
def debug_logs() -> Iterator[None]:
    """structlog lets debug events through (whatever an earlier test configured), restored afterwards."""
    saved = structlog.get_config()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG))
    yield
    structlog.configure(**saved)


@dataclass
class Sleeps:
    """The client's sleep: records each delay and moves the estate's clock by it instead of waiting."""

    clock: FakeClock
    delays: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        self.clock.advance(seconds)
        await asyncio.sleep(0)


@pytest.fixture
def sleeps(clock: FakeClock) -> Sleeps:
    return Sleeps(clock)


Connect = Callable[..., Awaitable[AzureSide]]


@pytest.fixture
async def connect(tmp_path: Path, sleeps: Sleeps) -> AsyncIterator[Connect]:
    """Build the daemon's Azure side for an endpoint (closed after the test); sleeps move the clock."""
    built: list[AzureSide] = []

    async def make(endpoint: str, **azure: Any) -> AzureSide:
        side = build_azure(config_for(endpoint, tmp_path, **azure), None, SubscriptionLimiter())
        side.client.sleep = sleeps
        built.append(side)
        return side

    yield make
    for side in built:
        await side.close()


@pytest.fixture
async def arm(sim: Simulator, estate: Estate, connect: Connect) -> AzureSide:
    """The Azure side wired to the simulator, whose estate has the (empty) test vault."""
    estate.add_vault(SUB, RG, VAULT)
    return await connect(sim.url)


@dataclass
class Bystander:
    """A second loopback server on another port: records every request and whether it carried a token."""

    url: str = ""
    seen: list[tuple[str, bool]] = field(default_factory=list)


@pytest.fixture
async def bystander() -> AsyncIterator[Bystander]:
    """A server that must never be sent a token."""
    record = Bystander()

    async def handle(request: web.Request) -> web.Response:
        record.seen.append((request.path_qs, "Authorization" in request.headers))
        return web.json_response({"value": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    record.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield record
    finally:
        await runner.cleanup()


def vault_path(base: str = "") -> str:
    return (
        f"{base}/subscriptions/{SUB}/resourceGroups/{RG}/providers/Microsoft.RecoveryServices/vaults/{VAULT}"
    )


async def trigger_backup(
    sim: Simulator, item: str = "vm;iaasvmcontainerv2;rg-app;vm-web-01"
) -> dict[str, str]:
    """POST .../protectedItems/{item}/backup as a user would; the 202's headers."""
    container = "iaasvmcontainer;iaasvmcontainerv2;rg-app;vm-web-01"
    url = (
        f"{vault_path(sim.url)}/backupFabrics/Azure/protectionContainers/{container}"
        f"/protectedItems/{item}/backup?api-version=2025-02-01"
    )
    async with aiohttp.ClientSession(headers=AUTH) as http, http.post(url, json={}) as resp:
        assert resp.status == 202
        return dict(resp.headers)


def operation_body(status: str, **extra: Any) -> dict[str, Any]:
    """An operationsStatus body shaped like the corpus' (`0001-01-01T00:00:00` while running)."""
    body: dict[str, Any] = {
        "id": "7e6b89db-1dfe-44da-b7fa-9678fd4260d6",
        "name": "7e6b89db-1dfe-44da-b7fa-9678fd4260d6",
        "status": status,
        "startTime": "2024-04-22T06:51:02.1758655Z",
        "endTime": "0001-01-01T00:00:00" if status == "InProgress" else "2024-04-22T06:52:02.1758655Z",
    }
    body.update(extra)
    return body


# -- listing --------------------------------------------------------------------------------


async def test_listing_follows_next_link_verbatim_until_it_is_absent(
    arm: AzureSide, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """450 jobs at 200 a page: 3 requests, every job once; pages 2-3 use nextLink as given (its api-version)."""
    for i in range(450):
        estate.add(sim_job(clock, f"00000000-0000-4000-8000-{i:012d}", ago=3600 - i))
    flt = JobFilter(
        start_time=datetime.fromtimestamp(clock() - 7200, UTC), end_time=datetime.fromtimestamp(clock(), UTC)
    )
    pages = [page async for page in rs(arm).list_jobs(arm.client, REF, flt)]
    assert [len(p.jobs) for p in pages] == [200, 200, 50]
    ids = [job.job_id for page in pages for job in page.jobs]
    assert len(set(ids)) == 450
    assert all(job.vault == REF for page in pages for job in page.jobs)
    assert len(sim.requests) == 3
    first, *rest = sim.requests
    assert first.query["api-version"] == "2025-02-01"
    assert first.query["$filter"].startswith("startTime eq '")
    assert " and endTime eq '" in first.query["$filter"]
    assert all(r.query["api-version"] == "2017-07-01" and "$skiptoken" in r.query for r in rest)
    assert all(r.query["$filter"] == first.query["$filter"] for r in rest)


async def test_status_filter_is_rendered_as_documented(
    arm: AzureSide, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """`status eq 'InProgress'` with the times in the service's own format; the simulator's parser takes it."""
    estate.add(sim_job(clock, JOB))
    estate.add(sim_job(clock, "00000000-0000-4000-8000-000000000001", ago=3000, duration=60))
    flt = JobFilter(
        start_time=datetime(2024, 4, 22, 6, 51, 2, tzinfo=UTC),
        end_time=datetime.fromtimestamp(clock() + 60, UTC),
        status="InProgress",
    )
    rendered = flt.render()
    assert rendered is not None
    assert rendered.startswith("startTime eq '2024-04-22 06:51:02 AM' and endTime eq '")
    assert rendered.endswith(" and status eq 'InProgress'")
    pages = [page async for page in rs(arm).list_jobs(arm.client, REF, flt)]
    assert [job.job_id for page in pages for job in page.jobs] == [JOB]
    assert sim.requests[0].status == 200


async def test_a_single_page_ends_the_listing(
    arm: AzureSide, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """A page without nextLink (key absent, or null as older versions send) is the last: one request each."""
    estate.add(sim_job(clock))
    assert [len(p.jobs) async for p in rs(arm).list_jobs(arm.client, REF)] == [1]
    body = corpus.get_body("recordings/ps-TestGetJobs-2016__01.json")
    body["nextLink"] = None
    sim.inject(200, path_contains="/backupjobs", body=body)
    pages = [p async for p in rs(arm).list_jobs(arm.client, REF)]
    assert len(pages) == 1
    assert len(sim.requests) == 2


async def test_next_link_to_another_host_is_refused_before_a_token_is_sent(
    arm: AzureSide, sim: Simulator, bystander: Bystander, estate: Estate, clock: FakeClock
) -> None:
    """A nextLink pointing at another port is a ForeignHostError; that server never hears from us."""
    estate.add(sim_job(clock))
    foreign = f"{vault_path(bystander.url)}/backupJobs?api-version=2017-07-01&$skiptoken=x"
    sim.inject(200, path_contains="/backupjobs", body={"value": [], "nextLink": foreign})
    with pytest.raises(ForeignHostError, match=r"refusing to follow http://127\.0\.0\.1:\d+") as info:
        async for _ in rs(arm).list_jobs(arm.client, REF):
            pass
    assert "skiptoken" not in str(info.value)
    assert bystander.seen == []


async def test_next_link_is_sent_byte_for_byte(connect: Connect) -> None:
    """A nextLink's encoding (%2b, %27, $skiptoken XML) reaches the server unchanged, not re-quoted."""
    raw_seen: list[str] = []
    link_tail = (
        "/backupJobs?api-version=2017-07-01&%24skiptoken=%3C%3Fxml%20version%3D%221.0%22%3F%3E%2b%27x%27"
    )

    async def handle(request: web.Request) -> web.Response:
        raw_seen.append(request.raw_path)
        if len(raw_seen) == 1:
            base = f"http://{request.host}"
            return web.json_response({"value": [], "nextLink": vault_path(base) + link_tail})
        return web.json_response({"value": []})

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        side = await connect(f"http://127.0.0.1:{runner.addresses[0][1]}")
        assert [len(p.jobs) async for p in rs(side).list_jobs(side.client, REF)] == [0, 0]
    finally:
        await runner.cleanup()
    assert raw_seen[1] == vault_path() + link_tail


# -- operations -------------------------------------------------------------------------------


async def test_operation_from_a_real_202_yields_its_job(arm: AzureSide, sim: Simulator) -> None:
    """The Azure-AsyncOperation URL of POST .../backup is polled until Succeeded; it names the job, which exists."""
    headers = await trigger_backup(sim)
    url = headers["Azure-AsyncOperation"]
    assert "/operationsStatus/" in url
    seen: list[str] = []
    op = await arm.client.wait_operation(url, interval=0.1, on_poll=lambda s: seen.append(s.status))
    assert op.status == "Succeeded"
    assert seen[0] == "InProgress"
    assert seen[-1] == "Succeeded"
    (job_id,) = op.job_ids
    job = await arm.api.get_job(REF, job_id)
    assert job.entity == "vm-web-01"


async def test_backup_operations_url_and_location_url_lead_to_the_job(arm: AzureSide, sim: Simulator) -> None:
    """backupOperations/{id} gives the jobId too; a Location (operationResults) URL is followed via its 202's Azure-AsyncOperation."""
    headers = await trigger_backup(sim)
    operation_id = headers["Azure-AsyncOperation"].split("/operationsStatus/")[1].split("?")[0]
    by_vault = await arm.client.wait_operation(
        rs(arm).backup_operation_url(arm.client, REF, operation_id), interval=0.1
    )
    assert by_vault.status == "Succeeded"
    assert len(by_vault.job_ids) == 1
    other = await trigger_backup(sim)
    by_location = await arm.client.wait_operation(other["Location"], interval=0.1)
    assert by_location.status == "Succeeded"
    assert len(by_location.job_ids) == 1
    assert by_location.job_ids != by_vault.job_ids


async def test_retry_after_is_honoured_between_polls(arm: AzureSide, sim: Simulator, sleeps: Sleeps) -> None:
    """With Retry-After 7 the client waits 7 s between looks, not its shorter interval; 0 means the interval."""
    headers = await trigger_backup(sim)
    sim.inject(
        200,
        path_contains="/operationsstatus/",
        body=operation_body("InProgress"),
        headers={"Retry-After": "7"},
    )
    sim.inject(
        200,
        path_contains="/operationsstatus/",
        body=operation_body("InProgress"),
        headers={"Retry-After": "0"},
    )
    op = await arm.client.wait_operation(headers["Azure-AsyncOperation"], interval=0.5)
    assert op.status == "Succeeded"
    assert sleeps.delays == [7.0, 0.5]


async def test_jobs_extended_info_yields_every_job_id(arm: AzureSide, sim: Simulator) -> None:
    """OperationStatusJobsExtendedInfo's jobIds all come back, in order."""
    headers = await trigger_backup(sim)
    body = operation_body(
        "Succeeded",
        properties={"objectType": "OperationStatusJobsExtendedInfo", "jobIds": ["job-a", "job-b"]},
    )
    sim.inject(200, path_contains="/operationsstatus/", body=body)
    op = await arm.client.wait_operation(headers["Azure-AsyncOperation"])
    assert op.job_ids == ("job-a", "job-b")


async def test_failed_operation_yields_its_error(arm: AzureSide, sim: Simulator) -> None:
    """An operation that fails (an item locked by another operation) ends Failed with ARM's code and message."""
    headers = await trigger_backup(sim, item="vm;iaasvmcontainerv2;rg-app;vm-fail-01")
    op = await arm.client.wait_operation(headers["Azure-AsyncOperation"], interval=0.1)
    assert (op.status, op.job_ids, op.error_code) == ("Failed", (), "BMSUserErrorObjectLocked")
    assert op.error_message is not None
    assert "Another operation is in progress" in op.error_message


async def test_canceled_operation_and_a_transient_500_while_polling(arm: AzureSide, sim: Simulator) -> None:
    """A 500 RestApiInternalError between polls is retried; `Canceled` (one l) is final."""
    headers = await trigger_backup(sim)
    recorded = corpus.get_body("recordings/py-test_iaasvm_e2e-2017__04.json")
    sim.inject(500, path_contains="/operationsstatus/", body=recorded)
    sim.inject(200, path_contains="/operationsstatus/", body=operation_body("Canceled"))
    op = await arm.client.wait_operation(headers["Azure-AsyncOperation"])
    assert op.status == "Canceled"
    assert [r.status for r in sim.requests if "operationsStatus" in r.path] == [500, 200]


async def test_operation_gives_up_after_the_deadline(
    arm: AzureSide, sim: Simulator, clock: FakeClock, sleeps: Sleeps
) -> None:
    """An operation still running when give_up_after has passed raises TimeoutError; no look is wasted after it."""
    headers = await trigger_backup(sim)
    sim.inject(200, path_contains="/operationsstatus/", body=operation_body("InProgress"), times=100)
    with pytest.raises(TimeoutError):
        await arm.client.wait_operation(
            headers["Azure-AsyncOperation"], give_up_after=3, interval=1, clock=clock
        )
    assert sleeps.delays == [1, 1, 1]


@pytest.mark.parametrize("where", ["other-port", "other-scheme", "plain-http-remote"])
async def test_foreign_operation_url_is_refused_before_any_token(
    arm: AzureSide, sim: Simulator, bystander: Bystander, where: str
) -> None:
    """Operation URLs off the management host (another port, https, a remote http host) are refused untouched."""
    op_path = vault_path() + "/backupOperations/7e6b89db-1dfe-44da-b7fa-9678fd4260d6?api-version=2024-04-01"
    url = {
        "other-port": bystander.url + op_path,
        "other-scheme": sim.url.replace("http://", "https://") + op_path,
        "plain-http-remote": "http://management.azure.com" + op_path,
    }[where]
    with pytest.raises(ForeignHostError) as info:
        await arm.client.wait_operation(url + "&t=1&s=SIGNATURE")
    assert "SIGNATURE" not in str(info.value)
    assert "backupOperations" not in str(info.value)
    if where == "plain-http-remote":
        assert "plain http" in str(info.value)
    assert arm.tokens.fetches == 0
    assert bystander.seen == []
    assert sim.requests == []


async def test_operation_url_never_appears_whole_in_logs_or_errors(
    debug_logs: None, arm: AzureSide, sim: Simulator
) -> None:
    """Polling a signed 2024-style URL through a 500 and a 404 logs and raises nothing of its signature."""
    headers = await trigger_backup(sim)
    signed = headers["Azure-AsyncOperation"] + "".join(f"&{k}={v}" for k, v in SIGNED.items())
    sim.inject(503, path_contains="/operationsstatus/")
    with capture_logs() as logs:
        op = await arm.client.wait_operation(signed, interval=0.1)
        assert op.status == "Succeeded"
        sim.inject(404, path_contains="/operationsstatus/")
        with pytest.raises(Exception) as info:  # noqa: PT011 - any error: only its text matters here
            await arm.client.wait_operation(signed)
    assert any(e["event"] == "request_retry" for e in logs)
    text = repr(logs) + str(info.value)
    for secret in SIGNED.values():
        assert secret not in text
    assert "operationsStatus" not in text
    # The signed query reached the server as it was handed to us.
    assert sim.requests[-1].query["s"] == SIGNED["s"]


# -- api-version ------------------------------------------------------------------------------


async def test_rejected_api_version_names_the_supported_ones(
    sim: Simulator, connect: Connect, estate: Estate, clock: FakeClock
) -> None:
    """api_version 2099-01-01: an ApiVersionError (400 InvalidApiVersionParameter) listing ARM's versions."""
    estate.add(sim_job(clock))
    side = await connect(sim.url, api_version="2099-01-01")
    with pytest.raises(ApiVersionError) as info:
        await side.api.get_job(REF, JOB)
    error = info.value
    assert (error.status, error.code, error.reason) == (400, "InvalidApiVersionParameter", "bad_response")
    assert error.supported == list(SUPPORTED_API_VERSIONS)
    assert "does not accept api-version 2099-01-01" in str(error)
    assert "2025-02-01, 2025-01-01" in str(error)
    assert len(sim.requests) == 1  # not retried


async def test_no_registered_provider_names_the_supported_versions(arm: AzureSide, sim: Simulator) -> None:
    """ARM's NoRegisteredProviderFound (its own wording) is an ApiVersionError with the versions it lists."""
    message = (
        "No registered resource provider found for location 'westeurope' and API version '2015-01-01' for "
        "type 'vaults'. The supported api-versions are '2016-06-01, 2020-02-02, 2025-02-01'. The supported "
        "locations are 'westeurope, northeurope'."
    )
    sim.inject(
        400,
        path_contains="/backupjobs/",
        body={"error": {"code": "NoRegisteredProviderFound", "message": message}},
    )
    with pytest.raises(ApiVersionError) as info:
        await arm.api.get_job(REF, JOB)
    assert info.value.supported == ["2016-06-01", "2020-02-02", "2025-02-01"]
    assert "it supports: 2016-06-01, 2020-02-02, 2025-02-01" in str(info.value)


async def test_daemon_logs_api_version_rejected_with_the_supported_list(
    sim: Simulator, estate: Estate, clock: FakeClock, tmp_path: Path
) -> None:
    """The daemon logs api_version_rejected; its error text carries the versions ARM supports."""
    estate.add(sim_job(clock))
    config = config_for(sim.url, tmp_path, api_version="2099-01-01")
    with capture_logs() as logs:
        async with running_watcher(config):
            await wait_for(lambda: any(e["event"] == "api_version_rejected" for e in logs))
    event = next(e for e in logs if e["event"] == "api_version_rejected")
    assert event["code"] == "InvalidApiVersionParameter"
    assert "it supports: 2026-10-01, 2026-02-01" in event["error"]


# -- transport --------------------------------------------------------------------------------


async def test_ca_bundle_lets_tls_to_a_private_ca_work_and_its_absence_fails_fast(
    estate: Estate, clock: FakeClock, connect: Connect
) -> None:
    """TLS simulator: with its CA as ca_bundle the GET works; without, a TlsVerificationError at once, no retries."""
    estate.add(sim_job(clock))
    tls_sim = await start_simulator(estate, tls=True)
    try:
        assert tls_sim.url.startswith("https://")
        assert tls_sim.ca_file
        trusted = await connect(tls_sim.url, ca_bundle=tls_sim.ca_file)
        assert (await trusted.api.get_job(REF, JOB)).job_id == JOB
        untrusted = await connect(tls_sim.url)
        with pytest.raises(TlsVerificationError) as info:
            await untrusted.api.get_job(REF, JOB)
        assert info.value.reason == "connection"
        assert "ca_bundle" in str(info.value)
        assert "certificate verify failed" in str(info.value)
        assert untrusted.client.requests_sent == 1
        assert len(tls_sim.requests) == 1  # only the trusted GET got through
    finally:
        await tls_sim.close()


async def test_plain_http_endpoint_must_be_loopback() -> None:
    """The client itself refuses an http endpoint that is not loopback (the config validator does too)."""
    async with aiohttp.ClientSession() as session:
        for endpoint in ("http://management.azure.com", "ftp://127.0.0.1"):
            with pytest.raises(ConfigError, match="plain http only for loopback"):
                ArmClient(
                    session=session,
                    tokens=TokenProvider(StaticTokenCredential("UNUSED"), "scope"),
                    endpoint=endpoint,
                    limiter=SubscriptionLimiter(),
                    backoff=Backoff(0.01, 0.1),
                )
        for endpoint in (
            "http://127.0.0.1:8080",
            "http://[::1]:8080",
            "http://localhost",
            "https://arm.example",
        ):
            ArmClient(
                session=session,
                tokens=TokenProvider(StaticTokenCredential("UNUSED"), "scope"),
                endpoint=endpoint,
                limiter=SubscriptionLimiter(),
                backoff=Backoff(0.01, 0.1),
            ).check_host(endpoint + "/subscriptions/x")


async def test_server_errors_are_retried_then_typed(arm: AzureSide, sim: Simulator, sleeps: Sleeps) -> None:
    """Four 503s in a row: four attempts with backoff between them, then a ServerError."""
    sim.inject(503, path_contains="/backupjobs/", times=4)
    with pytest.raises(ServerError):
        await arm.api.get_job(REF, JOB)
    assert len(sim.requests) == 4
    assert len(sleeps.delays) == 3


async def test_shutdown_during_a_retry_wait_sends_nothing_more(
    sim: Simulator, estate: Estate, tmp_path: Path
) -> None:
    """A 503 with Retry-After: 20, then shutdown while the client waits: the request ends with the 503, no second request."""
    estate.add(sim_job(FakeClock()))
    side = build_azure(config_for(sim.url, tmp_path), None, SubscriptionLimiter())
    try:
        sim.inject(503, path_contains="/backupjobs/", headers={"Retry-After": "20"})
        request = asyncio.create_task(side.api.get_job(REF, JOB))
        await wait_for(lambda: len(sim.requests) == 1 and side.client.busy == 1)
        side.client.stopping.set()
        with pytest.raises(ServerError):
            await asyncio.wait_for(request, 5)
        assert [r.status for r in sim.requests] == [503]
    finally:
        await side.close()


async def test_a_body_nested_a_hundred_thousand_levels_is_a_bad_response(connect: Connect) -> None:
    """JSON nested deeper than the decoder's stack is a BadResponseError (bad_response), not a RecursionError."""

    async def deep(_request: web.Request) -> web.Response:
        return web.Response(body=b"[" * 100_000 + b"]" * 100_000, content_type="application/json")

    app = web.Application()
    app.router.add_get("/{tail:.*}", deep)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = runner.addresses[0][1]
        side = await connect(f"http://127.0.0.1:{port}")
        with pytest.raises(BadResponseError) as info:
            await side.api.get_job(REF, JOB)
        assert info.value.reason == "bad_response"
    finally:
        await runner.cleanup()
