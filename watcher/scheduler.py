"""Who is polled when: drift-free rounds, batched listings, discovery, and backoff per job and vault.

Each round plans units of work and starts them spread over part of the interval (never all at once):
- a vault with several unfinished jobs gets one listing filtered to `status eq 'InProgress'`, and one
  GET for each job that left it (to read its final state and `extendedInfo`);
- a vault with one unfinished job, and any job not yet seen, gets a GET;
- a vault that discovers is listed every `discovery_interval` for jobs started since the last look.
The next round starts `interval` after this one started, whatever this one cost. Requests are bounded
by the client's concurrency slots and the subscription's token bucket. A failing job or vault backs
off on its own; the others go on.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from watcher.azure.client import ArmClient, JobFilter
from watcher.azure.models import Job, VaultRef
from watcher.azure.ratelimit import Backoff
from watcher.config import Config
from watcher.errors import (
    ApiVersionError,
    AuthError,
    AzureError,
    ForbiddenError,
    NotFoundError,
    RetryableError,
    StoreError,
)
from watcher.logs import get_logger
from watcher.state import TrackedJob, Tracker, VaultState

log = get_logger("backup_watcher.scheduler")

SPREAD = 0.5  # share of the interval over which a round's units are started
LIST_OVERLAP = 120.0  # seconds a discovery listing reaches back before its watermark
NOT_FOUND_RECHECK = 3600.0  # a 404 job is looked at again at most this often
PRUNE_EVERY = 3600.0  # how often old finished jobs and history are dropped


@dataclass
class RoundStats:
    """What one round did, for logs, benchmarks and tests."""

    started: float
    units: int = 0
    requests: int = 0
    finished: float = 0.0
    errors: int = 0


@dataclass
class _VaultRound:
    ok: bool = True
    units: int = 0


@dataclass
class Scheduler:
    """Runs poll rounds until told to stop."""

    tracker: Tracker
    client: ArmClient
    config: Config
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    rng: Callable[[], float] = random.random
    ready: bool = False
    heartbeat: float = field(default_factory=time.monotonic)
    rounds: int = 0
    last_round: RoundStats | None = None
    _next_discovery: dict[str, float] = field(default_factory=dict)
    _next_prune: float = 0.0
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.config.poll.backoff_initial, self.config.poll.backoff_max)

    def reconfigure(self, config: Config, client: ArmClient | None = None) -> None:
        """Take a new config (and client) from the next round on."""
        self.config = config
        if client is not None:
            self.client = client

    def healthy(self) -> bool:
        """False once the loop has not moved for much longer than a round should take."""
        limit = max(3 * self.config.poll.interval, 120.0)
        return self.monotonic() - self.heartbeat < limit

    # -- the loop ---------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, grace: float = 5.0) -> None:
        """Poll rounds until `stop` is set; then give in-flight requests `grace` seconds."""
        next_start = self.monotonic()
        try:
            while not stop.is_set():
                started = self.monotonic()
                self.heartbeat = started
                await self.run_round(stop)
                self.rounds += 1
                self._maybe_prune()
                self.ready = True
                next_start += self.config.poll.interval
                now = self.monotonic()
                if next_start < now:
                    # A round outlasted the interval: start the next one now, do not try to catch up.
                    next_start = now
                await self._wait(stop, next_start - now)
        finally:
            await self._drain(grace)

    def _maybe_prune(self) -> None:
        now = self.clock()
        if now < self._next_prune:
            return
        self._next_prune = now + PRUNE_EVERY
        removed = self.tracker.prune(
            lookback=self.config.discovery.lookback, retention=self.config.store.retention
        )
        if removed:
            log.info("store_pruned", jobs=removed)

    async def _wait(self, stop: asyncio.Event, seconds: float) -> None:
        deadline = self.monotonic() + seconds
        while not stop.is_set():
            left = deadline - self.monotonic()
            if left <= 0:
                return
            self.heartbeat = self.monotonic()
            try:
                await asyncio.wait_for(stop.wait(), timeout=min(left, 1.0))
            except TimeoutError:
                continue

    async def _drain(self, grace: float) -> None:
        if not self._tasks:
            return
        _done, pending = await asyncio.wait(self._tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    async def run_round(self, stop: asyncio.Event | None = None) -> RoundStats:
        """Plan one round, start its units spread over the interval, and wait for them."""
        stats = RoundStats(started=self.clock())
        requests_before = self._requests_sent()
        units = self.plan()
        vault_rounds: dict[str, _VaultRound] = {}
        for vault, _ in units:
            vault_rounds.setdefault(vault.key, _VaultRound()).units += 1
        stats.units = len(units)
        gap = (self.config.poll.interval * SPREAD / len(units)) if units else 0.0
        base = self.monotonic()
        launched: list[asyncio.Task[None]] = []
        for index, (vault, unit) in enumerate(units):
            if stop is not None and stop.is_set():
                break
            if any(t.done() and not t.cancelled() and t.exception() for t in launched):
                break  # a unit lost the store: launch no more
            # Even spacing with jitter, so rounds of many watchers do not line up either.
            due = base + gap * (index + self.rng())
            delay = due - self.monotonic()
            if delay > 0:
                await self.sleep(delay)
            task = asyncio.create_task(self._guarded(vault, unit, vault_rounds[vault.key], stats))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            launched.append(task)
        while self._tasks:
            # Waiting on Azure (throttling, retries) is not being stuck: keep the heartbeat going.
            self.heartbeat = self.monotonic()
            await asyncio.wait(set(self._tasks), timeout=1.0)
        for task in launched:
            # Only a StoreError escapes a unit: raise it so the daemon stops loudly instead of polling on
            # with nothing recorded.
            if not task.cancelled() and (error := task.exception()) is not None:
                raise error
        now = self.clock()
        for key, vr in vault_rounds.items():
            state = self.tracker.vaults.get(key)
            if vr.ok and state is not None:
                self.tracker.vault_polled(state.ref, now)
        stats.finished = now
        stats.requests = self._requests_sent() - requests_before
        self.last_round = stats
        log.debug(
            "round_done",
            units=stats.units,
            requests=stats.requests,
            errors=stats.errors,
            seconds=round(now - stats.started, 3),
        )
        return stats

    def _requests_sent(self) -> int:
        return self.client.requests_sent

    async def _guarded(
        self, vault: VaultRef, unit: Callable[[], Awaitable[None]], vround: _VaultRound, stats: RoundStats
    ) -> None:
        try:
            await unit()
        except AzureError as exc:
            vround.ok = False
            stats.errors += 1
            self._vault_error(vault, exc)
        except StoreError:
            # Without the store nothing can be recorded safely: stop the daemon loudly.
            raise
        except Exception:
            vround.ok = False
            stats.errors += 1
            log.exception("poll_unit_crashed", vault=vault.name)
        finally:
            self.heartbeat = self.monotonic()

    # -- planning ---------------------------------------------------------------------------

    def plan(self) -> list[tuple[VaultRef, Callable[[], Awaitable[None]]]]:
        """The units of this round, by vault."""
        now = self.clock()
        units: list[tuple[VaultRef, Callable[[], Awaitable[None]]]] = []
        by_vault: dict[str, list[TrackedJob]] = {}
        for tj in self.tracker.jobs.values():
            if tj.polls and tj.next_check <= now:
                by_vault.setdefault(tj.vault.key, []).append(tj)
        for state in self.tracker.vaults.values():
            vault = state.ref
            if state.unauthorized and now < state.next_check:
                continue
            next_at = self._next_discovery.get(vault.key)
            if state.discover and (next_at is None or now >= next_at):
                # The first listing is at once; after that each vault keeps a stable phase of its own, so
                # a round lists about vaults * interval / discovery_interval of them, not all at once.
                every = self.config.poll.discovery_interval
                if next_at is None:
                    next_at = now - every * (1.0 - _discovery_phase(vault.key))
                self._next_discovery[vault.key] = max(next_at + every, now)
                units.append((vault, self._discover_unit(state)))
            due = by_vault.get(vault.key, [])
            if not due:
                continue
            unseen = [tj for tj in due if tj.start_time is None or tj.state == "not_found"]
            seen = [tj for tj in due if tj not in unseen]
            if len(seen) >= 2:
                units.append((vault, self._batch_unit(vault, seen)))
            else:
                unseen = seen + unseen
            for tj in unseen:
                units.append((vault, self._get_unit(vault, tj)))
        return units

    # -- units ------------------------------------------------------------------------------

    def _get_unit(self, vault: VaultRef, tj: TrackedJob) -> Callable[[], Awaitable[None]]:
        async def unit() -> None:
            await self._get(vault, tj.job_id)

        return unit

    async def _get(self, vault: VaultRef, job_id: str) -> Job | None:
        try:
            job = await self.client.get_job(vault, job_id)
        except NotFoundError as exc:
            self.tracker.poll_error(vault, exc.reason)
            known = self.tracker.known(vault, job_id)
            if known is None or known.state != "not_found":
                log.warning("job_not_found", vault=vault.name, job_id=job_id, error=str(exc))
            self.tracker.mark_error(vault, job_id, str(exc), state="not_found")
            tracked = self.tracker.known(vault, job_id)
            if tracked is not None:
                tracked.next_check = self.clock() + min(
                    NOT_FOUND_RECHECK, max(10 * self.config.poll.interval, self.config.poll.backoff_max)
                )
            return None
        except (RetryableError, AuthError) as exc:
            tracked = self.tracker.known(vault, job_id)
            if tracked is not None:
                tracked.failures += 1
                retry_after = exc.retry_after if isinstance(exc, RetryableError) else None
                tracked.next_check = self.clock() + self.backoff.delay(tracked.failures - 1, retry_after)
                tracked.last_error = str(exc)
            raise
        self._clear_vault_error(vault)
        self.tracker.observe(vault, job, detailed=True)
        return job

    def _batch_unit(self, vault: VaultRef, jobs: list[TrackedJob]) -> Callable[[], Awaitable[None]]:
        async def unit() -> None:
            starts = [tj.start_time for tj in jobs if tj.start_time is not None]
            flt = JobFilter(
                start_time=_dt(min(starts) - LIST_OVERLAP),
                end_time=_dt(self.clock() + LIST_OVERLAP),
                status="InProgress",
            )
            still: dict[str, Job] = {}
            async for page in self.client.list_jobs(vault, flt):
                for job in page:
                    still[job.job_id.lower()] = job
            self._clear_vault_error(vault)
            seen = [still[tj.job_id.lower()] for tj in jobs if tj.job_id.lower() in still]
            if seen:
                self.tracker.observe_many(vault, seen, detailed=False)
            gone = [tj for tj in jobs if tj.job_id.lower() not in still]
            # Those that left the listing ended (or are Cancelling): one GET each for the final state.
            results = await asyncio.gather(
                *(self._get(vault, tj.job_id) for tj in gone), return_exceptions=True
            )
            for result in results:
                if isinstance(result, BaseException):
                    raise result

        return unit

    def _discover_unit(self, state: VaultState) -> Callable[[], Awaitable[None]]:
        async def unit() -> None:
            await self.discover(state)

        return unit

    async def discover(self, state: VaultState) -> int:
        """List a vault's jobs started since the last look; watch the new ones. Returns how many."""
        vault = state.ref
        now = self.clock()
        since = state.watermark if state.watermark is not None else now - self.config.discovery.lookback
        since = max(since, now - self.config.discovery.lookback)
        flt = JobFilter(start_time=_dt(since - LIST_OVERLAP), end_time=_dt(now + LIST_OVERLAP))
        new_jobs: list[Job] = []
        updates: list[Job] = []
        async for page in self.client.list_jobs(vault, flt):
            for job in page:
                known = self.tracker.known(vault, job.job_id)
                if known is None or known.state == "not_found":
                    new_jobs.append(job)
                elif known.state == "active" and job.status != known.status and not job.is_final:
                    # An end is left to the job's own poll this round, which reads its extendedInfo.
                    updates.append(job)
        self._clear_vault_error(vault)
        # New finished jobs that are news get one GET for their errors and extendedInfo.
        fetch = [j for j in new_jobs if j.is_final and self.tracker.is_news(j)]
        plain = [j for j in new_jobs if j not in fetch]
        if plain:
            self.tracker.observe_many(vault, plain, detailed=False)
        if updates:
            self.tracker.observe_many(vault, updates, detailed=False)
        results = await asyncio.gather(*(self._get(vault, j.job_id) for j in fetch), return_exceptions=True)
        for job, result in zip(fetch, results, strict=True):
            if isinstance(result, BaseException):
                # Keep what the listing said; the GET's error is counted like any other.
                self.tracker.observe(vault, job, detailed=False)
                if isinstance(result, AzureError):
                    self._vault_error(vault, result)
                else:
                    raise result
        self.tracker.set_watermark(vault, now)
        if new_jobs:
            log.info("jobs_discovered", vault=vault.name, new=len(new_jobs), since=_dt(since).isoformat())
        return len(new_jobs)

    # -- errors -----------------------------------------------------------------------------

    def _vault_error(self, vault: VaultRef, exc: AzureError) -> None:
        self.tracker.poll_error(vault, exc.reason)
        state = self.tracker.vaults.get(vault.key)
        if isinstance(exc, ForbiddenError) and state is not None:
            if not state.unauthorized:
                log.error(
                    "vault_unauthorized",
                    vault=vault.name,
                    subscription_id=vault.subscription_id,
                    resource_group=vault.resource_group,
                    error=str(exc),
                )
            state.unauthorized = str(exc)
            state.failures += 1
            state.next_check = self.clock() + self.backoff.delay(state.failures - 1, None)
            return
        if isinstance(exc, NotFoundError):
            return  # logged where it happened, per job
        event = "auth_failed" if isinstance(exc, AuthError) else "poll_failed"
        if isinstance(exc, ApiVersionError):
            event = "api_version_rejected"
        log.warning(
            event, vault=vault.name, reason=exc.reason, status=exc.status, code=exc.code, error=str(exc)
        )

    def _clear_vault_error(self, vault: VaultRef) -> None:
        state = self.tracker.vaults.get(vault.key)
        if state is not None and state.unauthorized:
            log.info("vault_authorized", vault=vault.name)
            state.unauthorized = None
            state.failures = 0


def _discovery_phase(vault_key: str) -> float:
    """A share of the discovery interval in (0, 1], stable for a vault and spread over vaults."""
    return (zlib.crc32(vault_key.encode()) % 1000 + 1) / 1000


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
