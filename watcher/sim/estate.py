"""The simulated estate: vaults, their backup jobs and their operations, all driven by one clock.

Nothing runs in the background. A job is a start time, a duration and an outcome; its status at any
moment is derived from the estate's clock (`status_of`), so tests move time by replacing `clock` and
the demo simply uses wall time. A job does not exist before it starts (with `appears_after`, until
some time after: agent-reported jobs arrive late). Recurring jobs materialise lazily, instance by
instance, when a vault is next looked at.

Each vault keeps two indexes so a listing never scans the whole estate: its jobs sorted by start
(for newest-first pages and time windows) and, per final outcome, sorted by end (a job is finished
exactly when its end is past, so a status filter is a binary search per outcome). Change a job only
through Estate methods (`cancel`); assigning to a SimJob's fields after `add` would leave the
indexes stale.

Triggered backups follow per-item scripts (`script_item`). By default an item whose name contains
`fail` gets a Failed operation and no job; every other item gets a job that completes.
"""

from __future__ import annotations

import bisect
import dataclasses
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from watcher.sim.filters import JobQuery, normalise_operation
from watcher.sim.formats import ticks

FINAL_STATUSES = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
# A cancelled job reports Cancelling this long (or its whole duration, if shorter) before it ends.
CANCELLING_SECONDS = 2.0
# Namespace of the deterministic ids (uuid5) of recurring instances and activity ids.
SIM_NAMESPACE = uuid.UUID("6f1d3c52-8e47-4b8a-9d0e-2a4c6b8f1e37")

_Key = tuple[int, str]
_VaultKey = tuple[str, str, str]


@dataclass(slots=True)
class SimJob:
    """One backup job as the service tracks it; `start` and `duration` are seconds (epoch, span)."""

    subscription_id: str
    resource_group: str
    vault: str
    job_id: str
    job_type: str
    operation: str
    entity: str
    backup_management_type: str
    start: float
    duration: float
    outcome: str = "Completed"
    size_mb: int | None = None
    error_code: int | None = None
    error_title: str = ""
    error_message: str = ""
    timespan_duration: bool = False
    # The protection container: `iaasvmcontainerv2;rg;vm`, `StorageContainer;Storage;rg;account`.
    container_name: str = ""
    # True for ad-hoc jobs (a triggered backup), False for scheduled ones.
    user_triggered: bool = False
    # Seconds after its start before the service lists or returns the job at all: MABS/DPM agents and
    # SQL/HANA workloads report their jobs late. Its startTime stays the real start.
    appears_after: float = 0.0

    @property
    def end(self) -> float:
        """When the job reaches its outcome."""
        return self.start + self.duration

    def visible(self, now: float) -> bool:
        """Whether the service knows of the job at `now`."""
        return self.start + self.appears_after <= now


@dataclass(slots=True)
class RecurringJob:
    """A job that repeats: instance k starts at `template.start + k * every` with `outcomes[k % n]`.

    The template itself is not a job. Instance ids are uuid5 of the template's job id and k, so a
    scenario is the same on every run.
    """

    template: SimJob
    every: float
    outcomes: Sequence[str] = ("Completed",)


@dataclass(slots=True)
class SimOperation:
    """An asynchronous operation (a triggered backup or a cancel) and what it leads to."""

    operation_id: str
    subscription_id: str
    resource_group: str
    vault: str
    start: float
    seconds: float
    job_id: str | None = None
    error_code: str = ""
    error_message: str = ""

    def status(self, now: float) -> str:
        """InProgress until `seconds` have passed, then Failed (with an error) or Succeeded."""
        if now < self.start + self.seconds:
            return "InProgress"
        return "Failed" if self.error_code else "Succeeded"


@dataclass(frozen=True, slots=True)
class ItemScript:
    """What a backup triggered on a matching protected item does."""

    outcome: str = "Completed"
    duration: float = 20.0
    size_mb: int | None = 1024
    # (code, message): the operation fails with this error and no job is created.
    operation_error: tuple[str, str] | None = None


_DEFAULT_SCRIPTS: tuple[tuple[str, ItemScript], ...] = (
    (
        "fail",
        ItemScript(
            operation_error=(
                "BMSUserErrorObjectLocked",
                "Another operation is in progress on the selected item. If there is an in-progress "
                "operation, Please retry after it has finished. If there is no in-progress "
                "operation, it may be stuck in some state. Please retry after some time.",
            )
        ),
    ),
)


@dataclass(slots=True)
class _Recurrence:
    rec: RecurringJob
    next_k: int = 0


@dataclass(slots=True)
class _SortedJobs:
    """Jobs sorted by a (ticks, lower-case id) key, kept as parallel lists for bisect."""

    keys: list[_Key] = field(default_factory=list)
    jobs: list[SimJob] = field(default_factory=list)

    def insert(self, key: _Key, job: SimJob) -> None:
        i = bisect.bisect_left(self.keys, key)
        self.keys.insert(i, key)
        self.jobs.insert(i, job)

    def remove(self, key: _Key) -> None:
        i = bisect.bisect_left(self.keys, key)
        del self.keys[i]
        del self.jobs[i]


@dataclass(slots=True)
class _Vault:
    subscription_id: str
    resource_group: str
    name: str
    jobs: dict[str, SimJob] = field(default_factory=dict)
    by_start: _SortedJobs = field(default_factory=_SortedJobs)
    by_end: dict[str, _SortedJobs] = field(
        default_factory=lambda: {status: _SortedJobs() for status in FINAL_STATUSES}
    )
    recurring: list[_Recurrence] = field(default_factory=list)
    operations: dict[str, SimOperation] = field(default_factory=dict)


def _start_key(job: SimJob) -> _Key:
    return (ticks(job.start), job.job_id.lower())


def _end_key(job: SimJob) -> _Key:
    return (ticks(job.end), job.job_id.lower())


def _key(subscription_id: str, resource_group: str, vault: str) -> _VaultKey:
    return (subscription_id.lower(), resource_group.lower(), vault.lower())


class Estate:
    """Every simulated vault with its jobs and operations; `clock` gives the current epoch time."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._vaults: dict[_VaultKey, _Vault] = {}
        self._scripts: list[tuple[str, ItemScript]] = list(_DEFAULT_SCRIPTS)

    # -- building ---------------------------------------------------------------------------

    def add_vault(self, subscription_id: str, resource_group: str, vault: str) -> None:
        """Declare a vault (vaults are also created by the first job added to them)."""
        self._vault_for(subscription_id, resource_group, vault)

    def add(self, job: SimJob) -> SimJob:
        """Add a job; it appears once the clock reaches its start."""
        if job.outcome not in FINAL_STATUSES:
            raise ValueError(f"outcome must be one of {FINAL_STATUSES}, not {job.outcome!r}")
        if job.duration < 0:
            raise ValueError("duration must not be negative")
        v = self._vault_for(job.subscription_id, job.resource_group, job.vault)
        job_key = job.job_id.lower()
        if job_key in v.jobs:
            raise ValueError(f"job {job.job_id} already exists in vault {v.name}")
        v.jobs[job_key] = job
        v.by_start.insert(_start_key(job), job)
        v.by_end[job.outcome].insert(_end_key(job), job)
        return job

    def add_recurring(self, rec: RecurringJob) -> None:
        """Add a job that repeats every `rec.every` seconds from `rec.template.start` on."""
        if rec.every <= 0:
            raise ValueError("every must be positive")
        if not rec.outcomes or any(o not in FINAL_STATUSES for o in rec.outcomes):
            raise ValueError(f"outcomes must be a non-empty sequence of {FINAL_STATUSES}")
        t = rec.template
        self._vault_for(t.subscription_id, t.resource_group, t.vault).recurring.append(_Recurrence(rec))

    def script_item(
        self,
        item_contains: str,
        *,
        outcome: str = "Completed",
        duration: float = 20.0,
        size_mb: int | None = 1024,
        operation_error: tuple[str, str] | None = None,
    ) -> None:
        """Script backups triggered on items whose name contains `item_contains` (any case).

        The latest matching script wins. With `operation_error=(code, message)` the operation fails
        and no job is created; otherwise the job runs `duration` seconds and ends with `outcome`.
        """
        if outcome not in FINAL_STATUSES:
            raise ValueError(f"outcome must be one of {FINAL_STATUSES}, not {outcome!r}")
        script = ItemScript(outcome, duration, size_mb, operation_error)
        self._scripts.insert(0, (item_contains.lower(), script))

    # -- reading ----------------------------------------------------------------------------

    def vaults(self) -> list[tuple[str, str, str]]:
        """Every vault as (subscription_id, resource_group, vault), oldest first."""
        return [(v.subscription_id, v.resource_group, v.name) for v in self._vaults.values()]

    def has_vault(self, subscription_id: str, resource_group: str, vault: str) -> bool:
        """Whether the vault exists (names compare case-insensitively, as ARM's do)."""
        return _key(subscription_id, resource_group, vault) in self._vaults

    def get(self, subscription_id: str, resource_group: str, vault: str, job_id: str) -> SimJob | None:
        """The job, or None if the vault or job is unknown or the job has not started yet."""
        now = self.clock()
        v = self._current(subscription_id, resource_group, vault, now)
        job = v.jobs.get(job_id.lower()) if v else None
        return job if job is not None and job.visible(now) else None

    def jobs_in(self, subscription_id: str, resource_group: str, vault: str) -> list[SimJob]:
        """The vault's started jobs, newest first."""
        now = self.clock()
        v = self._current(subscription_id, resource_group, vault, now)
        return [j for j in self._started_newest_first(v, now, None) if j.visible(now)] if v else []

    def status_of(self, job: SimJob, now: float | None = None) -> str:
        """InProgress until the job's end, then its outcome; a Cancelled job is Cancelling first."""
        now = self.clock() if now is None else now
        if now >= job.end:
            return job.outcome
        window = min(CANCELLING_SECONDS, job.duration)
        # The tolerance keeps a job cancelled "now" Cancelling despite float rounding.
        if job.outcome == "Cancelled" and now >= job.end - window - 1e-6:
            return "Cancelling"
        return "InProgress"

    def query(
        self,
        subscription_id: str,
        resource_group: str,
        vault: str,
        query: JobQuery,
        *,
        before: tuple[int, str] | None = None,
        limit: int,
        now: float | None = None,
    ) -> tuple[list[SimJob], bool]:
        """Up to `limit` matching started jobs, newest first, older than `before`; and if more match.

        `before` is a (start ticks, lower-case job id) key as `sort_key` gives it, for paging; `now`
        defaults to the clock.
        """
        now = self.clock() if now is None else now
        v = self._current(subscription_id, resource_group, vault, now)
        if v is None:
            return [], False
        if query.job_id is not None:
            job = v.jobs.get(query.job_id)
            candidates: Iterator[SimJob] = iter([job] if job is not None else [])
        elif query.status is None:
            candidates = self._started_newest_first(v, now, before, query.start_from, query.start_to)
        else:
            candidates = iter(sorted(self._with_status(v, query.status, now), key=sort_key, reverse=True))
        page: list[SimJob] = []
        for job in candidates:
            if not job.visible(now) or (before is not None and sort_key(job) >= before):
                continue
            if not self._matches(job, query, now):
                continue
            if len(page) == limit:
                return page, True
            page.append(job)
        return page, False

    def operation(
        self, subscription_id: str, resource_group: str, vault: str, operation_id: str
    ) -> SimOperation | None:
        """The operation with that id in the vault, or None."""
        v = self._vaults.get(_key(subscription_id, resource_group, vault))
        return v.operations.get(operation_id.lower()) if v else None

    # -- acting -----------------------------------------------------------------------------

    def trigger_backup(
        self,
        subscription_id: str,
        resource_group: str,
        vault: str,
        container: str,
        item: str,
        *,
        operation_seconds: float,
    ) -> SimOperation:
        """Start an ad-hoc backup of a protected item; the job starts when the operation succeeds.

        The job's type follows the container (`IaasVMContainer;...` an IaaS VM, `VMAppContainer;...`
        a SQL workload, `StorageContainer;...` an Azure Files share); its entity is the item name's
        last `;` part. Raise KeyError for an unknown vault.
        """
        v = self._vaults[_key(subscription_id, resource_group, vault)]
        now = self.clock()
        script = self._script_for(item)
        op = SimOperation(
            str(uuid.uuid4()), v.subscription_id, v.resource_group, v.name, now, operation_seconds
        )
        if script.operation_error is not None:
            op.error_code, op.error_message = script.operation_error
        else:
            job_type, management_type, operation, container_name = _kind_of(container, item)
            job = SimJob(
                subscription_id=v.subscription_id,
                resource_group=v.resource_group,
                vault=v.name,
                job_id=str(uuid.uuid4()),
                job_type=job_type,
                operation=operation,
                entity=item.rsplit(";", 1)[-1],
                backup_management_type=management_type,
                start=now + operation_seconds,
                duration=script.duration,
                outcome=script.outcome,
                size_mb=script.size_mb,
                container_name=container_name,
                user_triggered=True,
            )
            self.add(job)
            op.job_id = job.job_id
        v.operations[op.operation_id.lower()] = op
        return op

    def cancel(self, job: SimJob) -> SimOperation:
        """Cancel a running job: it is Cancelling at once and Cancelled a moment later.

        Returns the cancel operation, which succeeds when the job ends. Raise ValueError if the job
        is not running.
        """
        now = self.clock()
        if not job.start <= now < job.end:
            raise ValueError(f"job {job.job_id} is not running")
        v = self._vaults[_key(job.subscription_id, job.resource_group, job.vault)]
        if job.outcome != "Cancelled" or self.status_of(job, now) != "Cancelling":
            v.by_end[job.outcome].remove(_end_key(job))
            job.outcome = "Cancelled"
            job.duration = now - job.start + CANCELLING_SECONDS
            v.by_end[job.outcome].insert(_end_key(job), job)
        op = SimOperation(str(uuid.uuid4()), v.subscription_id, v.resource_group, v.name, now, job.end - now)
        v.operations[op.operation_id.lower()] = op
        return op

    # -- internals --------------------------------------------------------------------------

    def _vault_for(self, subscription_id: str, resource_group: str, vault: str) -> _Vault:
        key = _key(subscription_id, resource_group, vault)
        v = self._vaults.get(key)
        if v is None:
            v = self._vaults[key] = _Vault(subscription_id, resource_group, vault)
        return v

    def _current(self, subscription_id: str, resource_group: str, vault: str, now: float) -> _Vault | None:
        """The vault with its recurring jobs materialised up to `now`."""
        v = self._vaults.get(_key(subscription_id, resource_group, vault))
        if v is not None:
            for r in v.recurring:
                t = r.rec.template
                while t.start + r.next_k * r.rec.every <= now:
                    k = r.next_k
                    r.next_k += 1
                    self.add(
                        dataclasses.replace(
                            t,
                            job_id=str(uuid.uuid5(SIM_NAMESPACE, f"{t.job_id}#{k}")),
                            start=t.start + k * r.rec.every,
                            outcome=r.rec.outcomes[k % len(r.rec.outcomes)],
                        )
                    )
        return v

    @staticmethod
    def _started_newest_first(
        v: _Vault,
        now: float,
        before: _Key | None,
        start_from: float | None = None,
        start_to: float | None = None,
    ) -> Iterator[SimJob]:
        """Started jobs by descending start, narrowed by binary search (callers still filter)."""
        keys = v.by_start.keys
        latest = now if start_to is None else min(now, start_to)
        hi = bisect.bisect_left(keys, (ticks(latest) + 1, ""))
        if before is not None:
            hi = min(hi, bisect.bisect_left(keys, before))
        lo = 0 if start_from is None else bisect.bisect_left(keys, (ticks(start_from) - 1, ""))
        return (v.by_start.jobs[i] for i in range(hi - 1, lo - 1, -1))

    def _with_status(self, v: _Vault, status: str, now: float) -> Iterator[SimJob]:
        """Jobs whose status is `status` now, from the end-sorted indexes."""
        split = (ticks(now) + 1, "")
        if status in FINAL_STATUSES:
            index = v.by_end[status]
            yield from index.jobs[: bisect.bisect_left(index.keys, split)]
            return
        if status not in ("InProgress", "Cancelling"):
            return
        outcomes = FINAL_STATUSES if status == "InProgress" else ("Cancelled",)
        for outcome in outcomes:
            index = v.by_end[outcome]
            for job in index.jobs[bisect.bisect_left(index.keys, split) :]:
                if job.visible(now) and self.status_of(job, now) == status:
                    yield job

    def _matches(self, job: SimJob, query: JobQuery, now: float) -> bool:
        return (
            (query.status is None or self.status_of(job, now) == query.status)
            and (
                query.backup_management_type is None
                or job.backup_management_type.lower() == query.backup_management_type
            )
            and (query.operation is None or normalise_operation(job.operation).lower() == query.operation)
            and (query.job_id is None or job.job_id.lower() == query.job_id)
            and (query.start_from is None or job.start >= query.start_from)
            and (query.start_to is None or job.start <= query.start_to)
        )

    def _script_for(self, item: str) -> ItemScript:
        name = item.lower()
        for contains, script in self._scripts:
            if contains in name:
                return script
        return ItemScript()


def sort_key(job: SimJob) -> tuple[int, str]:
    """A job's place in a listing (newest first is descending order of this key)."""
    return _start_key(job)


def _kind_of(container: str, item: str) -> tuple[str, str, str, str]:
    """(jobType, backupManagementType, operation, containerName) of a backup of this item."""
    c, i = container.lower(), item.lower()
    if c.startswith("vmappcontainer") or i.startswith(("sqldatabase", "saphanadatabase")):
        return "AzureWorkloadJob", "AzureWorkload", "Backup (Full)", container
    if c.startswith("storagecontainer"):
        return "AzureStorageJob", "AzureStorage", "Backup", container
    # IaaS VM jobs name the container without its `IaasVMContainer;` prefix.
    prefix, _, rest = container.partition(";")
    name = rest if prefix.lower() == "iaasvmcontainer" and rest else container
    return "AzureIaaSVMJob", "AzureIaasVM", "Backup", name
