"""`backup-watcher track`: follow one job (or the job an operation starts) until it ends.

Exit status tells a pipeline how it ended: 0 Completed, 3 CompletedWithWarnings, 4 Failed,
5 Cancelled, 6 gave up (timeout), 2 usage or config, 1 anything else (auth, not found, ...).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO
from urllib.parse import urlsplit

from watcher.app import build_azure
from watcher.azure.client import ArmClient
from watcher.azure.models import Job, OperationStatus, VaultRef
from watcher.azure.ratelimit import SubscriptionLimiter
from watcher.config import Config
from watcher.errors import AzureError, RetryableError

EXIT_BY_STATUS = {"Completed": 0, "CompletedWithWarnings": 3, "Failed": 4, "Cancelled": 5}
EXIT_TIMEOUT = 6
EXIT_USAGE = 2
EXIT_ERROR = 1
# When several jobs are followed, the worst outcome decides.
SEVERITY = {0: 0, 3: 1, 5: 2, 4: 3}


@dataclass
class Display:
    """Live line on a terminal, plain lines otherwise, JSON lines with --json."""

    out: TextIO
    mode: str  # live | plain | json
    started: float = field(default_factory=time.monotonic)
    _last_plain: str = ""
    _live_width: int = 0

    def job(self, job: Job) -> None:
        elapsed = _elapsed(job)
        task = job.current_task
        parts = [job.vault.name if job.vault else "", job.entity, job.operation, job.status, elapsed]
        if task is not None and not job.is_final:
            parts.append(task.task_id)
        if job.progress_percent is not None and not job.is_final:
            parts.append(f"{job.progress_percent:.0f}%")
        line = "  ".join(p for p in parts if p)
        if self.mode == "json":
            self._json(_job_record(job))
        elif self.mode == "live":
            padded = line.ljust(self._live_width)
            self._live_width = len(line)
            self.out.write("\r" + padded)
            if job.is_final:
                self.out.write("\n")
            self.out.flush()
        elif line != self._last_plain:
            self._last_plain = line
            self.out.write(line + "\n")
            self.out.flush()

    def operation(self, op: OperationStatus) -> None:
        if self.mode == "json":
            self._json(
                {
                    "event": "operation",
                    "operation_id": op.operation_id,
                    "status": op.status,
                    "job_ids": list(op.job_ids),
                }
            )
        else:
            text = f"operation {op.operation_id or ''} {op.status}".replace("  ", " ")
            if self.mode == "live":
                self.out.write("\r" + text.ljust(self._live_width))
                self._live_width = len(text)
                if op.is_final:
                    self.out.write("\n")
            elif text != self._last_plain:
                self._last_plain = text
                self.out.write(text + "\n")
            self.out.flush()

    def final(self, record: dict[str, Any]) -> None:
        if self.mode == "json":
            self._json(record)
        else:
            message = record.get("message")
            if message:
                self.out.write(message + "\n")
                self.out.flush()

    def _json(self, record: dict[str, Any]) -> None:
        self.out.write(json.dumps(record, separators=(",", ":")) + "\n")
        self.out.flush()


def _elapsed(job: Job) -> str:
    seconds = job.final_duration() if job.is_final else job.duration_seconds
    if seconds is None:
        return ""
    s = int(seconds)
    return f"{s // 3600:02d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def _job_record(job: Job) -> dict[str, Any]:
    task = job.current_task
    return {
        "event": "job",
        "job_id": job.job_id,
        "vault": job.vault.name if job.vault else None,
        "status": job.status,
        "operation": job.operation,
        "operation_detail": job.operation_detail,
        "job_type": job.job_type,
        "entity": job.entity,
        "start_time": job.start_time.isoformat() if job.start_time else None,
        "end_time": job.end_time.isoformat() if job.end_time else None,
        "duration_seconds": job.final_duration() if job.is_final else job.duration_seconds,
        "current_task": task.task_id if task else None,
        "progress_percent": job.progress_percent,
        "errors": [e.as_dict() for e in job.errors],
    }


def vault_of_url(url: str) -> VaultRef:
    """The vault an operation URL belongs to."""
    return VaultRef.from_arm_id(urlsplit(url).path)


async def follow_job(
    client: ArmClient,
    vault: VaultRef,
    job_id: str,
    display: Display,
    *,
    interval: float,
    deadline: float | None,
    clock: Callable[[], float] = time.monotonic,
) -> Job | None:
    """Poll one job until final; None if the deadline passed first."""
    attempt = 0
    while True:
        try:
            job = await client.get_job(vault, job_id)
            attempt = 0
        except RetryableError as exc:
            # The client already retried; keep following, slower, as long as the deadline allows.
            delay = client.backoff.delay(attempt, exc.retry_after)
            attempt += 1
            if deadline is not None and clock() + delay > deadline:
                return None
            await asyncio.sleep(delay)
            continue
        display.job(job)
        if job.is_final:
            return job
        if deadline is not None and clock() >= deadline:
            return None
        wait = interval if deadline is None else min(interval, max(0.0, deadline - clock()))
        await asyncio.sleep(wait)


async def track(
    config: Config,
    *,
    vault_id: str | None,
    job_id: str | None,
    operation_url: str | None,
    give_up_after: float | None,
    interval: float,
    mode: str,
    out: TextIO = sys.stdout,
) -> int:
    """Follow a job or an operation's job(s) to the end; the exit status of the outcome."""
    display = Display(out, mode)
    limiter = SubscriptionLimiter(config.poll.ratelimit_burst, config.poll.ratelimit_per_second)
    azure = build_azure(config, None, limiter)
    deadline = None if give_up_after is None else time.monotonic() + give_up_after
    try:
        jobs: list[tuple[VaultRef, str]]
        if operation_url is not None:
            try:
                vault = vault_of_url(operation_url)
            except ValueError:
                display.final(
                    {
                        "event": "error",
                        "message": "error: --operation-url is not an operation URL of a Recovery Services vault",  # noqa: E501
                    }
                )
                return EXIT_USAGE
            azure.client.check_host(operation_url)
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                op = await azure.client.wait_operation(
                    operation_url, give_up_after=left, on_poll=display.operation
                )
            except TimeoutError:
                display.final(
                    {
                        "event": "timeout",
                        "message": f"gave up after {give_up_after:g}s: the operation is still running",
                    }
                )
                return EXIT_TIMEOUT
            if op.status == "Failed":
                display.final(
                    {
                        "event": "operation_failed",
                        "status": op.status,
                        "error": {"code": op.error_code, "message": op.error_message},
                        "message": f"operation failed: {op.error_code} {op.error_message}",
                    }
                )
                return EXIT_BY_STATUS["Failed"]
            if op.status == "Canceled":
                display.final(
                    {"event": "operation_canceled", "status": op.status, "message": "operation was canceled"}
                )
                return EXIT_BY_STATUS["Cancelled"]
            if not op.job_ids:
                display.final(
                    {
                        "event": "operation_succeeded",
                        "status": op.status,
                        "job_ids": [],
                        "message": "operation succeeded; it names no job to follow",
                    }
                )
                return 0
            jobs = [(vault, j) for j in op.job_ids]
        else:
            assert vault_id is not None
            assert job_id is not None
            try:
                vault = VaultRef.from_arm_id(vault_id)
            except ValueError as exc:
                display.final({"event": "error", "message": f"error: --vault-id: {exc}"})
                return EXIT_USAGE
            jobs = [(vault, job_id)]
        worst = 0
        for vault, jid in jobs:
            job = await follow_job(azure.client, vault, jid, display, interval=interval, deadline=deadline)
            if job is None:
                display.final(
                    {
                        "event": "timeout",
                        "job_id": jid,
                        "message": f"gave up after {give_up_after:g}s: job {jid} is still running",
                    }
                )
                return EXIT_TIMEOUT
            code = EXIT_BY_STATUS.get(job.status, EXIT_ERROR)
            if job.errors and mode != "json":
                for err in job.errors:
                    out.write(f"  error {err.code} {err.title}: {err.message}\n")
            display.final({"event": "done", "job_id": jid, "status": job.status, "exit_code": code})
            if SEVERITY.get(code, 4) > SEVERITY.get(worst, 4):
                worst = code
        return worst
    except AzureError as exc:
        display.final({"event": "error", "reason": exc.reason, "message": f"error: {exc}"})
        return EXIT_ERROR
    finally:
        await azure.close()
