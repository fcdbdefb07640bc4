"""How the watcher's memory grows with each dimension of an estate: vaults, items, running jobs, history.

    python -m bench.memory                 # 1,000 vaults, 20 items each, 2,000 running, 80,000 ended
    python -m bench.memory --vaults 200    # any dimension can be changed

The state a watcher keeps is built in this process, one dimension after the other, the way the daemon
builds it (`Tracker.set_vaults`, `Tracker.record_inventory` with items parsed from the simulator's
bodies, `Tracker.observe_many` with jobs parsed from its GET bodies, then /metrics rendered once so its
caches fill), on a real state store in a temporary folder. After each step the Python heap that
`tracemalloc` traces (after a full collection) and the process's resident set are printed, with the
growth per unit of that step: bytes per vault, per item, per running job and per ended job. Ended jobs
are recorded in the store and leave memory; what stays is each item's last outcome (per item and
operation), so the first half of the history costs about that per item and the second half, more jobs
of the same items, close to nothing: history does not grow the watcher.

The resident set is what the benchmark's target is about; the traced heap is what the watcher's own
objects take (the interpreter, the libraries and the allocator's slack are the difference).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry

from bench.seed import FinalJobs
from watcher.azure import dataprotection, recoveryservices
from watcher.azure.models import Job, ProtectedItem, VaultKind, VaultRef
from watcher.logs import configure_logging
from watcher.metrics import Metrics
from watcher.sim import dataprotection as sim_dpp
from watcher.sim.bodies import job_body
from watcher.sim.estate import BACKUP_VAULT, SimJob, SimVault
from watcher.sim.inventory import protected_item_body
from watcher.sim.scenarios import ScaleSpec, scale_items, scale_jobs
from watcher.state import Tracker, VaultState
from watcher.store import Store


def rss_mb() -> float:
    """This process's resident set now (VmRSS), in MB."""
    with suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


@dataclass
class Step:
    name: str
    unit: str
    count: int
    heap: int
    rss: float


def measure(name: str, unit: str, count: int) -> Step:
    gc.collect()
    return Step(name, unit, count, tracemalloc.get_traced_memory()[0], rss_mb())


def parsed_items(spec: ScaleSpec, v: int, ref: VaultRef) -> list[ProtectedItem]:
    """Vault `v`'s items as the inventory round parses them from the simulator's bodies."""
    kind, subscription, group, name = spec.vault(v)
    vault = SimVault(kind, subscription, group, name)
    out = []
    for item in scale_items(spec, v):
        if kind == BACKUP_VAULT:
            out.append(dataprotection.parse_instance(sim_dpp.instance_body(item, vault), ref))
        else:
            out.append(recoveryservices.parse_item(protected_item_body(item, vault, spec.now), ref))
    return out


def running_job(job: SimJob, now: float) -> Job:
    """A running job as its GET reads it."""
    if job.vault_kind == BACKUP_VAULT:
        vault = SimVault(BACKUP_VAULT, job.subscription_id, job.resource_group, job.vault)
        return dataprotection.parse_job(sim_dpp.job_body(job, "InProgress", vault, listed=False))
    return recoveryservices.parse_job(job_body(job, "InProgress", now, extended=True))


@contextmanager
def quiet_logs() -> Iterator[None]:
    with open(os.devnull, "w") as devnull:
        configure_logging("json", "warning", stream=devnull)
        yield


def run(args: argparse.Namespace) -> list[Step]:
    now = time.time()
    spec = ScaleSpec(
        now=now,
        vaults=args.vaults,
        subscriptions=args.subscriptions,
        backup_vault_every=5,
        items_per_vault=args.items,
        jobs_per_day=100_000.0,
        job_seconds=1728.0,
        history=2 * 86400.0,
        horizon=0.0,
    )
    refs = []
    for v in range(spec.vaults):
        kind, subscription, group, name = spec.vault(v)
        refs.append(VaultRef(subscription, group, name, VaultKind(kind)))
    # Inputs are made before tracing starts, so the figures are the watcher's state alone.
    items = [parsed_items(spec, v, ref) for v, ref in enumerate(refs)]
    final = FinalJobs()
    running: list[tuple[VaultRef, Job]] = []
    ended: list[tuple[VaultRef, Job]] = []
    # Every vault's jobs in turn, so the running and ended ones are spread over the estate.
    jobs_of = [scale_jobs(spec, v) for v in range(len(refs))]
    live = set(range(len(refs)))
    while live and (len(running) < args.running or len(ended) < args.ended):
        for v in sorted(live):
            job = next(jobs_of[v], None)
            if job is None or job.start > now:
                live.discard(v)
            elif job.end > now and len(running) < args.running:
                running.append((refs[v], running_job(job, now)))
            elif job.end <= now and len(ended) < args.ended:
                ended.append((refs[v], final(job, refs[v])))

    steps: list[Step] = []
    with tempfile.TemporaryDirectory(prefix="backup-watcher-memory-") as tmp, quiet_logs():
        tracemalloc.start()
        store = Store.open(Path(tmp) / "state.sqlite3")
        tracker = Tracker(store, clock=lambda: now)
        metrics = Metrics(CollectorRegistry(), "bench")
        metrics.watch(tracker)
        steps.append(measure("empty watcher (store open, no vaults)", "", 0))
        tracker.set_vaults([VaultState(ref=ref, discover=True) for ref in refs])
        steps.append(measure("vaults watched", "vault", len(refs)))
        for ref, vault_items in zip(refs, items, strict=True):
            tracker.record_inventory(ref, vault_items)
        steps.append(measure("items in the inventory", "item", sum(map(len, items))))
        by_vault: dict[VaultRef, list[Job]] = {}
        for ref, parsed in running:
            by_vault.setdefault(ref, []).append(parsed)
        for ref, jobs in by_vault.items():
            tracker.observe_many(ref, jobs)
        steps.append(measure("running jobs", "running job", len(running)))
        # Two halves of history: the first gives most items their last outcome (kept per item); the second,
        # more jobs of the same items, shows what history itself costs once recorded.
        half = len(ended) // 2
        for name, part in (
            ("ended jobs, first half (items get a last outcome)", ended[:half]),
            ("ended jobs, second half (history alone)", ended[half:]),
        ):
            by_vault = {}
            for ref, parsed in part:
                by_vault.setdefault(ref, []).append(parsed)
            for ref, jobs in by_vault.items():
                tracker.observe_many(ref, jobs)
            steps.append(measure(name, "ended job", len(part)))

        async def scrape(gzip: bool) -> int:
            body = await metrics.body(False, gzip)
            return sum(len(part) for part in body.parts)

        plain = asyncio.run(scrape(False))
        gz = asyncio.run(scrape(True))
        steps.append(measure(f"/metrics rendered once ({plain / 1e6:.1f} MB, gzip {gz / 1e6:.1f} MB)", "", 0))
        tracemalloc.stop()
        store.close()
    return steps


def report(steps: list[Step]) -> None:
    print(f"{'step':<58} {'heap MB':>8} {'rss MB':>8}  growth")
    previous: Step | None = None
    for step in steps:
        growth = ""
        if previous is not None:
            heap = step.heap - previous.heap
            rss = step.rss - previous.rss
            growth = f"heap {heap / 1e6:+.1f} MB, rss {rss:+.1f} MB"
            if step.count:
                growth += f"; {heap / step.count:,.0f} B per {step.unit} (heap)"
        print(f"{step.name:<58} {step.heap / 1e6:8.1f} {step.rss:8.1f}  {growth}")
        previous = step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__.splitlines()[0])
    parser.add_argument("--vaults", type=int, default=1000)
    parser.add_argument("--subscriptions", type=int, default=10)
    parser.add_argument("--items", type=int, default=20, help="protected items per vault")
    parser.add_argument("--running", type=int, default=2000, help="running jobs")
    parser.add_argument("--ended", type=int, default=80_000, help="ended jobs recorded (history)")
    args = parser.parse_args(argv)
    print(
        f"estate: {args.vaults} vaults in {args.subscriptions} subscriptions (every fifth a Backup vault), "
        f"{args.items} items each, {args.running} running jobs, {args.ended} ended jobs"
    )
    report(run(args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
