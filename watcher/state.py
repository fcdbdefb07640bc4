"""What the watcher knows: tracked jobs, per-item outcomes and totals, kept in memory and in the store.

`Tracker.observe()` is the one place a parsed job becomes a recorded fact. It works out what changed,
commits it to the store first, then updates memory (which the metrics read) and only then logs
`job_status_changed`: a transition that was logged is always on disk.
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import functools
import json
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
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
    """One job the watcher follows (or followed); `next_check` is on the scheduler's monotonic clock."""

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
    transitions: list[tuple[str | None, str, float]] = field(default_factory=list)

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


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An immutable view for the metrics collector: no I/O, no awaits while rendering."""

    vaults: tuple[VaultRef, ...]
    running: tuple[tuple[VaultRef, str, str, str, str, float], ...]  # vault, job_id, op, type, entity, start
    watched: tuple[tuple[VaultRef, str, int], ...]
    items: tuple[ItemRow, ...]
    counters: dict[str, dict[str, float]]
    durations: dict[tuple[str, str, str], tuple[list[int], float, int]]
    poll_errors: dict[tuple[str, str], float]
    last_ok_poll: tuple[tuple[VaultRef, float], ...]
    discovery_gaps: dict[str, float] = field(default_factory=dict)
    inventory: tuple[InventoryRow, ...] = ()


Listener = Callable[[TrackedJob, str | None, str], None]


class Tracker:
    """The watcher's knowledge of jobs; the single writer of the store."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self.watch_start = store.created_at
        self.vaults: dict[str, VaultState] = {}
        self.jobs: dict[tuple[str, str], TrackedJob] = {}
        self.items: dict[tuple[str, str, str], ItemRow] = {}
        self.counters: dict[str, dict[str, float]] = defaultdict(dict)
        self.durations: dict[tuple[str, str, str], tuple[list[int], float, int]] = {}
        self.poll_errors: dict[tuple[str, str], float] = defaultdict(float)
        self.discovery_gaps: dict[str, float] = defaultdict(float)
        # The protected-item inventory: vault key -> item key (lower-case name) -> row.
        self.inventory: dict[str, dict[str, InventoryRow]] = defaultdict(dict)
        # Vaults whose inventory has been failing for a while: their items stay known but leave /metrics.
        self._inventory_hidden: set[str] = set()
        # The jobs still polled (active or not found), by vault key: what a vault's pass looks at.
        self._polled: dict[str, dict[str, TrackedJob]] = defaultdict(dict)
        self.listeners: list[Listener] = []
        self._version = 0
        self._snapshot: tuple[int, Snapshot] | None = None
        self._restore()

    # -- restore ----------------------------------------------------------------------------

    def _restore(self) -> None:
        for row in self.store.jobs():
            ref = VaultRef(row.subscription_id, row.resource_group, row.vault, VaultKind(row.vault_type))
            tj = TrackedJob(
                vault=ref,
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
            self._put((row.vault_key, row.job_id.lower()), tj)
        for item in self.store.items():
            self.items[(item.vault_key, item.entity, item.operation)] = item
        for stored in self.store.inventory():
            self.inventory[stored.vault_key][stored.item] = stored
        for metric, labels, value in self.store.counters():
            if metric == DURATION:
                key = tuple(json.loads(labels))
                self._restore_duration(key, value)
            else:
                self.counters[metric][labels] = value
        for vault_key, job_id, from_status, to_status, at in self.store.all_transitions():
            restored = self.jobs.get((vault_key, job_id.lower()))
            if restored is not None:
                restored.transitions.append((from_status, to_status, at))

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

    # -- vaults -----------------------------------------------------------------------------

    def set_vaults(self, vaults: Iterable[VaultState]) -> list[VaultRef]:
        """Replace the watched vault set (start or reload); returns vaults that were removed."""
        new = {v.ref.key: v for v in vaults}
        removed = [state.ref for key, state in self.vaults.items() if key not in new]
        for key, state in new.items():
            old = self.vaults.get(key)
            if old is not None:
                state.unauthorized = old.unauthorized
                state.last_ok_poll = old.last_ok_poll
            state.watermark = self.store.watermark(key)
        # Jobs and totals of removed vaults stay in memory (a re-added vault resumes without double
        # counting); every view below shows configured vaults only.
        self.vaults = new
        now = self.clock()
        for state in new.values():
            for job_id in state.configured_jobs:
                job_key = (state.ref.key, job_id.lower())
                tj = self.jobs.get(job_key)
                if tj is None:
                    self._put(
                        job_key,
                        TrackedJob(
                            vault=state.ref, job_id=job_id, status="Unknown", first_seen=now, configured=True
                        ),
                    )
                else:
                    tj.configured = True
        self._changed()
        return removed

    def known(self, vault: VaultRef, job_id: str) -> TrackedJob | None:
        return self.jobs.get((vault.key, job_id.lower()))

    def polled_jobs(self, vault: VaultRef) -> list[TrackedJob]:
        """The vault's jobs the scheduler still asks Azure about (active or not found)."""
        return list(self._polled.get(vault.key, {}).values())

    def _put(self, key: tuple[str, str], tj: TrackedJob) -> None:
        """Store `tj` in memory, keeping the per-vault index of polled jobs in step."""
        self.jobs[key] = tj
        vault_key, job_key = key
        if tj.polls:
            self._polled[vault_key][job_key] = tj
        else:
            polled = self._polled.get(vault_key)
            if polled is not None:
                polled.pop(job_key, None)
                if not polled:
                    del self._polled[vault_key]

    # -- observations -----------------------------------------------------------------------

    def observe(self, vault: VaultRef, job: Job, *, detailed: bool = True) -> TrackedJob:
        """Record what a poll saw of one job; commit, then update memory, then log."""
        recorded = self.observe_many(vault, [job], detailed=detailed)
        return recorded[0] if recorded else self.jobs[(vault.key, job.job_id.lower())]

    def observe_many(self, vault: VaultRef, jobs: list[Job], *, detailed: bool = True) -> list[TrackedJob]:
        """Record several jobs of one vault in one transaction; the jobs recorded (a final one is kept)."""
        now = self.clock()
        batch = Batch(jobs=[], transitions=[], items=[], counters=[])
        plans: list[tuple[TrackedJob, TrackedJob, str | None, bool, list[tuple[str, str, float]]]] = []
        for job in jobs:
            key = (vault.key, job.job_id.lower())
            old = self.jobs.get(key)
            if old is not None and old.state is JobState.FINAL and not job.is_final:
                # Final is final: a listing that raced the GET which saw the end cannot undo it.
                continue
            tj = _updated(old, vault, job, now, detailed)
            prev_status = old.status if old is not None and old.status != "Unknown" else None
            changed = prev_status != tj.status
            counter_incs: list[tuple[str, str, float]] = []
            if job.is_final and not tj.counted and self.is_news(job):
                tj.counted = True
                counter_incs.extend(self._finish_counters(vault, tj, job))
            if changed and prev_status is not None:
                counter_incs.append(
                    (
                        TRANSITIONS,
                        labels_key(
                            _vault_labels(vault)
                            | {"operation": tj.operation, "from_status": prev_status, "to_status": tj.status}
                        ),
                        1.0,
                    )
                )
            if changed:
                tj.transitions = [*tj.transitions, (prev_status, tj.status, now)]
                batch.transitions.append(
                    TransitionRow(
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
                )
            if job.is_final:
                item = self._item_update(vault, tj, job)
                if item is not None:
                    batch.items.append(item)
            batch.jobs.append(_row(vault, tj))
            batch.counters.extend(counter_incs)
            plans.append((tj, old or tj, prev_status, changed, counter_incs))
        self.store.write(batch)
        # Committed: now memory (and so the metrics), then the log.
        for item in batch.items:
            self.items[(item.vault_key, item.entity, item.operation)] = item
        out = []
        for tj, _old, _prev, _changed, incs in plans:
            self._put((vault.key, tj.job_id.lower()), tj)
            for metric, labels, inc in incs:
                if metric == DURATION:
                    continue
                self.counters[metric][labels] = self.counters[metric].get(labels, 0.0) + inc
            if any(m == DURATION for m, _, _ in incs):
                self._observe_duration(tj)
            out.append(tj)
        self._changed()
        for tj, _old, prev_status, changed, _incs in plans:
            if changed:
                self._log_change(tj, prev_status)
        return out

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

    def _item_update(self, vault: VaultRef, tj: TrackedJob, job: Job) -> ItemRow | None:
        end = _ts(job.end_time)
        if end is None or not tj.entity:
            return None
        key = (vault.key, tj.entity, tj.operation)
        current = self.items.get(key)
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

    def prune(self, *, lookback: float, retention: float) -> int:
        """Forget finished jobs no listing can return again, and history older than `retention`.

        A job is forgotten once it is final and started before `lookback` plus a day: discovery only
        lists jobs started within the lookback, so it cannot come back and be counted twice. Jobs named
        in the config are kept (a reload would otherwise poll them afresh). Totals and per-item state
        live in their own tables and are not touched.
        """
        now = self.clock()
        cutoff = now - lookback - 86400.0
        keep = {
            (state.ref.key, job_id.lower())
            for state in self.vaults.values()
            for job_id in state.configured_jobs
        }
        removed = self.store.prune(
            finished_started_before=cutoff, transitions_before=now - retention, keep=keep
        )
        if removed:
            self.jobs = {
                key: tj
                for key, tj in self.jobs.items()
                if not (tj.state is JobState.FINAL and tj.start_time is not None and tj.start_time < cutoff)
                or key in keep
            }
        # An item whose entity had no job for the whole retention period (decommissioned, renamed) leaves
        # /metrics; its row stays in the store and comes back with the item's next job.
        old_items = [key for key, item in self.items.items() if item.last_end < now - retention]
        for key in old_items:
            del self.items[key]
        if removed or old_items:
            self._changed()
        return removed

    def mark_error(self, vault: VaultRef, job_id: str, error: str, *, state: JobState | None = None) -> None:
        """A job could not be read: keep its last known status, note the error (and not_found)."""
        key = (vault.key, job_id.lower())
        tj = self.jobs.get(key)
        now = self.clock()
        if tj is None:
            tj = TrackedJob(vault=vault, job_id=job_id, status="Unknown", first_seen=now)
        tj.last_error = error
        tj.updated_at = now
        if state is not None:
            tj.state = state
        self.store.write(Batch(jobs=[_row(vault, tj)], transitions=[], items=[], counters=[]))
        self._put(key, tj)
        self._changed()

    def poll_error(self, vault: VaultRef, reason: str) -> None:
        self.poll_errors[(vault.key, reason)] += 1
        self._changed()

    def record_inventory(self, vault: VaultRef, items: list[ProtectedItem]) -> tuple[int, int]:
        """One vault's inventory round: store what changed, then memory; (items new, items gone).

        An item keeps the time it was first seen for as long as it stays in the inventory; one that
        leaves it is forgotten (its series go with it).
        """
        now = self.clock()
        current = self.inventory.get(vault.key, {})
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
        self.inventory[vault.key] = rows
        if changed or gone or vault.key in self._inventory_hidden:
            self._inventory_hidden.discard(vault.key)
            self._changed()
        return len([k for k in rows if k not in current]), len(gone)

    def hide_inventory(self, vault: VaultRef) -> None:
        """The vault's inventory is out of date: its items leave /metrics until a round works again."""
        if vault.key not in self._inventory_hidden:
            self._inventory_hidden.add(vault.key)
            self._changed()

    def item_of_job(self, vault: VaultRef, tj: TrackedJob) -> InventoryRow | None:
        """The inventory item a job is about: by its container (VMs) or backup instance where the job
        names one; by friendly name only when one item alone in the vault has it."""
        items = self.inventory.get(vault.key, {})
        if tj.item:
            return items.get(tj.item.lower())
        if tj.container:
            container = tj.container.lower()
            return next((row for row in items.values() if row.container.lower() == container), None)
        named = [row for row in items.values() if row.entity == tj.entity]
        return named[0] if len(named) == 1 else None

    def discovery_gap(self, vault: VaultRef, last_listed: float, reaches_back_to: float) -> None:
        """The watcher was away longer than the lookback: jobs that started and ended meanwhile are lost."""
        gap = reaches_back_to - last_listed
        self.discovery_gaps[vault.key] += 1
        log.warning(
            "discovery_gap",
            subscription_id=vault.subscription_id,
            resource_group=vault.resource_group,
            vault=vault.name,
            last_listed=_iso(last_listed),
            lookback_reaches=_iso(reaches_back_to),
            gap_seconds=round(gap, 1),
        )
        self._changed()

    def vault_polled(self, vault: VaultRef, when: float) -> None:
        state = self.vaults.get(vault.key)
        if state is not None:
            state.last_ok_poll = when
            self._changed()

    def set_watermark(self, vault: VaultRef, watermark: float) -> None:
        self.store.set_watermark(vault.key, watermark)
        state = self.vaults.get(vault.key)
        if state is not None:
            state.watermark = watermark

    # -- views ------------------------------------------------------------------------------

    def _changed(self) -> None:
        self._version += 1

    def snapshot(self) -> Snapshot:
        """The current state for the metrics; rebuilt only after a change."""
        if self._snapshot is not None and self._snapshot[0] == self._version:
            return self._snapshot[1]
        watched: dict[tuple[str, str], int] = defaultdict(int)
        running = []
        for tj in self.jobs.values():
            if tj.vault.key not in self.vaults:
                continue
            if tj.status != "Unknown":
                watched[(tj.vault.key, tj.status)] += 1
            if tj.running and tj.start_time is not None:
                running.append((tj.vault, tj.job_id, tj.operation, tj.job_type, tj.entity, tj.start_time))
        refs = {key: v.ref for key, v in self.vaults.items()}
        snap = Snapshot(
            vaults=tuple(refs.values()),
            running=tuple(running),
            watched=tuple((refs[k], status, n) for (k, status), n in watched.items()),
            items=tuple(i for i in self.items.values() if i.vault_key in refs),
            counters={
                m: {labels: v for labels, v in series.items() if _vault_key_of(labels) in refs}
                for m, series in self.counters.items()
            },
            durations=dict(self.durations),
            poll_errors={k: v for k, v in self.poll_errors.items() if k[0] in refs},
            last_ok_poll=tuple(
                (v.ref, v.last_ok_poll) for v in self.vaults.values() if v.last_ok_poll is not None
            ),
            discovery_gaps={k: v for k, v in self.discovery_gaps.items() if k in refs},
            inventory=tuple(
                row
                for key in refs
                if key not in self._inventory_hidden
                for row in self.inventory.get(key, {}).values()
            ),
        )
        self._snapshot = (self._version, snap)
        return snap

    def api_jobs(self) -> list[dict[str, Any]]:
        """Every tracked job of a watched vault, for /api/jobs."""
        out = []
        for tj in self.jobs.values():
            state = self.vaults.get(tj.vault.key)
            if state is None:
                continue
            out.append(
                {
                    "subscription_id": tj.vault.subscription_id,
                    "resource_group": tj.vault.resource_group,
                    "vault": tj.vault.name,
                    "job_id": tj.job_id,
                    "status": tj.status,
                    "state": "unauthorized"
                    if state.unauthorized and tj.state is JobState.ACTIVE
                    else str(tj.state),
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
                    "last_error": tj.last_error or state.unauthorized,
                    "configured": tj.configured,
                    "transitions": [
                        {"from_status": f, "to_status": t, "observed_at": _iso(at)}
                        for f, t, at in tj.transitions
                    ],
                }
            )
        out.sort(key=lambda j: (j["vault"], j["start_time"] or "", j["job_id"]))
        return out

    def _log_change(self, tj: TrackedJob, prev_status: str | None) -> None:
        event: dict[str, Any] = {
            "subscription_id": tj.vault.subscription_id,
            "resource_group": tj.vault.resource_group,
            "vault": tj.vault.name,
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


def _vault_labels(vault: VaultRef) -> dict[str, str]:
    return {
        "subscription_id": vault.subscription_id,
        "resource_group": vault.resource_group,
        "vault": vault.name,
        "vault_type": vault.kind.value,
    }


@functools.lru_cache(maxsize=65536)
def _vault_key_of(labels_json: str) -> str:
    labels = json.loads(labels_json)
    ref = VaultRef(
        str(labels.get("subscription_id")),
        str(labels.get("resource_group")),
        str(labels.get("vault")),
        VaultKind(labels.get("vault_type", VaultKind.RECOVERY_SERVICES.value)),
    )
    return ref.key


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
        transitions=list(old.transitions) if old is not None else [],
    )


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
        detail=json.dumps(tj.detail, separators=(",", ":")),
        state=str(tj.state),
        counted=int(tj.counted),
        last_error=tj.last_error,
        first_seen=tj.first_seen,
        updated_at=tj.updated_at,
        vault_type=vault.kind.value,
    )
