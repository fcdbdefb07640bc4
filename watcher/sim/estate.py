"""The simulated estate: subscriptions, vaults of both kinds, their jobs, protected items and
operations, all driven by one clock.

Nothing runs in the background. A job is a start time, a duration and an outcome; its status at any
moment is derived from the estate's clock (`status_of`), so tests move time by replacing `clock` and
the demo simply uses wall time. A job does not exist before it starts (with `appears_after`, until
some time after: agent-reported jobs arrive late). Recurring jobs materialise lazily, instance by
instance, when a vault is next looked at.

A vault is a Recovery Services vault (`recovery_services`, the default everywhere) or a Backup vault
(`backup_vault`, Microsoft.DataProtection); its identity is (kind, subscription, resource group,
name), compared case-insensitively as ARM does, so the two kinds may share a name. Vaults come and
go (`add_vault`, `remove_vault`) while the simulator runs. A subscription is known once a vault was
declared in it or it was added on its own (`add_subscription`), and stays known.

Each vault keeps two job indexes so a listing never scans the whole estate: its jobs sorted by start
(for pages and time windows) and, per final outcome, sorted by end (a job is finished exactly when
its end is past, so a status filter is a binary search per outcome). Change a job only through
Estate methods (`cancel`); assigning to a SimJob's fields after `add` would leave the indexes stale.

Protected items (`SimItem`: Recovery Services protected items and Backup vault backup instances)
are declared with their recovery points; an item is listed from its `first_protected` time on.

Triggered backups follow per-item scripts (`script_item`). By default an item whose name contains
`fail` gets a Failed operation and no job; every other item gets a job that completes.
"""

from __future__ import annotations

import base64
import bisect
import dataclasses
import hashlib
import math
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from watcher.sim.filters import JobQuery, normalise_operation
from watcher.sim.formats import ticks

RECOVERY_SERVICES = "recovery_services"
BACKUP_VAULT = "backup_vault"
VAULT_KINDS = (RECOVERY_SERVICES, BACKUP_VAULT)
# How a Backup vault spells job statuses: `live` as the service answers (InProgress, Completed),
# `spec` as the REST spec examples do (Started, Succeeded).
STATUS_SPELLINGS = ("live", "spec")
FINAL_STATUSES = ("Completed", "CompletedWithWarnings", "Failed", "Cancelled")
# Item kinds and the vault kind that protects them.
ITEM_KINDS: Mapping[str, str] = {
    "vm": RECOVERY_SERVICES,
    "sql": RECOVERY_SERVICES,
    "fileshare": RECOVERY_SERVICES,
    "disk": BACKUP_VAULT,
    "blob": BACKUP_VAULT,
    "postgresql": BACKUP_VAULT,
    "aks": BACKUP_VAULT,
}
# The dataSourceType of each Backup vault item kind (a Backup vault job's `job_type`).
DATASOURCE_TYPES: Mapping[str, str] = {
    "disk": "Microsoft.Compute/disks",
    "blob": "Microsoft.Storage/storageAccounts/blobServices",
    "postgresql": "Microsoft.DBforPostgreSQL/servers/databases",
    "aks": "Microsoft.ContainerService/managedClusters",
}
# A Backup vault lists the jobs that started within this many days (a GET still finds older ones).
BACKUP_VAULT_LIST_DAYS = 14
# A cancelled job reports Cancelling this long (or its whole duration, if shorter) before it ends.
CANCELLING_SECONDS = 2.0
# Namespace of the deterministic ids (uuid5) of recurring instances, activity ids and item names.
SIM_NAMESPACE = uuid.UUID("6f1d3c52-8e47-4b8a-9d0e-2a4c6b8f1e37")

_Key = tuple[int, str]
_VaultKey = tuple[str, str, str, str]


@dataclass(slots=True)
class SimJob:
    """One backup job as the service tracks it; `start` and `duration` are seconds (epoch, span).

    For a Backup vault job (`vault_kind="backup_vault"`) `job_type` is the dataSourceType (e.g.
    `Microsoft.Compute/disks`), `operation` the operationCategory (`Backup`, `Restore`) and `entity`
    the backupInstanceFriendlyName.
    """

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
    # Recovery Services codes are numbers (400136); Backup vault codes are words.
    error_code: int | str | None = None
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
    vault_kind: str = RECOVERY_SERVICES
    # Backup vault jobs: the backup instance's name in the vault (default: derived as the service
    # names instances, see `instance_name`), its policy and the data source (its name defaults to
    # `entity`; `datasource_set` is the server of a PostgreSQL database; `source_resource_group`
    # defaults to the vault's).
    backup_instance: str = ""
    policy_name: str = ""
    datasource_name: str = ""
    datasource_set: str = ""
    source_resource_group: str = ""

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
    vault_kind: str = RECOVERY_SERVICES

    def status(self, now: float) -> str:
        """InProgress until `seconds` have passed, then Failed (with an error) or Succeeded."""
        if now < self.start + self.seconds:
            return "InProgress"
        return "Failed" if self.error_code else "Succeeded"


@dataclass(frozen=True, slots=True)
class SimVault:
    """A vault as its listing shows it."""

    kind: str
    subscription_id: str
    resource_group: str
    name: str
    location: str = "westeurope"
    tags: Mapping[str, str] = field(default_factory=dict)
    status_spelling: str = "live"


@dataclass(slots=True)
class SimItem:
    """A protected item (Recovery Services) or backup instance (Backup vault) and its backups.

    `kind` is vm, sql or fileshare in a Recovery Services vault; disk, blob, postgresql or aks in a
    Backup vault. `name` is the data source's own name (VM, database, share, disk, storage account,
    cluster); `parent` what holds it: the VM of a SQL database, the storage account of a share, the
    server of a PostgreSQL database. `recovery_points` are epoch times (empty: never backed up);
    with `every` > 0 backups go on, one more point every `every` seconds after the last listed one
    (or after `first_protected`). Points after the clock do not exist yet.

    `protection_state` defaults to IRPending before the first recovery point and Protected after
    (ProtectionConfigured in a Backup vault); ProtectionStopped is "stop protection, keep data".
    `health` is a VM's healthStatus (Passed, ActionRequired, ActionSuggested, Invalid); other kinds
    map it to their own health fields. `last_backup` / `last_backup_status` describe the latest
    attempt when it is not the newest recovery point (a failed backup).
    """

    subscription_id: str
    resource_group: str
    vault: str
    kind: str
    name: str
    policy: str = "DefaultPolicy"
    protection_state: str = ""
    health: str = "Passed"
    recovery_points: Sequence[float] = ()
    every: float = 0.0
    first_protected: float = 0.0
    last_backup: float | None = None
    last_backup_status: str = ""
    parent: str = ""
    source_resource_group: str = ""

    @property
    def vault_kind(self) -> str:
        """The kind of vault that protects items of this kind."""
        return ITEM_KINDS[self.kind]

    @property
    def source_group(self) -> str:
        """The resource group of the data source."""
        return self.source_resource_group or self.resource_group

    @property
    def arm_name(self) -> str:
        """The item's name in its vault's URLs: `VM;iaasvmcontainerv2;rg;vm`, an instance name."""
        if self.kind == "vm":
            return f"VM;iaasvmcontainerv2;{self.source_group};{self.name}"
        if self.kind == "sql":
            return f"SQLDataBase;mssqlserver;{self.name.lower()}"
        if self.kind == "fileshare":
            # The service names a share by a hash; only friendlyName carries the share's name.
            digest = hashlib.sha256(f"{self.parent}/{self.name}".lower().encode()).hexdigest()
            return f"AzureFileShare;{digest.upper()}"
        return instance_name(self.subscription_id, self.vault, self.parent, self.name)

    def points(self, now: float, start: float | None = None, end: float | None = None) -> list[float]:
        """Recovery point times up to `now` within [start, end], newest first."""
        hi = now if end is None else min(now, end)
        lo = -math.inf if start is None else start
        found = [t for t in self.recovery_points if lo <= t <= hi]
        if self.every > 0:
            base = max(self.recovery_points, default=self.first_protected)
            first = max(1, math.ceil((lo - base) / self.every)) if lo > base else 1
            last = math.floor((hi - base) / self.every)
            found.extend(base + k * self.every for k in range(first, last + 1))
        return sorted(found, reverse=True)

    def last_point(self, now: float) -> float | None:
        """The newest recovery point up to `now`, or None if there is none yet."""
        hi = max((t for t in self.recovery_points if t <= now), default=None)
        if self.every > 0:
            base = max(self.recovery_points, default=self.first_protected)
            k = math.floor((now - base) / self.every)
            if k >= 1:
                return base + k * self.every
        return hi


def instance_name(subscription_id: str, vault: str, datasource_set: str, datasource_name: str) -> str:
    """A backup instance's name as the service makes it: `{set or name}-{name}-{guid}`."""
    guid = uuid.uuid5(SIM_NAMESPACE, f"instance/{subscription_id}/{vault}/{datasource_name}".lower())
    return f"{datasource_set or datasource_name}-{datasource_name}-{guid}"


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
    info: SimVault
    jobs: dict[str, SimJob] = field(default_factory=dict)
    by_start: _SortedJobs = field(default_factory=_SortedJobs)
    by_end: dict[str, _SortedJobs] = field(
        default_factory=lambda: {status: _SortedJobs() for status in FINAL_STATUSES}
    )
    recurring: list[_Recurrence] = field(default_factory=list)
    operations: dict[str, SimOperation] = field(default_factory=dict)
    # Items by lower-case `arm_name`.
    items: dict[str, SimItem] = field(default_factory=dict)


def _start_key(job: SimJob) -> _Key:
    return (ticks(job.start), job.job_id.lower())


def _end_key(job: SimJob) -> _Key:
    return (ticks(job.end), job.job_id.lower())


def _key(kind: str, subscription_id: str, resource_group: str, vault: str) -> _VaultKey:
    return (kind, subscription_id.lower(), resource_group.lower(), vault.lower())


def _check_kind(kind: str) -> None:
    if kind not in VAULT_KINDS:
        raise ValueError(f"vault kind must be one of {VAULT_KINDS}, not {kind!r}")


class Estate:
    """Every simulated vault with its jobs, items and operations; `clock` gives the epoch time."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._vaults: dict[_VaultKey, _Vault] = {}
        # Known subscriptions (lower-case id -> id as first declared) and resource groups.
        self._subscriptions: dict[str, str] = {}
        self._resource_groups: set[tuple[str, str]] = set()
        # Every operation by lower-case id: Backup vault status URLs name no vault.
        self._operations: dict[str, SimOperation] = {}
        self._scripts: list[tuple[str, ItemScript]] = list(_DEFAULT_SCRIPTS)

    # -- building ---------------------------------------------------------------------------

    def add_subscription(self, subscription_id: str) -> None:
        """Make a subscription known (it lists no vaults until some are added)."""
        self._subscriptions.setdefault(subscription_id.lower(), subscription_id)

    def add_vault(
        self,
        subscription_id: str,
        resource_group: str,
        name: str,
        *,
        kind: str = RECOVERY_SERVICES,
        location: str = "westeurope",
        tags: Mapping[str, str] | None = None,
        status_spelling: str = "live",
    ) -> SimVault:
        """Declare a vault, or redeclare one with these attributes (its jobs and items stay).

        Vaults are also created, with default attributes, by the first job or item added to them.
        """
        _check_kind(kind)
        if status_spelling not in STATUS_SPELLINGS:
            raise ValueError(f"status_spelling must be one of {STATUS_SPELLINGS}, not {status_spelling!r}")
        v = self._vault_for(kind, subscription_id, resource_group, name)
        v.info = dataclasses.replace(
            v.info, location=location, tags=dict(tags or {}), status_spelling=status_spelling
        )
        return v.info

    def remove_vault(
        self, subscription_id: str, resource_group: str, name: str, *, kind: str = RECOVERY_SERVICES
    ) -> None:
        """Delete a vault with its jobs, items and operations; raise KeyError if it is unknown."""
        v = self._vaults.pop(_key(kind, subscription_id, resource_group, name))
        for op_id in v.operations:
            self._operations.pop(op_id, None)

    def add(self, job: SimJob) -> SimJob:
        """Add a job; it appears once the clock reaches its start."""
        if job.outcome not in FINAL_STATUSES:
            raise ValueError(f"outcome must be one of {FINAL_STATUSES}, not {job.outcome!r}")
        if job.duration < 0:
            raise ValueError("duration must not be negative")
        v = self._vault_for(job.vault_kind, job.subscription_id, job.resource_group, job.vault)
        job_key = job.job_id.lower()
        if job_key in v.jobs:
            raise ValueError(f"job {job.job_id} already exists in vault {v.info.name}")
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
        v = self._vault_for(t.vault_kind, t.subscription_id, t.resource_group, t.vault)
        v.recurring.append(_Recurrence(rec))

    def add_item(self, item: SimItem) -> SimItem:
        """Add a protected item (or backup instance) to its vault, creating the vault if needed."""
        if item.kind not in ITEM_KINDS:
            raise ValueError(f"item kind must be one of {tuple(ITEM_KINDS)}, not {item.kind!r}")
        v = self._vault_for(item.vault_kind, item.subscription_id, item.resource_group, item.vault)
        key = item.arm_name.lower()
        if key in v.items:
            raise ValueError(f"item {item.arm_name} already exists in vault {v.info.name}")
        v.items[key] = item
        return item

    def remove_item(self, item: SimItem) -> None:
        """Delete an item from its vault (protection stopped, its data deleted); KeyError if unknown."""
        v = self._vaults[_key(item.vault_kind, item.subscription_id, item.resource_group, item.vault)]
        del v.items[item.arm_name.lower()]

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

    def subscriptions(self) -> list[str]:
        """Every known subscription, in the order they became known."""
        return list(self._subscriptions.values())

    def has_subscription(self, subscription_id: str) -> bool:
        """Whether the subscription is known (ARM answers SubscriptionNotFound otherwise)."""
        return subscription_id.lower() in self._subscriptions

    def has_resource_group(self, subscription_id: str, resource_group: str) -> bool:
        """Whether a vault was ever declared in that resource group."""
        return (subscription_id.lower(), resource_group.lower()) in self._resource_groups

    def vaults(self, kind: str = RECOVERY_SERVICES) -> list[tuple[str, str, str]]:
        """Every vault of `kind` as (subscription_id, resource_group, vault), oldest first."""
        return [
            (v.info.subscription_id, v.info.resource_group, v.info.name)
            for v in self._vaults.values()
            if v.info.kind == kind
        ]

    def all_vaults(
        self,
        subscription_id: str | None = None,
        *,
        resource_group: str | None = None,
        kind: str | None = None,
    ) -> list[SimVault]:
        """Vaults of both kinds (or of `kind`), optionally of one subscription or resource group."""
        sub = subscription_id.lower() if subscription_id is not None else None
        rg = resource_group.lower() if resource_group is not None else None
        return [
            v.info
            for (k, s, g, _), v in self._vaults.items()
            if (kind is None or k == kind) and (sub is None or s == sub) and (rg is None or g == rg)
        ]

    def vault(
        self, subscription_id: str, resource_group: str, name: str, *, kind: str = RECOVERY_SERVICES
    ) -> SimVault | None:
        """The vault, or None if there is none of that kind and name."""
        v = self._vaults.get(_key(kind, subscription_id, resource_group, name))
        return v.info if v is not None else None

    def has_vault(
        self, subscription_id: str, resource_group: str, vault: str, *, kind: str = RECOVERY_SERVICES
    ) -> bool:
        """Whether the vault exists (names compare case-insensitively, as ARM's do)."""
        return _key(kind, subscription_id, resource_group, vault) in self._vaults

    def get(
        self,
        subscription_id: str,
        resource_group: str,
        vault: str,
        job_id: str,
        *,
        kind: str = RECOVERY_SERVICES,
    ) -> SimJob | None:
        """The job, or None if the vault or job is unknown or the job has not started yet."""
        now = self.clock()
        v = self._current(kind, subscription_id, resource_group, vault, now)
        job = v.jobs.get(job_id.lower()) if v else None
        return job if job is not None and job.visible(now) else None

    def jobs_in(
        self, subscription_id: str, resource_group: str, vault: str, *, kind: str = RECOVERY_SERVICES
    ) -> list[SimJob]:
        """The vault's started jobs, newest first."""
        now = self.clock()
        v = self._current(kind, subscription_id, resource_group, vault, now)
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
        kind: str = RECOVERY_SERVICES,
        before: tuple[int, str] | None = None,
        limit: int,
        now: float | None = None,
    ) -> tuple[list[SimJob], bool]:
        """Up to `limit` matching started jobs, newest first, older than `before`; and if more match.

        `before` is a (start ticks, lower-case job id) key as `sort_key` gives it, for paging; `now`
        defaults to the clock.
        """
        now = self.clock() if now is None else now
        v = self._current(kind, subscription_id, resource_group, vault, now)
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

    def oldest_first(
        self,
        subscription_id: str,
        resource_group: str,
        vault: str,
        *,
        kind: str = BACKUP_VAULT,
        since: float,
        after: tuple[int, str] | None = None,
        limit: int,
        now: float | None = None,
    ) -> tuple[list[SimJob], bool]:
        """Up to `limit` started jobs that started at or after `since`, oldest first, after `after`.

        This is how a Backup vault lists its jobs; `after` is a `sort_key` for paging.
        """
        now = self.clock() if now is None else now
        v = self._current(kind, subscription_id, resource_group, vault, now)
        if v is None:
            return [], False
        keys = v.by_start.keys
        lo = bisect.bisect_left(keys, (ticks(since), ""))
        if after is not None:
            lo = max(lo, bisect.bisect_right(keys, after))
        hi = bisect.bisect_left(keys, (ticks(now) + 1, ""))
        page: list[SimJob] = []
        for job in v.by_start.jobs[lo:hi]:
            if not job.visible(now):
                continue
            if len(page) == limit:
                return page, True
            page.append(job)
        return page, False

    def items_in(
        self,
        subscription_id: str,
        resource_group: str,
        vault: str,
        *,
        kind: str = RECOVERY_SERVICES,
        now: float | None = None,
    ) -> list[SimItem]:
        """The vault's items protected by `now` (default: the clock), in the order they were added."""
        now = self.clock() if now is None else now
        v = self._vaults.get(_key(kind, subscription_id, resource_group, vault))
        return [i for i in v.items.values() if i.first_protected <= now] if v else []

    def item(
        self,
        subscription_id: str,
        resource_group: str,
        vault: str,
        name: str,
        *,
        kind: str = RECOVERY_SERVICES,
    ) -> SimItem | None:
        """The item whose `arm_name` is `name` (any case), if it is protected by now."""
        v = self._vaults.get(_key(kind, subscription_id, resource_group, vault))
        found = v.items.get(name.lower()) if v else None
        return found if found is not None and found.first_protected <= self.clock() else None

    def operation(
        self,
        subscription_id: str,
        resource_group: str,
        vault: str,
        operation_id: str,
        *,
        kind: str = RECOVERY_SERVICES,
    ) -> SimOperation | None:
        """The operation with that id in the vault, or None."""
        v = self._vaults.get(_key(kind, subscription_id, resource_group, vault))
        return v.operations.get(operation_id.lower()) if v else None

    def find_operation(self, subscription_id: str, operation_id: str) -> SimOperation | None:
        """The operation with that id in any vault of the subscription, or None."""
        op = self._operations.get(operation_id.lower())
        return op if op is not None and op.subscription_id.lower() == subscription_id.lower() else None

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
        """Start an ad-hoc backup of a Recovery Services protected item; the job starts when the
        operation succeeds.

        The job's type follows the container (`IaasVMContainer;...` an IaaS VM, `VMAppContainer;...`
        a SQL workload, `StorageContainer;...` an Azure Files share); its entity is the item name's
        last `;` part. Raise KeyError for an unknown vault.
        """
        v = self._vaults[_key(RECOVERY_SERVICES, subscription_id, resource_group, vault)]
        now = self.clock()
        script = self._script_for(item)
        op = self._new_operation(v, str(uuid.uuid4()), now, operation_seconds)
        if script.operation_error is not None:
            op.error_code, op.error_message = script.operation_error
        else:
            job_type, management_type, operation, container_name = _kind_of(container, item)
            job = SimJob(
                subscription_id=v.info.subscription_id,
                resource_group=v.info.resource_group,
                vault=v.info.name,
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
        return op

    def trigger_instance_backup(
        self,
        subscription_id: str,
        resource_group: str,
        vault: str,
        instance: str,
        *,
        operation_seconds: float,
    ) -> SimOperation:
        """Start an ad-hoc backup of a Backup vault's backup instance (scripts as `trigger_backup`).

        Operation ids are base64 of two GUIDs, as the service's are. Raise KeyError for an unknown
        vault or instance.
        """
        v = self._vaults[_key(BACKUP_VAULT, subscription_id, resource_group, vault)]
        item = self.item(subscription_id, resource_group, vault, instance, kind=BACKUP_VAULT)
        if item is None:
            raise KeyError(instance)
        now = self.clock()
        script = self._script_for(item.name)
        pair = f"{uuid.uuid4()};{uuid.uuid4()}"
        op = self._new_operation(v, base64.b64encode(pair.encode()).decode(), now, operation_seconds)
        if script.operation_error is not None:
            op.error_code, op.error_message = script.operation_error
        else:
            job = SimJob(
                subscription_id=v.info.subscription_id,
                resource_group=v.info.resource_group,
                vault=v.info.name,
                job_id=str(uuid.uuid4()),
                job_type=DATASOURCE_TYPES[item.kind],
                operation="Backup",
                entity=friendly_name(item),
                backup_management_type="",
                start=now + operation_seconds,
                duration=script.duration,
                outcome=script.outcome,
                size_mb=script.size_mb,
                user_triggered=True,
                vault_kind=BACKUP_VAULT,
                backup_instance=item.arm_name,
                policy_name=item.policy,
                datasource_name=item.name,
                datasource_set=item.parent,
                source_resource_group=item.source_group,
            )
            self.add(job)
            op.job_id = job.job_id
        return op

    def cancel(self, job: SimJob) -> SimOperation:
        """Cancel a running job: it is Cancelling at once and Cancelled a moment later.

        Returns the cancel operation, which succeeds when the job ends. Raise ValueError if the job
        is not running.
        """
        now = self.clock()
        if not job.start <= now < job.end:
            raise ValueError(f"job {job.job_id} is not running")
        v = self._vaults[_key(job.vault_kind, job.subscription_id, job.resource_group, job.vault)]
        if job.outcome != "Cancelled" or self.status_of(job, now) != "Cancelling":
            v.by_end[job.outcome].remove(_end_key(job))
            job.outcome = "Cancelled"
            job.duration = now - job.start + CANCELLING_SECONDS
            v.by_end[job.outcome].insert(_end_key(job), job)
        return self._new_operation(v, str(uuid.uuid4()), now, job.end - now)

    # -- internals --------------------------------------------------------------------------

    def _vault_for(self, kind: str, subscription_id: str, resource_group: str, vault: str) -> _Vault:
        _check_kind(kind)
        key = _key(kind, subscription_id, resource_group, vault)
        v = self._vaults.get(key)
        if v is None:
            v = self._vaults[key] = _Vault(SimVault(kind, subscription_id, resource_group, vault))
            self.add_subscription(subscription_id)
            self._resource_groups.add(key[1:3])
        return v

    def _new_operation(self, v: _Vault, operation_id: str, now: float, seconds: float) -> SimOperation:
        info = v.info
        op = SimOperation(
            operation_id,
            info.subscription_id,
            info.resource_group,
            info.name,
            now,
            seconds,
            vault_kind=info.kind,
        )
        v.operations[operation_id.lower()] = self._operations[operation_id.lower()] = op
        return op

    def _current(
        self, kind: str, subscription_id: str, resource_group: str, vault: str, now: float
    ) -> _Vault | None:
        """The vault with its recurring jobs materialised up to `now`."""
        v = self._vaults.get(_key(kind, subscription_id, resource_group, vault))
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


def friendly_name(item: SimItem) -> str:
    """The name the service shows for an item: a PostgreSQL database is `server\\database`."""
    return f"{item.parent}\\{item.name}" if item.kind == "postgresql" and item.parent else item.name


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
