"""Scheduling at scale: backoff, the subscription budget, concurrency, discovery and batched polling."""

from __future__ import annotations

import asyncio
import itertools
import json
import sqlite3
import statistics
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests import corpus
from tests.conftest import SUB, SUB2, FakeClock, every_job, make_config, running_watcher, wait_for
from watcher.app import build_azure
from watcher.azure.client import ArmClient
from watcher.azure.models import VaultRef
from watcher.azure.ratelimit import Backoff, SubscriptionLimiter, retry_after_seconds
from watcher.config import Config
from watcher.errors import ServerError, StoreError, ThrottledError
from watcher.scheduler import Scheduler
from watcher.sim import Estate, SimJob, Simulator, start_simulator
from watcher.state import Tracker
from watcher.store import Store

RG = "rg-sched"


class FakeMonotonic:
    """A monotonic clock whose sleep() only moves time forward and records what was asked."""

    def __init__(self) -> None:
        self.t = 1000.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


def _job(
    estate: Estate,
    n: int,
    vault: str,
    *,
    start: float,
    duration: float,
    outcome: str = "Completed",
    sub: str = SUB,
) -> SimJob:
    return estate.add(
        SimJob(
            subscription_id=sub,
            resource_group=RG,
            vault=vault,
            job_id=f"00000000-0000-4000-9000-{n:012d}",
            job_type="AzureIaaSVMJob",
            operation="Backup",
            entity=f"vm-{n}",
            backup_management_type="AzureIaasVM",
            start=start,
            duration=duration,
            outcome=outcome,
        )
    )


@asynccontextmanager
async def parts(
    config: Config, clock: FakeClock | None = None
) -> AsyncIterator[tuple[Scheduler, Tracker, ArmClient]]:
    """Store, tracker, client and scheduler for a config (on `clock`, if given), without HTTP or the loop."""
    store = Store.open(config.store.path)
    tracker = Tracker(store, clock=clock or time.time)
    azure = build_azure(
        config, None, SubscriptionLimiter(config.poll.ratelimit_burst, config.poll.ratelimit_per_second)
    )
    try:
        yield Scheduler(tracker, azure.client, config, clock=clock or time.time), tracker, azure.client
    finally:
        await azure.close()
        store.close()


def _vault(name: str, **extra: Any) -> dict[str, Any]:
    return {"subscription_id": SUB, "resource_group": RG, "name": name, **extra}


# -- backoff ------------------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", range(8))
def test_backoff_stays_within_jittered_bounds(attempt: int) -> None:
    """Each delay lies between backoff_initial and min(backoff_max, initial * 2^attempt), extremes included."""
    low = Backoff(2.0, 300.0, rng=lambda a, b: a)
    high = Backoff(2.0, 300.0, rng=lambda a, b: b)
    ceiling = min(300.0, 2.0 * 2**attempt)
    assert low.delay(attempt) == 2.0
    assert high.delay(attempt) == ceiling
    import random

    rnd = random.Random(attempt)
    jittered = Backoff(2.0, 300.0, rng=rnd.uniform)
    for _ in range(50):
        assert 2.0 <= jittered.delay(attempt) <= ceiling


def test_backoff_never_undercuts_retry_after() -> None:
    """A Retry-After longer than the jittered delay wins, even beyond backoff_max."""
    backoff = Backoff(1.0, 10.0, rng=lambda a, b: a)
    assert backoff.delay(0, retry_after=7.0) == 7.0
    assert backoff.delay(0, retry_after=600.0) == 600.0
    assert backoff.delay(5, retry_after=0.5) >= 1.0


def test_retry_after_header_forms() -> None:
    """Retry-After in seconds or as an HTTP date, retry-after-ms and x-ms-retry-after-ms are all read."""
    assert retry_after_seconds({"retry-after": "30"}) == 30.0
    assert retry_after_seconds({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_seconds({"x-ms-retry-after-ms": "250"}) == 0.25
    date = retry_after_seconds({"retry-after": "Wed, 21 Oct 2037 07:28:00 GMT"}, now=2139722880.0 - 20)
    assert date == pytest.approx(20.0)
    assert retry_after_seconds({"retry-after": "soon"}) is None
    assert retry_after_seconds({}) is None


async def test_client_retries_with_retry_after_and_no_real_sleep(
    sim: Simulator, estate: Estate, clock: FakeClock, tmp_path: Path
) -> None:
    """503 twice with Retry-After: 3 -> two retries, each waiting at least 3 s (an injected sleep), then success."""
    job = _job(estate, 1, "vault-a", start=clock() - 10, duration=100)
    config = make_config(
        sim.url, [_vault("vault-a", jobs=[job.job_id])], tmp_path / "s.sqlite3", poll={"backoff_max": 10}
    )
    sim.inject(503, path_contains=job.job_id, headers={"Retry-After": "3"}, times=2)
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async with parts(config) as (scheduler, _tracker, client):
        client.sleep = fake_sleep
        got = await scheduler.api.get_job(VaultRef(SUB, RG, "vault-a"), job.job_id)
    assert got.status == "InProgress"
    assert len(slept) == 2
    assert all(s >= 3.0 for s in slept)


async def test_client_gives_up_after_its_attempts(
    sim: Simulator, estate: Estate, clock: FakeClock, tmp_path: Path
) -> None:
    """A server that keeps failing yields a ServerError after the bounded attempts, not an endless loop."""
    job = _job(estate, 1, "vault-a", start=clock() - 10, duration=100)
    config = make_config(sim.url, [_vault("vault-a", jobs=[job.job_id])], tmp_path / "s.sqlite3")
    sim.inject(500, path_contains=job.job_id, times=10)

    async def no_sleep(_seconds: float) -> None:
        return None

    async with parts(config) as (scheduler, _t, client):
        client.sleep = no_sleep
        with pytest.raises(ServerError):
            await scheduler.api.get_job(VaultRef(SUB, RG, "vault-a"), job.job_id)
    gets = [r for r in sim.requests if job.job_id in r.path]
    assert len(gets) == client.attempts


# -- the subscription budget -------------------------------------------------------------------


async def test_a_429_empties_the_bucket_and_halves_the_rate_of_its_subscription_only() -> None:
    """After a 429 the subscription waits for a half-rate refill (recovering over a minute); another does not wait."""
    fake = FakeMonotonic()
    limiter = SubscriptionLimiter(250, 25.0, clock=fake)
    await limiter.acquire(SUB)
    limiter.throttled(SUB)
    assert limiter.throttled_factor(SUB) == 0.5
    start = fake.now()
    await limiter.acquire(SUB2)
    assert fake.now() == start
    await limiter.acquire(SUB)
    assert fake.now() - start == pytest.approx(1 / 12.5)
    limiter.throttled(SUB)
    assert limiter.throttled_factor(SUB) == pytest.approx(0.25 + 1 / 12.5 / 60 / 2, rel=0.01)
    fake.t += 60
    assert limiter.throttled_factor(SUB) == 1.0
    assert limiter.rate(SUB) == 25.0


def test_many_429s_never_stop_a_subscription() -> None:
    """However many 429s arrive, the refill rate stays above zero (1/64 of the configured rate)."""
    fake = FakeMonotonic()
    limiter = SubscriptionLimiter(250, 25.0, clock=fake)
    for _ in range(100):
        limiter.throttled(SUB)
    assert limiter.rate(SUB) == pytest.approx(25.0 / 64)


async def test_limiter_bucket_refills_at_its_rate() -> None:
    """A bucket of 10 at 5/s: 10 requests at once, then one every 0.2 s."""
    fake = FakeMonotonic()
    limiter = SubscriptionLimiter(10, 5.0, clock=fake)
    for _ in range(10):
        await limiter.acquire(SUB)
    assert fake.sleeps == []
    start = fake.now()
    for _ in range(5):
        await limiter.acquire(SUB)
    assert fake.now() - start == pytest.approx(1.0)


async def test_limiter_slows_when_azure_reports_a_low_budget() -> None:
    """A remaining-reads header near zero slows the refill below the configured rate."""
    fake = FakeMonotonic()
    limiter = SubscriptionLimiter(250, 25.0, clock=fake)
    limiter.observe_remaining(SUB, 5)
    assert limiter.rate(SUB) < 25.0
    for _ in range(5):
        await limiter.acquire(SUB)
    start = fake.now()
    await limiter.acquire(SUB)
    assert fake.now() - start > 1 / 25.0
    limiter.observe_remaining(SUB, 240)
    assert limiter.rate(SUB) == 25.0


async def test_a_429_with_a_huge_retry_after_holds_only_its_vault_for_backoff_max(tmp_path: Path) -> None:
    """vault-a answers 429 with Retry-After: 999999999; it is counted, capped and logged; vault-b of the same subscription keeps polling."""
    clock = FakeClock()
    estate = Estate(clock=clock)
    a1 = _job(estate, 1, "vault-a", start=clock() - 5, duration=36000)
    b1 = _job(estate, 2, "vault-b", start=clock() - 5, duration=36000)
    sim = await start_simulator(estate)
    sim.inject(429, path_contains="vault-a", headers={"Retry-After": "999999999"}, times=1000)
    config = make_config(
        sim.url,
        [_vault("vault-a", jobs=[a1.job_id]), _vault("vault-b", jobs=[b1.job_id])],
        tmp_path / "s.sqlite3",
        poll={"interval": 0.2, "backoff_max": "1h"},
    )
    a, b = VaultRef(SUB, RG, "vault-a"), VaultRef(SUB, RG, "vault-b")
    try:
        with capture_logs() as logs:
            async with running_watcher(config) as watcher:
                assert watcher.tracker is not None
                tracker = watcher.tracker
                await wait_for(lambda: tracker.poll_errors[(a.key, "throttled")] >= 1)
                polled_b = len([r for r in sim.requests if "vault-b" in r.path])
                await wait_for(lambda: len([r for r in sim.requests if "vault-b" in r.path]) >= polled_b + 5)
                asked_a = [r for r in sim.requests if "vault-a/backupjobs" in r.path.lower()]
        # One try: a wait of an hour is not spent inside the request, and the vault is not asked again.
        assert [r.status for r in asked_a] == [429]
        assert tracker.poll_errors[(a.key, "throttled")] == 1
        assert tracker.vaults[b.key].last_ok_poll is not None
        capped = [e for e in logs if e["event"] == "retry_after_capped"]
        assert capped
        assert capped[0]["capped_to"] == 3600.0
    finally:
        await sim.close()


_GET_JOB_BODY = json.loads((corpus.CORPUS / "2017-07-01" / "Common" / "GetJobDetails.json").read_text())[
    "responses"
]["200"]["body"]


# -- concurrency --------------------------------------------------------------------------------


async def test_concurrency_bound_holds_under_load(tmp_path: Path) -> None:
    """60 jobs in 4 vaults, concurrency 4, a server that answers slowly: never more than 4 requests in flight at the server."""
    body = _GET_JOB_BODY
    in_flight = 0
    peak = 0
    served = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal in_flight, peak, served
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await asyncio.sleep(0.02)
            served += 1
            answer = dict(body, name=request.match_info["job"])
            return web.json_response(answer)
        finally:
            in_flight -= 1

    app = web.Application()
    app.router.add_get(
        "/subscriptions/{s}/resourceGroups/{rg}/providers/Microsoft.RecoveryServices/vaults/{v}/backupJobs/{job}",
        handler,
    )
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    jobs = [f"00000000-0000-4000-a000-{n:012d}" for n in range(60)]
    config = make_config(
        f"http://127.0.0.1:{port}",
        [_vault(f"vault-{v}", jobs=jobs[v::4]) for v in range(4)],
        tmp_path / "s.sqlite3",
        poll={"concurrency": 4, "interval": 0.05},
    )
    try:
        async with parts(config) as (scheduler, _tracker, _client):
            await scheduler.run_round()
    finally:
        await runner.cleanup()
    assert served == 60
    assert peak == 4


# -- discovery and batching ---------------------------------------------------------------------


async def test_discovery_follows_pages_and_picks_up_new_jobs(tmp_path: Path) -> None:
    """A discovering vault's 12 jobs over 5-job pages are all found; jobs started later are found next time."""
    clock = FakeClock()
    estate = Estate(clock=clock)
    for n in range(12):
        _job(estate, n, "vault-d", start=clock() - 3600 + n * 60, duration=7200)
    sim = await start_simulator(estate, page_size=5)
    config = make_config(
        sim.url, [_vault("vault-d", discover=True)], tmp_path / "s.sqlite3", discovery={"lookback": "1d"}
    )
    vault = VaultRef(SUB, RG, "vault-d")
    try:
        async with parts(config) as (scheduler, tracker, _client):
            state = tracker.vaults[vault.key]
            assert await scheduler.discover(state) == 12
            listings = [r for r in sim.requests if r.path.lower().endswith("/backupjobs")]
            assert len(listings) == 3
            assert len(every_job(tracker)) == 12
            clock.advance(120)
            _job(estate, 100, "vault-d", start=clock() - 30, duration=600)
            _job(estate, 101, "vault-d", start=clock() - 10, duration=600)
            assert await scheduler.discover(state) == 2
            assert len(every_job(tracker)) == 14
            assert await scheduler.discover(state) == 0
    finally:
        await sim.close()


async def test_batched_round_costs_one_listing_per_vault_plus_the_jobs_that_ended(tmp_path: Path) -> None:
    """3 vaults x 20 unfinished jobs: a round is 3 listings; after 4 jobs end, 3 listings + 4 GETs."""
    clock = FakeClock()
    estate = Estate(clock=clock)
    ids: dict[str, list[str]] = {}
    n = 0
    for vault in ("vault-1", "vault-2", "vault-3"):
        ids[vault] = []
        for i in range(20):
            n += 1
            # The first two jobs of vault-1 and vault-2 end after 100 s; the rest run for hours.
            duration = 100 if i < 2 and vault != "vault-3" else 36000
            ids[vault].append(_job(estate, n, vault, start=clock() - 50, duration=duration).job_id)
    sim = await start_simulator(estate)
    config = make_config(
        sim.url, [_vault(v, jobs=j) for v, j in ids.items()], tmp_path / "s.sqlite3", poll={"interval": 0.01}
    )
    try:
        async with parts(config) as (scheduler, tracker, _client):
            first = await scheduler.run_round()
            assert first.requests == 60  # never seen: one GET each to learn start times
            before = len(sim.requests)
            steady = await scheduler.run_round()
            assert steady.requests == 3
            assert len(sim.requests) - before == 3
            assert all("status eq 'InProgress'" in r.query.get("$filter", "") for r in sim.requests[before:])
            clock.advance(100)
            ended = await scheduler.run_round()
            assert ended.requests == 3 + 4
            finished = [tj for tj in every_job(tracker).values() if tj.state == "final"]
            assert len(finished) == 4
            assert {tj.status for tj in finished} == {"Completed"}
    finally:
        await sim.close()


async def test_each_vault_keeps_a_drift_free_cadence(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """Each vault's passes are due exactly one interval apart, whatever each pass cost; two vaults, two phases."""
    jobs = [_job(estate, n, f"vault-{n}", start=clock() - 10, duration=36000) for n in (1, 2)]
    config = make_config(
        sim.url,
        [_vault(f"vault-{n}", jobs=[j.job_id]) for n, j in zip((1, 2), jobs, strict=True)],
        tmp_path / "s.sqlite3",
        poll={"interval": 0.5},
    )
    due: dict[str, list[float]] = {"vault-1": [], "vault-2": []}
    async with running_watcher(config) as watcher:
        scheduler = watcher.scheduler
        assert scheduler is not None
        launch = scheduler._launch

        def recording(schedule: Any) -> None:
            due[schedule.ref.name].append(schedule.next_poll)
            launch(schedule)

        scheduler._launch = recording  # type: ignore[method-assign]
        await wait_for(lambda: all(len(d) >= 5 for d in due.values()), limit=20)
    for name, times in due.items():
        gaps = [round(b - a, 9) for a, b in itertools.pairwise(times)]
        assert gaps == [0.5] * len(gaps), (name, gaps)
    assert due["vault-1"][0] != due["vault-2"][0]


async def test_a_hung_vault_does_not_slow_the_others(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock, capsys: pytest.CaptureFixture[str]
) -> None:
    """vault-a's listing never answers; while its one pass hangs, vault-b completes pass after pass at its interval."""
    hung = [_job(estate, n, "vault-a", start=clock() - 10, duration=36000) for n in (1, 2)]
    healthy = [_job(estate, n, "vault-b", start=clock() - 10, duration=36000) for n in (3, 4)]
    config = make_config(
        sim.url,
        [
            _vault("vault-a", jobs=[j.job_id for j in hung]),
            _vault("vault-b", jobs=[j.job_id for j in healthy]),
        ],
        tmp_path / "s.sqlite3",
        poll={"interval": 0.3, "request_timeout": 60},
    )
    passes: dict[str, list[float]] = {"vault-a": [], "vault-b": []}
    async with running_watcher(config) as watcher:
        scheduler = watcher.scheduler
        assert scheduler is not None
        scheduler.on_pass = lambda vault, stats: passes[vault.name].append(stats.finished)
        # The first pass GETs each job (start times unknown); from the second on, vault-a's listing hangs.
        await wait_for(lambda: len(passes["vault-a"]) >= 1 and len(passes["vault-b"]) >= 1)
        sim.inject(200, path_contains="vault-a/backupjobs", delay=3600, times=1)
        started = len(passes["vault-b"])
        await wait_for(lambda: len(passes["vault-b"]) >= started + 8, limit=30)
        a_passes = len(passes["vault-a"])
    gaps = [b - a for a, b in itertools.pairwise(passes["vault-b"][started:])]
    with capsys.disabled():
        print(
            f"\n[cadence] interval 0.3 s, vault-a hung: vault-b gaps median {statistics.median(gaps):.3f} s, "
            f"max {max(gaps):.3f} s over {len(gaps)} passes; vault-a passes finished meanwhile: {a_passes - 1}"
        )
    # vault-a's second pass never ended while vault-b went on: isolation is ordering, not timing.
    assert a_passes == 1


async def test_one_failing_job_does_not_stop_the_others(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """A job answering 500 every time is reported; the vault's other job is still polled and recorded."""
    bad = _job(estate, 1, "vault-a", start=clock() - 10, duration=36000)
    good = _job(estate, 2, "vault-a", start=clock() - 10, duration=5)
    sim.inject(500, path_contains=bad.job_id, times=1000)
    config = make_config(sim.url, [_vault("vault-a", jobs=[bad.job_id, good.job_id])], tmp_path / "s.sqlite3")
    async with parts(config) as (scheduler, tracker, client):

        async def no_sleep(_s: float) -> None:
            return None

        client.sleep = no_sleep
        await scheduler.run_round()
        vault = VaultRef(SUB, RG, "vault-a")
        assert tracker.known(vault, good.job_id).status == "Completed"  # type: ignore[union-attr]
        assert tracker.known(vault, bad.job_id).last_error  # type: ignore[union-attr]
        assert tracker.poll_errors[(vault.key, "server_error")] == 1


async def test_404_job_is_marked_not_found_and_403_vault_unauthorized(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """A 404 job shows as not_found; a 403 vault as unauthorized; both in /api/jobs and the error counts."""
    ok = _job(estate, 1, "vault-a", start=clock() - 10, duration=36000)
    missing = "00000000-0000-4000-9000-00000000dead"
    sim.inject(
        403,
        path_contains="vault-b",
        times=1000,
        body={"error": {"code": "AuthorizationFailed", "message": "no access"}},
    )
    config = make_config(
        sim.url,
        [_vault("vault-a", jobs=[ok.job_id, missing]), _vault("vault-b", jobs=[ok.job_id])],
        tmp_path / "s.sqlite3",
    )
    async with parts(config) as (scheduler, tracker, _client):
        await scheduler.run_round()
        jobs = {(j["vault"], j["job_id"]): j for j in tracker.api_jobs()[0]}
        assert jobs[("vault-a", missing)]["state"] == "not_found"
        assert jobs[("vault-b", ok.job_id)]["state"] == "unauthorized"
        assert "AuthorizationFailed" in jobs[("vault-b", ok.job_id)]["last_error"]
        a, b = VaultRef(SUB, RG, "vault-a"), VaultRef(SUB, RG, "vault-b")
        assert tracker.poll_errors[(a.key, "not_found")] == 1
        assert tracker.poll_errors[(b.key, "forbidden")] == 1
        requests = len(sim.requests)
        await scheduler.run_round()
        # Neither is asked again at once: the 404 is re-checked rarely, the 403 vault after backoff.
        again = [r for r in sim.requests[requests:] if missing in r.path or "vault-b" in r.path]
        assert again == []


def test_throttled_error_is_retryable() -> None:
    """429 is a retryable error carrying Azure's delay."""
    err = ThrottledError("429", status=429, retry_after=4.0)
    assert err.retry_after == 4.0
    assert err.reason == "throttled"


async def test_a_store_that_fails_stops_the_daemon_loudly(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """When the store can no longer be written, the loop stops with the StoreError instead of polling on."""
    job = _job(estate, 1, "vault-a", start=clock() - 10, duration=36000)
    config = make_config(sim.url, [_vault("vault-a", jobs=[job.job_id])], tmp_path / "s.sqlite3")
    async with running_watcher(config) as watcher:
        assert watcher.tracker is not None
        tracker = watcher.tracker
        await wait_for(lambda: tracker.known(VaultRef(SUB, RG, "vault-a"), job.job_id).status == "InProgress")  # type: ignore[union-attr]
        # The file turns read-only under the daemon (a full or remounted disk behaves alike).
        tracker.store.conn.close()
        tracker.store.conn = sqlite3.connect(f"{(tmp_path / 's.sqlite3').as_uri()}?mode=ro", uri=True)
        clock.advance(36000)
        await wait_for(lambda: watcher.stop_event.is_set(), limit=10)
        assert isinstance(watcher.failure, StoreError)
        assert not watcher.healthy()


# -- isolation, backoff and health ---------------------------------------------------------------


async def test_a_vault_whose_listing_fails_backs_off_alone(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """vault-a's listing answers 500: its passes space out by backoff; vault-b keeps its interval meanwhile."""
    a_jobs = [_job(estate, n, "vault-a", start=clock() - 10, duration=36000) for n in (1, 2)]
    b_jobs = [_job(estate, n, "vault-b", start=clock() - 10, duration=36000) for n in (3, 4)]
    config = make_config(
        sim.url,
        [
            _vault("vault-a", jobs=[j.job_id for j in a_jobs]),
            _vault("vault-b", jobs=[j.job_id for j in b_jobs]),
        ],
        tmp_path / "s.sqlite3",
        poll={"interval": 0.1, "backoff_initial": 0.4, "backoff_max": 3.2},
    )
    a = VaultRef(SUB, RG, "vault-a")
    async with running_watcher(config) as watcher:
        scheduler, tracker = watcher.scheduler, watcher.tracker
        assert scheduler is not None
        assert tracker is not None
        await wait_for(lambda: all(tj.start_time is not None for tj in every_job(tracker).values()))
        sim.inject(500, path_contains="vault-a/backupjobs", times=10_000)
        b_passes: list[int] = []
        a_passes: list[int] = []
        scheduler.on_pass = lambda vault, stats: (b_passes if vault.name == "vault-b" else a_passes).append(1)
        await wait_for(lambda: len(b_passes) >= 30, limit=30)
        schedule = scheduler._schedules[a.key]
        # Backoff grows: after a few failures the next pass of vault-a is seconds away, not 0.1 s.
        assert schedule.failures >= 2
        assert len(a_passes) < len(b_passes) / 3
        assert tracker.poll_errors[(a.key, "server_error")] >= 2
        assert tracker.vaults[VaultRef(SUB, RG, "vault-b").key].last_ok_poll is not None


async def test_healthz_names_a_vault_not_polled_for_three_intervals(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """A vault whose passes keep failing is listed by /healthz (still 200: a restart would not cure it) and logged."""
    job = _job(estate, 1, "vault-a", start=clock() - 10, duration=36000)
    ok = _job(estate, 2, "vault-b", start=clock() - 10, duration=36000)
    sim.inject(403, path_contains="vault-a", times=10_000)
    config = make_config(
        sim.url,
        [_vault("vault-a", jobs=[job.job_id]), _vault("vault-b", jobs=[ok.job_id])],
        tmp_path / "s.sqlite3",
        poll={"interval": 0.2},
    )
    with capture_logs() as logs:
        async with running_watcher(config) as watcher:
            assert watcher.scheduler is not None
            scheduler = watcher.scheduler
            await wait_for(
                lambda: (
                    any(e["event"] == "vault_stale" and e["vault"] == "vault-a" for e in logs)
                    and "vault-a" in {s.ref.name for s in scheduler.stale_vaults()}
                )
            )
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{watcher.port}/healthz") as resp,
            ):
                status, text = resp.status, await resp.text()
    assert status == 200
    assert f"{SUB}/{RG}/vault-a: no good poll for" in text
    assert "forbidden" in text


def test_planning_ten_thousand_unseen_jobs_compares_no_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Splitting a vault's 10,000 due jobs into listing and GETs never compares two TrackedJobs (it was quadratic)."""
    from watcher.scheduler import plan_jobs
    from watcher.state import TrackedJob

    comparisons = 0

    def counting_eq(self: TrackedJob, other: object) -> bool:
        nonlocal comparisons
        comparisons += 1
        return self is other

    monkeypatch.setattr(TrackedJob, "__eq__", counting_eq)
    vault = VaultRef(SUB, RG, "vault-a")
    unseen = [TrackedJob(vault=vault, job_id=f"job-{n}", status="Unknown") for n in range(10_000)]
    seen = [TrackedJob(vault=vault, job_id=f"run-{n}", status="InProgress", start_time=1.0) for n in range(3)]
    batched, singles = plan_jobs([*unseen, *seen], now=0.0)
    assert comparisons == 0
    assert len(batched) == 3
    assert len(singles) == 10_000


async def test_every_failed_get_of_a_batch_is_counted(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """Three jobs leave the listing and all three GETs answer 500: three server_error polls, not one."""
    jobs = [
        _job(estate, n, "vault-a", start=clock() - 10, duration=20 if n < 4 else 36000) for n in range(1, 6)
    ]
    config = make_config(sim.url, [_vault("vault-a", jobs=[j.job_id for j in jobs])], tmp_path / "s.sqlite3")
    vault = VaultRef(SUB, RG, "vault-a")
    async with parts(config) as (scheduler, tracker, client):

        async def no_sleep(_s: float) -> None:
            return None

        client.sleep = no_sleep
        client.attempts = 1
        await scheduler.run_round()
        clock.advance(30)
        for job in jobs[:3]:
            sim.inject(500, path_contains=f"backupjobs/{job.job_id}")
        await scheduler.run_round()
        assert tracker.poll_errors[(vault.key, "server_error")] == 3
        assert all(tracker.known(vault, j.job_id).last_error for j in jobs[:3])  # type: ignore[union-attr]


async def test_a_failed_get_during_discovery_does_not_advance_the_last_good_poll(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """Discovery lists a new finished job whose GET fails: the error is counted and last_successful_poll stays put."""
    done = _job(estate, 1, "vault-d", start=clock() - 100, duration=50)
    config = make_config(sim.url, [_vault("vault-d", discover=True)], tmp_path / "s.sqlite3")
    vault = VaultRef(SUB, RG, "vault-d")
    sim.inject(500, path_contains=f"backupjobs/{done.job_id}", times=100)
    async with parts(config) as (scheduler, tracker, client):

        async def no_sleep(_s: float) -> None:
            return None

        client.sleep = no_sleep
        await scheduler.run_round()
        assert tracker.known(vault, done.job_id).status == "Completed"  # type: ignore[union-attr]
        assert tracker.poll_errors[(vault.key, "server_error")] == 1
        assert tracker.vaults[vault.key].last_ok_poll is None


async def test_scheduling_ignores_a_wall_clock_step(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """The wall clock jumps a day back (an NTP step): passes go on at their interval on the monotonic clock."""
    job = _job(estate, 1, "vault-a", start=clock() - 10, duration=36000)
    config = make_config(
        sim.url, [_vault("vault-a", jobs=[job.job_id])], tmp_path / "s.sqlite3", poll={"interval": 0.1}
    )
    async with running_watcher(config, clock=clock) as watcher:
        assert watcher.scheduler is not None
        scheduler = watcher.scheduler
        await wait_for(lambda: scheduler.passes >= 2)
        clock.advance(-86400)
        before = scheduler.passes
        await wait_for(lambda: scheduler.passes >= before + 5)


async def test_a_job_backing_off_is_polled_again_after_a_wall_clock_step_back(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """A job waits out its backoff after a 503 when the watcher's wall clock steps a day back: its next
    poll still comes after the backoff (the monotonic clock decides), not a day later."""
    job = _job(estate, 1, "vault-a", start=clock() - 10, duration=36000)
    config = make_config(
        sim.url,
        [_vault("vault-a", jobs=[job.job_id])],
        tmp_path / "s.sqlite3",
        poll={"interval": 0.1, "backoff_initial": 1.0, "backoff_max": 2.0},
    )
    vault = VaultRef(SUB, RG, "vault-a")
    wall = FakeClock()  # the watcher's wall clock; the simulator keeps its own
    async with running_watcher(config, clock=wall) as watcher:
        tracker = watcher.tracker
        assert tracker is not None
        await wait_for(lambda: any(r.status == 200 for r in sim.requests))
        sim.inject(503, path_contains=job.job_id, times=4)
        await wait_for(lambda: tracker.poll_errors[(vault.key, "server_error")] >= 1)
        wall.advance(-86400)  # an NTP step while the job waits out its backoff
        asked = len(sim.requests)
        await wait_for(lambda: any(r.status == 200 for r in sim.requests[asked:]), limit=20)


# -- discovery windows ---------------------------------------------------------------------------


async def test_a_job_listed_late_is_still_discovered(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """A job that Azure lists 20 minutes after its start (an agent reports late) is found by the overlap of the next listing."""
    estate.add_vault(SUB, RG, "vault-d")
    config = make_config(sim.url, [_vault("vault-d", discover=True)], tmp_path / "s.sqlite3")
    vault = VaultRef(SUB, RG, "vault-d")
    async with parts(config, clock) as (scheduler, tracker, _client):
        state = tracker.vaults[vault.key]
        assert await scheduler.discover(state) == 0
        late = estate.add(
            SimJob(
                subscription_id=SUB,
                resource_group=RG,
                vault="vault-d",
                job_id="00000000-0000-4000-9000-00000000late",
                job_type="MabJob",
                operation="Backup",
                entity="fileserver01",
                backup_management_type="MAB",
                start=clock() + 60,
                duration=600,
                appears_after=1200,
            )
        )
        for _ in range(5):  # listings every 5 minutes; the job is invisible for the first four
            clock.advance(300)
            await scheduler.discover(state)
        assert tracker.known(vault, late.job_id) is not None


async def test_downtime_longer_than_the_lookback_is_logged_and_counted(
    tmp_path: Path, sim: Simulator, estate: Estate, clock: FakeClock
) -> None:
    """A vault last listed two days ago with a one-day lookback: discovery_gap is logged with its bounds and counted."""
    estate.add_vault(SUB, RG, "vault-d")
    config = make_config(sim.url, [_vault("vault-d", discover=True)], tmp_path / "s.sqlite3")
    vault = VaultRef(SUB, RG, "vault-d")
    async with parts(config, clock) as (scheduler, tracker, _client):
        state = tracker.vaults[vault.key]
        await scheduler.discover(state)
        clock.advance(2 * 86400)
        with capture_logs() as logs:
            await scheduler.discover(state)
            await scheduler.discover(state)
        gaps = [e for e in logs if e["event"] == "discovery_gap"]
        assert len(gaps) == 1
        assert gaps[0]["gap_seconds"] == pytest.approx(86400, abs=5)
        assert tracker.discovery_gaps[vault.key] == 1
