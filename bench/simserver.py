"""The benchmark's simulator, alone in its own process so its CPU never counts against the watcher.

    python -m bench.simserver --now 1790000000 --vaults 1000 --subscriptions 10 --port 0

Serves `scale_estate(ScaleSpec(...))` on 127.0.0.1 on the wall clock, with ARM's read throttling (a
bucket of 250 refilled at 25 a second per subscription: a client that overspends gets 429s), then
prints one line `ready <url>` and serves until SIGTERM or SIGINT (or, with `--stop-on-eof`, until its
stdin closes: a parent that dies, however it dies, takes it along). A line `stats` on stdin is answered
with one line `stats <json>` on stdout: the requests answered so far by kind and status, by
subscription, and the most any subscription was sent in one second and in any ten seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections import Counter
from typing import Any

from watcher.sim import RecordedRequest, Simulator, start_simulator
from watcher.sim.scenarios import ScaleSpec, scale_estate

ARM_BURST = 250
ARM_PER_SECOND = 25.0
WINDOW = 10  # seconds: the span over which the busiest stretch of each subscription is reported


def kind_of(path: str) -> str:
    """A request's kind: job listing, job, item or instance listing, recovery points, vaults, other."""
    tail = path.rstrip("/").lower().split("/")
    if tail[-1] == "backupjobs":
        return "list_jobs"
    if len(tail) > 1 and tail[-2] == "backupjobs":
        return "get_job"
    if tail[-1] in ("backupprotecteditems", "backupinstances"):
        return "list_items"
    if tail[-1] == "recoverypoints":
        return "list_points"
    if tail[-1] in ("vaults", "backupvaults"):
        return "list_vaults"
    return "other"


class Tally:
    """What the simulator answered, drained from its request log so that log stays short."""

    def __init__(self, sim: Simulator) -> None:
        self.sim = sim
        self.kinds: Counter[str] = Counter()
        self.subscriptions: Counter[str] = Counter()
        self.seconds: Counter[tuple[str, int]] = Counter()

    def drain(self) -> None:
        requests: list[RecordedRequest] = self.sim.requests
        self.sim.requests = []
        for req in requests:
            self.kinds[f"{kind_of(req.path)} {req.status}"] += 1
            parts = req.path.split("/")
            sub = parts[2].lower() if len(parts) > 2 and parts[1].lower() == "subscriptions" else "-"
            self.subscriptions[sub] += 1
            self.seconds[(sub, int(req.time))] += 1

    def report(self) -> dict[str, Any]:
        self.drain()
        busiest_second: dict[str, int] = {}
        busiest_window: dict[str, int] = {}
        per_sub: dict[str, dict[int, int]] = {}
        for (sub, second), n in self.seconds.items():
            per_sub.setdefault(sub, {})[second] = n
        for sub, counts in per_sub.items():
            busiest_second[sub] = max(counts.values())
            busiest_window[sub] = max(
                sum(counts.get(s, 0) for s in range(start, start + WINDOW)) for start in counts
            )
        return {
            "total": sum(self.kinds.values()),
            "kinds": dict(sorted(self.kinds.items())),
            "subscriptions": dict(self.subscriptions),
            "busiest_second": busiest_second,
            "busiest_window": busiest_window,
            "window": WINDOW,
        }


async def serve(args: argparse.Namespace) -> None:
    """Build the estate, serve it until told to stop, answering `stats` lines."""
    spec = ScaleSpec(
        now=args.now,
        vaults=args.vaults,
        subscriptions=args.subscriptions,
        backup_vault_every=args.backup_vault_every,
        items_per_vault=args.items,
        jobs_per_day=args.jobs_per_day,
        job_seconds=args.job_seconds,
        history=args.history,
        horizon=args.horizon,
    )
    estate = scale_estate(spec)
    sim = await start_simulator(estate, port=args.port, retry_after=1)
    sim.set_rate_limit(ARM_BURST, ARM_PER_SECOND)
    tally = Tally(sim)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stdin = sys.stdin.fileno()
    pending = b""

    def on_stdin() -> None:
        nonlocal pending
        data = os.read(stdin, 4096)
        if not data:
            loop.remove_reader(stdin)
            if args.stop_on_eof:
                stop.set()
            return
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            if line.strip() == b"stats":
                print(f"stats {json.dumps(tally.report())}", flush=True)

    loop.add_reader(stdin, on_stdin)

    async def drain() -> None:
        while True:
            await asyncio.sleep(0.5)
            tally.drain()

    draining = asyncio.create_task(drain())
    try:
        print(f"ready {sim.url}", flush=True)
        await stop.wait()
    finally:
        draining.cancel()
        await sim.close()
        print(f"stats {json.dumps(tally.report())}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until told to stop."""
    parser = argparse.ArgumentParser(prog="python -m bench.simserver", description=__doc__.splitlines()[0])
    parser.add_argument("--now", type=float, required=True, help="the moment the estate is laid out around")
    parser.add_argument("--vaults", type=int, default=1000)
    parser.add_argument("--subscriptions", type=int, default=10)
    parser.add_argument("--backup-vault-every", type=int, default=5, help="every Nth vault is a Backup vault")
    parser.add_argument("--items", type=int, default=20, help="protected items per vault")
    parser.add_argument("--jobs-per-day", type=float, default=100_000.0)
    parser.add_argument("--job-seconds", type=float, default=1728.0, help="mean job duration")
    parser.add_argument("--history", type=float, default=2 * 86400.0, help="seconds of jobs before --now")
    parser.add_argument("--horizon", type=float, default=3600.0, help="seconds of jobs after --now")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--stop-on-eof", action="store_true", help="stop when stdin reaches end of file")
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
