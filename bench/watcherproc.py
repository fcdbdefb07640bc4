"""The watcher of a benchmark run, alone in its process, with probes that change no behaviour.

    python -m bench.watcherproc --config watcher.yaml --stats stats.jsonl [--shard-index 0 --shard-count 2]

It runs `watcher.app.run_daemon` (what `backup-watcher run` runs) until SIGTERM, so the CPU seconds and
memory it reports are the watcher's alone, and appends JSON lines to `--stats`:

- `{"kind": "started", ...}` once the store is open, the state restored and /metrics served;
- `{"kind": "round", ...}` at the end of each round: the first lasts until every vault has had its first
  pass (the scheduler is ready), each after it one poll interval. A round line carries what the round
  cost (CPU, requests by endpoint and status, rows written to the store, discovery, inventory and
  running-job listings by vault kind, jobs that ended), the resident memory at its end and the
  event-loop lag measured in it;
- `{"kind": "sample", ...}` every `--sample-every` seconds: resident memory and CPU;
- `{"kind": "final", ...}` after the daemon has stopped: the totals (requests are then exact) and the
  lag over the whole run.

The lag probe is a task on the watcher's event loop that sleeps 10 ms again and again and records by
how much each sleep overshot: whatever holds the loop (a parse, a listing, a store write, a scrape)
shows up as overshoot. The other probes wrap methods on the instances (`Store.write`,
`Store.write_inventory`, `Store.set_watermark`, `Store.replace_discovered_vaults`, `Scheduler.discover`,
`Scheduler._inventory`, the provider facade's `still_running`) and listen to the tracker's changes.
With `--profile` the whole process runs under cProfile and the statistics are written there at exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import cProfile
import gc
import json
import os
import resource
import signal
import sys
import time
from array import array
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

STARTED = time.time()  # as near to process start as this module gets; imports come after

from watcher.app import Watcher, run_daemon  # noqa: E402 - imported after the clock is read
from watcher.azure.models import FINAL_STATUSES  # noqa: E402
from watcher.config import Config, load_config  # noqa: E402
from watcher.logs import configure_logging  # noqa: E402
from watcher.state import TrackedJob  # noqa: E402
from watcher.store import Batch  # noqa: E402

LAG_TICK = 0.010


def memory_mb() -> tuple[float, float]:
    """This process's resident set now and its peak (VmRSS, VmHWM), in MB."""
    rss = hwm = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1]) / 1024
            elif line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) / 1024
    if not hwm:
        hwm = rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return rss, hwm


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def lag_figures(samples: Any) -> dict[str, float]:
    """Count, median, p99 and maximum of overshoots (seconds)."""
    if not len(samples):
        return {"n": 0, "p50": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(samples)
    n = len(ordered)
    return {
        "n": n,
        "p50": ordered[min(n - 1, max(0, round(0.5 * n) - 1))],
        "p99": ordered[min(n - 1, max(0, round(0.99 * n) - 1))],
        "max": ordered[-1],
    }


class Probe:
    """Counts what the watcher does and writes it to the stats file, round by round."""

    def __init__(self, out: IO[str], sample_every: float) -> None:
        self.out = out
        self.sample_every = sample_every
        self.rows: Counter[str] = Counter()
        self.listings: Counter[str] = Counter()
        self.ended = 0
        self.lag_all = array("d")
        self.lag_round = array("d")
        self.watcher: Watcher | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.rounds = 0
        # Full (generation 2) garbage collections: how many, and their longest pause, in the round and
        # in the run. A collection holds the event loop like any other work.
        self.gc_round = [0, 0.0]
        self.gc_all = [0, 0.0, 0.0]
        self._gc_started = 0.0

    def write(self, kind: str, **fields: Any) -> None:
        self.out.write(json.dumps({"kind": kind, "t": time.time(), **fields}) + "\n")
        self.out.flush()

    # -- wiring ---------------------------------------------------------------------------------

    def start(self, watcher: Watcher) -> None:
        """Called once the daemon has started (store open, state restored, HTTP served)."""
        self.watcher = watcher
        store, scheduler, tracker = watcher.store, watcher.scheduler, watcher.tracker
        assert store is not None
        assert scheduler is not None
        assert tracker is not None
        rss, hwm = memory_mb()
        self.write(
            "started",
            process_start=STARTED,
            port=watcher.port,
            vaults=len(tracker.vaults),
            active_jobs=sum(len(d.active) for d in tracker.data.values()),
            rss=rss,
            hwm=hwm,
            cpu=cpu_seconds(),
        )
        rows = self.rows
        write, write_inventory = store.write, store.write_inventory
        set_watermark, replace_vaults = store.set_watermark, store.replace_discovered_vaults

        def counted_write(batch: Batch) -> None:
            write(batch)
            rows["jobs"] += len(batch.jobs)
            rows["transitions"] += len(batch.transitions)
            rows["items"] += len(batch.items)
            rows["counters"] += len(batch.counters)

        def counted_inventory(vault_key: str, changed: list[Any], gone: list[str]) -> None:
            write_inventory(vault_key, changed, gone)
            rows["inventory"] += len(changed) + len(gone)

        def counted_watermark(vault_key: str, watermark: float) -> None:
            set_watermark(vault_key, watermark)
            rows["watermarks"] += 1

        def counted_vaults(subscription_id: str, vault_type: str, vaults: list[Any]) -> None:
            replace_vaults(subscription_id, vault_type, vaults)
            rows["vaults"] += len(vaults)

        store.write = counted_write  # type: ignore[method-assign]
        store.write_inventory = counted_inventory  # type: ignore[method-assign]
        store.set_watermark = counted_watermark  # type: ignore[method-assign]
        store.replace_discovered_vaults = counted_vaults  # type: ignore[method-assign]

        listings = self.listings
        discover, inventory = scheduler.discover, scheduler._inventory
        still_running = scheduler.api.still_running

        async def counted_discover(state: Any, outcome: Any = None) -> int:
            listings[f"discover {state.ref.kind.value}"] += 1
            return await discover(state, outcome)

        async def counted_inventory_round(schedule: Any) -> None:
            listings[f"inventory {schedule.ref.kind.value}"] += 1
            await inventory(schedule)

        async def counted_still_running(vault: Any, *args: Any) -> Any:
            listed = await still_running(vault, *args)
            if listed is not None:
                listings[f"running {vault.kind.value}"] += 1
            return listed

        scheduler.discover = counted_discover  # type: ignore[method-assign]
        scheduler._inventory = counted_inventory_round  # type: ignore[method-assign]
        scheduler.api.still_running = counted_still_running  # type: ignore[method-assign,assignment]

        def ended(_tj: TrackedJob, _from: str | None, to_status: str) -> None:
            if to_status in FINAL_STATUSES:
                self.ended += 1

        tracker.listeners.append(ended)
        gc.callbacks.append(self._gc)
        self.tasks = [
            asyncio.create_task(self._lag(), name="bench lag probe"),
            asyncio.create_task(self._rounds(), name="bench rounds"),
            asyncio.create_task(self._samples(), name="bench samples"),
            asyncio.create_task(self._orphaned(), name="bench parent"),
        ]

    # -- probes ---------------------------------------------------------------------------------

    def _gc(self, phase: str, info: dict[str, int]) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            self._gc_started = time.perf_counter()
            return
        pause = time.perf_counter() - self._gc_started
        self.gc_round[0] += 1
        self.gc_round[1] = max(self.gc_round[1], pause)
        self.gc_all[0] += 1
        self.gc_all[1] = max(self.gc_all[1], pause)
        self.gc_all[2] += pause

    async def _lag(self) -> None:
        clock = time.perf_counter
        while True:
            before = clock()
            await asyncio.sleep(LAG_TICK)
            over = max(0.0, clock() - before - LAG_TICK)
            self.lag_all.append(over)
            self.lag_round.append(over)

    async def _orphaned(self) -> None:
        """A benchmark that died, however it died, takes this watcher along (as SIGTERM would)."""
        parent = os.getppid()
        while os.getppid() == parent:  # noqa: ASYNC110 - nothing signals a parent's death
            await asyncio.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    async def _samples(self) -> None:
        while True:
            rss, hwm = memory_mb()
            self.write("sample", rss=rss, hwm=hwm, cpu=cpu_seconds())
            await asyncio.sleep(self.sample_every)

    def _requests(self) -> dict[str, dict[str, int]]:
        assert self.watcher is not None
        out: dict[str, dict[str, int]] = {}
        for metric in self.watcher.metrics.api_requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    by_code = out.setdefault(sample.labels["endpoint"], {})
                    code = sample.labels["code"]
                    by_code[code] = by_code.get(code, 0) + int(sample.value)
        return out

    def _by_subscription(self) -> dict[str, int]:
        assert self.watcher is not None
        out: dict[str, int] = {}
        for metric in self.watcher.metrics.api_requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    sub = sample.labels["subscription_id"]
                    out[sub] = out.get(sub, 0) + int(sample.value)
        return out

    def _state(self) -> dict[str, Any]:
        assert self.watcher is not None
        tracker = self.watcher.tracker
        rss, hwm = memory_mb()
        return {
            "cpu": cpu_seconds(),
            "rss": rss,
            "hwm": hwm,
            "requests": self._requests(),
            "rows": dict(self.rows),
            "listings": dict(self.listings),
            "ended": self.ended,
            "active_jobs": sum(len(d.active) for d in tracker.data.values()) if tracker else 0,
            "vaults": len(tracker.vaults) if tracker else 0,
        }

    async def _rounds(self) -> None:
        watcher = self.watcher
        assert watcher is not None
        scheduler = watcher.scheduler
        assert scheduler is not None
        interval = watcher.config.poll.interval
        started = time.monotonic()
        while not scheduler.ready:  # noqa: ASYNC110 - readiness is a flag the scheduler sets, no event
            await asyncio.sleep(0.05)
        self._round(started)
        while True:
            started = time.monotonic()
            await asyncio.sleep(interval)
            self._round(started)

    def _round(self, started: float) -> None:
        self.rounds += 1
        lag = lag_figures(self.lag_round)
        self.lag_round = array("d")
        full_gc = {"count": self.gc_round[0], "max": self.gc_round[1]}
        self.gc_round = [0, 0.0]
        self.write(
            "round",
            index=self.rounds,
            seconds=time.monotonic() - started,
            lag=lag,
            full_gc=full_gc,
            **self._state(),
        )

    def final(self) -> None:
        """After the daemon stopped: the totals, exact now that nothing is in flight."""
        for task in self.tasks:
            task.cancel()
        if self.watcher is None:
            return
        self.write(
            "final",
            lag=lag_figures(self.lag_all),
            full_gc={"count": self.gc_all[0], "max": self.gc_all[1], "total": self.gc_all[2]},
            by_subscription=self._by_subscription(),
            **self._state(),
        )


async def _run(args: argparse.Namespace, config: Config, probe: Probe) -> int:
    shard = (args.shard_index, args.shard_count) if args.shard_count else None
    try:
        return await run_daemon(
            config, config_path=args.config, shard=shard, listen=args.listen, on_started=probe.start
        )
    finally:
        probe.final()
        await asyncio.gather(*probe.tasks, return_exceptions=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.watcherproc", description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--stats", type=Path, required=True, help="JSON lines are appended here")
    parser.add_argument("--log", type=Path, required=True, help="the watcher's own log")
    parser.add_argument("--listen", help="HOST:PORT for /metrics (overrides http.listen)")
    parser.add_argument("--shard-index", type=int)
    parser.add_argument("--shard-count", type=int)
    parser.add_argument("--sample-every", type=float, default=5.0)
    parser.add_argument("--profile", type=Path, help="run under cProfile; write the statistics here")
    args = parser.parse_args(argv)
    config = load_config(args.config)
    with args.stats.open("a") as out, args.log.open("a") as log:
        configure_logging(config.logging.format, config.logging.level, stream=log)
        probe = Probe(out, args.sample_every)
        profiler: Callable[[], None] | None = None
        if args.profile is not None:
            profile = cProfile.Profile()
            profile.enable()

            def profiler() -> None:
                profile.disable()
                profile.dump_stats(str(args.profile))

        try:
            return asyncio.run(_run(args, config, probe))
        finally:
            if profiler is not None:
                profiler()


if __name__ == "__main__":
    sys.exit(main())
