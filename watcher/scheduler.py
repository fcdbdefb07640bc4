"""Who is polled when: every vault on its own schedule, so one sick vault never slows another.

Each vault has a pass every `poll.interval`, at a stable phase of its own within the first half of the
interval (so a thousand vaults do not all start at once), on a drift-free grid: the next pass is due one
interval after the previous one was due, whatever that pass cost. A pass:
- lists the vault for jobs started since its last listing, every `discovery_interval` (at a stable phase
  of its own within that interval) if the vault discovers;
- polls the vault's unfinished jobs that are due: with several of them, one listing filtered to
  `status eq 'InProgress'` and one GET for each job that left it (to read its final state and
  `extendedInfo`); otherwise a GET each.
A vault is never polled twice at once: a pass that hangs delays only its own vault. A pass that fails
as a whole (its listing fails, the vault answers 403 or 429) backs that vault off on its own,
exponentially with jitter and never sooner than Azure's Retry-After (capped at `backoff_max`); a job
whose GET fails backs off alone while its vault keeps its interval. Times to poll are on the monotonic
clock, so a wall-clock step cannot stall or hurry anything. Requests are bounded by the client's
concurrency slots and each subscription's token bucket.
"""

from __future__ import annotations

import asyncio
import random
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from watcher.azure.backup import BackupApi
from watcher.azure.client import ArmClient
from watcher.azure.models import (
    SUCCESS_STATUSES,
    Job,
    ProtectedItem,
    RejectedItem,
    RunningJob,
    VaultInfo,
    VaultKind,
    VaultRef,
)
from watcher.azure.ratelimit import Backoff
from watcher.config import Config
from watcher.errors import (
    ApiVersionError,
    AuthError,
    AzureError,
    ForbiddenError,
    NotFoundError,
    StoreError,
)
from watcher.logs import get_logger
from watcher.state import JobState, TrackedJob, Tracker, VaultState
from watcher.vaults import Listing, VaultSet, watched_vaults

log = get_logger("backup_watcher.scheduler")

SPREAD = 0.5  # share of the interval over which the vaults' passes are phased
NOT_FOUND_RECHECK = 3600.0  # a 404 job is looked at again at most this often
PRUNE_EVERY = 3600.0  # how often old finished jobs and history are dropped
STALE_INTERVALS = 3  # a vault without a good pass for this many intervals is reported stale
INVENTORY_SOON = 60.0  # after an item's backup succeeds, its vault's inventory is read again within this
INVENTORY_STALE = 3  # inventory rounds a vault's inventory may fail before its items leave /metrics
TICK = 1.0  # the dispatcher looks at least this often (heartbeat, stop, new vaults)


@dataclass
class RoundStats:
    """What a set of passes did, for logs, benchmarks and tests."""

    started: float
    units: int = 0
    requests: int = 0
    finished: float = 0.0
    errors: int = 0


@dataclass(slots=True)
class VaultSchedule:
    """When a vault is polled next and how polling it goes (monotonic times)."""

    ref: VaultRef
    phase: float
    next_poll: float
    next_discovery: float | None = None
    task: asyncio.Task[None] | None = None
    failures: int = 0
    passes: int = 0
    last_ok: float | None = None
    watched_since: float = 0.0
    stale: bool = False
    last_error: str | None = None
    pass_started: float | None = None
    next_inventory: float = 0.0
    inventory_task: asyncio.Task[None] | None = None
    inventory_failures: int = 0
    inventory_failing_since: float | None = None
    last_inventory_error: str | None = None

    def why(self, now: float) -> str | None:
        """What holds the vault back: its last error, or a pass that has not ended."""
        if self.last_error is not None:
            return self.last_error
        if self.pass_started is not None:
            return f"a pass has been waiting on Azure for {int(now - self.pass_started)}s"
        return None


@dataclass(slots=True)
class _Pass:
    """One pass over one vault: how many requests failed, and the error that ended it, if one did."""

    errors: int = 0
    fatal: AzureError | None = None


@dataclass
class Scheduler:
    """Runs every vault's passes, and every subscription's vault listings, until told to stop.

    It decides which vaults the tracker watches: the config's, and those the listings found (for this
    replica's shard).
    """

    tracker: Tracker
    client: ArmClient
    config: Config
    shard: tuple[int, int] | None = None
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    rng: Callable[[], float] = random.random
    ready: bool = False
    heartbeat: float = field(default_factory=time.monotonic)
    passes: int = 0
    on_pass: Callable[[VaultRef, RoundStats], None] | None = None
    _schedules: dict[str, VaultSchedule] = field(default_factory=dict)
    _listing_tasks: dict[tuple[str, VaultKind], asyncio.Task[None]] = field(default_factory=dict)
    _next_prune: float = 0.0
    _failure: BaseException | None = None
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _rejected_logged: set[tuple[str, str]] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.api = BackupApi.for_config(self.client, self.config)
        self.vault_set = VaultSet(self.tracker.store)
        self.vault_set.configure(self.config)
        self.apply_vaults()

    @property
    def backoff(self) -> Backoff:
        return Backoff(self.config.poll.backoff_initial, self.config.poll.backoff_max)

    def reconfigure(self, config: Config, client: ArmClient | None = None) -> list[VaultRef]:
        """Take a new config (and client) for every pass that starts from now on; the vaults dropped."""
        self.config = config
        if client is not None:
            self.client = client
        self.api = BackupApi.for_config(self.client, config)
        self.vault_set.configure(config)
        removed = self.apply_vaults()
        self._wake.set()
        return removed

    def apply_vaults(self) -> list[VaultRef]:
        """Watch the config's vaults and the ones found; log those that came and went. The ones dropped."""
        before = set(self.tracker.vaults)
        removed = self.tracker.set_vaults(watched_vaults(self.config, self.vault_set.found(), self.shard))
        for key, state in self.tracker.vaults.items():
            if key not in before and before:
                log.info("vault_watched", **_vault_fields(state.ref))
        for ref in removed:
            log.info("vault_dropped", **_vault_fields(ref))
        return removed

    def healthy(self) -> bool:
        """False once the dispatcher has not moved for much longer than it ever waits."""
        return self.monotonic() - self.heartbeat < max(3 * self.config.poll.interval, 120.0)

    def stale_inventories(self) -> list[VaultSchedule]:
        """Vaults whose inventory has failed for INVENTORY_STALE rounds (their items left /metrics)."""
        now = self.monotonic()
        limit = INVENTORY_STALE * self.config.poll.inventory_interval
        return [
            s
            for s in self._schedules.values()
            if s.inventory_failing_since is not None and now - s.inventory_failing_since > limit
        ]

    def schedule_of(self, vault_key: str) -> VaultSchedule | None:
        """How polling a watched vault goes (None: not watched, or not scheduled yet)."""
        return self._schedules.get(vault_key)

    def stale_vaults(self) -> list[VaultSchedule]:
        """Vaults without a good pass for STALE_INTERVALS intervals (since they were first watched)."""
        now = self.monotonic()
        limit = STALE_INTERVALS * self.config.poll.interval
        return [
            s
            for s in self._schedules.values()
            if now - (s.last_ok if s.last_ok is not None else s.watched_since) > limit
        ]

    # -- the dispatcher ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, grace: float = 5.0) -> None:
        """Start each vault's passes when due until `stop` is set; then give passes `grace` seconds."""
        try:
            while not stop.is_set():
                now = self.monotonic()
                self.heartbeat = now
                self._sync()
                if self._failure is not None:
                    # Only a StoreError escapes a pass: stop loudly, not poll on with nothing recorded.
                    raise self._failure
                for listing in self.vault_set.listings.values():
                    if listing.key not in self._listing_tasks and listing.next_listing <= now:
                        self._launch_listing(listing)
                for schedule in self._schedules.values():
                    if schedule.task is None and schedule.next_poll <= now:
                        self._launch(schedule)
                    if schedule.inventory_task is None and schedule.next_inventory <= now:
                        self._launch_inventory(schedule)
                self._note_stale()
                self._maybe_prune()
                due = min(
                    [s.next_poll for s in self._schedules.values() if s.task is None]
                    + [s.next_inventory for s in self._schedules.values() if s.inventory_task is None]
                    + [
                        listing.next_listing
                        for listing in self.vault_set.listings.values()
                        if listing.key not in self._listing_tasks
                    ],
                    default=now + TICK,
                )
                await self._sleep_until(stop, min(due, now + TICK))
            if self._failure is not None:
                raise self._failure
        finally:
            await self._drain(grace)

    def _sync(self) -> None:
        """Schedules for vaults that appeared; none for vaults that went (their passes finish alone)."""
        now = self.monotonic()
        vaults = self.tracker.vaults
        for key in [k for k in self._schedules if k not in vaults]:
            del self._schedules[key]
        interval = self.config.poll.interval
        for key, state in vaults.items():
            if key not in self._schedules:
                phase = _phase(key, "poll")
                self._schedules[key] = VaultSchedule(
                    ref=state.ref, phase=phase, next_poll=now + interval * SPREAD * phase, watched_since=now
                )
        if (
            not self.ready
            and all(s.passes for s in self._schedules.values())
            and all(listing.listed_once for listing in self.vault_set.listings.values())
        ):
            self.ready = True

    def _launch(self, schedule: VaultSchedule) -> None:
        task = asyncio.create_task(self._guarded_pass(schedule), name=f"pass {schedule.ref.name}")
        schedule.task = task
        schedule.pass_started = self.monotonic()

        def done(t: asyncio.Task[None]) -> None:
            schedule.task = None
            schedule.pass_started = None
            if not t.cancelled() and t.exception() is not None and self._failure is None:
                self._failure = t.exception()
            self._wake.set()

        task.add_done_callback(done)

    async def _sleep_until(self, stop: asyncio.Event, when: float) -> None:
        self._wake.clear()
        left = when - self.monotonic()
        if left <= 0:
            await asyncio.sleep(0)
            return
        waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._wake.wait())}
        try:
            await asyncio.wait(waiters, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)

    async def _drain(self, grace: float) -> None:
        tasks = [s.task for s in self._schedules.values() if s.task is not None]
        tasks += [s.inventory_task for s in self._schedules.values() if s.inventory_task is not None]
        tasks += list(self._listing_tasks.values())
        if not tasks:
            return
        _done, pending = await asyncio.wait(tasks, timeout=grace)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending)

    def _note_stale(self) -> None:
        stale = {s.ref.key for s in self.stale_vaults()}
        for schedule in self._schedules.values():
            if schedule.ref.key in stale and not schedule.stale:
                schedule.stale = True
                log.warning(
                    "vault_stale",
                    vault=schedule.ref.name,
                    subscription_id=schedule.ref.subscription_id,
                    resource_group=schedule.ref.resource_group,
                    intervals=STALE_INTERVALS,
                    why=schedule.why(self.monotonic()),
                )
            elif schedule.ref.key not in stale and schedule.stale:
                schedule.stale = False
                log.info("vault_recovered", vault=schedule.ref.name)

    def _maybe_prune(self) -> None:
        now = self.monotonic()
        if now < self._next_prune:
            return
        removed, more = self.tracker.prune(
            lookback=self.config.discovery.lookback, retention=self.config.store.retention
        )
        # A backlog is forgotten a few thousand rows a tick, never in one long transaction.
        self._next_prune = now if more else now + PRUNE_EVERY
        if removed:
            log.info("store_pruned", jobs=removed, more=more)

    # -- inventory --------------------------------------------------------------------------

    def _launch_inventory(self, schedule: VaultSchedule) -> None:
        task = asyncio.create_task(self._inventory(schedule), name=f"inventory {schedule.ref.name}")
        schedule.inventory_task = task

        def done(t: asyncio.Task[None]) -> None:
            schedule.inventory_task = None
            if not t.cancelled() and t.exception() is not None and self._failure is None:
                self._failure = t.exception()
            self._wake.set()

        task.add_done_callback(done)

    async def _inventory(self, schedule: VaultSchedule) -> None:
        """One inventory round of a vault: its protected items with their newest recovery points."""
        vault = schedule.ref
        every = self.config.poll.inventory_interval
        known = {
            key: row.last_recovery_point for key, row in self.tracker.inventory.get(vault.key, {}).items()
        }
        items: list[ProtectedItem] = []
        rejected: list[RejectedItem] = []
        try:
            async for page, refused in self.api.items(vault, known):
                items.extend(page)
                rejected.extend(refused)
        except AzureError as exc:
            self._inventory_failed(schedule, exc, len(known))
            return
        finally:
            self.heartbeat = self.monotonic()
        schedule.inventory_failures = 0
        schedule.inventory_failing_since = None
        self._rejected(vault, rejected)
        if vault.key not in self.tracker.vaults:
            return  # dropped while listed
        new, gone = self.tracker.record_inventory(vault, items)
        # The next round at a stable phase of its own within the interval, so vaults spread over it.
        now = self.monotonic()
        phase = _phase(vault.key, "inventory")
        schedule.next_inventory = now + every * (0.5 + phase / 2)
        log.debug("inventory_read", vault=vault.name, items=len(items), new=new, gone=gone)

    def _inventory_failed(self, schedule: VaultSchedule, exc: AzureError, known: int) -> None:
        """An inventory round failed: try again on backoff; after INVENTORY_STALE rounds' worth of failing,
        its items leave /metrics (job history speaks for them then) until a round works again.

        Its failures are logged, not counted as poll errors: the vault's jobs may be polled fine, and a
        service without the inventory (a 404) is no failure of the vault.
        """
        vault = schedule.ref
        every = self.config.poll.inventory_interval
        now = self.monotonic()
        schedule.inventory_failures += 1
        if schedule.inventory_failing_since is None:
            schedule.inventory_failing_since = now
            event = "inventory_unavailable" if isinstance(exc, NotFoundError) else "inventory_failed"
            log.warning(
                event,
                **_vault_fields(vault),
                reason=exc.reason,
                status=exc.status,
                code=exc.code,
                error=str(exc),
                keeping=known,
            )
        schedule.last_inventory_error = f"{exc.reason}: {exc}"
        if now - schedule.inventory_failing_since > INVENTORY_STALE * every:
            self.tracker.hide_inventory(vault)
        delay = self.backoff.delay(schedule.inventory_failures - 1, exc.retry_after)
        schedule.next_inventory = now + min(max(delay, self.config.poll.interval), every)

    def _inventory_soon(self, vault: VaultRef, tj: TrackedJob) -> None:
        """An item's backup just succeeded: read its vault's inventory again soon, for the new point."""
        schedule = self._schedules.get(vault.key)
        if schedule is None or tj.operation != "Backup" or tj.status not in SUCCESS_STATUSES:
            return
        if self.tracker.item_of_job(vault, tj) is not None:
            schedule.next_inventory = min(schedule.next_inventory, self.monotonic() + INVENTORY_SOON)

    # -- vault listings ---------------------------------------------------------------------

    def _launch_listing(self, listing: Listing) -> None:
        task = asyncio.create_task(self._list_vaults(listing), name=f"vaults {listing.subscription.id}")
        self._listing_tasks[listing.key] = task

        def done(t: asyncio.Task[None]) -> None:
            self._listing_tasks.pop(listing.key, None)
            if not t.cancelled() and t.exception() is not None and self._failure is None:
                self._failure = t.exception()
            self._wake.set()

        task.add_done_callback(done)

    async def _list_vaults(self, listing: Listing) -> None:
        """List one subscription's vaults of one kind; on success, watch what it found."""
        every = self.config.poll.vault_discovery_interval
        found: list[VaultInfo] = []
        rejected = 0
        try:
            async for vaults, refused in self.api.vaults(listing.subscription.id, listing.kind):
                found.extend(vaults)
                rejected += len(refused)
        except AzureError as exc:
            listing.failures += 1
            listing.last_error = f"{exc.reason}: {exc}"
            delay = self.backoff.delay(listing.failures - 1, exc.retry_after)
            listing.next_listing = self.monotonic() + min(delay, every)
            log.warning(
                "vault_listing_failed",
                subscription_id=listing.subscription.id,
                vault_type=listing.kind.value,
                reason=exc.reason,
                status=exc.status,
                code=exc.code,
                error=str(exc),
                keeping=len(listing.found or {}),
            )
            return
        finally:
            listing.listed_once = True
            self.heartbeat = self.monotonic()
        if rejected:
            log.warning(
                "vault_listing_items_rejected",
                subscription_id=listing.subscription.id,
                vault_type=listing.kind.value,
                items=rejected,
            )
        listing.failures = 0
        listing.last_error = None
        # Each subscription keeps a stable phase of its own within the interval.
        phase = _phase(f"{listing.subscription.id}/{listing.kind.value}", "vaults")
        listing.next_listing = self.monotonic() + every * (0.5 + phase / 2)
        self.vault_set.replace(listing, found)
        self.apply_vaults()
        log.debug(
            "vaults_listed",
            subscription_id=listing.subscription.id,
            vault_type=listing.kind.value,
            vaults=len(found),
        )

    def _vault_gone(self, vault: VaultRef) -> None:
        """A vault answered 404 as a whole: one found by listing is dropped now, a named one is reported."""
        if self.vault_set.forget(vault):
            self.apply_vaults()
        else:
            log.warning("vault_not_found", **_vault_fields(vault))

    # -- passes -----------------------------------------------------------------------------

    async def run_round(self, stop: asyncio.Event | None = None) -> RoundStats:
        """One pass of every vault now (not waiting for their schedules), and wait for all of them."""
        self._sync()
        stats = RoundStats(started=self.clock())
        before = self.client.requests_sent
        schedules = [s for s in self._schedules.values() if s.task is None]
        if stop is None or not stop.is_set():
            for schedule in schedules:
                self._launch(schedule)
        tasks = [s.task for s in schedules if s.task is not None]
        if tasks:
            await asyncio.wait(tasks)
        if self._failure is not None:
            raise self._failure
        stats.units = len(tasks)
        stats.errors = sum(1 for s in schedules if s.last_error is not None)
        stats.finished = self.clock()
        stats.requests = self.client.requests_sent - before
        self._sync()
        return stats

    async def _guarded_pass(self, schedule: VaultSchedule) -> None:
        state = self.tracker.vaults.get(schedule.ref.key)
        if state is None:
            return  # dropped by a reload since it was due
        started = self.monotonic()
        client = self.client
        before = client.requests_sent
        outcome = _Pass()
        try:
            await self._pass(state, schedule, outcome)
        except AzureError as exc:
            outcome.fatal = exc
        except StoreError:
            raise
        except Exception:
            # A bug, not Azure: logged with its traceback, and the vault backs off like any failure.
            log.exception("poll_pass_crashed", vault=schedule.ref.name)
            outcome.fatal = AzureError("the pass crashed (see poll_pass_crashed)")
        finally:
            self.heartbeat = self.monotonic()
        if outcome.fatal is not None:
            outcome.errors += 1
            self._vault_error(state, outcome.fatal)
        self._finish(schedule, state, started, outcome)
        if self.on_pass is not None:
            stats = RoundStats(
                started=started, units=1, requests=client.requests_sent - before, errors=outcome.errors
            )
            stats.finished = self.monotonic()
            self.on_pass(schedule.ref, stats)

    def _finish(self, schedule: VaultSchedule, state: VaultState, started: float, outcome: _Pass) -> None:
        now = self.monotonic()
        schedule.passes += 1
        self.passes += 1
        interval = self.config.poll.interval
        if outcome.fatal is None:
            schedule.failures = 0
            # Drift-free: one interval after this pass was due; a pass that overran starts the next now.
            schedule.next_poll = max(schedule.next_poll + interval, now)
            if schedule.next_poll > now + interval:
                schedule.next_poll = now + interval  # after a long backoff, back on a plain interval
        else:
            schedule.failures += 1
            delay = self.backoff.delay(schedule.failures - 1, outcome.fatal.retry_after)
            schedule.next_poll = now + max(delay, interval)
        if outcome.errors == 0:
            schedule.last_ok = now
            schedule.last_error = None
            self.tracker.vault_polled(state.ref, self.clock())
        elif outcome.fatal is not None:
            schedule.last_error = f"{outcome.fatal.reason}: {outcome.fatal}"
        log.debug(
            "vault_pass_done",
            vault=state.ref.name,
            errors=outcome.errors,
            seconds=round(now - started, 3),
            next_in=round(schedule.next_poll - now, 3),
        )

    async def _pass(self, state: VaultState, schedule: VaultSchedule, outcome: _Pass) -> None:
        vault = state.ref
        now = self.monotonic()
        failed: AzureError | None = None
        if state.discover and (schedule.next_discovery is None or now >= schedule.next_discovery):
            every = self.config.poll.discovery_interval
            if schedule.next_discovery is None:
                # The first listing is at once; after that each vault keeps a stable phase of its own.
                schedule.next_discovery = now - every * (1.0 - _phase(vault.key, "discovery"))
            schedule.next_discovery = max(schedule.next_discovery + every, now)
            try:
                await self.discover(state, outcome)
            except (ForbiddenError, AuthError):
                raise  # the job polls would fail alike
            except AzureError as exc:
                failed = exc  # the jobs already known are still polled; the pass fails after them
        outcome.errors += await self._poll_jobs(vault)
        if failed is not None:
            raise failed

    async def _poll_jobs(self, vault: VaultRef) -> int:
        """Poll the vault's due unfinished jobs; the number of requests that failed."""
        batched, singles = plan_jobs(self.tracker.polled_jobs(vault), self.monotonic())
        errors = 0
        if batched:
            errors += await self._batch(vault, batched)
        errors += await self._get_many(vault, [tj.job_id for tj in singles])
        return errors

    async def _get_many(self, vault: VaultRef, job_ids: list[str]) -> int:
        """GET each job, at most a quarter of the concurrency at once: one vault never takes every slot."""
        if not job_ids:
            return 0
        slots = asyncio.Semaphore(max(2, self.client.concurrency // 4))

        async def one(job_id: str) -> None:
            async with slots:
                await self._get(vault, job_id)

        results = await asyncio.gather(*(one(job_id) for job_id in job_ids), return_exceptions=True)
        failed: list[AzureError] = []
        fatal: AzureError | None = None
        for result in results:
            if isinstance(result, ForbiddenError | AuthError):
                # Not this job's problem but the vault's or the credential's: the whole pass fails.
                fatal = fatal or result
            elif isinstance(result, AzureError):
                failed.append(result)
            elif isinstance(result, BaseException):
                raise result
        self._request_errors(vault, failed)
        if fatal is not None:
            raise fatal
        return len(failed)

    async def _get(self, vault: VaultRef, job_id: str) -> Job | None:
        """GET one job and record it; None for a job Azure does not know (re-checked rarely).

        A job whose GET fails backs off on its own and the error is re-raised for its pass to count.
        """
        try:
            job = await self.api.get_job(vault, job_id)
        except NotFoundError as exc:
            # Not the vault's failure: the job is gone or not visible yet. Counted, kept, asked again later.
            self.tracker.poll_error(vault, exc.reason)
            followed = self.tracker.followed(vault, job_id)
            if followed is None or followed.state is not JobState.NOT_FOUND:
                log.warning("job_not_found", vault=vault.name, job_id=job_id, error=str(exc))
            self.tracker.mark_error(vault, job_id, str(exc), state=JobState.NOT_FOUND)
            tracked = self.tracker.followed(vault, job_id)
            if tracked is not None:
                tracked.next_check = self.monotonic() + min(
                    NOT_FOUND_RECHECK, max(10 * self.config.poll.interval, self.config.poll.backoff_max)
                )
            return None
        except AzureError as exc:
            tracked = self.tracker.followed(vault, job_id)
            if tracked is not None:
                tracked.failures += 1
                delay = self.backoff.delay(tracked.failures - 1, exc.retry_after)
                tracked.next_check = self.monotonic() + delay
                tracked.last_error = str(exc)
            raise
        self._clear_vault_error(vault)
        tracked = self.tracker.observe(vault, job, detailed=True)
        if job.is_final and tracked is not None:
            self._inventory_soon(vault, tracked)
        return job

    async def _batch(self, vault: VaultRef, jobs: list[TrackedJob]) -> int:
        """One listing of the vault's unfinished jobs where it saves requests, and a GET for each of
        `jobs` that left it (or for every one, where a listing would not save requests)."""
        running = [RunningJob(tj.job_id, tj.start_time) for tj in jobs if tj.start_time is not None]
        listed = await self.api.still_running(vault, running, self.config.discovery.overlap, self.clock())
        if listed is None:
            return await self._get_many(vault, [tj.job_id for tj in jobs])
        still, rejected = listed
        self._rejected(vault, rejected)
        self._clear_vault_error(vault)
        seen = [still[tj.job_id.lower()] for tj in jobs if tj.job_id.lower() in still]
        if seen:
            self.tracker.observe_many(vault, seen, detailed=False)
        # Those that left the listing ended (or are Cancelling): one GET each for the final state. A job
        # whose item was set aside as malformed is among them: its GET says what it is.
        gone = [tj.job_id for tj in jobs if tj.job_id.lower() not in still]
        return len(rejected) + await self._get_many(vault, gone)

    async def discover(self, state: VaultState, outcome: _Pass | None = None) -> int:
        """List a vault's jobs started since the last look and watch the new ones; how many were new.

        A listing that fails raises (the pass fails). A GET of a new finished job that fails is counted
        in `outcome` and the listing's view of that job is kept.
        """
        vault = state.ref
        now = self.clock()
        lookback = self.config.discovery.lookback
        if state.watermark is not None and now - state.watermark > lookback:
            self.tracker.discovery_gap(vault, state.watermark, now - lookback)
        since = state.watermark if state.watermark is not None else now - lookback
        since = max(since, now - lookback)
        overlap = self.config.discovery.overlap
        new_jobs: dict[str, Job] = {}
        updates: list[Job] = []
        rejected = 0
        async for page in self.api.jobs_since(vault, since - overlap, now + overlap):
            rejected += self._rejected(vault, page.rejected)
            # What the watcher follows is in memory; what it finished with, in the store (one query a page).
            stored = self.tracker.stored_states(
                vault, [j.job_id for j in page.jobs if self.tracker.followed(vault, j.job_id) is None]
            )
            for job in page.jobs:
                followed = self.tracker.followed(vault, job.job_id)
                if followed is None:
                    if job.job_id.lower() not in stored:
                        new_jobs[job.job_id.lower()] = job
                elif followed.state is JobState.NOT_FOUND:
                    new_jobs[job.job_id.lower()] = job
                elif followed.status != job.status and not job.is_final:
                    # An end is left to the job's own poll, which reads its extendedInfo.
                    updates.append(job)
        self._clear_vault_error(vault)
        # New finished jobs that are news get one GET for their errors and extendedInfo.
        fetch = {key: j for key, j in new_jobs.items() if j.is_final and self.tracker.is_news(j)}
        plain = [j for key, j in new_jobs.items() if key not in fetch]
        if plain:
            self.tracker.observe_many(vault, plain, detailed=False)
        if updates:
            self.tracker.observe_many(vault, updates, detailed=False)
        results = await asyncio.gather(
            *(self._get(vault, j.job_id) for j in fetch.values()), return_exceptions=True
        )
        failed: list[AzureError] = []
        for job, result in zip(fetch.values(), results, strict=True):
            if isinstance(result, AzureError):
                # Keep what the listing said; the GET's error is counted like any other.
                self.tracker.observe(vault, job, detailed=False)
                failed.append(result)
            elif isinstance(result, BaseException):
                raise result
        self._request_errors(vault, failed)
        if outcome is not None:
            outcome.errors += len(failed) + rejected
        self.tracker.set_watermark(vault, now)
        if new_jobs:
            log.info("jobs_discovered", vault=vault.name, new=len(new_jobs), since=_dt(since).isoformat())
        return len(new_jobs)

    # -- errors -----------------------------------------------------------------------------

    def _rejected(self, vault: VaultRef, rejected: list[RejectedItem]) -> int:
        """Items of a listing that are not jobs: each counted as bad_response, logged once per item."""
        for item in rejected:
            self.tracker.poll_error(vault, "bad_response")
            key = (vault.key, item.ident or f"#{item.index}")
            if key not in self._rejected_logged:
                if len(self._rejected_logged) >= 10_000:
                    self._rejected_logged.clear()  # bounded memory; an item may be logged again
                self._rejected_logged.add(key)
                log.warning(
                    "list_item_rejected",
                    vault=vault.name,
                    item=item.ident,
                    index=item.index,
                    reason=item.reason,
                )
        return len(rejected)

    def _request_errors(self, vault: VaultRef, failed: list[AzureError]) -> None:
        """Requests of a pass failed (the pass went on): count each, log one line per reason."""
        by_reason: dict[str, list[AzureError]] = {}
        for exc in failed:
            self.tracker.poll_error(vault, exc.reason)
            by_reason.setdefault(exc.reason, []).append(exc)
        for errors in by_reason.values():
            self._log_error(vault, errors[0], requests=len(errors))

    def _vault_error(self, state: VaultState, exc: AzureError) -> None:
        """The pass failed as a whole: count it; a 403 marks the vault unauthorized until a poll works."""
        vault = state.ref
        self.tracker.poll_error(vault, exc.reason)
        if isinstance(exc, ForbiddenError):
            if not state.unauthorized:
                log.error(
                    "vault_unauthorized",
                    vault=vault.name,
                    subscription_id=vault.subscription_id,
                    resource_group=vault.resource_group,
                    error=str(exc),
                )
            state.unauthorized = str(exc)
            return
        if isinstance(exc, NotFoundError):
            self._vault_gone(vault)
            return
        self._log_error(vault, exc)

    def _log_error(self, vault: VaultRef, exc: AzureError, *, requests: int = 1) -> None:
        event = "auth_failed" if isinstance(exc, AuthError) else "poll_failed"
        if isinstance(exc, ApiVersionError):
            event = "api_version_rejected"
        log.warning(
            event,
            vault=vault.name,
            reason=exc.reason,
            status=exc.status,
            code=exc.code,
            error=str(exc),
            requests=requests,
        )

    def _clear_vault_error(self, vault: VaultRef) -> None:
        state = self.tracker.vaults.get(vault.key)
        if state is not None and state.unauthorized:
            log.info("vault_authorized", vault=vault.name)
            state.unauthorized = None


def plan_jobs(jobs: list[TrackedJob], now: float) -> tuple[list[TrackedJob], list[TrackedJob]]:
    """Among the jobs due at `now`: those one batched listing covers, and those that need a GET each.

    A listing pays off from two jobs whose start time is known (its time window needs it); a job not yet
    seen, or not found, gets a GET. Linear in the number of jobs.
    """
    batched: list[TrackedJob] = []
    singles: list[TrackedJob] = []
    for tj in jobs:
        if tj.next_check > now:
            continue
        if tj.start_time is not None and tj.state is JobState.ACTIVE:
            batched.append(tj)
        else:
            singles.append(tj)
    if len(batched) < 2:
        return [], batched + singles
    return batched, singles


def _vault_fields(vault: VaultRef) -> dict[str, str]:
    return {
        "subscription_id": vault.subscription_id,
        "resource_group": vault.resource_group,
        "vault": vault.name,
        "vault_type": vault.kind.value,
    }


def _phase(vault_key: str, what: str) -> float:
    """A share of an interval in (0, 1], stable for a vault and spread over vaults."""
    return (zlib.crc32(f"{what}:{vault_key}".encode()) % 1000 + 1) / 1000


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)
