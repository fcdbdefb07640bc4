"""What the watcher knows: the jobs it still follows, per-vault totals and per-item outcomes, the inventory.

Memory holds what is in flight and what the metrics need, vault by vault (`VaultData`); the store holds
everything. A job leaves memory once it is final and recorded: the store keeps it, and a later listing
that returns it again finds it there, so it is never counted twice. `Tracker.observe_many()` is the one
place a parsed job becomes a recorded fact. It works out what changed, commits it to the store first
(writing a job's row only when something about it that is kept has changed), then updates memory (which
the metrics read) and only then logs `job_status_changed`: a transition that was logged is on disk.

Each vault's data carries a version per kind of fact (`jobs`, `items`, `inventory`, `polls`), raised on
every change, so /metrics rebuilds only the parts that changed.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from watcher.azure.models import (
    ACTIVE_STATUSES,
    FINAL_STATUSES,
    SUCCESS_STATUSES,
    Job,
    ProtectedItem,
    VaultKind,
    VaultRef,
)
from watcher.logs import get_logger
from watcher.store import Batch, InventoryRow, ItemRow, JobRow, Store, TransitionRow, labels_key

log = get_logger("backup_watcher")

DURATION_BUCKETS = (60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 43200.0, 86400.0)
FINISHED = "jobs_finished"
TRANSITIONS = "job_transitions"
DURATION = "job_duration"

# A job that ended before the watcher first started is history, not news: it is recorded (it feeds the
# per-item gauges) but not counted as "seen finishing". The slack covers clock skew with Azure.
COUNT_SLACK_SECONDS = 60.0

# The kinds of fact a vault's data versions apart (what /metrics caches by).
JOBS, ITEMS, INVENTORY, POLLS = "jobs", "items", "inventory", "polls"


def _ts(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts is not None else None


class JobState(enum.StrEnum):
    """Where a tracked job stands for the watcher (stored as its value)."""

    ACTIVE = "active"  # not final yet: polled
    FINAL = "final"  # reached a final status: never set back, never polled again
    NOT_FOUND = "not_found"  # Azure answered 404: polled again rarely


@dataclass(slots=True)
class TrackedJob:
    """One job the watcher follows (or, read back from the store, followed).

    `next_check` is on the scheduler's monotonic clock. `persisted` is what of it the store last got
    (`_signature`): a poll that changes nothing kept writes nothing.
    """

    vault: VaultRef
    job_id: str
    status: str
    state: JobState = JobState.ACTIVE
    backup_management_type: str = ""
    counted: bool = False
    first_seen: float = 0.0
    updated_at: float = 0.0
    last_error: str | None = None
    failures: int = 0
    next_check: float = 0.0
    configured: bool = False
    operation: str = ""
    operation_detail: str = ""
    job_type: str = ""
    entity: str = ""
    start_time: float | None = None
    end_time: float | None = None
    detail: dict[str, Any] = field(default_factory=dict)
    persisted: tuple[Any, ...] | None = None

    @property
    def running(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def polls(self) -> bool:
        """Whether the scheduler still asks Azure about this job."""
        return self.state is not JobState.FINAL

    @property
    def container(self) -> str:
        """The protection container a Recovery Services VM job names (what links it to its item)."""
        return str(self.detail.get("container") or "")

    @property
    def item(self) -> str:
        """The backup instance a Backup vault job names (its item's name)."""
        return str(self.detail.get("item") or "")


@dataclass(slots=True)
class VaultState:
    """A watched vault: what the watcher knows of polling it (its schedule is the scheduler's)."""

    ref: VaultRef
    discover: bool
    configured_jobs: tuple[str, ...] = ()
    unauthorized: str | None = None
    last_ok_poll: float | None = None
    watermark: float | None = None


def _new_versions() -> dict[str, int]:
    return {JOBS: 0, ITEMS: 0, INVENTORY: 0, POLLS: 0}


@dataclass(slots=True)
class VaultData:
    """Everything the watcher keeps in memory about one vault, watched or once watched."""

    ref: VaultRef
    active: dict[str, TrackedJob] = field(default_factory=dict)  # lower-case job id -> job still polled
    final_counts: dict[str, int] = field(default_factory=dict)  # status -> finished jobs in the store
    finished: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (operation, job_type, status)
    transitions: dict[tuple[str, str, str], float] = field(default_factory=dict)  # (operation, from, to)
    items: dict[tuple[str, str], ItemRow] = field(default_factory=dict)  # (entity, operation)
    inventory: dict[str, InventoryRow] = field(default_factory=dict)  # lower-case item name -> item
    inventory_hidden: bool = False
    poll_errors: dict[str, float] = field(default_factory=dict)
    discovery_gaps: float = 0.0
    versions: dict[str, int] = field(default_factory=_new_versions)
    # The tracker's versions of each kind over every vault (shared by all its vaults): /metrics reuses a
    # whole family while its kind's version there stays the same.
    estate_versions: dict[str, int] = field(default_factory=_new_versions)

    def bump(self, *kinds: str) -> None:
        for kind in kinds:
            self.versions[kind] += 1
            self.estate_versions[kind] += 1

    def watched_counts(self) -> dict[str, int]:
        """Jobs tracked by status: those followed now and the finished ones the store keeps."""
        counts = dict(self.final_counts)
        for tj in self.active.values():
            if tj.status != "Unknown":
                counts[tj.status] = counts.get(tj.status, 0) + 1
        return counts


Listener = Callable[[TrackedJob, str | None, str], None]


class Tracker:
    """The watcher's knowledge of jobs and items; the single writer of the store."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.watch_start = store.created_at
        self.vaults: dict[str, VaultState] = {}
        self.data: dict[str, VaultData] = {}
        self.durations: dict[tuple[str, str, str], tuple[list[int], float, int]] = {}
        self.durations_version = 0
        self.versions = _new_versions()  # of each kind of fact, over every vault (VaultData.bump)
        self.listeners: list[Listener] = []
        self._restore()

    # -- restore ----------------------------------------------------------------------------

    def _restore(self) -> None:
        for row in self.store.jobs(states=(JobState.ACTIVE.value, JobState.NOT_FOUND.value)):
            tj = job_from_row(row)
            self.vault_data(tj.vault).active[row.job_id.lower()] = tj
        for (
            vault_key,
            vault_type,
            subscription_id,
            resource_group,
            name,
            status,
            n,
        ) in self.store.final_counts():
            ref = VaultRef(subscription_id, resource_group, name, VaultKind(vault_type))
            self.vault_data(ref, key=vault_key).final_counts[status] = n
        for item in self.store.items():
            ref = VaultRef(item.subscription_id, item.resource_group, item.vault, VaultKind(item.vault_type))
            self.vault_data(ref, key=item.vault_key).items[(item.entity, item.operation)] = item
        for stored in self.store.inventory():
            ref = VaultRef(
                stored.subscription_id, stored.resource_group, stored.vault, VaultKind(stored.vault_type)
            )
            self.vault_data(ref, key=stored.vault_key).inventory[stored.item] = stored
        for metric, labels_json, value in self.store.counters():
            if metric == DURATION:
                self._restore_duration(tuple(json.loads(labels_json)), value)
                continue
            labels = json.loads(labels_json)
            data = self.vault_data(_ref_of(labels))
            if metric == FINISHED:
                key = (labels["operation"], labels["job_type"], labels["status"])
                data.finished[key] = data.finished.get(key, 0.0) + value
            elif metric == TRANSITIONS:
                key = (labels["operation"], labels["from_status"], labels["to_status"])
                data.transitions[key] = data.transitions.get(key, 0.0) + value

    def _restore_duration(self, key: tuple[Any, ...], value: float) -> None:
        # Stored as (operation, job_type, status, "count"|"sum"|bucket index).
        op, job_type, status, part = key
        buckets, total, count = self.durations.get(
            (op, job_type, status), ([0] * len(DURATION_BUCKETS), 0.0, 0)
        )
        if part == "sum":
            total = value
        elif part == "count":
            count = int(value)
        else:
            buckets[int(part)] = int(value)
        self.durations[(op, job_type, status)] = (buckets, total, count)

    def vault_data(self, ref: VaultRef, *, key: str | None = None) -> VaultData:
        """The vault's data, created on first use."""
        key = key or ref.key
        data = self.data.get(key)
        if data is None:
            data = self.data[key] = VaultData(ref, estate_versions=self.versions)
        return data

    # -- vaults -----------------------------------------------------------------------------

    def set_vaults(self, vaults: Iterable[VaultState]) -> list[VaultRef]:
        """Replace the watched vault set (start or reload); returns vaults that were removed.

        Jobs and totals of removed vaults stay in memory and the store (a re-added vault resumes without
        double counting); every view shows watched vaults only. A job named in the config is followed
        unless the store already has it finished.
        """
        new = {v.ref.key: v for v in vaults}
        removed = [state.ref for key, state in self.vaults.items() if key not in new]
        watermarks = self.store.watermarks()
        for key, state in new.items():
            old = self.vaults.get(key)
            if old is not None:
                state.unauthorized = old.unauthorized
                state.last_ok_poll = old.last_ok_poll
            state.watermark = watermarks.get(key)
            data = self.vault_data(state.ref)
            data.bump(JOBS, ITEMS, INVENTORY, POLLS)  # its labels may be spelt afresh
        self.vaults = new
        now = self.clock()
        fresh: list[TrackedJob] = []
        for state in new.values():
            data = self.vault_data(state.ref)
            wanted = [j for j in state.configured_jobs if j.lower() not in data.active]
            stored = {row.job_id.lower(): row for row in self.store.job_rows(state.ref.key, wanted)}
            for job_id in state.configured_jobs:
                tj = data.active.get(job_id.lower())
                if tj is not None:
                    tj.configured = True
                    continue
                row = stored.get(job_id.lower())
                if row is not None and row.state == JobState.FINAL.value:
                    continue  # finished already: nothing to follow
                tj = job_from_row(row) if row is not None else None
                if tj is None:
                    tj = TrackedJob(vault=state.ref, job_id=job_id, status="Unknown", first_seen=now)
                tj.configured = True
                data.active[job_id.lower()] = tj
                if _signature(tj) != tj.persisted:
                    fresh.append(tj)
        if fresh:  # named in the config and not seen yet: on record (and in /api/jobs) from now
            self.store.write(
                Batch(jobs=[_row(tj.vault, tj) for tj in fresh], transitions=[], items=[], counters=[])
            )
            for tj in fresh:
                tj.persisted = _signature(tj)
        return removed

    def known(self, vault: VaultRef, job_id: str) -> TrackedJob | None:
        """The job as the watcher knows it: followed now, else as the store has it (a copy), else None."""
        data = self.data.get(vault.key)
        tj = data.active.get(job_id.lower()) if data is not None else None
        if tj is not None:
            return tj
        rows = self.store.job_rows(vault.key, [job_id])
        return job_from_row(rows[0]) if rows else None

    def followed(self, vault: VaultRef, job_id: str) -> TrackedJob | None:
        """The job if the watcher follows it now (in memory), else None; never reads the store."""
        data = self.data.get(vault.key)
        return data.active.get(job_id.lower()) if data is not None else None

    def stored_states(self, vault: VaultRef, job_ids: list[str]) -> dict[str, JobState]:
        """The state the store has for each of `job_ids` it knows (by lower-case id), in one query."""
        return {row.job_id.lower(): JobState(row.state) for row in self.store.job_rows(vault.key, job_ids)}

    def polled_jobs(self, vault: VaultRef) -> list[TrackedJob]:
        """The vault's jobs the scheduler still asks Azure about (active or not found)."""
        data = self.data.get(vault.key)
        return list(data.active.values()) if data is not None else []

    @property
    def jobs(self) -> dict[tuple[str, str], TrackedJob]:
        """The jobs followed now, by (vault key, lower-case job id)."""
        return {(key, job_key): tj for key, data in self.data.items() for job_key, tj in data.active.items()}

    # -- observations -----------------------------------------------------------------------

    def observe(self, vault: VaultRef, job: Job, *, detailed: bool = True) -> TrackedJob | None:
        """Record what a poll saw of one job; the job as recorded (None: a final one it left alone)."""
        recorded = self.observe_many(vault, [job], detailed=detailed)
        return recorded[0] if recorded else self.known(vault, job.job_id)

    def observe_many(self, vault: VaultRef, jobs: list[Job], *, detailed: bool = True) -> list[TrackedJob]:
        """Record several jobs of one vault in one transaction; the jobs recorded.

        A job the store already has finished is left alone (final is final, and it was counted once).
        """
        now = self.clock()
        data = self.vault_data(vault)
        unknown = [job.job_id for job in jobs if job.job_id.lower() not in data.active]
        stored = (
            {row.job_id.lower(): row for row in self.store.job_rows(vault.key, unknown)} if unknown else {}
        )
        batch = Batch(jobs=[], transitions=[], items=[], counters=[])
        plans: list[_Plan] = []
        for job in jobs:
            key = job.job_id.lower()
            old = data.active.get(key)
            if old is None and key in stored:
                if stored[key].state == JobState.FINAL.value:
                    continue
                old = job_from_row(stored[key])
            if old is not None and old.state is JobState.FINAL:
                continue  # final is final: a listing that raced the GET which saw the end cannot undo it
            tj = _updated(old, vault, job, now, detailed)
            prev_status = old.status if old is not None and old.status != "Unknown" else None
            plan = _Plan(tj, prev_status, changed=prev_status != tj.status)
            if job.is_final and not tj.counted and self.is_news(job):
                tj.counted = True
                plan.counters.extend(self._finish_counters(vault, tj, job))
            if plan.changed and prev_status is not None:
                labels = _vault_labels(vault) | {
                    "operation": tj.operation,
                    "from_status": prev_status,
                    "to_status": tj.status,
                }
                plan.counters.append((TRANSITIONS, labels_key(labels), 1.0))
            if plan.changed:
                batch.transitions.append(_transition(vault, tj, prev_status, now))
            if job.is_final:
                item = self._item_update(data, vault, tj, job)
                if item is not None:
                    batch.items.append(item)
            signature = _signature(tj)
            if signature != tj.persisted:
                batch.jobs.append(_row(vault, tj))
                tj.persisted = signature
            batch.counters.extend(plan.counters)
            plans.append(plan)
        if batch.jobs or batch.transitions or batch.items or batch.counters:
            self.store.write(batch)
        # Committed: now memory (and so the metrics), then the log.
        for item in batch.items:
            data.items[(item.entity, item.operation)] = item
        if batch.items:
            data.bump(ITEMS)
        jobs_changed = bool(batch.jobs)
        for plan in plans:
            tj = plan.job
            key = tj.job_id.lower()
            if tj.state is JobState.FINAL:
                # Final and recorded: it leaves memory; the store keeps it and counts it.
                data.active.pop(key, None)
                data.final_counts[tj.status] = data.final_counts.get(tj.status, 0) + 1
            else:
                data.active[key] = tj
            for metric, labels_json, inc in plan.counters:
                self._count(data, metric, labels_json, inc, tj)
        if jobs_changed or any(plan.counters for plan in plans):
            data.bump(JOBS)
        for plan in plans:
            if plan.changed:
                self._log_change(plan.job, plan.prev_status)
        return [plan.job for plan in plans]

    def _count(self, data: VaultData, metric: str, labels_json: str, inc: float, tj: TrackedJob) -> None:
        if metric == FINISHED:
            key = (tj.operation, tj.job_type, tj.status)
            data.finished[key] = data.finished.get(key, 0.0) + inc
        elif metric == TRANSITIONS:
            labels = json.loads(labels_json)
            key = (labels["operation"], labels["from_status"], labels["to_status"])
            data.transitions[key] = data.transitions.get(key, 0.0) + inc
        elif metric == DURATION and labels_json.endswith('"count"]'):
            self._observe_duration(tj)

    def is_news(self, job: Job) -> bool:
        """Whether a finished job ended while (or after) this store was watching, so it counts."""
        end = _ts(job.end_time)
        return end is None or end >= self.watch_start - COUNT_SLACK_SECONDS

    def _finish_counters(self, vault: VaultRef, tj: TrackedJob, job: Job) -> list[tuple[str, str, float]]:
        labels = _vault_labels(vault) | {
            "operation": tj.operation,
            "job_type": tj.job_type,
            "status": tj.status,
        }
        out = [(FINISHED, labels_key(labels), 1.0)]
        duration = job.final_duration()
        if duration is not None:
            key = [tj.operation, tj.job_type, tj.status]
            out.append((DURATION, json.dumps([*key, "count"]), 1.0))
            out.append((DURATION, json.dumps([*key, "sum"]), duration))
            index = bisect.bisect_left(DURATION_BUCKETS, duration)
            if index < len(DURATION_BUCKETS):
                out.append((DURATION, json.dumps([*key, index]), 1.0))
            tj.detail = tj.detail | {"counted_duration": duration}
        return out

    def _observe_duration(self, tj: TrackedJob) -> None:
        duration = tj.detail.get("counted_duration")
        if duration is None:
            return
        key = (tj.operation, tj.job_type, tj.status)
        buckets, total, count = self.durations.get(key, ([0] * len(DURATION_BUCKETS), 0.0, 0))
        index = bisect.bisect_left(DURATION_BUCKETS, duration)
        if index < len(DURATION_BUCKETS):
            buckets = buckets.copy()
            buckets[index] += 1
        self.durations[key] = (buckets, total + duration, count + 1)
        self.durations_version += 1

    def _item_update(self, data: VaultData, vault: VaultRef, tj: TrackedJob, job: Job) -> ItemRow | None:
        end = _ts(job.end_time)
        if end is None or not tj.entity:
            return None
        current = data.items.get((tj.entity, tj.operation))
        success = job.status in SUCCESS_STATUSES
        duration = job.final_duration()
        size = job.backup_size_bytes
        if current is None:
            return ItemRow(
                vault.key,
                tj.entity,
                tj.operation,
                vault.subscription_id,
                vault.resource_group,
                vault.name,
                last_end=end,
                last_success=end if success else None,
                last_status_success=int(success),
                last_duration=duration,
                size_bytes=size,
                size_at=end if size is not None else None,
                vault_type=vault.kind.value,
            )
        updated = dataclasses.replace(current)
        touched = False
        if end >= current.last_end:
            updated.last_end = end
            updated.last_status_success = int(success)
            updated.last_duration = duration
            touched = True
        if success and (current.last_success is None or end > current.last_success):
            updated.last_success = end
            touched = True
        if size is not None and (current.size_at is None or end >= current.size_at):
            updated.size_bytes = size
            updated.size_at = end
            touched = True
        return updated if touched else None

    def prune(self, *, lookback: float, retention: float) -> tuple[int, bool]:
        """Forget finished jobs no listing can return again, and history older than `retention`.

        A job is forgotten once it is final and started before `lookback` plus a day: discovery only
        lists jobs started within the lookback, so it cannot come back and be counted twice. Jobs named
        in the config are kept (a reload would otherwise poll them afresh). Totals and per-item state
        live in their own tables and are not touched. An item whose entity had no job for the whole
        retention period (decommissioned, renamed) leaves /metrics; its row stays in the store and comes
        back with the item's next job. Forgets at most a few thousand rows a call, so no call holds the
        event loop long; returns how many jobs it forgot and whether more are left.
        """
        now = self.clock()
        keep = {
            (state.ref.key, job_id.lower())
            for state in self.vaults.values()
            for job_id in state.configured_jobs
        }
        removed, more = self.store.prune(
            finished_started_before=now - lookback - 86400.0, transitions_before=now - retention, keep=keep
        )
        for (vault_key, status), n in removed.items():
            data = self.data.get(vault_key)
            if data is not None and status in data.final_counts:
                data.final_counts[status] = max(0, data.final_counts[status] - n)
                data.bump(JOBS)
        for data in self.data.values():
            old = [key for key, item in data.items.items() if item.last_end < now - retention]
            for key in old:
                del data.items[key]
            if old:
                data.bump(ITEMS)
        return sum(removed.values()), more

    def mark_error(self, vault: VaultRef, job_id: str, error: str, *, state: JobState | None = None) -> None:
        """A job could not be read: keep its last known status, note the error (and not_found)."""
        data = self.vault_data(vault)
        key = job_id.lower()
        now = self.clock()
        tj = data.active.get(key)
        if tj is None:
            tj = TrackedJob(vault=vault, job_id=job_id, status="Unknown", first_seen=now)
        tj.last_error = error
        tj.updated_at = now
        if state is not None:
            tj.state = state
        signature = _signature(tj)
        if signature != tj.persisted:
            self.store.write(Batch(jobs=[_row(vault, tj)], transitions=[], items=[], counters=[]))
            tj.persisted = signature
        data.active[key] = tj
        data.bump(JOBS)

    def poll_error(self, vault: VaultRef, reason: str) -> None:
        data = self.vault_data(vault)
        data.poll_errors[reason] = data.poll_errors.get(reason, 0.0) + 1
        data.bump(POLLS)

    def vault_polled(self, vault: VaultRef, when: float) -> None:
        state = self.vaults.get(vault.key)
        if state is not None:
            state.last_ok_poll = when
            self.vault_data(vault).bump(POLLS)

    def set_watermark(self, vault: VaultRef, watermark: float) -> None:
        self.store.set_watermark(vault.key, watermark)
        state = self.vaults.get(vault.key)
        if state is not None:
            state.watermark = watermark

    def discovery_gap(self, vault: VaultRef, last_listed: float, reaches_back_to: float) -> None:
        """The watcher was away longer than the lookback: jobs that started and ended meanwhile are lost."""
        data = self.vault_data(vault)
        data.discovery_gaps += 1
        data.bump(POLLS)
        log.warning(
            "discovery_gap",
            subscription_id=vault.subscription_id,
            resource_group=vault.resource_group,
            vault=vault.name,
            last_listed=_iso(last_listed),
            lookback_reaches=_iso(reaches_back_to),
            gap_seconds=round(reaches_back_to - last_listed, 1),
        )

    # -- inventory --------------------------------------------------------------------------

    def record_inventory(self, vault: VaultRef, items: list[ProtectedItem]) -> tuple[int, int]:
        """One vault's inventory round: store what changed, then memory; (items new, items gone).

        An item keeps the time it was first seen for as long as it stays in the inventory; one that
        leaves it is forgotten (its series go with it).
        """
        now = self.clock()
        data = self.vault_data(vault)
        current = data.inventory
        rows: dict[str, InventoryRow] = {}
        changed: list[InventoryRow] = []
        for item in items:
            old = current.get(item.key)
            row = _inventory_row(item, old.first_seen if old is not None else now)
            rows[item.key] = row
            if row != old:
                changed.append(row)
        gone = [key for key in current if key not in rows]
        if changed or gone:
            self.store.write_inventory(vault.key, changed, gone)
        # Committed: now memory (and so the metrics).
        new = len([key for key in rows if key not in current])
        data.inventory = rows
        if changed or gone or data.inventory_hidden:
            data.inventory_hidden = False
            data.bump(INVENTORY)
        return new, len(gone)

    def hide_inventory(self, vault: VaultRef) -> None:
        """The vault's inventory is out of date: its items leave /metrics until a round works again."""
        data = self.vault_data(vault)
        if not data.inventory_hidden:
            data.inventory_hidden = True
            data.bump(INVENTORY)

    def item_of_job(self, vault: VaultRef, tj: TrackedJob) -> InventoryRow | None:
        """The inventory item a job is about: by its container (VMs) or backup instance where the job
        names one; by friendly name only when one item alone in the vault has it."""
        data = self.data.get(vault.key)
        items = data.inventory if data is not None else {}
        if tj.item:
            return items.get(tj.item.lower())
        if tj.container:
            container = tj.container.lower()
            return next((row for row in items.values() if row.container.lower() == container), None)
        named = [row for row in items.values() if row.entity == tj.entity]
        return named[0] if len(named) == 1 else None

    # -- views ------------------------------------------------------------------------------

    def watched(self) -> Iterator[tuple[VaultState, VaultData]]:
        """Each watched vault with its data, in key order (the order /metrics lists vaults in)."""
        for key in sorted(self.vaults):
            yield self.vaults[key], self.vault_data(self.vaults[key].ref)

    @property
    def items(self) -> dict[tuple[str, str, str], ItemRow]:
        """Per-item job outcomes of every vault, by (vault key, entity, operation)."""
        return {
            (key, *item_key): item for key, data in self.data.items() for item_key, item in data.items.items()
        }

    @property
    def inventory(self) -> dict[str, dict[str, InventoryRow]]:
        """The inventory of every vault, by vault key and lower-case item name."""
        return {key: data.inventory for key, data in self.data.items() if data.inventory}

    @property
    def poll_errors(self) -> dict[tuple[str, str], float]:
        """Failed polls by (vault key, reason)."""
        return defaultdict(
            float,
            {(key, reason): n for key, data in self.data.items() for reason, n in data.poll_errors.items()},
        )

    @property
    def discovery_gaps(self) -> dict[str, float]:
        return defaultdict(
            float, {key: data.discovery_gaps for key, data in self.data.items() if data.discovery_gaps}
        )

    @property
    def counters(self) -> dict[str, dict[str, float]]:
        """The finished and transition totals, by metric and label set (JSON), as the store keeps them."""
        out: dict[str, dict[str, float]] = {FINISHED: {}, TRANSITIONS: {}}
        for data in self.data.values():
            base = _vault_labels(data.ref)
            for (op, job_type, status), n in data.finished.items():
                out[FINISHED][
                    labels_key(base | {"operation": op, "job_type": job_type, "status": status})
                ] = n
            for (op, src, dst), n in data.transitions.items():
                out[TRANSITIONS][
                    labels_key(base | {"operation": op, "from_status": src, "to_status": dst})
                ] = n
        return out

    def api_job(self, tj: TrackedJob, state: VaultState | None) -> dict[str, Any]:
        """One job as /api/jobs shows it (without its transitions)."""
        unauthorized = state.unauthorized if state is not None else None
        return {
            "subscription_id": tj.vault.subscription_id,
            "resource_group": tj.vault.resource_group,
            "vault": tj.vault.name,
            "vault_type": tj.vault.kind.value,
            "job_id": tj.job_id,
            "status": tj.status,
            "state": "unauthorized" if unauthorized and tj.state is JobState.ACTIVE else str(tj.state),
            "operation": tj.operation,
            "operation_detail": tj.operation_detail,
            "job_type": tj.job_type,
            "entity": tj.entity,
            "start_time": _iso(tj.start_time),
            "end_time": _iso(tj.end_time),
            "duration_seconds": tj.detail.get("duration"),
            "progress_percent": tj.detail.get("progress"),
            "current_task": tj.detail.get("current_task"),
            "tasks": tj.detail.get("tasks", []),
            "errors": tj.detail.get("errors", []),
            "backup_size_bytes": tj.detail.get("size_bytes"),
            "last_error": tj.last_error or unauthorized,
            "configured": tj.configured,
        }

    def api_jobs(
        self,
        *,
        subscription: str | None = None,
        vault: str | None = None,
        vault_type: str | None = None,
        status: str | None = None,
        since: float | None = None,
        limit: int = 100,
        cursor: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """A page of the watched vaults' jobs from the store, newest start first, and the next page's cursor.

        Filters match case-insensitively (Azure's names are). A job followed now shows its in-memory
        state (progress and tasks the store is not rewritten for). ValueError for a bad cursor.
        """
        keys = {
            key
            for key, state in self.vaults.items()
            if (subscription is None or state.ref.subscription_id.lower() == subscription.lower())
            and (vault is None or state.ref.name.lower() == vault.lower())
            and (vault_type is None or state.ref.kind.value == vault_type)
        }
        rows, next_cursor = self.store.jobs_page(
            vault_keys=keys,
            narrow=len(keys) < len(self.vaults),
            status=status,
            since=since,
            limit=limit,
            cursor=cursor,
        )
        transitions = self.store.transitions_of([(row.vault_key, row.job_id) for row in rows])
        jobs: list[dict[str, Any]] = []
        for row in rows:
            data = self.data.get(row.vault_key)
            live = data.active.get(row.job_id.lower()) if data is not None else None
            tj = live or job_from_row(row)
            record = self.api_job(tj, self.vaults.get(row.vault_key))
            record["transitions"] = [
                {"from_status": f, "to_status": t, "observed_at": _iso(at)}
                for f, t, at in transitions.get((row.vault_key, row.job_id.lower()), [])
            ]
            jobs.append(record)
        return jobs, next_cursor

    def _log_change(self, tj: TrackedJob, prev_status: str | None) -> None:
        event: dict[str, Any] = {
            "subscription_id": tj.vault.subscription_id,
            "resource_group": tj.vault.resource_group,
            "vault": tj.vault.name,
            "vault_type": tj.vault.kind.value,
            "job_id": tj.job_id,
            "operation": tj.operation,
            "job_type": tj.job_type,
            "entity": tj.entity,
            "from_status": prev_status,
            "to_status": tj.status,
            "start_time": _iso(tj.start_time),
            "end_time": _iso(tj.end_time),
        }
        if prev_status is None:
            log.info("job_watched", **event)
        else:
            if tj.status in FINAL_STATUSES and tj.detail.get("duration") is not None:
                event["duration_seconds"] = tj.detail["duration"]
            if tj.detail.get("errors"):
                event["errors"] = [
                    {"code": e["code"], "title": e["title"], "message": e["message"]}
                    for e in tj.detail["errors"]
                ]
            log.info("job_status_changed", **event)
        for listener in self.listeners:
            try:
                listener(tj, prev_status, tj.status)
            except Exception:
                # A listener (the demo's printer) must not undo a change that is already recorded.
                log.exception("listener_failed", listener=getattr(listener, "__name__", repr(listener)))


@dataclass(slots=True)
class _Plan:
    """What observing one job changes: the job as it now is, its previous status, counter increments."""

    job: TrackedJob
    prev_status: str | None
    changed: bool
    counters: list[tuple[str, str, float]] = field(default_factory=list)


def _vault_labels(vault: VaultRef) -> dict[str, str]:
    return {
        "subscription_id": vault.subscription_id,
        "resource_group": vault.resource_group,
        "vault": vault.name,
        "vault_type": vault.kind.value,
    }


def _ref_of(labels: dict[str, str]) -> VaultRef:
    return VaultRef(
        str(labels.get("subscription_id")),
        str(labels.get("resource_group")),
        str(labels.get("vault")),
        VaultKind(labels.get("vault_type", VaultKind.RECOVERY_SERVICES.value)),
    )


def _signature(tj: TrackedJob) -> tuple[Any, ...]:
    """What of a job the store keeps that matters: not its growing duration or progress while it runs."""
    return (
        tj.status,
        tj.state,
        tj.counted,
        tj.configured,
        tj.last_error,
        tj.operation,
        tj.operation_detail,
        tj.job_type,
        tj.entity,
        tj.start_time,
        tj.end_time,
        json.dumps(tj.detail.get("errors"), sort_keys=True),
        tj.detail.get("size_bytes"),
    )


def _transition(vault: VaultRef, tj: TrackedJob, prev_status: str | None, now: float) -> TransitionRow:
    return TransitionRow(
        vault.key,
        tj.job_id,
        vault.subscription_id,
        vault.resource_group,
        vault.name,
        tj.operation,
        tj.job_type,
        tj.entity,
        prev_status,
        tj.status,
        now,
        tj.start_time,
        tj.end_time,
        vault.kind.value,
    )


def _updated(old: TrackedJob | None, vault: VaultRef, job: Job, now: float, detailed: bool) -> TrackedJob:
    detail = dict(old.detail) if old is not None else {}
    detail["duration"] = job.final_duration() if job.is_final else job.duration_seconds
    for key, value in (("container", job.container), ("item", job.item)):
        if value:
            detail[key] = value
    if detailed or job.has_extended_info:
        detail["tasks"] = [t.as_dict() for t in job.tasks]
        task = job.current_task
        detail["current_task"] = task.task_id if task else None
        detail["progress"] = job.progress_percent
        if job.backup_size_bytes is not None:
            detail["size_bytes"] = job.backup_size_bytes
    if job.errors or detailed:
        detail["errors"] = [e.as_dict() for e in job.errors]
    return TrackedJob(
        vault=vault,
        job_id=old.job_id if old is not None else job.job_id,
        status=job.status,
        state=JobState.FINAL if job.is_final else JobState.ACTIVE,
        backup_management_type=job.backup_management_type,
        counted=old.counted if old is not None else False,
        first_seen=old.first_seen if old is not None else now,
        updated_at=now,
        last_error=None,
        failures=0,
        next_check=0.0,
        configured=old.configured if old is not None else False,
        operation=job.operation,
        operation_detail=job.operation_detail,
        job_type=job.job_type,
        entity=job.entity,
        start_time=_ts(job.start_time),
        end_time=_ts(job.end_time),
        detail=detail,
        persisted=old.persisted if old is not None else None,
    )


def job_from_row(row: JobRow) -> TrackedJob:
    """A job as the store recorded it."""
    tj = TrackedJob(
        vault=VaultRef(row.subscription_id, row.resource_group, row.vault, VaultKind(row.vault_type)),
        job_id=row.job_id,
        status=row.status,
        state=JobState(row.state),
        counted=bool(row.counted),
        first_seen=row.first_seen,
        updated_at=row.updated_at,
        last_error=row.last_error,
        operation=row.operation,
        operation_detail=row.operation_detail,
        job_type=row.job_type,
        backup_management_type=row.backup_management_type,
        entity=row.entity,
        start_time=row.start_time,
        end_time=row.end_time,
        detail=json.loads(row.detail or "{}"),
    )
    tj.configured = bool(tj.detail.pop("configured", False))
    tj.persisted = _signature(tj)
    return tj


def _inventory_row(item: ProtectedItem, first_seen: float) -> InventoryRow:
    vault = item.vault
    return InventoryRow(
        vault_key=vault.key,
        item=item.key,
        subscription_id=vault.subscription_id,
        resource_group=vault.resource_group,
        vault=vault.name,
        vault_type=vault.kind.value,
        name=item.name,
        entity=item.entity,
        item_type=item.item_type,
        policy=item.policy,
        source_resource_id=item.source_resource_id,
        protection_state=item.protection_state.value,
        azure_state=item.azure_state,
        health=item.health.value if item.health is not None else None,
        azure_health=item.azure_health,
        last_recovery_point=item.last_recovery_point,
        last_backup_status=item.last_backup_status,
        container=item.container,
        error=item.error,
        first_seen=first_seen,
    )


def _row(vault: VaultRef, tj: TrackedJob) -> JobRow:
    detail = tj.detail | {"configured": True} if tj.configured else tj.detail
    return JobRow(
        vault_key=vault.key,
        job_id=tj.job_id,
        subscription_id=vault.subscription_id,
        resource_group=vault.resource_group,
        vault=vault.name,
        status=tj.status,
        operation=tj.operation,
        operation_detail=tj.operation_detail,
        job_type=tj.job_type,
        entity=tj.entity,
        backup_management_type=tj.backup_management_type,
        start_time=tj.start_time,
        end_time=tj.end_time,
        duration=tj.detail.get("duration"),
        size_bytes=tj.detail.get("size_bytes"),
        detail=json.dumps(detail, separators=(",", ":")),
        state=str(tj.state),
        counted=int(tj.counted),
        last_error=tj.last_error,
        first_seen=tj.first_seen,
        updated_at=tj.updated_at,
        vault_type=vault.kind.value,
    )
