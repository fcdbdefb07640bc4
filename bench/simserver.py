"""The benchmark's simulator, alone in its own process so its CPU never counts against the watcher.

    python -m bench.simserver --vaults 200 --jobs 50 --spread 600 --port 0 --manifest estate.json

Serves `bench_estate(vaults, jobs, spread=...)` on 127.0.0.1 with ARM's read throttling (a bucket of 250
refilled at 25 a second per subscription), writes the estate's manifest (every vault, every job's id and
end time) to `--manifest`, then prints one line `ready <url>` and serves until SIGTERM or SIGINT (or, with
`--stop-on-eof`, until its stdin closes: a parent that dies, however it dies, takes it along). On the
way out it prints one line `requests <json>`: how many requests it answered, by kind and status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from watcher.sim import Estate, RecordedRequest, bench_estate, start_simulator

ARM_BURST = 250
ARM_PER_SECOND = 25.0


def manifest(estate: Estate) -> dict[str, Any]:
    """Every vault and, per vault, each job's id and end time (epoch seconds)."""
    return {
        "vaults": [
            {
                "subscription_id": subscription_id,
                "resource_group": resource_group,
                "name": vault,
                "jobs": {
                    job.job_id: job.end for job in estate.jobs_in(subscription_id, resource_group, vault)
                },
            }
            for subscription_id, resource_group, vault in estate.vaults()
        ]
    }


def request_counts(requests: list[RecordedRequest]) -> dict[str, int]:
    """Answered requests by `<kind> <status>`: a listing, a single job, or anything else."""
    counts: Counter[str] = Counter()
    for req in requests:
        tail = req.path.rstrip("/").lower().split("/")
        kind = "list" if tail[-1] == "backupjobs" else "get" if tail[-2] == "backupjobs" else "other"
        counts[f"{kind} {req.status}"] += 1
    return dict(sorted(counts.items()))


async def serve(args: argparse.Namespace) -> None:
    """Build the estate, serve it until a signal, then report what was asked."""
    estate = bench_estate(args.vaults, args.jobs, spread=args.spread)
    args.manifest.write_text(json.dumps(manifest(estate)))
    sim = await start_simulator(estate, port=args.port, retry_after=1)
    sim.set_rate_limit(ARM_BURST, ARM_PER_SECOND)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.stop_on_eof:
        stdin = sys.stdin.fileno()

        def on_stdin() -> None:
            if not os.read(stdin, 4096):
                loop.remove_reader(stdin)
                stop.set()

        loop.add_reader(stdin, on_stdin)
    try:
        print(f"ready {sim.url}", flush=True)
        await stop.wait()
    finally:
        await sim.close()
        print(f"requests {json.dumps(request_counts(sim.requests))}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and serve until told to stop."""
    parser = argparse.ArgumentParser(prog="python -m bench.simserver", description=__doc__.splitlines()[0])
    parser.add_argument("--vaults", type=int, default=200)
    parser.add_argument("--jobs", type=int, default=50, help="jobs per vault")
    parser.add_argument("--spread", type=float, default=600.0, help="jobs end within this many seconds")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--manifest", type=Path, required=True, help="where to write the estate as JSON")
    parser.add_argument("--stop-on-eof", action="store_true", help="stop when stdin reaches end of file")
    asyncio.run(serve(parser.parse_args(argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
