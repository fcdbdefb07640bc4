"""A state store as a watcher leaves it after watching the scale estate's history, made before it starts.

Each job of `scale_jobs` that ended by `spec.now` is recorded the way the watcher records a job it saw
end: the simulator's GET body, parsed by the vault kind's provider, through `Tracker.observe_many`
(rows, transition, per-item state, totals and the duration histogram). The store's `created_at` is the
start of the history, so every one of those jobs counted as news. No vault listing, inventory or
watermark is stored: the watcher finds those itself in its first round.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

from watcher.azure import dataprotection, recoveryservices
from watcher.azure.models import Job, VaultKind, VaultRef
from watcher.logs import configure_logging
from watcher.sharding import shard_of
from watcher.sim import dataprotection as sim_dpp
from watcher.sim.bodies import job_body
from watcher.sim.estate import BACKUP_VAULT, SimJob, SimVault
from watcher.sim.scenarios import ScaleSpec, scale_jobs
from watcher.state import Tracker
from watcher.store import Store


@dataclass
class Seeded:
    """What was put in a store, and the estate's jobs as (vault number, start, end) for the report."""

    jobs: int = 0
    seconds: float = 0.0
    vaults: list[int] = field(default_factory=list)
    timeline: list[tuple[int, float, float]] = field(default_factory=list)


def in_shard(spec: ScaleSpec, v: int, shard: tuple[int, int] | None) -> bool:
    """Whether vault `v` belongs to the shard (every vault without one)."""
    if shard is None:
        return True
    kind, subscription, group, name = spec.vault(v)
    return shard_of(subscription, group, name, shard[1], kind) == shard[0]


def parse_final(job: SimJob) -> Job:
    """The job as the watcher reads its final GET: the simulator's body, parsed by the provider."""
    if job.vault_kind == BACKUP_VAULT:
        vault = SimVault(BACKUP_VAULT, job.subscription_id, job.resource_group, job.vault)
        return dataprotection.parse_job(sim_dpp.job_body(job, job.outcome, vault, listed=False))
    return recoveryservices.parse_job(job_body(job, job.outcome, job.end + 1.0, extended=True))


class FinalJobs:
    """`parse_final` at the cost of a copy: the first job of each kind, type, operation and outcome is
    parsed from its body, and the others are that parse with their own ids, names, times and size."""

    def __init__(self) -> None:
        self._templates: dict[tuple[str, str, str, str], tuple[Job, int]] = {}

    def __call__(self, job: SimJob, ref: VaultRef) -> Job:
        key = (job.vault_kind, job.job_type, job.operation, job.outcome)
        found = self._templates.get(key)
        if found is None:
            found = self._templates[key] = (parse_final(job), job.size_mb or 1)
        template, size_mb = found
        size = template.backup_size_bytes
        return replace(
            template,
            job_id=job.job_id,
            vault=ref,
            entity=job.entity,
            start_time=datetime.fromtimestamp(job.start, UTC),
            end_time=datetime.fromtimestamp(job.end, UTC),
            duration_seconds=job.duration,
            backup_size_bytes=size * (job.size_mb or 1) // size_mb if size is not None else None,
            container=job.container_name if template.container else "",
            item=job.backup_instance if template.item else "",
        )


def seed_store(path: Path, spec: ScaleSpec, shard: tuple[int, int] | None = None) -> Seeded:
    """Record the history of the shard's vaults (all of them without one) in a new store at `path`."""
    started = time.perf_counter()
    with open(os.devnull, "w") as devnull:
        configure_logging("json", "warning", stream=devnull)
        store = Store.open(path)
        try:
            with store.conn:
                store.conn.execute(
                    "UPDATE meta SET value = ? WHERE key = 'created_at'", (str(spec.now - spec.history),)
                )
                # The benchmark's own scratch store: no need to survive a power cut while it is made.
                store.conn.execute("PRAGMA synchronous=OFF")
            tracker = Tracker(store, clock=lambda: spec.now)
            final_job = FinalJobs()
            seeded = Seeded()
            for v in range(spec.vaults):
                mine = in_shard(spec, v, shard)
                kind, subscription, group, name = spec.vault(v)
                ref = VaultRef(subscription, group, name, VaultKind(kind))
                ended: list[Job] = []
                for job in scale_jobs(spec, v):
                    if mine:
                        seeded.timeline.append((v, job.start, job.end))
                    if mine and job.end <= spec.now:
                        ended.append(final_job(job, ref))
                if mine:
                    seeded.vaults.append(v)
                for chunk in range(0, len(ended), 2000):
                    tracker.observe_many(ref, ended[chunk : chunk + 2000], detailed=True)
                seeded.jobs += len(ended)
        finally:
            store.close()
    seeded.seconds = time.perf_counter() - started
    return seeded
