"""`backup-watcher demo`: the daemon against the built-in simulator, with job changes shown as they happen."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import TextIO

from watcher.app import Watcher, run_daemon
from watcher.config import Config, validate_config
from watcher.logs import configure_logging
from watcher.state import TrackedJob

DEMO_TOKEN_ENV = "BACKUP_WATCHER_SIM_TOKEN"  # noqa: S105 - the name of a variable, not a secret

_COLOURS = {
    "InProgress": "\033[36m",
    "Cancelling": "\033[33m",
    "Completed": "\033[32m",
    "CompletedWithWarnings": "\033[33m",
    "Failed": "\033[31m",
    "Cancelled": "\033[35m",
}
_RESET = "\033[0m"


def demo_config(endpoint: str, subscriptions: list[str], *, listen: str, store_path: str) -> Config:
    """The demo's config: the simulator's subscriptions, whose every vault of both kinds is found by
    listing them (none is named), with short intervals so things move."""
    data = {
        "azure": {
            "management_endpoint": endpoint,
            "credential": "static_token",
            "static_token_env": DEMO_TOKEN_ENV,
        },
        "poll": {
            "interval": "5s",
            "discovery_interval": "20s",
            "concurrency": 8,
            "request_timeout": "10s",
            "backoff_initial": "1s",
            "backoff_max": "30s",
            "vault_discovery_interval": "1m",
            "inventory_interval": "30s",
        },
        "discovery": {"lookback": "6h"},
        "store": {"path": store_path},
        "http": {"listen": listen},
        "logging": {"format": "json", "level": "warning"},
        "subscriptions": [{"id": subscription} for subscription in subscriptions],
    }
    return validate_config(data, "demo")


class ChangePrinter:
    """One readable line per job status change."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.closed = False
        try:
            self.colour = out.isatty()
        except (OSError, ValueError):
            self.colour = False

    def __call__(self, tj: TrackedJob, prev: str | None, status: str) -> None:
        when = datetime.now().strftime("%H:%M:%S")
        operation = tj.operation + (f" ({tj.operation_detail})" if tj.operation_detail else "")
        arrow = f"{prev} -> {self._paint(status)}" if prev else f"watching, {self._paint(status)}"
        extra = ""
        duration = tj.detail.get("duration")
        if status not in ("InProgress", "Cancelling") and isinstance(duration, int | float):
            extra = f"  after {_human(duration)}"
        errors = tj.detail.get("errors") or []
        if status == "Failed" and errors:
            extra += f"  [{errors[0].get('code')} {errors[0].get('title')}]"
        if prev is None and status not in ("InProgress", "Cancelling"):
            return  # history found at start-up is in /api/jobs; the screen shows what happens now
        line = f"{when}  {tj.vault.name:<18} {tj.entity[:34]:<34} {operation:<22} {arrow}{extra}"
        if self.closed:
            return
        try:
            print(line, file=self.out, flush=True)
        except (OSError, ValueError):
            self.closed = True  # `demo | head`: the reader left; the daemon goes on (logs, /metrics)

    def _paint(self, status: str) -> str:
        if not self.colour:
            return status
        return f"{_COLOURS.get(status, '')}{status}{_RESET}"


def _human(seconds: float) -> str:
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def run_demo(*, listen: str, log_format: str | None, shard: tuple[int, int] | None) -> int:
    """Start the simulator and the watcher; print changes until SIGINT/SIGTERM."""
    from watcher.sim import SIM_TOKEN, demo_estate, demo_subscriptions, start_simulator

    configure_logging(log_format or "json", "info" if log_format else "warning")
    os.environ[DEMO_TOKEN_ENV] = SIM_TOKEN
    out = sys.stdout

    async def main() -> int:
        estate = demo_estate(time.time())
        sim = await start_simulator(estate)
        sim.max_recorded = 1000  # the demo may run for days; tests are what read the history
        # A fresh store per run, removed afterwards, unless WATCHER_STORE_PATH names one to keep.
        scratch = tempfile.TemporaryDirectory(prefix="backup-watcher-demo-")
        store_path = os.environ.get("WATCHER_STORE_PATH") or str(Path(scratch.name) / "state.sqlite3")
        try:
            config = demo_config(sim.url, demo_subscriptions(estate), listen=listen, store_path=store_path)
            printer = ChangePrinter(out)

            def setup(watcher: Watcher) -> None:
                watcher.grace = 2.0

            def started(watcher: Watcher) -> None:
                assert watcher.tracker is not None
                watcher.tracker.listeners.append(printer)
                host = watcher.listen_host
                shown = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host  # noqa: S104 - display only
                base = f"http://{shown}:{watcher.port}"
                print(
                    f"backup-watcher demo: the status page is at {base}/\n"
                    f"  metrics:  {base}/metrics\n"
                    f"  jobs:     {base}/api/jobs\n"
                    f"  azure:    simulated at {sim.url}, {len(config.subscriptions)} subscriptions "
                    "(their vaults are found by listing them)\n"
                    f"  store:    {config.store.path}\n"
                    "Job status changes appear below as they happen (Ctrl-C to stop).",
                    file=out,
                    flush=True,
                )

            return await run_daemon(
                config, config_path=None, listen=listen, setup=setup, on_started=started, shard=shard
            )
        finally:
            await sim.close()
            scratch.cleanup()

    return asyncio.run(main())
